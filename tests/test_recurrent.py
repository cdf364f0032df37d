"""Sequence models: RNN, LSTM, GRU and Embedding -- gradients by central
differences, every backend against the NumPy reference (layers and the
recurrent primitives themselves), the per-sample loop, Dense and
SoftmaxCrossEntropy on sequences, save/load, initialisation and errors."""

import math

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.backends import get_ops
from conftest import to_host as host

LOSS = sn.SoftmaxCrossEntropy()


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def seqs(n, steps, features, seed=0):
    return np.random.default_rng(seed).normal(size=(n, steps, features))


def labels(shape, classes=3, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=shape)


def make(kind, f, h, return_sequences=False):
    if kind == "rnn-tanh":
        return sn.RNN(f, h, return_sequences=return_sequences)
    if kind == "rnn-relu":
        return sn.RNN(f, h, activation="relu", return_sequences=return_sequences)
    if kind == "lstm":
        return sn.LSTM(f, h, return_sequences=return_sequences)
    if kind == "lstm-forget1":
        return sn.LSTM(f, h, return_sequences=return_sequences, forget_bias=1.0)
    return sn.GRU(f, h, return_sequences=return_sequences)


KINDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]


def check(model, X, y, **kwargs):
    result = sn.gradcheck(model, LOSS, X, y, **kwargs)
    assert result.passed, result
    return result


# --- gradients by central differences (float64) ---------------------------------------

@pytest.mark.parametrize("steps", [1, 7])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_gradcheck(backend, kind, steps, return_sequences):
    # return_sequences: a Dense on (N, T, H) and SoftmaxCrossEntropy on (N, T, C)
    layer = make(kind, 3, 4, return_sequences)
    model = sn.Sequential([layer, sn.Dense(4, 3)], seed=0, dtype="float64", backend=backend)
    y = labels((3, steps) if return_sequences else 3)
    result = check(model, seqs(3, steps, 3), y)
    assert set(result.errors) == {"0.W", "0.U", "0.b", "1.W", "1.b", "input"} | \
        ({"0.bU"} if kind == "gru" else set())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_stacked_recurrent_gradcheck(backend, kind):
    model = sn.Sequential([make(kind, 3, 5, return_sequences=True), make(kind, 5, 4),
                           sn.Dense(4, 3)], seed=1, dtype="float64", backend=backend)
    check(model, seqs(2, 6, 3, seed=3), labels(2))


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_one_gradcheck(backend, kind):
    model = sn.Sequential([make(kind, 2, 3, return_sequences=True), sn.Tanh(),
                           sn.Dense(3, 4)], seed=2, dtype="float64", backend=backend)
    check(model, seqs(1, 5, 2, seed=4), labels((1, 5), classes=4))


def test_lstm_with_forget_bias_gradcheck(backend):
    model = sn.Sequential([make("lstm-forget1", 3, 4), sn.Dense(4, 3)], seed=0,
                          dtype="float64", backend=backend)
    check(model, seqs(3, 5, 3), labels(3))


def test_embedding_gradcheck(backend):
    # ids repeat (the gradient rows of one id add up); no input gradient for ids
    ids = np.array([[0, 3, 3, 1, 5], [5, 5, 2, 0, 3]])
    model = sn.Sequential([sn.Embedding(6, 3), sn.LSTM(3, 4, return_sequences=True),
                           sn.Dense(4, 6)], seed=0, dtype="float64", backend=backend)
    result = check(model, ids, labels((2, 5), classes=6))
    assert "input" not in result.errors and "0.W" in result.errors


def test_tied_lstm_gradient_is_the_sum_over_its_uses(backend):
    lstm = sn.LSTM(4, 4, return_sequences=True)
    model = sn.Sequential([lstm, lstm, sn.Dense(4, 3)], seed=0, dtype="float64",
                          backend=backend)
    assert model.count_params() == lstm.count_params() + 4 * 3 + 3
    check(model, seqs(2, 4, 4), labels((2, 4)))


