"""Learning-rate schedules: callables ``epoch -> lr`` (epoch counts from 0).

Pass one to ``model.fit(..., lr_schedule=...)``; the optimizer's ``lr`` is set
from it at the start of every epoch.
"""

import math

from ._validate import check_number, check_positive_int


def constant(lr):
    lr = check_number(lr, "lr", low=0.0)
    return lambda epoch: lr


def cosine(lr, epochs, warmup=0, min_lr=0.0):
    """Linear warm-up over ``warmup`` epochs, then cosine decay from ``lr`` to
    ``min_lr`` at the last epoch."""
    lr = check_number(lr, "lr", low=0.0)
    epochs = check_positive_int(epochs, "epochs")
    warmup = check_positive_int(warmup, "warmup", allow_zero=True)

    def schedule(epoch):
        if epoch < warmup:
            return lr * (epoch + 1) / (warmup + 1)
        span = max(epochs - warmup - 1, 1)
        t = min(epoch - warmup, span) / span
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
    return schedule


def step(lr, drop=0.1, every=10):
    """Multiply ``lr`` by ``drop`` every ``every`` epochs."""
    lr = check_number(lr, "lr", low=0.0)
    every = check_positive_int(every, "every")
    return lambda epoch: lr * drop ** (epoch // every)


SCHEDULES = {"constant": constant, "cosine": cosine, "step": step}
