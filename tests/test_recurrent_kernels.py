"""The recurrent primitives (``rnn_*``, ``lstm_*``, ``gru_*`` forward and backward)
of every backend against step-by-step references written here (float64, checked
by central differences), against torch.nn.LSTM / GRU / RNN with copied weights,
and the fused backends against the base class on the same inputs; then what is
particular to the Numba cells (the batch's rows in chunks on several threads,
the composed default for what they do not cover, contexts of another backend,
saturation, their tanh and sigmoid) and the CUDA cells, run on the CPU through
the host shim (tests/kernel_host_shim_recurrent.cpp).
"""

import numpy as np
import pytest

from scratchnet.backends import get_ops
from scratchnet.backends.base import Ops

from conftest import to_host

DTYPES = [np.float64, np.float32]
CELLS = ["lstm", "gru", "rnn-tanh", "rnn-relu"]
#: N, T, H
SHAPES = [(3, 5, 4), (1, 1, 1), (2, 1, 3), (1, 6, 2), (40, 7, 9)]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-11} if dtype == np.float64 else \
        {"rtol": 2e-4, "atol": 2e-5}


def sigmoid(x):
    e = np.exp(-np.abs(x))                 # no overflow, relative accuracy both ways
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def split(cell):
    """"rnn-tanh" -> ("rnn", "tanh"); "lstm" -> ("lstm", None)."""
    kind, _, act = cell.partition("-")
    return kind, act or None


# ------------------------------------------------------------- references
def ref_forward(cell, XW, U, bU=None):
    """Every step's h (N, T, H) and what the backward needs, one step at a time."""
    kind, act = split(cell)
    n, T, G = XW.shape
    H = U.shape[0]
    h, c = np.zeros((n, H)), np.zeros((n, H))
    hs, keep = [], []
    for t in range(T):
        h_prev, c_prev = h, c
        if kind == "lstm":
            a = XW[:, t] + h_prev @ U
            i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
            g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
            c = f * c_prev + i * g
            h = o * np.tanh(c)
            keep.append((h_prev, c_prev, i, f, g, o, c))
        elif kind == "gru":
            hU = h_prev @ U + bU
            r = sigmoid(XW[:, t, :H] + hU[:, :H])
            z = sigmoid(XW[:, t, H:2 * H] + hU[:, H:2 * H])
            nn = np.tanh(XW[:, t, 2 * H:] + r * hU[:, 2 * H:])
            h = (1 - z) * nn + z * h_prev
            keep.append((h_prev, r, z, nn, hU[:, 2 * H:]))
        else:
            a = XW[:, t] + h_prev @ U
            h = np.tanh(a) if act == "tanh" else np.maximum(a, 0)
            keep.append((h_prev, h))
        hs.append(h)
    return np.stack(hs, axis=1), keep


def ref_backward(cell, dHs, keep, U):
    """BPTT from dL/dh_t of the output at every step (N, T, H): (dXW, dU, dbU, norms)."""
    kind, act = split(cell)
    n, T, H = dHs.shape
    dXW = np.zeros((n, T, U.shape[1]))
    dU, dbU, norms = np.zeros_like(U), np.zeros(U.shape[1]), np.zeros(T)
    dh_next, dc_next = np.zeros((n, H)), np.zeros((n, H))
    for t in range(T - 1, -1, -1):
        dh = dHs[:, t] + dh_next
        norms[t] = np.sqrt((dh * dh).sum())
        if kind == "lstm":
            h_prev, c_prev, i, f, g, o, c = keep[t]
            tc = np.tanh(c)
            dc = dc_next + dh * o * (1 - tc ** 2)
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
            dc_next = dc * f
            dhU = dz
            direct = 0
        elif kind == "gru":
            h_prev, r, z, nn, hUn = keep[t]
            dn = dh * (1 - z) * (1 - nn ** 2)
            dr = dn * hUn * r * (1 - r)
            dzz = dh * (h_prev - nn) * z * (1 - z)
            dz = np.concatenate([dr, dzz, dn], axis=1)
            dhU = np.concatenate([dr, dzz, dn * r], axis=1)
            direct = dh * z
        else:
            h_prev, h = keep[t]
            dz = dh * ((1 - h ** 2) if act == "tanh" else (h > 0))
            dhU = dz
            direct = 0
        dXW[:, t] = dz
        dU += h_prev.T @ dhU
        dbU += dhU.sum(axis=0)
        dh_next = dhU @ U.T + direct
    return dXW, dU, dbU, norms


