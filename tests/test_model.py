"""Sequential: training modes, reproducibility, learning, backend parity,
History, evaluate/predict, schedules, moving between backends, divergence."""

import time
import warnings

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import BACKENDS, BackendUnavailableError, get_ops
from conftest import to_host as host

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def toy(n=40, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X @ rng.normal(size=(d, c))).argmax(axis=1)
    return X, y


def mlp(backend="numpy", dtype="float64", seed=0, d=6, c=3, dropout=0.0, batchnorm=False):
    layers = [sn.Dense(d, 8, init="he"), sn.ReLU()]
    if batchnorm:
        layers.append(sn.BatchNorm(8))
    layers += [sn.Residual([sn.Dense(8, 8), sn.Tanh()])]
    if dropout:
        layers.append(sn.Dropout(dropout))
    layers += [sn.Dense(8, c)]
    return sn.Sequential(layers, seed=seed, dtype=dtype, backend=backend)


def params(model):
    return {path: host(getattr(layer, name)).copy() for path, layer, name in
            model.named_parameters()}


def assert_same_params(a, b, rtol=0.0, atol=0.0):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
        else:
            np.testing.assert_allclose(pa[k], pb[k], rtol=rtol, atol=atol, err_msg=k)


def metrics(hist):
    return {k: v for k, v in hist.history.items() if k in METRICS}


@pytest.fixture(scope="module")
def digits():
    return sn.datasets.load_digits()


# --- per_sample, minibatch, full_batch -------------------------------------------

@pytest.mark.parametrize("loss, target", [
    (sn.SoftmaxCrossEntropy, "labels"), (sn.SoftmaxCrossEntropy, "one_hot"),
    (sn.MSE, "labels"), (sn.MSE, "real"),
])
@pytest.mark.parametrize("batch_size", [40, 8])
def test_per_sample_equals_minibatch(backend, loss, target, batch_size):
    X, y = toy()
    y = {"labels": y, "one_hot": np.eye(3)[y],
         "real": np.random.default_rng(1).normal(size=(40, 3))}[target]
    a, b = mlp(backend, seed=1), mlp(backend, seed=1)
    assert_same_params(a, b)
    ha = a.fit(X, y, loss=loss(), optimizer=sn.SGD(0.1, momentum=0.9), epochs=1,
               batch_size=batch_size, mode="minibatch", shuffle=False)
    hb = b.fit(X, y, loss=loss(), optimizer=sn.SGD(0.1, momentum=0.9), epochs=1,
               batch_size=batch_size, mode="per_sample", shuffle=False)
    assert_same_params(a, b, rtol=1e-12, atol=1e-14)
    for k in metrics(ha):
        np.testing.assert_allclose(hb.history[k], ha.history[k], rtol=1e-12, err_msg=k)
    assert metrics(ha).keys() == metrics(hb).keys()
    assert any((p != q).any() for p, q in zip(params(a).values(), params(mlp(seed=1)).values()))


def test_per_sample_equals_minibatch_when_shuffled(backend):
    X, y = toy(seed=2)
    a, b = mlp(backend, seed=2), mlp(backend, seed=2)
    opt = dict(loss=sn.SoftmaxCrossEntropy(), epochs=2, batch_size=16, shuffle=True)
    ha = a.fit(X, y, optimizer=sn.Adam(0.01), mode="minibatch", **opt)
    hb = b.fit(X, y, optimizer=sn.Adam(0.01), mode="per_sample", **opt)
    assert_same_params(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hb.history["loss"], ha.history["loss"], rtol=1e-12)


def test_per_sample_refuses_batchnorm(backend):
    X, y = toy()
    model = mlp(backend, batchnorm=True)
    with pytest.raises(ValueError, match="BatchNorm"):
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), mode="per_sample")


class Counter:
    def __init__(self):
        self.batches, self.epochs = 0, 0

    def on_batch_end(self, model, step):
        self.batches += 1

    def on_epoch_end(self, model, epoch, logs):
        self.epochs += 1


