"""Files written by an earlier scratchnet still load, and training resumes
where it stopped.

``tests/data/model_v1.npz`` was written by scratchnet 0.1.0 before the core
refactor (commit 07433df), with ``tests/data/make_model_v1.py`` (see its
docstring for the exact command); ``tests/data/model_v1_expected.npz`` holds
what that code computed: the model's output on a probe batch, and the output
after one more epoch of training resumed from the file. The current code
must give the same numbers: the same weights, BatchNorm statistics,
optimizer (Adam, step count, moments) and shuffling/dropout generator
positions come back, and the new training loop continues the old
trajectory.
"""

import os

import numpy as np
import pytest

import scratchnet as sn
from conftest import to_host as host

DATA = os.path.join(os.path.dirname(__file__), "data")
MODEL = os.path.join(DATA, "model_v1.npz")
BATCH = 16      # as make_model_v1.py


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(DATA, "model_v1_expected.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def raw():
    """The model file's arrays, read without scratchnet."""
    with np.load(MODEL, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_predict_matches_the_old_output(backend, expected):
    model = sn.load(MODEL, backend=backend)
    assert model.dtype == np.float64 and model.ops.name == backend
    np.testing.assert_allclose(model.predict(expected["X_probe"]), expected["out_probe"],
                               rtol=0, atol=1e-12)


def test_parameters_and_buffers_come_back(raw):
    model = sn.load(MODEL, backend="numpy")
    state = model.state_arrays()
    assert sorted(state) == sorted(k for k in raw if k.startswith(("param:", "buffer:")))
    for key, value in state.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(value, raw[key], err_msg=key)


def test_optimizer_comes_back(backend, expected, raw):
    model = sn.load(MODEL, backend=backend)
    opt = model.optimizer
    assert type(opt) is sn.Adam
    assert (opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay) == (1e-2, 0.9, 0.999,
                                                                          1e-8, 0.0)
    steps = int(expected["steps"])
    assert steps == 6       # 2 epochs of 40 rows at batch 16: 3 steps each
    assert opt.steps == steps
    paths = [p for p, _, _ in model.named_parameters()]
    assert sorted(opt.state) == sorted(paths)
    for p in paths:
        assert opt.state[p]["step"] == steps
        for k in ("m", "v"):
            value = host(opt.state[p][k])
            assert value.dtype == np.float64
            np.testing.assert_array_equal(value, raw[f"opt:{p}:{k}"], err_msg=f"{p} {k}")
            assert np.any(value != 0), f"{p} {k} is all zero"


def test_training_resumes_on_the_old_trajectory(expected):
    """One more epoch from the file (shuffled with the file's generator, the
    file's dropout stream, the loaded Adam) lands where the old code did."""
    model = sn.load(MODEL, backend="numpy")
    model.fit(expected["X"], expected["y"], loss=sn.SoftmaxCrossEntropy(),
              optimizer=model.optimizer, epochs=1, batch_size=BATCH, shuffle=True)
    assert model.optimizer.steps == int(expected["steps"]) + 3
    np.testing.assert_allclose(model.predict(expected["X_probe"]), expected["out_resumed"],
                               rtol=0, atol=1e-10)


def test_resaved_file_resumes_the_same(tmp_path, expected):
    """Loaded and saved again by the current code, the model still continues
    the old trajectory (the new writer keeps what the old one kept)."""
    path = tmp_path / "again.npz"
    sn.load(MODEL, backend="numpy").save(path)
    model = sn.load(path, backend="numpy")
    np.testing.assert_array_equal(model.predict(expected["X_probe"]), expected["out_probe"])
    model.fit(expected["X"], expected["y"], loss=sn.SoftmaxCrossEntropy(),
              optimizer=model.optimizer, epochs=1, batch_size=BATCH, shuffle=True)
    np.testing.assert_allclose(model.predict(expected["X_probe"]), expected["out_resumed"],
                               rtol=0, atol=1e-10)