def full_grad(dH, T, return_sequences):
    """dH as every step's gradient (N, T, H): zeros but the last without sequences."""
    if return_sequences:
        return dH
    out = np.zeros((dH.shape[0], T, dH.shape[1]))
    out[:, -1] = dH
    return out


def make_inputs(cell, n, T, H, seed=0, scale=1.0):
    kind, _ = split(cell)
    rng = np.random.default_rng(seed)
    G = GATES[kind] * H
    XW = rng.standard_normal((n, T, G)) * scale
    U = rng.standard_normal((H, G)) / np.sqrt(H)
    bU = rng.standard_normal(G) * 0.5 if kind == "gru" else None
    return XW, U, bU


def run_forward(ops, cell, XW, U, bU, seq):
    kind, act = split(cell)
    if kind == "lstm":
        return ops.lstm_forward(XW, U, seq)
    if kind == "gru":
        return ops.gru_forward(XW, U, bU, seq)
    return ops.rnn_forward(XW, U, act, seq)


def run_backward(ops, cell, dH, ctx, U):
    """(dXW, dU, dbU or None, norms)."""
    kind, _ = split(cell)
    if kind == "gru":
        return ops.gru_backward(dH, ctx, U)
    dXW, dU, norms = getattr(ops, f"{kind}_backward")(dH, ctx, U)
    return dXW, dU, None, norms


def reference(cell, XW, U, bU, seq, dH):
    """(H_out, dXW, dU, dbU, norms) in float64."""
    XW, U = XW.astype(np.float64), U.astype(np.float64)
    bU = None if bU is None else bU.astype(np.float64)
    Hs, keep = ref_forward(cell, XW, U, bU)
    out = Hs if seq else Hs[:, -1]
    grads = ref_backward(cell, full_grad(dH.astype(np.float64), XW.shape[1], seq), keep, U)
    return (out, *grads)


# ------------------------------------------- the references are right
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seq", [True, False])
def test_reference_gradients_match_finite_differences(cell, seq):
    XW, U, bU = make_inputs(cell, 2, 4, 3, seed=1)
    if cell == "rnn-relu":
        XW += 0.3                     # keep pre-activations away from the kink
    rng = np.random.default_rng(2)
    out, _ = ref_forward(cell, XW, U, bU)
    dH = rng.standard_normal(out.shape if seq else out[:, -1].shape)

    def loss(XW, U, bU):
        Hs, _ = ref_forward(cell, XW, U, bU)
        return ((Hs if seq else Hs[:, -1]) * dH).sum()

    _, dXW, dU, dbU, _ = reference(cell, XW, U, bU, seq, dH)
    eps = 1e-6
    for name, arr, grad in (("XW", XW, dXW), ("U", U, dU)) + \
            ((("bU", bU, dbU),) if bU is not None else ()):
        num = np.zeros_like(arr)
        for k in range(arr.size):
            old = arr.flat[k]
            arr.flat[k] = old + eps
            up = loss(XW, U, bU)
            arr.flat[k] = old - eps
            down = loss(XW, U, bU)
            arr.flat[k] = old
            num.flat[k] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8, err_msg=name)


# ------------------------------------------------- every backend
def check_against_reference(ops, cell, dtype, shape, seq, seed=0, scale=1.0):
    n, T, H = shape
    XW, U, bU = make_inputs(cell, n, T, H, seed, scale)
    XW, U = XW.astype(dtype), U.astype(dtype)
    bU = None if bU is None else bU.astype(dtype)
    rng = np.random.default_rng(seed + 1)
    dH = rng.standard_normal((n, T, H) if seq else (n, H)).astype(dtype)
    want = reference(cell, XW, U, bU, seq, dH)
    out, ctx = run_forward(ops, cell, ops.asarray(XW), ops.asarray(U),
                           None if bU is None else ops.asarray(bU), seq)
    got = (out, *run_backward(ops, cell, ops.asarray(dH), ctx, ops.asarray(U)))
    t = tol(dtype)
    names = ("H_out", "dXW", "dU", "dbU", "dh_norms")
    for name, g, w in zip(names, got, want):
        if g is None:
            assert name == "dbU" and not cell.startswith("gru")
            continue
        g = to_host(g)
        assert g.dtype == dtype and g.shape == w.shape, (name, g.dtype, g.shape)
        # sums over N*T rows: bound the error by the size of the terms
        scale_ = max(1.0, float(np.abs(w).max())) * (n * T if name in ("dU", "dbU") else 1)
        np.testing.assert_allclose(g, w, rtol=t["rtol"], atol=t["atol"] * scale_,
                                   err_msg=name)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seq", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(ops, cell, dtype, shape, seq):
    check_against_reference(ops, cell, dtype, shape, seq)