def test_dense_on_sequences_is_dense_on_every_step(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 5, 4))
    dense = sn.Dense(4, 2, activation="tanh")
    model = sn.Sequential([dense], seed=0, dtype="float64", backend=backend)
    Y = host(model.forward(X))
    dY = rng.normal(size=Y.shape)
    dX = host(model.backward(model.ops.asarray(dY)))
    W, b = host(dense.W), host(dense.b)
    np.testing.assert_allclose(Y, np.tanh(X @ W + b), rtol=1e-12, atol=1e-12)
    dZ = dY * (1 - Y ** 2)
    np.testing.assert_allclose(dX, dZ @ W.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(dense.dW), np.einsum("ntf,nto->fo", X, dZ), rtol=1e-12)
    np.testing.assert_allclose(host(dense.db), dZ.sum(axis=(0, 1)), rtol=1e-12)
    check(sn.Sequential([sn.Dense(4, 5), sn.ReLU(), sn.Dense(5, 3)], seed=0, dtype="float64",
                        backend=backend), X, labels((3, 5)))


def test_sequence_cross_entropy_is_the_mean_over_every_step(backend):
    rng = np.random.default_rng(0)
    ops = get_ops(backend)
    logits = rng.normal(size=(3, 4, 5))
    y = labels((3, 4), classes=5)
    loss = sn.SoftmaxCrossEntropy()
    value = loss.forward(ops.asarray(logits), y)
    flat = sn.SoftmaxCrossEntropy()
    want = flat.forward(ops.asarray(logits.reshape(12, 5)), y.reshape(12))
    assert value == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(host(loss.backward()), host(flat.backward()).reshape(3, 4, 5),
                               rtol=1e-12)


def test_accuracy_counts_per_step(backend):
    model = sn.Sequential([sn.LSTM(2, 4, return_sequences=True), sn.Dense(4, 3)], seed=0,
                          backend=backend)
    X, y = seqs(10, 6, 2), labels((10, 6))
    pred = model.predict_classes(X)
    assert pred.shape == (10, 6)
    got = model.evaluate(X, y, loss=LOSS)
    assert got["accuracy"] == pytest.approx((pred == y).mean(), abs=1e-12)
    # fit's accuracy is per step too (one epoch, one step: measured before the update)
    hist = model.fit(X, y, loss=LOSS, optimizer=sn.SGD(0.0), epochs=1, batch_size=10)
    assert hist.history["accuracy"][0] == pytest.approx((pred == y).mean(), abs=1e-12)


# --- every backend against the NumPy reference -----------------------------------------

def tolerances(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)


PRIMITIVE_CASES = [(3, 7, 5), (1, 1, 4), (2, 4, 1), (4, 9, 8)]     # N, T, H


def _primitive_inputs(kind, n, steps, h, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * h
    return (rng.normal(size=(n, steps, g)).astype(dtype),
            (rng.normal(size=(h, g)) / math.sqrt(h)).astype(dtype),
            rng.normal(size=g).astype(dtype))


def _run_primitives(ops, kind, XW, U, bU, dH, return_sequences, activation):
    a = [ops.asarray(x) for x in (XW, U, bU, dH)]
    if kind == "rnn":
        out, ctx = ops.rnn_forward(a[0], a[1], activation, return_sequences)
        grads = ops.rnn_backward(a[3], ctx, a[1])
    elif kind == "lstm":
        out, ctx = ops.lstm_forward(a[0], a[1], return_sequences)
        grads = ops.lstm_backward(a[3], ctx, a[1])
    else:
        out, ctx = ops.gru_forward(a[0], a[1], a[2], return_sequences)
        grads = ops.gru_backward(a[3], ctx, a[1])
    return [host(out)] + [host(x) for x in grads]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind, activation", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None),
                                              ("gru", None)])
