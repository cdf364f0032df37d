"""Write the fixture of ``tests/test_io_compat.py``: a model file of format
version 1 and what the model computed when it was written.

``model_v1.npz`` and ``model_v1_expected.npz`` were written by this script
run with scratchnet 0.1.0 as it was before the core refactor (commit 07433df,
the last one before "Core for every kind of network"), on the NumPy backend:

    git worktree add ../old 07433df
    PYTHONPATH=../old python tests/data/make_model_v1.py tests/data

The script uses only the API that both versions share, so it also runs with
the current code (``python tests/data/make_model_v1.py OUT``); the committed
files must not be regenerated that way, since their point is that they come
from the old code.

The model (every layer kind that has saved state: Dense, BatchNorm running
statistics, Dropout's generator, a Residual block) is trained 2 epochs with
Adam(1e-2) and saved with its optimizer. ``model_v1_expected.npz`` (plain
``numpy.savez``) holds:

* ``X``, ``y``: the training data (40 x 6 float64, labels 0..2);
* ``X_probe`` (5 x 6) and ``out_probe``: ``model.predict(X_probe)``;
* ``steps``: the optimizer's step count at save time;
* ``out_resumed``: ``predict(X_probe)`` of the model *loaded from the file*
  after one more epoch of ``fit`` on (X, y) with the loaded optimizer,
  shuffling on, batch 16, with the file's shuffling and dropout generators.
"""

import os
import sys

import numpy

import scratchnet as sn

BATCH = 16


def build():
    return sn.Sequential([sn.Dense(6, 8, init="he"), sn.ReLU(), sn.BatchNorm(8), sn.Dropout(0.1),
                          sn.Residual([sn.Dense(8, 8), sn.Tanh()]), sn.Dense(8, 3)],
                         seed=3, dtype="float64")


def main(out_dir):
    rng = numpy.random.default_rng(20240601)
    X = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, size=40)
    X_probe = rng.standard_normal((5, 6))
    with sn.use_backend("numpy"):
        model = build()
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(1e-2), epochs=2,
                  batch_size=BATCH)
        path = os.path.join(out_dir, "model_v1.npz")
        model.save(path)
        out_probe = model.predict(X_probe)
        steps = max(st["step"] for st in model.optimizer.state.values())

        loaded = sn.load(path)
        assert numpy.array_equal(loaded.predict(X_probe), out_probe)
        loaded.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=loaded.optimizer, epochs=1,
                   batch_size=BATCH, shuffle=True)
        out_resumed = loaded.predict(X_probe)

        # the model in memory continues the same way as the one from the file
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=model.optimizer, epochs=1,
                  batch_size=BATCH, shuffle=True)
        assert numpy.array_equal(model.predict(X_probe), out_resumed)

    numpy.savez(os.path.join(out_dir, "model_v1_expected.npz"), X=X, y=y, X_probe=X_probe,
                out_probe=out_probe, steps=numpy.int64(steps), out_resumed=out_resumed)
    print(f"scratchnet {sn.__version__}: wrote {path} (Adam, {steps} steps)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