def test_full_batch_is_one_step_per_epoch(backend):
    X, y = toy()
    model, counter, opt = mlp(backend), Counter(), sn.Adam(0.01)
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=opt, epochs=3, batch_size=4,
              mode="full_batch", callbacks=[counter])
    assert counter.batches == 3 and counter.epochs == 3
    assert all(st["step"] == 3 for st in opt.state.values())
    # the same as one mini-batch holding the whole set, without shuffling
    ref = mlp(backend)
    ref.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=3,
            batch_size=len(X), shuffle=False)
    assert_same_params(model, ref, rtol=1e-12, atol=1e-14)


def test_minibatch_steps_per_epoch(backend):
    X, y = toy(n=42)
    model, counter = mlp(backend), Counter()
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2,
              batch_size=10, callbacks=[counter])
    assert counter.batches == 2 * 5          # 4 full batches and one of 2


def test_one_step_equals_manual_forward_backward_step(backend):
    X, y = toy()
    a, b = mlp(backend, seed=3), mlp(backend, seed=3)
    a.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.5), epochs=1,
          mode="full_batch")
    loss = sn.SoftmaxCrossEntropy()
    loss.forward(b.forward(X, training=True), y)
    b.backward(loss.backward())
    sn.SGD(0.5).step(b)
    assert_same_params(a, b, rtol=1e-12, atol=1e-14)


# --- reproducibility ---------------------------------------------------------------

def test_seeded_runs_are_reproducible(backend):
    X, y = toy(n=60)
    Xv, yv = toy(n=20, seed=9)

    def run(seed):
        model = mlp(backend, dtype="float32", seed=seed, dropout=0.3, batchnorm=True)
        hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01),
                         epochs=3, batch_size=16, validation_data=(Xv, yv))
        return metrics(hist), params(model)

    (h1, p1), (h2, p2), (h3, p3) = run(5), run(5), run(6)
    assert h1 == h2
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
    assert h1["loss"] != h3["loss"]
    assert any((p1[k] != p3[k]).any() for k in p1)


def test_different_seeds_different_weights():
    a, b = mlp(seed=0), mlp(seed=1)
    assert all((params(a)[k] != params(b)[k]).any() for k in params(a) if k.endswith("W"))


# --- learning --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_learns_digits(backend, digits, dtype):
    (X, y), (Xt, yt) = digits
    model = sn.Sequential([sn.Dense(64, 64, init="he"), sn.ReLU(), sn.Dropout(0.1),
                           sn.Dense(64, 10)], seed=0, dtype=dtype, backend=backend)
    model.copy().fit(X[:64], y[:64], loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(),
                     epochs=1, batch_size=32, validation_data=(Xt[:40], yt[:40]))  # warm-up
    t0 = time.perf_counter()
    hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(1e-2), epochs=8,
                     batch_size=32, validation_data=(Xt, yt))
    elapsed = time.perf_counter() - t0
    assert hist.history["val_accuracy"][-1] >= 0.9, hist.history
    assert model.evaluate(Xt, yt)["accuracy"] >= 0.9
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert elapsed < 5.0, f"{elapsed:.1f} s on {backend}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backend_matches_numpy_loss_history(backend, digits, dtype):
    (X, y), (Xt, yt) = digits
    X, y = X[:300], y[:300]

    def run(name):
        model = sn.Sequential([sn.Dense(64, 32), sn.Tanh(), sn.BatchNorm(32),
                               sn.Dense(32, 16), sn.LeakyReLU(0.05), sn.Dense(16, 10)],
                              seed=7, dtype=dtype, backend=name)
        hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(),
                         optimizer=sn.SGD(0.05, momentum=0.9, nesterov=True), epochs=3,
                         batch_size=32, validation_data=(Xt, yt))
        return metrics(hist), params(model)

    (h, p), (href, pref) = run(backend), run("numpy")
    rtol = 1e-8 if dtype == "float64" else 1e-3
    for k in href:
        np.testing.assert_allclose(h[k], href[k], rtol=rtol, atol=rtol, err_msg=k)
    for k in pref:
        np.testing.assert_allclose(p[k], pref[k], rtol=rtol * 10, atol=rtol * 10, err_msg=k)


# --- History, validation, evaluate, predict -----------------------------------------