@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates_stay_finite(ops, cell):
    """Pre-activations of +-1e4 (float32): sigmoid and tanh saturate, nothing overflows."""
    got = check_against_reference(ops, cell, np.float32, (6, 5, 4), True, seed=3,
                                  scale=1e4 if not cell.endswith("relu") else 1.0)
    assert all(np.isfinite(to_host(g)).all() for g in got if g is not None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_backends_match_the_base_class(ops, cell, dtype):
    """The backend's primitives against the base class's composed defaults run on
    the same backend, on the same inputs."""
    n, T, H = 37, 6, 8
    XW, U, bU = make_inputs(cell, n, T, H, seed=5)
    a = [None if x is None else ops.asarray(x.astype(dtype)) for x in (XW, U, bU)]
    for seq in (True, False):
        dH = ops.asarray(np.random.default_rng(6).standard_normal(
            (n, T, H) if seq else (n, H)).astype(dtype))
        results = []
        for impl in (ops, _Composed(ops)):
            out, ctx = run_forward(impl, cell, *a, seq)
            results.append((out, *run_backward(impl, cell, dH, ctx, a[1])))
        for g, w in zip(*results):
            if g is None:
                continue
            w = to_host(w)
            np.testing.assert_allclose(to_host(g), w, rtol=tol(dtype)["rtol"],
                                       atol=tol(dtype)["atol"] * max(1.0, np.abs(w).max()))


class _Composed:
    """The base class's recurrent methods, run on ``ops``'s arrays."""

    def __init__(self, ops):
        self.ops = ops

    def __getattr__(self, name):
        return getattr(Ops, name).__get__(self.ops)


# ------------------------------------------------------------- torch
torch_params = pytest.mark.parametrize("cell", CELLS)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors: one torch thread and one BLAS thread (no contention)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield torch
    else:
        with threadpool_limits(1, user_api="blas"):
            yield torch
    torch.set_num_threads(before)


@torch_params
@pytest.mark.parametrize("seq", [True, False])
def test_matches_torch(ops, torch_one_thread, cell, seq):
    """float64, the layer's arithmetic around the primitives (XW = X W + b, dW,
    db, dX), weights copied into torch.nn.LSTM / GRU / RNN."""
    torch = torch_one_thread
    kind, act = split(cell)
    n, T, F, H = 3, 5, 4, 6
    G = GATES[kind] * H
    rng = np.random.default_rng(11)
    X = rng.standard_normal((n, T, F))
    W, b = rng.standard_normal((F, G)) * 0.5, rng.standard_normal(G) * 0.3
    U = rng.standard_normal((H, G)) * 0.4
    bU = rng.standard_normal(G) * 0.3 if kind == "gru" else None
    dH = rng.standard_normal((n, T, H) if seq else (n, H))

    if kind == "lstm":
        net = torch.nn.LSTM(F, H, batch_first=True)
    elif kind == "gru":
        net = torch.nn.GRU(F, H, batch_first=True)
    else:
        net = torch.nn.RNN(F, H, nonlinearity=act, batch_first=True)
    net = net.double()
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.tensor(W.T))
        net.weight_hh_l0.copy_(torch.tensor(U.T))
        net.bias_ih_l0.copy_(torch.tensor(b))
        net.bias_hh_l0.copy_(torch.tensor(bU if bU is not None else np.zeros(G)))
    Xt = torch.tensor(X, requires_grad=True)
    out = net(Xt)[0]
    out = out if seq else out[:, -1]
    out.backward(torch.tensor(dH))

    XW = X.reshape(n * T, F) @ W + b
    o, ctx = run_forward(ops, cell, ops.asarray(XW.reshape(n, T, G)), ops.asarray(U),
                         None if bU is None else ops.asarray(bU), seq)
    dXW, dU, dbU, _ = run_backward(ops, cell, ops.asarray(dH), ctx, ops.asarray(U))
    dXW = to_host(dXW).reshape(n * T, G)
    close = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_host(o), out.detach().numpy(), **close)
    np.testing.assert_allclose(to_host(dU), net.weight_hh_l0.grad.numpy().T, **close)
    np.testing.assert_allclose(X.reshape(n * T, F).T @ dXW, net.weight_ih_l0.grad.numpy().T,
                               **close)
    np.testing.assert_allclose(dXW.sum(axis=0), net.bias_ih_l0.grad.numpy(), **close)
    np.testing.assert_allclose((dXW @ W.T).reshape(n, T, F), Xt.grad.numpy(), **close)
    if kind == "gru":
        np.testing.assert_allclose(to_host(dbU), net.bias_hh_l0.grad.numpy(), **close)