@pytest.mark.parametrize("case", PRIMITIVE_CASES)
def test_recurrent_primitives_match_numpy(ops, ref, case, kind, activation, return_sequences,
                                          dtype):
    n, steps, h = case
    XW, U, bU = _primitive_inputs(kind, n, steps, h, dtype)
    shape = (n, steps, h) if return_sequences else (n, h)
    dH = np.random.default_rng(5).normal(size=shape).astype(dtype)
    want = _run_primitives(ref, kind, XW, U, bU, dH, return_sequences, activation)
    got = _run_primitives(ops, kind, XW, U, bU, dH, return_sequences, activation)
    names = ["H_out", "dXW", "dU"] + (["dbU"] if kind == "gru" else []) + ["dh_norms"]
    assert len(got) == len(names)
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * h
    expected_shapes = {"H_out": shape, "dXW": (n, steps, g), "dU": (h, g), "dbU": (g,),
                       "dh_norms": (steps,)}
    for value, ref_value, name in zip(got, want, names):
        assert value.shape == expected_shapes[name], name
        assert value.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(value, ref_value, err_msg=name, **tolerances(dtype))


def test_reference_primitives_against_a_plain_loop(ref):
    """The NumPy reference's LSTM against the equations written out per sample."""
    n, steps, h = 2, 4, 3
    XW, U, _ = _primitive_inputs("lstm", n, steps, h, "float64", seed=3)
    out, _ = ref.lstm_forward(XW, U, True)

    def sig(x):
        return 1 / (1 + np.exp(-x))
    for s in range(n):
        hs, c = np.zeros(h), np.zeros(h)
        for t in range(steps):
            a = XW[s, t] + hs @ U
            i, f, g, o = sig(a[:h]), sig(a[h:2 * h]), np.tanh(a[2 * h:3 * h]), sig(a[3 * h:])
            c = f * c + i * g
            hs = o * np.tanh(c)
            np.testing.assert_allclose(out[s, t], hs, rtol=1e-13, atol=1e-15)


def test_dh_norms_through_time(backend):
    # only the last step has an output gradient: the norm at T-1 is ||dH|| itself
    model = sn.Sequential([sn.RNN(2, 3)], seed=0, dtype="float64", backend=backend)
    Y = model.forward(seqs(4, 6, 2))
    dY = np.random.default_rng(1).normal(size=Y.shape)
    model.backward(model.ops.asarray(dY))
    norms = host(model.layers[0].dh_norms)
    assert norms.shape == (6,)
    assert norms[-1] == pytest.approx(np.linalg.norm(dY), rel=1e-12)
    assert (norms > 0).all()


