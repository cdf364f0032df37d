"""Defects a new user found (issue: hardening and everyday use), one class of
input per test: each failed before its fix."""

import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import scratchnet as sn


def data(n=10, d=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, size=n)


def small(backend="numpy", **kw):
    return sn.Sequential([sn.Dense(4, 8), sn.ReLU(), sn.Dense(8, 3)], seed=0, backend=backend,
                         **kw)


# --- 1. every path that computes a loss applies the same checks ----------------------

def test_cross_entropy_on_logits_is_refused_on_every_path(backend):
    model = sn.Sequential([sn.Dense(4, 3)], seed=0, backend=backend)
    X, y = data()
    loss = sn.CrossEntropy()
    for call in (lambda: model.fit(X, y, loss=loss, optimizer=sn.SGD(0.1)),
                 lambda: model.evaluate(X, y, loss=loss),
                 lambda: model.fit(X, y, loss="cross_entropy", optimizer=sn.SGD(0.1)),
                 lambda: loss.forward(model.forward(X), y)):
        with pytest.raises(ValueError, match="CrossEntropy expects probabilities.*"
                                             "SoftmaxCrossEntropy"):
            call()
    with_softmax = sn.Sequential([sn.Dense(4, 3), sn.Softmax()], seed=0, backend=backend)
    hist = with_softmax.fit(X, y, loss=loss, optimizer=sn.SGD(0.1), epochs=2)
    assert all(v > 0 for v in hist.history["loss"])


# --- 2. values that overflow float32 ----------------------------------------------

def test_values_beyond_float32_are_refused_after_the_cast(backend):
    model = small(backend)
    X, y = data()
    X[3, 1] = 1e39                        # finite in float64, inf in float32
    for call, name in ((lambda: model.predict(X), "X"), (lambda: model.forward(X), "X"),
                       (lambda: model.evaluate(X, y), "X"),
                       (lambda: model.fit(X, y, loss=sn.SoftmaxCrossEntropy(),
                                          optimizer=sn.SGD(0.1)), "X"),
                       (lambda: model.fit(*data(), loss=sn.SoftmaxCrossEntropy(),
                                          optimizer=sn.SGD(0.1), validation_data=(X, y)),
                        "X_val")):
        with pytest.raises(ValueError, match=rf"{name} contains 1 NaN or infinite value.*"
                                             r"beyond the range of float32.*float64"):
            call()
    small(backend, dtype="float64").predict(X)     # fine in float64


# --- 5. meaningless arguments ------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: sn.SGD(lr=float("inf")), "SGD lr must be finite"),
    (lambda: sn.SGD(lr=0.1, weight_decay=float("inf")), "SGD weight_decay must be finite"),
    (lambda: sn.SGD(lr=0.1, momentum=1.0), "SGD momentum must be < 1"),
    (lambda: sn.SGD(lr=0.1, momentum=10), "SGD momentum must be < 1"),
    (lambda: sn.Adam(eps=0), "Adam eps must be > 0"),
    (lambda: sn.Adam(betas=(0.9,)), r"Adam betas must be a pair \(beta1, beta2\)"),
    (lambda: sn.Adam(betas=(0.9, 1.0)), "Adam beta2 must be < 1"),
    (lambda: sn.AdamW(weight_decay=-1), "AdamW weight_decay must be >= 0"),
    (lambda: sn.RMSprop(alpha=1.5), "RMSprop alpha must be <= 1"),
    (lambda: sn.Adagrad(eps=0), "Adagrad eps must be > 0"),
    (lambda: sn.CrossEntropy(eps=-1), "CrossEntropy eps must be >= 0"),
    (lambda: sn.LeakyReLU(2), "LeakyReLU alpha must be < 1"),
    (lambda: sn.Dense(3, 2, init=lambda rng, i, o: np.full((i, o), np.nan)),
     "returned 6 NaN or infinite weight"),
    (lambda: sn.SGD(0.1, exclude_from_weight_decay=[3]), "exclude_from_weight_decay"),
], ids=["lr_inf", "wd_inf", "momentum_1", "momentum_10", "adam_eps0", "betas_one",
        "beta2_1", "adamw_wd_neg", "rmsprop_alpha", "adagrad_eps0", "ce_eps", "leaky_2",
        "init_nan", "exclude_not_names"])
def test_meaningless_arguments_name_themselves(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_a_schedule_that_returns_inf_is_named():
    with pytest.raises(ValueError, match=r"lr_schedule\(epoch\) must be finite"):
        small().fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1),
                    lr_schedule=lambda e: float("inf"))


def test_non_finite_weights_are_named_before_training(backend):
    model = small(backend)
    model.layers[2].W[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"parameter 2.W .*NaN or infinite.*init, a loaded "
                                         r"file"):
        model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1))


# --- 6. BatchNorm and a last batch of one row ---------------------------------------

def test_batchnorm_short_last_batch_is_folded(backend):
    model = sn.Sequential([sn.Dense(4, 6), sn.BatchNorm(6), sn.ReLU(), sn.Dense(6, 3)], seed=0,
                          backend=backend)
    X, y = data(n=9)                      # 9 % 4 == 1: batches of 4 and 5
    steps = []

    class Count(sn.Callback):
        def on_batch_end(self, model, step):
            steps.append(step)

    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2,
              batch_size=4, callbacks=[Count()])
    assert steps == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="at least 2 training samples"):
        model.fit(X[:1], y[:1], loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1))


# --- 7. predict and evaluate check batch_size --------------------------------------

