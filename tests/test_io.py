"""Saving and loading: round trips on every backend, atomic saves, and clear
errors for files that are not (valid) scratchnet models."""

import gc
import json
import os
import re
import warnings

import numpy as np
import pytest

import scratchnet as sn
import scratchnet.io as snio
from conftest import to_host as host


def toy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X @ rng.normal(size=(5, 3))).argmax(axis=1)


def make(backend="numpy", dtype="float32", seed=0, dropout=0.25):
    """Every kind of layer (dropout too, unless ``dropout=0``)."""
    return sn.Sequential([
        sn.Dense(5, 8, init="he"), sn.ReLU(), sn.BatchNorm(8),
        sn.Residual([sn.Dense(8, 8, bias=False), sn.LeakyReLU(0.2),
                     sn.Residual([sn.Dense(8, 8), sn.Tanh()])]),
        *([sn.Dropout(dropout)] if dropout else []), sn.Dense(8, 4), sn.Sigmoid(), sn.Dense(4, 3),
    ], seed=seed, dtype=dtype, backend=backend)


def train(model, X, y, optimizer=None, epochs=2):
    return model.fit(X, y, loss=sn.SoftmaxCrossEntropy(),
                     optimizer=optimizer if optimizer is not None else model.optimizer,
                     epochs=epochs, batch_size=8, shuffle=False)