RECURRENT_STACKS = {
    "rnn": lambda: [sn.RNN(3, 5, return_sequences=True), sn.RNN(5, 4, activation="relu")],
    "lstm": lambda: [sn.LSTM(3, 5, return_sequences=True), sn.LSTM(5, 4)],
    "gru": lambda: [sn.GRU(3, 4)],
    "embedding": lambda: [sn.Embedding(7, 3), sn.GRU(3, 4, return_sequences=True),
                          sn.LSTM(4, 4)],
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stack", sorted(RECURRENT_STACKS))
def test_layers_match_numpy_backend(backend, stack, dtype):
    models = [sn.Sequential([*RECURRENT_STACKS[stack](), sn.Dense(4, 3)], seed=7, dtype=dtype,
                            backend=b) for b in ("numpy", backend)]
    X = labels((4, 6), classes=7, seed=2) if stack == "embedding" else seqs(4, 6, 3, seed=2)
    y = labels(4)
    tol = tolerances(dtype)
    outs = []
    for m in models:
        out = m.forward(X, training=True)
        LOSS.forward(out, y)
        m.backward(LOSS.backward())
        outs.append(host(out))
    np.testing.assert_allclose(outs[1], outs[0], **tol)
    for (path, la, name), (_, lb, _) in zip(models[0].named_parameters(),
                                            models[1].named_parameters()):
        np.testing.assert_allclose(host(getattr(lb, "d" + name)), host(getattr(la, "d" + name)),
                                   err_msg=f"d{path}", **tol)


def _lstm_model(backend, dtype="float64"):
    return sn.Sequential([sn.LSTM(3, 5, return_sequences=True), sn.GRU(5, 4), sn.Dense(4, 3)],
                         seed=3, dtype=dtype, backend=backend)


def test_per_sample_equals_minibatch(backend):
    X, y = seqs(24, 5, 3, seed=6), labels(24)
    params = []
    for mode in ("per_sample", "minibatch"):
        model = _lstm_model(backend)
        model.fit(X, y, loss=LOSS, optimizer=sn.SGD(lr=0.5), epochs=2, batch_size=8, mode=mode,
                  shuffle=False)
        params.append(host(model.flat_parameters()))
    np.testing.assert_allclose(params[0], params[1], rtol=0, atol=1e-12)
    assert np.abs(params[0] - host(_lstm_model(backend).flat_parameters())).max() > 1e-3


def test_per_sample_equals_minibatch_on_sequence_labels(backend):
    X, y = seqs(12, 4, 3, seed=6), labels((12, 4))
    params = []
    for mode in ("per_sample", "minibatch"):
        model = sn.Sequential([sn.LSTM(3, 4, return_sequences=True), sn.Dense(4, 3)], seed=0,
                              dtype="float64", backend=backend)
        model.fit(X, y, loss=LOSS, optimizer=sn.SGD(lr=0.5), epochs=1, batch_size=6, mode=mode,
                  shuffle=False)
        params.append(host(model.flat_parameters()))
    np.testing.assert_allclose(params[0], params[1], rtol=0, atol=1e-12)


# --- training, saving, initialisation ------------------------------------------------------

def test_an_lstm_learns_a_sequence_task():
    # class = the sign pattern of the sum of the first and of the last step
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 6, 2))
    y = (X[:, 0].sum(axis=1) > 0) * 2 + (X[:, -1].sum(axis=1) > 0)
    model = sn.Sequential([sn.LSTM(2, 16), sn.Dense(16, 4)], seed=0)
    before = model.evaluate(X, y, loss=LOSS)["accuracy"]
    model.fit(X, y, loss=LOSS, optimizer=sn.Adam(1e-2), epochs=30, batch_size=32)
    after = model.evaluate(X, y, loss=LOSS)["accuracy"]
    assert before < 0.5 and after > 0.9


def test_save_load_round_trip(backend, tmp_path):
    model = sn.Sequential([sn.Embedding(9, 4), sn.LSTM(4, 5, return_sequences=True,
                                                        forget_bias=1.0),
                           sn.GRU(5, 5, return_sequences=True), sn.RNN(5, 3, activation="relu"),
                           sn.Dense(3, 2)], seed=0, backend=backend)
    model.metadata["vocabulary"] = "abcdefghi"
    X, y = labels((16, 5), classes=9, seed=4), labels(16, classes=2)
    model.fit(X, y, loss=LOSS, optimizer=sn.Adam(1e-2), epochs=1, batch_size=8)
    path = tmp_path / "seq.npz"
    model.save(path)
    loaded = sn.load(path, backend=backend)
    assert loaded.get_config() == model.get_config()
    assert loaded.metadata == {"vocabulary": "abcdefghi"}
    assert loaded.layers[1].forget_bias == 1.0 and loaded.layers[3].activation == "relu"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    for m in (model, loaded):
        m.fit(X, y, loss=LOSS, optimizer=m.optimizer, epochs=1, batch_size=8)
    np.testing.assert_allclose(host(loaded.flat_parameters()), host(model.flat_parameters()),
                               rtol=1e-6, atol=1e-7)