@pytest.mark.parametrize("bs, exc, match", [(0, ValueError, "batch_size must be > 0, got 0"),
                                            (-1, ValueError, "batch_size must be > 0, got -1"),
                                            (2.5, TypeError, "batch_size must be an integer")])
def test_predict_and_evaluate_check_batch_size(bs, exc, match):
    model, (X, y) = small(), data()
    with pytest.raises(exc, match=match):
        model.predict(X, batch_size=bs)
    with pytest.raises(exc, match=match):
        model.evaluate(X, y, batch_size=bs)


# --- 8. after divergence the model is usable again ------------------------------------

def test_divergence_restores_the_last_finite_weights(backend):
    model = small(backend)
    X, y = data(n=32)
    X *= 1e3
    start = np.array(model.flat_parameters()).copy() if backend != "cupy" else None
    with pytest.raises(sn.TrainingDivergedError,
                       match=r"restored to those at the start of epoch 1.*lower the learning "
                             r"rate \(now 1e\+06\)"):
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(1e6), epochs=3,
                  batch_size=4)
    flat = np.asarray(model.ops.to_host(model.flat_parameters()))
    assert np.isfinite(flat).all()
    if start is not None:
        np.testing.assert_array_equal(flat, start)
    hist = model.fit(X / 1e3, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2)
    assert np.isfinite(hist.history["loss"]).all()


def test_divergence_names_momentum_and_weight_decay():
    X, y = data(n=32)
    with pytest.raises(sn.TrainingDivergedError, match="weight_decay x lr = 10000 >= 1"):
        small().fit(X * 1e3, y, loss=sn.SoftmaxCrossEntropy(),
                    optimizer=sn.SGD(100.0, weight_decay=100.0), epochs=3, batch_size=4)


# --- 12. crafted and corrupt files --------------------------------------------------

def rewrite(path, change_config=None, change_arrays=None):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    config = json.loads(arrays.pop("__config__").tobytes())
    if change_config:
        config = change_config(config) or config
    if change_arrays:
        change_arrays(arrays)
    blob = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    np.savez(path, __config__=blob, **arrays)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.npz"
    model = sn.Sequential([sn.Dense(4, 8), sn.ReLU(), sn.Dropout(0.1), sn.Dense(8, 3)], seed=0)
    model.fit(*data(), loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01))
    model.save(path)
    return path


@pytest.mark.parametrize("key, value", [("layers", "Dense"), ("layers", [1, 2]),
                                        ("layers", []), ("rng", "x"), ("rng", [1]),
                                        ("optimizer", "adam"), ("optimizer", [1]),
                                        ("dtype", "int8"), ("seed", "zero"), ("tied", [5])])
def test_config_of_the_wrong_form_is_named(saved, key, value):
    def change(config):
        config[key] = value
    rewrite(saved, change)
    with pytest.raises(ValueError, match=rf"m.npz: not a valid scratchnet model.*"):
        sn.load(saved)


def test_optimizer_argument_out_of_range_names_the_file(saved):
    def change(config):
        config["optimizer"]["config"]["lr"] = -1
    rewrite(saved, change)
    with pytest.raises(ValueError, match=r"m.npz: .*Adam lr must be >= 0"):
        sn.load(saved)


def nest_raw(path, depth):
    """Insert a Residual nested ``depth`` deep as raw JSON text (Python's json
    module cannot write one that deep)."""
    def change(config):
        config["layers"].insert(2, "__DEEP__")
    rewrite(path, change)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    inner = '{"class": "Dense", "config": {"n_in": 8, "n_out": 8}}'
    deep = '{"class": "Residual", "config": {"layers": [' * depth + inner + "]}}" * depth
    text = arrays.pop("__config__").tobytes().decode().replace('"__DEEP__"', deep)
    np.savez(path, __config__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)


@pytest.mark.parametrize("depth", [100, 5000])
def test_deeply_nested_residual_is_refused(saved, depth):
    nest_raw(saved, depth)
    with pytest.raises(ValueError, match=r"m.npz: not a valid scratchnet model: .*nested"):
        sn.load(saved)


@pytest.mark.parametrize("n", [4000, 10 ** 7])
def test_config_sizes_are_checked_against_the_arrays_before_allocating(saved, n):
    def change(config):
        config["layers"][0]["config"].update(n_in=n, n_out=n)
    rewrite(saved, change)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"param:0.W has shape \(4, 8\) but the config's "
                                             rf"Dense needs \({n}, {n}\)"):
            sn.load(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak


def test_float_sizes_in_a_config_are_refused(saved):
    def change(config):
        config["layers"][0]["config"].update(n_in=1e7, n_out=1e7)
    rewrite(saved, change)
    with pytest.raises(ValueError, match=r"m.npz: .*Dense n_in must be an integer"):
        sn.load(saved)


# --- 13. anything else is "not a scratchnet model file" ------------------------------

@pytest.mark.parametrize("content", [b"hello, this is a text file\n", bytes(range(256)) * 4,
                                     b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': "
                                     b"False, 'shape': (1,), }" + b" " * 60 + b"\n" + b"x" * 50])
def test_other_files_are_not_model_files(tmp_path, content):
    path = tmp_path / "thing.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a scratchnet model file") as err:
        sn.load(path)
    assert "pickle" not in str(err.value)


def test_an_archive_of_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, __config__=np.array([{"format": "scratchnet-model"}], dtype=object))
    with pytest.raises(ValueError, match="arrays of Python objects") as err:
        sn.load(path)
    assert "allow_pickle" not in str(err.value)


def test_a_zip_without_a_config(tmp_path):
    path = tmp_path / "plain.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="not a scratchnet model file"):
        sn.load(path)
