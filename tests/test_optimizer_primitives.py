"""The AdamW, RMSprop and Adagrad update primitives of the backend seam.

Every backend runs 20 steps of each primitive, with every option combination,
and must end where the NumPy backend (the base class's composed defaults)
ends: parameter and every state array. The arrays include shapes that are
no multiple of any block size and 1-D views into larger flat buffers (how an
optimizer may keep its state), whose neighbours must stay untouched. The
NumPy backend itself is checked against ``torch.optim`` in float64.
"""

import itertools

import numpy
import pytest

DTYPES = [numpy.float64, numpy.float32]
#: (37, 5) and (1,): no multiple of a block; "flat": 185 elements at offset 13
#: of a 250-element buffer.
LAYOUTS = ["37x5", "1", "flat"]
STEPS = 20
FLAT_SIZE, FLAT_OFFSET, FLAT_LEN = 250, 13, 185

ADAMW_OPTIONS = [{}, {"weight_decay": 0.0},
                 {"weight_decay": 0.1, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}]
RMSPROP_OPTIONS = [{"weight_decay": wd, "momentum": mom, "centered": centered}
                   for wd, mom, centered in itertools.product((0.0, 0.1), (0.0, 0.9),
                                                              (False, True))]
RMSPROP_OPTIONS.append({"alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "centered": True})
ADAGRAD_OPTIONS = [{"lr_decay": lr_decay, "weight_decay": wd}
                   for lr_decay, wd in itertools.product((0.0, 0.05), (0.0, 0.1))]
ADAGRAD_OPTIONS.append({"lr_decay": 0.01, "eps": 1e-6})

LR = {"adamw": 1e-2, "rmsprop": 1e-2, "adagrad": 0.1}


def state_names(name, options):
    """The state arrays primitive ``name`` keeps with these options."""
    if name == "adamw":
        return ["m", "v"]
    if name == "adagrad":
        return ["state_sum"]
    return (["square_avg"] + (["buf"] if options.get("momentum", 0) > 0 else [])
            + (["grad_avg"] if options.get("centered") else []))


CASES = ([("adamw", o) for o in ADAMW_OPTIONS] + [("rmsprop", o) for o in RMSPROP_OPTIONS]
         + [("adagrad", o) for o in ADAGRAD_OPTIONS])


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def step(ops, name, options, param, grad, state, t):
    """One update of primitive ``name`` at 1-based step ``t``."""
    lr = LR[name]
    if name == "adamw":
        ops.adamw_update(param, grad, state["m"], state["v"], t, lr, **options)
    elif name == "rmsprop":
        ops.rmsprop_update(param, grad, state["square_avg"], lr, buf=state.get("buf"),
                           grad_avg=state.get("grad_avg"), **options)
    else:
        ops.adagrad_update(param, grad, state["state_sum"], t, lr, **options)


class Arrays:
    """Host copies of a parameter, its state and its gradients, in one layout.

    ``on(ops)`` puts them on a backend; each array in the "flat" layout is a
    view into its own larger buffer, whose other elements are NaN sentinels.
    """

    def __init__(self, layout, dtype, state_names, seed=0):
        rng = numpy.random.default_rng(seed)
        shape = {"37x5": (37, 5), "1": (1,), "flat": (FLAT_LEN,)}[layout]
        self.flat = layout == "flat"
        self.param = rng.standard_normal(shape).astype(dtype)
        # Adam/RMSprop/Adagrad state starts at zero, as PyTorch's does.
        self.state = {k: numpy.zeros(shape, dtype) for k in state_names}
        self.grads = [rng.standard_normal(shape).astype(dtype) for _ in range(STEPS)]

    def on(self, ops):
        """``(param, state, grads, buffers)`` on ``ops``; buffers hold the flat views."""
        buffers = {}

        def put(key, host):
            if not self.flat:
                return ops.asarray(host.copy())
            buf = numpy.full(FLAT_SIZE, numpy.nan, host.dtype)
            buf[FLAT_OFFSET:FLAT_OFFSET + FLAT_LEN] = host
            buffers[key] = ops.asarray(buf)
            return buffers[key][FLAT_OFFSET:FLAT_OFFSET + FLAT_LEN]

        param = put("param", self.param)
        state = {k: put(k, a) for k, a in self.state.items()}
        grads = [put(f"grad{i}", g) for i, g in enumerate(self.grads)]
        return param, state, grads, buffers


def tol(want):
    """Relative tolerance, plus an absolute one scaled by the array's largest element:
    an element that passed near zero keeps the absolute rounding error of the
    larger values it came from (a GPU's fused multiply-adds round differently)."""
    rtol = 1e-12 if want.dtype == numpy.float64 else 1e-6
    return {"rtol": rtol, "atol": 2 * rtol * float(numpy.abs(want).max())}


def run(ops, name, options, arrays):
    param, state, grads, buffers = arrays.on(ops)
    for t, g in enumerate(grads, start=1):
        step(ops, name, options, param, g, state, t)
    return param, state, buffers


# ----------------------------------------------- every backend against NumPy
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_backend_matches_numpy(ops, ref, case, layout, dtype):
    name, options = case
    arrays = Arrays(layout, dtype, state_names(name, options))
    param, state, buffers = run(ops, name, options, arrays)
    want_param, want_state, _ = run(ref, name, options, arrays)

    got = ops.to_host(param)
    assert got.dtype == dtype and got.shape == arrays.param.shape
    assert numpy.isfinite(got).all()
    assert not numpy.array_equal(got, arrays.param), "the parameter was not updated"
    numpy.testing.assert_allclose(got, want_param, **tol(want_param), err_msg="param")
    assert set(state) == set(want_state)
    for key, a in state.items():
        a = ops.to_host(a)
        assert a.dtype == dtype
        assert not numpy.array_equal(a, arrays.state[key]), f"{key} was not updated"
        numpy.testing.assert_allclose(a, want_state[key], **tol(want_state[key]), err_msg=key)
    for key, buf in buffers.items():   # a flat view's neighbours are left alone
        buf = ops.to_host(buf)
        assert numpy.isnan(buf[:FLAT_OFFSET]).all(), key
        assert numpy.isnan(buf[FLAT_OFFSET + FLAT_LEN:]).all(), key


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_rmsprop_leaves_unused_state_alone(ops, ref, dtype):
    """buf without momentum and grad_avg without centering are neither read nor written."""
    arrays = Arrays("37x5", dtype, ["square_avg"])
    param, state, grads, _ = arrays.on(ops)
    unused = {k: ops.asarray(numpy.full(arrays.param.shape, 7.0, dtype))
              for k in ("buf", "grad_avg")}
    want, want_sq = arrays.param.copy(), numpy.zeros_like(arrays.param)
    for g, host_g in zip(grads[:3], arrays.grads[:3]):
        ops.rmsprop_update(param, g, state["square_avg"], 1e-2, momentum=0.0,
                           buf=unused["buf"], centered=False, grad_avg=unused["grad_avg"])
        ref.rmsprop_update(want, host_g, want_sq, 1e-2)
    numpy.testing.assert_allclose(ops.to_host(param), want, **tol(want))
    for k, a in unused.items():
        assert (ops.to_host(a) == 7.0).all(), k


def test_missing_state_is_named(ops):
    p = ops.asarray(numpy.ones((3, 4), numpy.float32))
    with pytest.raises(ValueError, match="buf is None but momentum=0.9"):
        ops.rmsprop_update(p, p.copy(), p.copy(), 1e-2, momentum=0.9)
    with pytest.raises(ValueError, match="grad_avg is None but centered=True"):
        ops.rmsprop_update(p, p.copy(), p.copy(), 1e-2, centered=True)


@pytest.mark.parametrize("strided_param", [True, False])
@pytest.mark.parametrize("case", [("adamw", {}), ("adagrad", {"lr_decay": 0.1}),
                                  ("rmsprop", {"momentum": 0.9, "centered": True})],
                         ids=case_id)
def test_numba_falls_back_for_strided_arrays(ref, case, strided_param):
    """A strided grad is copied for the kernel; a strided parameter (which the
    kernel cannot update in place) takes the composed default. Both give the
    NumPy backend's answer."""
    from scratchnet.backends import BackendUnavailableError, get_ops
    try:
        nb = get_ops("numba")
    except BackendUnavailableError as err:
        pytest.skip(f"numba backend unavailable: {err}")
    name, options = case
    rng = numpy.random.default_rng(3)
    base = rng.standard_normal((9, 16))
    param = base[:, ::2] if strided_param else base[:, ::2].copy()
    grad = rng.standard_normal((8, 9)).T            # (9, 8), not C-contiguous
    want, start = numpy.array(param), numpy.array(param)
    s_want = {k: numpy.zeros(param.shape) for k in state_names(name, options)}
    s_got = {k: numpy.zeros(param.shape) for k in s_want}
    for t in (1, 2):
        step(ref, name, options, want, grad, s_want, t)
        step(nb, name, options, param, grad, s_got, t)
    assert not numpy.array_equal(param, start)
    numpy.testing.assert_allclose(param, want, rtol=1e-12, atol=1e-14)
    for k in s_want:
        numpy.testing.assert_allclose(s_got[k], s_want[k], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------ NumPy against PyTorch
TORCH_NAMES = {"m": "exp_avg", "v": "exp_avg_sq", "square_avg": "square_avg",
               "buf": "momentum_buffer", "grad_avg": "grad_avg", "state_sum": "sum"}


def torch_optimizer(torch, name, options, params):
    """``torch.optim`` with the same settings; foreach=False pins its per-tensor path."""
    lr = LR[name]
    o = dict(options)
    if name == "adamw":
        betas = (o.pop("beta1", 0.9), o.pop("beta2", 0.999))
        return torch.optim.AdamW(params, lr=lr, betas=betas, foreach=False, **o)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, foreach=False, **o)
    return torch.optim.Adagrad(params, lr=lr, foreach=False, **o)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numpy_matches_torch(ref, case):
    torch = pytest.importorskip("torch")
    name, options = case
    arrays = Arrays("37x5", numpy.float64, state_names(name, options), seed=1)
    param, state, _ = run(ref, name, options, arrays)

    tp = torch.tensor(arrays.param, dtype=torch.float64, requires_grad=True)
    opt = torch_optimizer(torch, name, options, [tp])
    for g in arrays.grads:
        tp.grad = torch.tensor(g)
        opt.step()
    numpy.testing.assert_allclose(param, tp.detach().numpy(), rtol=1e-12, atol=1e-12)
    torch_state = opt.state[tp]
    for key, a in state.items():
        numpy.testing.assert_allclose(a, torch_state[TORCH_NAMES[key]].numpy(), rtol=1e-12,
                                      atol=1e-12, err_msg=key)