def test_metadata_must_be_json(tmp_path):
    model = sn.Sequential([sn.LSTM(2, 3), sn.Dense(3, 2)], seed=0)
    model.metadata["bad"] = object()
    with pytest.raises(TypeError, match="model.metadata must hold JSON data"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_file_with_wrong_recurrent_shapes_is_refused(tmp_path):
    from scratchnet.io import read_file, write_file
    model = sn.Sequential([sn.LSTM(2, 3), sn.Dense(3, 2)], seed=0)
    model.save(tmp_path / "m.npz")
    config, arrays = read_file(tmp_path / "m.npz")
    config["layers"][0]["config"]["hidden_size"] = 4
    write_file(tmp_path / "bad.npz", config, arrays)
    with pytest.raises(ValueError, match=r"param:0\.W has shape \(2, 12\) but the config's LSTM "
                                         r"needs \(2, 16\)"):
        sn.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("kind, gates", [("rnn-tanh", 1), ("lstm", 4), ("gru", 3)])
def test_pytorch_initialisation(kind, gates):
    h = 50
    layer = make(kind, 7, h)
    sn.Sequential([layer], seed=0)
    bound = 1 / math.sqrt(h)
    names = ("W", "U", "b", "bU") if kind == "gru" else ("W", "U", "b")
    assert layer.param_names == names
    shapes = {"W": (7, gates * h), "U": (h, gates * h), "b": (gates * h,), "bU": (gates * h,)}
    for name in names:
        value = host(getattr(layer, name))
        assert value.shape == shapes[name]
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.9 * bound
        assert abs(value.mean()) < 0.1 * bound     # uniform around 0
    assert type(layer).state_shapes(layer.get_config()) == {n: shapes[n] for n in names}


def test_forget_bias_option():
    plain, forget = sn.LSTM(3, 6), sn.LSTM(3, 6, forget_bias=1.0)
    for layer in (plain, forget):
        sn.Sequential([layer], seed=0)
    b0, b1 = host(plain.b), host(forget.b)
    np.testing.assert_array_equal(b1[6:12], 1.0)
    np.testing.assert_array_equal(b1[:6], b0[:6])        # the other gates as PyTorch's
    np.testing.assert_array_equal(b1[12:], b0[12:])
    assert np.abs(b0[6:12]).max() <= 1 / math.sqrt(6)
    assert "forget_bias" not in plain.get_config() and forget.get_config()["forget_bias"] == 1.0


def test_embedding_initialisation_and_lookup(backend):
    emb = sn.Embedding(50, 8)
    model = sn.Sequential([emb], seed=0, backend=backend)
    W = host(emb.W)
    assert W.shape == (50, 8) and 0.8 < W.std() < 1.2      # N(0, 1), as PyTorch
    ids = np.array([[3, 0, 49], [3, 3, 7]])
    np.testing.assert_array_equal(model.predict(ids), W[ids])


def test_integer_ids_reach_the_embedding_exactly():
    emb = sn.Embedding(10, 2)
    model = sn.Sequential([emb, sn.LSTM(2, 3)], seed=0)
    # 2**24 + 1 is not a float32: a cast to the model's dtype would change the id
    X = model._input(np.array([[2 ** 24 + 1, 0]]))
    assert X.dtype == np.int64 and int(X[0, 0]) == 2 ** 24 + 1
    with pytest.raises(ValueError, match=rf"id {2 ** 24 + 1} at X\[0, 0\] is out of range"):
        model.predict(np.array([[2 ** 24 + 1, 0]]))
    small = sn.Sequential([sn.Embedding(10, 2)], seed=0)      # any integer dtype
    np.testing.assert_array_equal(small.predict(np.array([[9, 0]], dtype=np.uint8)),
                                  host(small.layers[0].W)[[[9, 0]]])
    # whole numbers given as floats are ids too
    np.testing.assert_array_equal(model._input(np.array([[3.0, 1.0]])), [[3, 1]])


def test_summary_of_a_character_model():
    model = sn.Sequential([sn.Embedding(60, 16), sn.LSTM(16, 32, return_sequences=True),
                           sn.Dense(32, 60)], seed=0)
    text = model.summary(input_shape=(100,))
    assert "(N, 100, 16)" in text and "(N, 100, 32)" in text and "(N, 100, 60)" in text
    assert f"total parameters: {60 * 16 + 16 * 128 + 32 * 128 + 128 + 32 * 60 + 60:,}" in text


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 9, 1]]), r"layer 0 \(Embedding\): id 9 at X\[0, 1\] is out of range \[0, 9\)"),
    (np.array([[0, 1], [-1, 2]]), r"id -1 at X\[1, 0\] is out of range \[0, 9\)"),
])
def test_embedding_ids_out_of_range(backend, bad, message):
    model = sn.Sequential([sn.Embedding(9, 2), sn.LSTM(2, 2), sn.Dense(2, 2)], seed=0,
                          backend=backend)
    with pytest.raises(ValueError, match=message):
        model.predict(bad)
    with pytest.raises(ValueError, match=message):
        model.fit(bad, np.zeros(len(bad), dtype=int), loss=LOSS, optimizer=sn.SGD(0.1))