# --------------------------------------------------------- Numba cells
@pytest.fixture
def nb():
    try:
        return get_ops("numba")
    except Exception as err:  # BackendUnavailableError
        pytest.skip(f"numba backend unavailable: {err}")


@pytest.fixture
def fresh_nb(nb):
    """A NumbaOps of its own (tests change recurrent_threads)."""
    return type(nb)()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_rows_in_chunks_on_threads(fresh_nb, cell, threads, dtype):
    """With 1, 2 or 3 threads (chunks of >= 32 rows) the results are the reference's."""
    fresh_nb.recurrent_threads = threads
    n = 100
    assert len(fresh_nb._row_chunks(n)) == threads
    for seq in (True, False):
        check_against_reference(fresh_nb, cell, dtype, (n, 4, 5), seq, seed=threads)


def test_numba_row_chunks(fresh_nb):
    fresh_nb.recurrent_threads = 4
    assert fresh_nb._row_chunks(128) == [(0, 32), (32, 64), (64, 96), (96, 128)]
    assert fresh_nb._row_chunks(70) == [(0, 35), (35, 70)]       # >= 32 rows each
    assert fresh_nb._row_chunks(31) == [(0, 31)]
    fresh_nb.recurrent_threads = None                              # as many as BLAS uses
    assert 1 <= len(fresh_nb._row_chunks(4096)) <= max(1, fresh_nb._blas_threads() and 4096)


def test_numba_chunk_errors_reach_the_caller(fresh_nb):
    """An exception in a chunk's thread is raised in the caller, after every
    chunk has finished."""
    fresh_nb.recurrent_threads = 2
    calls = []

    def run(lo, hi):
        calls.append(lo)
        if lo:
            raise RuntimeError("chunk failed")
        return lo
    with pytest.raises(RuntimeError, match="chunk failed"):
        fresh_nb._run_row_chunks([(0, 40), (40, 80)], run)
    assert sorted(calls) == [0, 40]


@pytest.mark.parametrize("cell", CELLS)
def test_numba_composed_default_for_what_the_cells_do_not_cover(nb, cell):
    """float16 and an RNN activation other than tanh/relu run the base class's
    forward; its context goes back to the base class's backward."""
    XW, U, bU = make_inputs(cell, 3, 4, 2)
    XW, U = XW.astype(np.float16), U.astype(np.float16)
    bU = None if bU is None else bU.astype(np.float16)
    out, ctx = run_forward(nb, cell, XW, U, bU, True)
    want, wctx = run_forward(get_ops("numpy"), cell, XW, U, bU, True)
    np.testing.assert_array_equal(out, want)
    dH = np.ones_like(out)
    for g, w in zip(run_backward(nb, cell, dH, ctx, U),
                    run_backward(get_ops("numpy"), cell, dH, wctx, U)):
        if g is not None:
            np.testing.assert_array_equal(g, w)


def test_numba_rnn_sigmoid_runs_composed(nb):
    XW, U, _ = make_inputs("rnn-tanh", 3, 4, 2)
    out, ctx = nb.rnn_forward(XW, U, "sigmoid", True)
    want, wctx = get_ops("numpy").rnn_forward(XW, U, "sigmoid", True)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    np.testing.assert_allclose(nb.rnn_backward(out, ctx, U)[1],
                               get_ops("numpy").rnn_backward(want, wctx, U)[1], rtol=1e-12)
    with pytest.raises(Exception, match="softsign|unknown|activation"):
        nb.rnn_forward(XW, U, "softsign", True)


def test_numba_backward_checks_its_arguments(nb):
    XW, U, _ = make_inputs("lstm", 3, 4, 2)
    out, ctx = nb.lstm_forward(XW, U, False)
    with pytest.raises(ValueError, match=r"dH must have shape \(3, 2\)"):
        nb.lstm_backward(np.ones((3, 4, 2)), ctx, U)
    with pytest.raises(TypeError, match="dH must have dtype float64"):
        nb.lstm_backward(out.astype(np.float32), ctx, U)
    with pytest.raises(ValueError, match=r"U must have shape \(2, 8\)"):
        nb.lstm_backward(out, ctx, U[:, :4])
    with pytest.raises(TypeError, match="U must have dtype float64"):
        nb.lstm_backward(out, ctx, U.astype(np.float32))