def same_state(a, b):
    sa, sb = a.state_arrays(), b.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def rewrite(path, edit):
    """Rewrite the arrays of an .npz file with ``edit(arrays)``."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    np.savez(path, **arrays)


def edit_config(arrays, fn):
    config = json.loads(arrays["__config__"].tobytes().decode())
    fn(config)
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)


# --- round trips --------------------------------------------------------------

def test_resumed_training_continues_the_random_streams(backend, tmp_path):
    """Shuffling order and dropout masks are saved: train 2 epochs, save, load,
    train 2 more == train 4 epochs straight."""
    X, y = toy()
    def fit(model, opt, epochs):
        return model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=opt, epochs=epochs,
                         batch_size=8, shuffle=True)
    straight = make(backend, "float64", dropout=0.25)
    fit(straight, sn.Adam(0.01), 4)
    resumed = make(backend, "float64", dropout=0.25)
    fit(resumed, sn.Adam(0.01), 2)
    resumed.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz", backend=backend)
    fit(loaded, loaded.optimizer, 2)
    for k, v in straight.state_arrays().items():
        np.testing.assert_allclose(loaded.state_arrays()[k], v, rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", [lambda: sn.Adam(0.01, weight_decay=0.01),
                                 lambda: sn.SGD(0.05, momentum=0.9, nesterov=True)],
                         ids=["adam", "sgd_nesterov"])
def test_round_trip(backend, tmp_path, dtype, opt):
    X, y = toy()
    model = make(backend, dtype, dropout=0)
    train(model, X, y, opt())
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = sn.load(path, backend=backend)

    assert loaded.ops.name == backend and loaded.dtype == np.dtype(dtype)
    assert repr(loaded) == repr(model)
    assert loaded.get_config() == model.get_config()
    same_state(loaded, model)                                # running stats included
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))

    # the optimizer, with its state
    a, b = model.optimizer, loaded.optimizer
    assert type(a) is type(b) and a.get_config() == b.get_config()
    assert a.state.keys() == b.state.keys()
    for p in a.state:
        assert a.state[p]["step"] == b.state[p]["step"] == 10
        for k in a.state_names:
            assert loaded.ops.is_own_array(b.state[p][k])
            np.testing.assert_array_equal(host(b.state[p][k]), host(a.state[p][k]))

    # continuing from the file == continuing without saving
    h_loaded, h_model = train(loaded, X, y), train(model, X, y)
    assert h_loaded.history["loss"] == h_model.history["loss"]
    same_state(loaded, model)


def test_save_without_optimizer(backend, tmp_path):
    model = make(backend, "float64")
    model.save(str(tmp_path / "fresh.npz"))                  # str paths work too
    loaded = sn.load(str(tmp_path / "fresh.npz"), backend=backend)
    assert loaded.optimizer is None
    assert repr(loaded) == repr(model) and "Dropout(p=0.25)" in repr(loaded)
    same_state(loaded, model)


def test_custom_initializer_round_trip(backend, tmp_path):
    """A callable init is not saved; the weights are, so the model loads."""
    X, _ = toy()
    model = sn.Sequential([sn.Dense(5, 3, init=lambda rng, i, o: rng.uniform(-1, 1, (i, o)))],
                          seed=0, backend=backend)
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz", backend=backend)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(model.copy().predict(X), model.predict(X))


def test_saved_file_is_an_ordinary_file(tmp_path):
    """Any path works (no .npz appended), and the file gets the permissions any new
    file gets (the temporary file it is written through is private)."""
    path = tmp_path / "model.bin"
    make().save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    assert repr(sn.load(path)) == repr(make())
    (tmp_path / "plain").write_bytes(b"")
    assert (path.stat().st_mode & 0o777) == ((tmp_path / "plain").stat().st_mode & 0o777)


def test_save_overwrites(tmp_path):
    X, _ = toy()
    path = tmp_path / "m.npz"
    make(seed=1).save(path)
    second = make(seed=2)
    second.save(path)
    np.testing.assert_array_equal(sn.load(path).predict(X), second.predict(X))
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_loads_onto_the_current_backend(backend, tmp_path):
    make("numpy").save(tmp_path / "m.npz")
    with sn.use_backend(backend):
        assert sn.load(tmp_path / "m.npz").ops.name == backend


def test_saved_on_backend_loads_on_numpy(backend, tmp_path):
    """A model saved on numba (or cupy, or numpy) loads and trains on numpy."""
    X, y = toy()
    model = make(backend, "float64", dropout=0)
    train(model, X, y, sn.Adam(0.01))
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.ops.name == "numpy"
    assert all(isinstance(p, np.ndarray) for p in loaded.parameters())
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-10, atol=1e-12)
    h1, h2 = train(loaded, X, y), train(model, X, y)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-8)


# --- atomic saves --------------------------------------------------------------

def failing_savez(written):
    """A numpy.savez that writes part of the file, then fails (a full disk)."""
    def savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip file")
        written.append(True)
        raise OSError(28, "No space left on device")
    return savez


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    X, _ = toy()
    path = tmp_path / "m.npz"
    first = make(seed=1)
    first.save(path)
    before = path.read_bytes()
    written = []
    monkeypatch.setattr(snio.numpy, "savez", failing_savez(written))
    with pytest.raises(OSError, match="No space left"):
        make(seed=2).save(path)
    monkeypatch.undo()
    assert written                                          # the fake did run
    assert path.read_bytes() == before
    np.testing.assert_array_equal(sn.load(path).predict(X), first.predict(X))
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]        # no temporary file left


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(snio.numpy, "savez", failing_savez([]))
    with pytest.raises(OSError):
        make().save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        make().save(tmp_path / "no" / "such" / "m.npz")


# --- bad files -------------------------------------------------------------------

def load_error(path):
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        sn.load(path)
    return str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        sn.load(tmp_path / "nothere.npz")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    message = load_error(path)
    assert "not a scratchnet model file" in message
    assert "pickle" not in message          # never advise unpickling an unknown file


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    load_error(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file(tmp_path, fraction):
    good = tmp_path / "good.npz"
    make().save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[:int(len(data) * fraction)])
    assert "corrupt or truncated" in load_error(path)


def test_failed_load_closes_the_file(tmp_path):
    path = tmp_path / "truncated.npz"
    make().save(path)
    path.write_bytes(path.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sn.load(path)
        except ValueError:
            pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_not_a_scratchnet_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    assert "not a scratchnet model file" in load_error(path)


def test_plain_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    load_error(path)


def test_wrong_format_and_newer_version(tmp_path):
    path = tmp_path / "m.npz"
    make().save(path)
    rewrite(path, lambda a: edit_config(a, lambda c: c.update(format="something-else")))
    assert "something-else" in load_error(path)
    make().save(path)
    rewrite(path, lambda a: edit_config(a, lambda c: c.update(version=99)))
    assert "newer" in load_error(path)


def test_broken_config(tmp_path):
    path = tmp_path / "m.npz"
    make().save(path)
    rewrite(path, lambda a: a.update(__config__=np.frombuffer(b"{not json", dtype=np.uint8)))
    load_error(path)
    make().save(path)
    rewrite(path, lambda a: edit_config(a, lambda c: c["layers"].append({"class": "Conv2D"})))
    assert "Conv2D" in load_error(path)


def test_array_shape_mismatches_config(tmp_path):
    path = tmp_path / "m.npz"
    make().save(path)
    rewrite(path, lambda a: a.update({"param:0.W": np.zeros((5, 7), np.float32)}))
    assert re.search(r"param:0.W.*\(5, 7\).*\(5, 8\)", load_error(path))


def test_missing_and_extra_arrays(tmp_path):
    path = tmp_path / "m.npz"
    make().save(path)
    rewrite(path, lambda a: a.pop("buffer:2.running_var"))
    assert "buffer:2.running_var" in load_error(path)
    make().save(path)
    rewrite(path, lambda a: a.update({"param:9.W": np.zeros(2)}))
    assert "param:9.W" in load_error(path)


def test_config_layers_mismatch_arrays(tmp_path):
    """The config says Dense(5, 6); the arrays are of Dense(5, 8)."""
    path = tmp_path / "m.npz"
    make().save(path)

    def shrink(config):
        config["layers"][0]["config"]["n_out"] = 6
    rewrite(path, lambda a: edit_config(a, shrink))
    load_error(path)


def test_optimizer_state_mismatch(tmp_path):
    X, y = toy()
    model = make()
    train(model, X, y, sn.Adam())
    path = tmp_path / "m.npz"
    model.save(path)
    rewrite(path, lambda a: a.pop("opt:0.W:m"))
    assert "opt:0.W:m" in load_error(path)
    model.save(path)
    rewrite(path, lambda a: a.update({"opt:0.W:v": np.zeros((2, 2), np.float32)}))
    assert "opt:0.W:v" in load_error(path)