def test_embedding_refuses_ids_that_are_not_integers(backend):
    model = sn.Sequential([sn.Embedding(9, 2), sn.Dense(2, 2)], seed=0, backend=backend)
    with pytest.raises(ValueError, match=r"X must hold integer ids, but X\[0, 1\] is 2\.5"):
        model.predict(np.array([[1.0, 2.5]]))
    with pytest.raises(ValueError, match=r"integer ids, but X\[0, 0\] is nan"):
        model.predict(np.array([[np.nan, 2.0]]))
    with pytest.raises(TypeError, match="integer ids, got booleans"):
        model.predict(np.array([[True, False]]))
    with pytest.raises(TypeError, match=r"X must be numeric.*'a'"):
        model.predict([["a", "b"]])
    layer = model.layers[0]     # called directly, outside a model
    with pytest.raises(ValueError, match=r"input of layer 0 \(Embedding\) must hold integer ids"):
        layer.forward(np.array([[0.5]]))


@pytest.mark.parametrize("make_layer", [lambda: sn.LSTM(3, 4), lambda: sn.GRU(3, 4),
                                        lambda: sn.RNN(3, 4)])
def test_shape_errors_name_the_layer(backend, make_layer):
    layer = make_layer()
    name = type(layer).__name__
    model = sn.Sequential([layer, sn.Dense(4, 2)], seed=0, backend=backend)
    with pytest.raises(ValueError, match=rf"layer 0 \({name}\) expects 3 features per time step "
                                         rf"but gets 5 \(input \(N, 6, 5\)\)"):
        model.predict(np.zeros((2, 6, 5)))
    with pytest.raises(ValueError, match=rf"layer 0 \({name}\) expects sequences \(N, T, 3\), "
                                         rf"batch first, but gets \(N, 3\) .*reshape X to "
                                         rf"\(N, 1, features\)"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=rf"\({name}\) needs at least one time step"):
        model.predict(np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match=rf"layer 1 \(Dense\) expects 5 input features but the "
                                         rf"layer before it gives 4"):
        sn.Sequential([make_layer(), sn.Dense(5, 2)]).summary(input_shape=(6, 3))


def test_sequence_layers_that_do_not_chain():
    with pytest.raises(ValueError, match=r"layer 1 \(LSTM\) expects sequences \(N, T, 4\), "
                                         r"batch first, but gets \(N, 4\)"):
        sn.Sequential([sn.LSTM(3, 4), sn.LSTM(4, 4)]).summary(input_shape=(5, 3))
    with pytest.raises(ValueError, match=r"layer 1 \(GRU\) expects 6 features per time step "
                                         r"but gets 4"):
        sn.Sequential([sn.Embedding(10, 4), sn.GRU(6, 2)]).summary(input_shape=(5,))