def test_numba_forward_leaves_its_inputs_and_hands_out_fresh_outputs(nb):
    """The inputs are not written; an RNN's last state, which its context keeps,
    is handed out as a copy."""
    XW, U, _ = make_inputs("rnn-tanh", 4, 3, 5)
    XW0, U0 = XW.copy(), U.copy()
    out, ctx = nb.rnn_forward(XW, U, "tanh", False)
    np.testing.assert_array_equal(XW, XW0)
    np.testing.assert_array_equal(U, U0)
    dH = np.random.default_rng(0).standard_normal(out.shape)
    want = nb.rnn_backward(dH, ctx, U)
    out[...] = 7.0
    for g, w in zip(nb.rnn_backward(dH, ctx, U), want):
        np.testing.assert_array_equal(g, w)


def test_numba_strided_inputs(nb):
    """Non-contiguous XW and U (views) give the results of their copies."""
    XW, U, _ = make_inputs("lstm", 5, 4, 3)
    big = np.zeros((5, 8, 12))
    big[:, ::2] = XW
    out, ctx = nb.lstm_forward(big[:, ::2], np.asfortranarray(U), True)
    want, _ = nb.lstm_forward(XW, U, True)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_tanh_and_sigmoid(nb, dtype):
    """The cells' tanh and sigmoid (built on exp_nonpos, no SVML) against NumPy:
    a few ulp, exact signs and limits, NaN through."""
    kernels = nb._k()
    x = np.concatenate([np.linspace(-30, 30, 2001), [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8,
                                                      3e-4, 88.0, -88.0, 700.0, -700.0,
                                                      np.inf, -np.inf]]).astype(dtype)
    one = dtype(1)
    th = np.array([kernels._tanh(v, one) for v in x], dtype=dtype)
    sg = np.array([kernels._sigmoid(v, one) for v in x], dtype=dtype)
    ulp = np.finfo(dtype).eps
    want_th = np.tanh(x.astype(np.float64))
    want_sg = sigmoid(x.astype(np.float64))
    # a result below the smallest normal number is 0 (exp_nonpos flushes it)
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(th, want_th, rtol=4 * ulp, atol=tiny)
    np.testing.assert_allclose(sg, want_sg, rtol=4 * ulp, atol=tiny)
    assert np.isnan(kernels._tanh(dtype(np.nan), one))
    assert np.isnan(kernels._sigmoid(dtype(np.nan), one))


def test_numba_warmup_compiles_the_cells(fresh_nb):
    fresh_nb.warmup("float32")
    for name in ("lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward",
                 "gru_cell_backward", "rnn_cell_forward", "rnn_cell_backward"):
        assert f"{name}[float32]" in fresh_nb.compile_times


# ------------------------------------------------- CUDA cells, host shim
@pytest.fixture(scope="module")
def recurrent_shim(tmp_path_factory):
    import test_kernels_host as host
    if host.CXX is None:
        pytest.skip("g++ is not on PATH: cannot build the host shim for the CUDA kernels")
    from scratchnet.backends.cupy_ops import RECURRENT_KERNEL_FILE
    return host.build_shim(tmp_path_factory.mktemp("recurrent_kernels_host"),
                           source=RECURRENT_KERNEL_FILE)


@pytest.fixture(scope="module", params=[(3, 32), (1, 1), "cover"],
                ids=lambda p: "cover" if p == "cover" else f"grid{p[0]}x{p[1]}")
def shim_ops(recurrent_shim, request):
    import test_kernels_host as host
    return host.HostKernelOps((None, None), request.param, recurrent_shim=recurrent_shim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 4), (1, 1, 1), (2, 1, 3), (40, 7, 9)])