def test_history_keys(backend):
    X, y = toy()
    hist = mlp(backend).fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1),
                            epochs=3)
    assert set(hist.history) == {"loss", "accuracy", "lr", "time"}
    assert hist.epoch == [0, 1, 2]
    assert all(len(v) == 3 for v in hist.history.values())
    assert all(isinstance(v, float) for v in hist.history["loss"] + hist.history["accuracy"])
    assert hist.history["lr"] == [0.1] * 3
    assert all(0.0 <= a <= 1.0 for a in hist.history["accuracy"])
    assert "History" in repr(hist)


def test_history_keys_with_validation_and_regression(backend):
    X, y = toy()
    Xv, yv = toy(n=10, seed=3)
    hist = mlp(backend).fit(X, y, loss="softmax_cross_entropy", optimizer="sgd", epochs=2,
                            validation_data=(Xv, yv))
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    rng = np.random.default_rng(0)
    hist = mlp(backend, c=2).fit(X, rng.normal(size=(40, 2)), loss=sn.MSE(),
                                 optimizer=sn.SGD(0.01), epochs=2,
                                 validation_data=(Xv, rng.normal(size=(10, 2))))
    assert set(hist.history) == {"loss", "val_loss", "lr", "time"}   # no accuracy for regression


def test_validation_metrics_equal_evaluate(backend):
    X, y = toy(n=50)
    Xv, yv = toy(n=17, seed=4)
    model = mlp(backend, batchnorm=True, dropout=0.2)
    loss = sn.SoftmaxCrossEntropy()
    hist = model.fit(X, y, loss=loss, optimizer=sn.Adam(0.01), epochs=3, batch_size=8,
                     validation_data=(Xv, yv))
    ev = model.evaluate(Xv, yv, loss=loss)
    assert ev["loss"] == pytest.approx(hist.history["val_loss"][-1], rel=1e-12)
    assert ev["accuracy"] == pytest.approx(hist.history["val_accuracy"][-1], rel=1e-12)
    pred = model.predict(Xv)
    assert ev["accuracy"] == pytest.approx((pred.argmax(axis=1) == yv).mean())
    assert ev["loss"] == pytest.approx(sn.SoftmaxCrossEntropy().forward(pred, yv), rel=1e-12)


def test_evaluate_and_predict_shapes(backend):
    X, y = toy(n=23)
    model = mlp(backend, dtype="float32")
    pred = model.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == (23, 3) and pred.dtype == np.float32
    np.testing.assert_allclose(model.predict(X, batch_size=5), pred, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.predict(X[:1]).shape, (1, 3))
    classes = model.predict_classes(X)
    assert classes.shape == (23,) and classes.dtype.kind == "i"
    np.testing.assert_array_equal(classes, pred.argmax(axis=1))
    ev = model.evaluate(X, y, loss=sn.SoftmaxCrossEntropy())
    assert set(ev) == {"loss", "accuracy"} and all(isinstance(v, float) for v in ev.values())
    assert set(model.evaluate(X, y)) == {"accuracy"}
    assert model.evaluate(X, y)["accuracy"] == pytest.approx((classes == y).mean())
    ev_small = model.evaluate(X, y, loss=sn.SoftmaxCrossEntropy(), batch_size=4)
    assert ev_small["loss"] == pytest.approx(ev["loss"], rel=1e-5)
    assert model.forward(X).shape == (23, 3)
    dX = model.backward(model.ops.asarray(np.ones((23, 3), np.float32)))
    assert dX.shape == (23, 6)


def test_predict_is_evaluation_mode(backend):
    X, _ = toy()
    model = mlp(backend, dropout=0.5)
    np.testing.assert_array_equal(model.predict(X), model.predict(X))
    np.testing.assert_allclose(model.predict(X), host(model.forward(X)), rtol=1e-12)


def test_progress_output(backend, capsys):
    X, y = toy()
    mlp(backend).fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2,
                     progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "loss" in err
    mlp(backend).fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=2)
    assert capsys.readouterr().err == ""


# --- learning-rate schedules ----------------------------------------------------------