def test_sequence_labels_must_match_the_steps(backend):
    model = sn.Sequential([sn.LSTM(2, 3, return_sequences=True), sn.Dense(3, 4)], seed=0,
                          backend=backend)
    X = seqs(5, 6, 2)
    with pytest.raises(ValueError, match=r"one integer label per time step, shape \(N, T\) = "
                                         r"\(5, 6\) .*got shape \(5,\)"):
        model.fit(X, labels(5), loss=LOSS, optimizer=sn.SGD(0.1))
    with pytest.raises(ValueError, match=r"contains label 4, out of range for 4 classes"):
        model.evaluate(X, np.full((5, 6), 4), loss=LOSS)


def test_backward_with_a_wrong_gradient_shape(backend):
    model = sn.Sequential([sn.GRU(2, 3, return_sequences=True)], seed=0, backend=backend)
    model.forward(seqs(2, 4, 2))
    layer = model.layers[0]
    with pytest.raises(ValueError, match=r"layer 0 \(GRU\): dY has shape \(2, 3\), the forward "
                                         r"output had shape \(2, 4, 3\)"):
        layer.backward(model.ops.zeros((2, 3), "float32"))


@pytest.mark.parametrize("call, exc, message", [
    (lambda: sn.LSTM(0, 3), ValueError, "LSTM input_size must be > 0"),
    (lambda: sn.GRU(3, 2.5), TypeError, "GRU hidden_size must be an integer"),
    (lambda: sn.RNN(3, 2, activation="sigmoid"), ValueError,
     r"RNN activation must be one of \('tanh', 'relu'\), got 'sigmoid'"),
    (lambda: sn.LSTM(3, 2, return_sequences="yes"), TypeError,
     "LSTM return_sequences must be True or False"),
    (lambda: sn.LSTM(3, 2, forget_bias=float("nan")), ValueError, "LSTM forget_bias"),
    (lambda: sn.Embedding(0, 3), ValueError, "Embedding num_embeddings must be > 0"),
    (lambda: sn.Embedding(5, -1), ValueError, "Embedding dim must be > 0"),
])
def test_argument_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# --- diagnostics: the gradient through time -------------------------------------------------

def test_diagnostics_record_the_gradient_through_time(tmp_path):
    from scratchnet.diagnostics import Recorder
    X, y = sn.datasets.adding_problem(64, 30, seed=0)
    model = sn.Sequential([sn.LSTM(2, 6, return_sequences=True), sn.RNN(6, 8), sn.Dense(8, 1)],
                          seed=0)
    seen = []

    class Keep(sn.Callback):
        def on_batch_end(self, model, step):
            seen.append(host(model.layers[1].dh_norms).astype(np.float64))
    hist = model.fit(X, y, loss=sn.MSE(), optimizer=sn.SGD(0.01), epochs=1, batch_size=16,
                     callbacks=[Keep()], diagnostics=Recorder(every=1))
    diag = hist.diagnostics
    kinds = {info["layer"]: info["kind"] for info in diag.layers}
    assert kinds == {0: "recurrent", 1: "recurrent", 2: "dense"}
    g = diag.epochs[-1]["layers"][1]["grad_through_time"]
    assert len(g) == 30
    np.testing.assert_allclose(g, np.mean(seen, axis=0), rtol=1e-6)
    assert len(diag.epochs[-1]["layers"][0]["grad_through_time"]) == 30
    # the tanh RNN's gradient vanishes over 30 steps at its initial weights; the
    # LSTM below it gets gradient at every step (return_sequences) and is not flagged
    assert g[0] < 1e-3 * g[-1]
    problems = [p for p in diag.problems if p.kind == "vanishing_through_time"]
    assert [p.layer for p in problems] == [1]
    assert "layer 1 (RNN 6->8): the gradient reaching its first time step" in diag.summary()
    assert "LSTM or GRU instead of a plain RNN" in diag.summary()
    pytest.importorskip("matplotlib")
    written = diag.plot(tmp_path)
    assert str(tmp_path / "grad_through_time.png") in written