@pytest.mark.parametrize("seq", [True, False])
@pytest.mark.parametrize("cell", CELLS + ["rnn-sigmoid", "rnn-leaky_relu"])
def test_cuda_cells_on_the_host(shim_ops, cell, dtype, shape, seq):
    if cell in ("rnn-sigmoid", "rnn-leaky_relu"):
        # every activation of the table runs in the CUDA RNN cell: against the base class
        XW, U, _ = make_inputs("rnn-tanh", *shape)
        XW, U = XW.astype(dtype), U.astype(dtype)
        act = cell.split("-", 1)[1]
        ref = get_ops("numpy")
        out, ctx = shim_ops.rnn_forward(XW, U, act, seq)
        want, wctx = ref.rnn_forward(XW, U, act, seq)
        dH = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        for g, w in zip((out, *shim_ops.rnn_backward(dH, ctx, U)),
                        (want, *ref.rnn_backward(dH, wctx, U))):
            np.testing.assert_allclose(g, w, rtol=tol(dtype)["rtol"],
                                       atol=tol(dtype)["atol"] * 10)
        return
    check_against_reference(shim_ops, cell, dtype, shape, seq)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_recurrent_kernel_is_launched(recurrent_shim, dtype):
    import test_kernels_host as host
    from scratchnet.backends.cupy_ops import FLOAT_CTYPES, RECURRENT_KERNEL_FILE, \
        name_expressions
    ops = host.HostKernelOps((None, None), (2, 32), recurrent_shim=recurrent_shim)
    for cell in CELLS:
        check_against_reference(ops, cell, dtype, (3, 4, 2), True)
    ctype = FLOAT_CTYPES[np.dtype(dtype)]
    want = {e for e in name_expressions(RECURRENT_KERNEL_FILE) if f"<{ctype}>" in e}
    assert set(ops.launched) == want


def test_every_recurrent_name_expression_is_instantiated(recurrent_shim):
    import test_kernels_host as host
    from scratchnet.backends.cupy_ops import RECURRENT_KERNEL_FILE, kernel_file, \
        name_expressions
    lib, signatures = recurrent_shim
    for expr in name_expressions(RECURRENT_KERNEL_FILE):
        assert kernel_file(expr) == RECURRENT_KERNEL_FILE
        assert hasattr(lib, host.symbol(expr)), host.symbol(expr)
        if signatures is not None:
            assert expr in signatures


def test_cuda_wrappers_reject_bad_arguments(shim_ops):
    XW, U, bU = make_inputs("gru", 3, 4, 2)
    with pytest.raises(ValueError, match="XW must be C-contiguous"):
        shim_ops.gru_forward(np.asfortranarray(XW), U, bU, True)
    with pytest.raises(TypeError, match="U must have dtype float64"):
        shim_ops.gru_forward(XW, U.astype(np.float32), bU, True)
    out, ctx = shim_ops.gru_forward(XW, U, bU, False)
    with pytest.raises(ValueError, match=r"dH must have shape \(3, 2\)"):
        shim_ops.gru_backward(np.ones((3, 4, 2)), ctx, U)
    with pytest.raises(ValueError, match=r"U must have shape \(2, 6\)"):
        shim_ops.gru_backward(out, ctx, U[:, :3])


def test_cuda_contexts_of_the_composed_default_go_back_to_it(shim_ops):
    """float16 runs the base class's forward and backward: no launch."""
    shim_ops.launched.clear()
    XW, U, _ = make_inputs("lstm", 3, 4, 2)
    XW, U = XW.astype(np.float16), U.astype(np.float16)
    out, ctx = shim_ops.lstm_forward(XW, U, True)
    dXW, _, _ = shim_ops.lstm_backward(np.ones_like(out), ctx, U)
    ref = get_ops("numpy")
    want, wctx = ref.lstm_forward(XW, U, True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(dXW, ref.lstm_backward(np.ones_like(want), wctx, U)[0])
    assert shim_ops.launched == []


# ------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_cupy_reference_network_step(cell):
    """A recurrent layer, Dense and a loss: one training step on the GPU gives the
    NumPy backend's gradients (float64)."""
    import scratchnet as sn
    from scratchnet.backends import BackendUnavailableError
    try:
        get_ops("cupy")
    except BackendUnavailableError as err:
        pytest.skip(f"cupy backend unavailable: {err}")
    kind, act = split(cell)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 7, 5)), rng.integers(0, 3, 16)
    grads = []
    for backend in ("numpy", "cupy"):
        layer = {"lstm": lambda: sn.LSTM(5, 8), "gru": lambda: sn.GRU(5, 8),
                 "rnn": lambda: sn.RNN(5, 8, activation=act)}[kind]()
        model = sn.Sequential([layer, sn.Dense(8, 3)], seed=1, dtype="float64",
                              backend=backend)
        loss = sn.SoftmaxCrossEntropy()
        ops = model.ops
        out = model.forward(ops.asarray(X), training=True)
        loss.forward(out, ops.asarray(y))
        model.backward(loss.backward())
        grads.append([to_host(model.flat_gradients()), to_host(model.layers[0].dh_norms)])
    for g, w in zip(*grads):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