def test_cosine_schedule_sets_lr_per_epoch(backend):
    X, y = toy()
    sched = sn.schedules.cosine(0.2, epochs=4)
    snapshots = []

    class Snap:
        def on_epoch_end(self, model, epoch, logs):
            snapshots.append(params(model))

    opt = sn.SGD(0.123)
    hist = mlp(backend).fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=opt, epochs=4,
                            batch_size=10, lr_schedule=sched, callbacks=[Snap()])
    expected = [sched(e) for e in range(4)]
    assert hist.history["lr"] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.2) and expected[-1] > 0
    assert expected[0] > expected[1] > expected[2] > expected[3]
    assert opt.lr == pytest.approx(expected[-1])
    # every epoch, the last one included, moved the weights
    for before, after in zip(snapshots, snapshots[1:]):
        assert any((after[k] != before[k]).any() for k in before)


def test_schedule_is_applied_to_the_update(backend):
    """lr_schedule = constant c gives the same weights as a fixed lr c."""
    X, y = toy()
    a, b = mlp(backend), mlp(backend)
    a.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(1.0), epochs=2,
          lr_schedule=sn.schedules.constant(0.05))
    b.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.05), epochs=2)
    assert_same_params(a, b)


def test_bad_schedule(backend):
    X, y = toy()
    with pytest.raises(TypeError, match="lr_schedule"):
        mlp(backend).fit(X, y, loss=sn.MSE(), optimizer=sn.SGD(0.1), lr_schedule=0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        mlp(backend).fit(X, y, loss=sn.MSE(), optimizer=sn.SGD(0.1), lr_schedule=lambda e: -1.0)


# --- moving between backends -----------------------------------------------------------

def train_pair(start, dtype="float64", dropout=0.0):
    """Two identical models, both trained 2 epochs with Adam on ``start``."""
    X, y = toy(n=48)
    models = []
    for _ in range(2):
        model = mlp(start, dtype=dtype, seed=11, dropout=dropout, batchnorm=True)
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=2,
                  batch_size=16)
        models.append(model)
    return X, y, models


def continue_training(model, X, y):
    return model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=model.optimizer,
                     epochs=2, batch_size=16)


def test_to_other_backend_keeps_predictions_and_optimizer_state(backend):
    X, y, (moved, ref) = train_pair("numpy")
    before = moved.predict(X)
    state_before = {p: {k: host(v).copy() if k != "step" else v for k, v in st.items()}
                    for p, st in moved.optimizer.state.items()}
    assert moved.to(backend) is moved
    assert moved.ops is get_ops(backend)
    assert all(moved.ops.is_own_array(p) for p in moved.parameters())
    np.testing.assert_allclose(moved.predict(X), before, rtol=1e-12, atol=1e-14)
    for p, st in moved.optimizer.state.items():
        assert st["step"] == state_before[p]["step"]
        for k in ("m", "v"):
            assert moved.ops.is_own_array(st[k])
            np.testing.assert_array_equal(host(st[k]), state_before[p][k])
    h_moved, h_ref = continue_training(moved, X, y), continue_training(ref, X, y)
    tol = 0 if backend == "numpy" else 1e-9
    np.testing.assert_allclose(h_moved.history["loss"], h_ref.history["loss"], rtol=tol)
    assert_same_params(moved, ref, rtol=tol, atol=tol)
    moved.to("numpy")                                       # and back again
    np.testing.assert_allclose(moved.predict(X), ref.predict(X), rtol=tol, atol=tol)


def test_to_from_backend_and_back(backend):
    X, y, (moved, ref) = train_pair(backend, dtype="float32")
    moved.to("numpy").to(backend)
    np.testing.assert_array_equal(moved.predict(X), ref.predict(X))
    h_moved, h_ref = continue_training(moved, X, y), continue_training(ref, X, y)
    np.testing.assert_allclose(h_moved.history["loss"], h_ref.history["loss"], rtol=1e-6)
    assert_same_params(moved, ref, rtol=1e-5, atol=1e-6)


def test_to_same_backend_continues_identically_with_dropout(backend):
    """Moving a model (here onto the backend it is on) changes nothing, dropout's
    random stream included."""
    X, y, (moved, ref) = train_pair(backend, dropout=0.3)
    moved.to(backend)
    h_moved, h_ref = continue_training(moved, X, y), continue_training(ref, X, y)
    assert h_moved.history["loss"] == h_ref.history["loss"]
    assert_same_params(moved, ref)


