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
    """Cosine decay from ``lr`` towards ``min_lr`` over ``epochs`` epochs, as
    PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=min_lr)`` stepped once
    per epoch: epoch e (from 0) trains at
    ``min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2``, so the first
    epoch runs at ``lr`` and the last one still above ``min_lr`` (min_lr itself
    would be the rate of epoch ``epochs``, which is never trained).

    warmup: the first ``warmup`` epochs ramp up linearly, ``lr * (e + 1) /
    (warmup + 1)``; the cosine then runs over the remaining ``epochs - warmup``
    epochs, starting at ``lr``. Epochs past ``epochs`` stay at ``min_lr``.
    """
    lr = check_number(lr, "lr", low=0.0)
    epochs = check_positive_int(epochs, "epochs")
    warmup = check_positive_int(warmup, "warmup", allow_zero=True)
    min_lr = check_number(min_lr, "min_lr", low=0.0, high=lr)
    if warmup >= epochs:
        raise ValueError(f"warmup ({warmup}) must be smaller than epochs ({epochs}): the "
                         f"cosine part needs at least one epoch")
    span = epochs - warmup

    def schedule(epoch):
        if epoch < warmup:
            return lr * (epoch + 1) / (warmup + 1)
        t = min(epoch - warmup, span) / span
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
    return schedule


def step(lr, drop=0.1, every=10):
    """Multiply ``lr`` by ``drop`` every ``every`` epochs."""
    lr = check_number(lr, "lr", low=0.0)
    every = check_positive_int(every, "every")
    return lambda epoch: lr * drop ** (epoch // every)


SCHEDULES = {"constant": constant, "cosine": cosine, "step": step}
