"""One rank of the data-parallel tests: ``mpiexec -n N python distributed_worker.py CASE OUT``.

Each case trains a tiny float64 model with ``fit(..., distributed=True)`` and
writes what the test compares (``OUT/<case>-rank<r>.npz``), or provokes one
fault on rank 1. ``tests/test_distributed_mpi.py`` launches it and computes the
single-process references itself (``problem`` and ``build`` are shared).
"""

import os
import sys

import numpy

import scratchnet as sn

N_ROWS, PER_RANK_BATCH, EPOCHS = 50, 8, 3


def problem(kind="mlp"):
    """50 rows (not a multiple of 2x8 nor 3x8: the last global batch is short)."""
    rng = numpy.random.default_rng(0)
    shape = (N_ROWS, 6) if kind == "mlp" else (N_ROWS, 1, 6, 6)
    return rng.normal(size=shape), rng.integers(0, 3, N_ROWS)


def build(kind="mlp", hidden=8, extra=()):
    if kind == "mlp":
        layers = [sn.Dense(6, hidden, activation="tanh"), *extra, sn.Dense(hidden, 3)]
    else:
        layers = [sn.Conv2D(1, 4, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2), sn.Flatten(),
                  sn.Dense(36, 3)]
    return sn.Sequential(layers, seed=3, dtype="float64", backend="numpy")


def optimizer(name):
    return sn.SGD(0.1, momentum=0.9) if name == "momentum" else sn.Adam(0.01)


class FailOnRank(sn.Callback):
    """Raise (or exit without a word) on one rank at one step."""

    def __init__(self, rank, at_epoch, at_step, how="raise"):
        self.rank, self.at_epoch, self.at_step, self.how = rank, at_epoch, at_step, how
        self.epoch = 0

    def on_epoch_begin(self, model, epoch):
        self.epoch = epoch

    def on_batch_end(self, model, step):
        if (self.epoch, step) != (self.at_epoch, self.at_step) or \
                sn.distributed.get_world().rank != self.rank:
            return
        if self.how == "exit":
            os._exit(3)
        raise RuntimeError(f"injected fault at step {step + 1} of epoch {self.epoch + 1}")


def save(out, case, rank, **arrays):
    numpy.savez(os.path.join(out, f"{case}-rank{rank}.npz"), **arrays)


def main(case, out, *args):
    world = sn.distributed.init()
    rank = world.rank
    loss = sn.SoftmaxCrossEntropy()
    if case == "equivalence":
        for kind, opt in (("mlp", "momentum"), ("mlp", "adam"), ("cnn", "momentum")):
            X, y = problem(kind)
            model = build(kind)
            hist = model.fit(X, y, loss=loss, optimizer=optimizer(opt), epochs=EPOCHS,
                             batch_size=PER_RANK_BATCH, distributed=True)
            save(out, f"{kind}-{opt}", rank, params=model.flat_parameters(),
                 loss=hist.history["loss"], accuracy=hist.history["accuracy"])
    elif case == "state":
        X, y = problem()
        for policy in ("average", "local"):
            model = build(extra=[sn.BatchNorm(8), sn.Dropout(0.5)])
            masks = []

            class FirstMask(sn.Callback):
                def on_batch_end(self, model_, step):
                    if step == 0:
                        masks.append(model_.layers[2].mask.copy())
            hist = model.fit(X, y, loss=loss, optimizer=sn.Adam(0.01), epochs=2,
                             batch_size=PER_RANK_BATCH, callbacks=[FirstMask()],
                             distributed=sn.distributed.DataParallel(world, buffers=policy))
            save(out, f"state-{policy}", rank, params=model.flat_parameters(),
                 running_mean=model.layers[1].running_mean, running_var=model.layers[1].running_var,
                 mask0=masks[0], mask1=masks[1], loss=hist.history["loss"],
                 threads=world.threads or 0)
    elif case == "fault-raise":
        X, y = problem()
        build().fit(X, y, loss=loss, optimizer=sn.Adam(0.01), epochs=EPOCHS, batch_size=4,
                    callbacks=[FailOnRank(1, 1, 2)], distributed=True)
    elif case == "fault-exit":
        X, y = problem()
        build().fit(X, y, loss=loss, optimizer=sn.Adam(0.01), epochs=EPOCHS, batch_size=4,
                    callbacks=[FailOnRank(1, 1, 2, how="exit")], distributed=True)
    elif case == "fault-diverge":
        # bad data on one shard: row 9 is rank 1's in the first global batch (no shuffling);
        # its squared error overflows float32, so only rank 1's loss becomes inf
        X, y = problem()
        X = X.astype(numpy.float32)
        X[PER_RANK_BATCH + 1] = 1e20
        model = sn.Sequential([sn.Dense(6, 8), sn.Dense(8, 3)], seed=3, backend="numpy")
        model.fit(X, numpy.zeros((N_ROWS, 3), numpy.float32), loss=sn.MSE(),
                  optimizer=sn.SGD(0.01), epochs=EPOCHS, batch_size=PER_RANK_BATCH,
                  shuffle=False, distributed=True)
    elif case == "fault-nan":
        X, y = problem()
        if rank == 1:
            X[7, 2] = numpy.nan
        build().fit(X, y, loss=loss, optimizer=sn.Adam(0.01), epochs=EPOCHS,
                    batch_size=PER_RANK_BATCH, distributed=True)
    elif case == "fault-mismatch":
        X, y = problem()
        build(hidden=16 if rank == 1 else 8).fit(X, y, loss=loss, optimizer=sn.Adam(0.01),
                                                  epochs=EPOCHS, batch_size=PER_RANK_BATCH,
                                                  distributed=True)
    elif case == "checkpoint":
        # args: epochs, crash_epoch (-1: none), checkpoint path, resume path ('' : fresh)
        epochs, crash, path, resume = int(args[0]), int(args[1]), args[2], args[3]
        X, y = problem()
        if resume:
            model, done = sn.training.load_checkpoint(resume)
            opt = model.optimizer
        else:
            model, done, opt = build(extra=[sn.Dropout(0.2)]), 0, sn.Adam(0.01)
        callbacks = [sn.training.Checkpoint(path)]
        if crash >= 0:
            callbacks.append(FailOnRank(1, crash, 1))
        model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=PER_RANK_BATCH,
                  initial_epoch=done, lr_schedule=sn.schedules.cosine(0.01, epochs),
                  callbacks=callbacks, distributed=True)
        save(out, "checkpoint", rank, params=model.flat_parameters())
    else:
        raise SystemExit(f"unknown case {case!r}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(*sys.argv[1:])