def test_to_unknown_or_unavailable_backend():
    model = mlp()
    with pytest.raises(ValueError, match="tpu"):
        model.to("tpu")
    for name in BACKENDS:
        try:
            get_ops(name)
        except BackendUnavailableError:
            with pytest.raises(BackendUnavailableError):
                model.to(name)
            assert model.ops.name == "numpy"


# --- divergence, epochs=0 --------------------------------------------------------------

@pytest.mark.parametrize("loss", [sn.MSE, sn.SoftmaxCrossEntropy])
def test_divergence_raises(backend, loss):
    X, y = toy(n=64)
    model = mlp(backend, dtype="float32")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(sn.TrainingDivergedError, match="diverged"):
            model.fit(X, y, loss=loss(), optimizer=sn.SGD(lr=1e6), epochs=20, batch_size=8)
    assert issubclass(sn.TrainingDivergedError, FloatingPointError)


def test_epochs_zero_is_a_no_op(backend):
    X, y = toy()
    model, fresh = mlp(backend, dropout=0.2), mlp(backend, dropout=0.2)
    opt = sn.Adam(0.01)
    hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=opt, epochs=0)
    assert hist.history == {} and hist.epoch == []
    assert opt.state == {}
    assert_same_params(model, fresh)
    # and it did not advance any random stream: what follows is as without it
    h1 = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=2)
    h2 = fresh.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01), epochs=2)
    assert h1.history["loss"] == h2.history["loss"]
    assert_same_params(model, fresh)


def test_copy_does_not_share_weights_with_the_original(backend):
    X = np.random.default_rng(0).random((16, 4))
    y = np.arange(16) % 2
    m = sn.Sequential([sn.Dense(4, 3), sn.ReLU(), sn.Dense(3, 2)], seed=0, backend=backend)
    c = m.copy()
    before = [np.array(host(p)) for p in m.parameters()]
    c.fit(X, y, loss="softmax_cross_entropy", optimizer=sn.SGD(0.5), epochs=3, batch_size=4)
    for b, p in zip(before, m.parameters()):
        np.testing.assert_array_equal(b, host(p))


def test_buffer_reuse_survives_validation_and_callbacks(backend):
    """Validation must not switch the training loop's buffer reuse off, and a
    predict() from a callback must not return reused (overwritten) arrays."""
    X = np.random.default_rng(0).random((64, 6))
    y = np.arange(64) % 3
    model = sn.Sequential([sn.Dense(6, 8), sn.ReLU(), sn.Dense(8, 3)], seed=0, backend=backend)
    seen = []

    class Probe:
        def on_epoch_begin(self, m, epoch):
            seen.append(m.layers[0]._reuse)

        def on_epoch_end(self, m, epoch, logs):
            p = m.predict(X, batch_size=16)
            rows = np.concatenate([host(m.forward(X[i:i + 16])) for i in range(0, 64, 16)])
            np.testing.assert_allclose(p, rows, rtol=1e-6)
            assert len({p[i:i + 16].tobytes() for i in range(0, 64, 16)}) == 4

    model.fit(X, y, loss="softmax_cross_entropy", optimizer=sn.SGD(0.1), epochs=3,
              batch_size=8, validation_data=(X, y), callbacks=[Probe()])
    assert seen == [True, True, True]
    assert not any(layer._reuse for layer in model.layers)


def test_copy_with_another_seed_keeps_weights_and_changes_data_order():
    X = np.random.default_rng(0).random((32, 4))
    y = np.arange(32) % 2
    m = sn.Sequential([sn.Dense(4, 3), sn.ReLU(), sn.Dense(3, 2)], seed=0)
    a, b, c = m.copy(), m.copy(seed=0), m.copy(seed=7)
    for x, z in zip(m.parameters(), c.parameters()):
        np.testing.assert_array_equal(x, z)
    runs = [x.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=1, batch_size=4)
            for x in (a, b, c)]
    assert runs[0].history["loss"] == runs[1].history["loss"]
    assert runs[0].history["loss"] != runs[2].history["loss"]
