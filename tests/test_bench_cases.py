"""The benchmark registry is tested: every registered case runs once at the
"tiny" size on every implementation that works here, and the fused primitives
give the composed defaults' results (``scratchnet.bench.cases``).

Cases of an implementation that cannot run here (a backend missing, no GPU,
no PyTorch) are skipped with the reason.
"""

import dataclasses
import math
import subprocess
import sys
import time

import numpy
import pytest

from scratchnet.bench import cases

TINY = cases.SIZES["tiny"]


def _params(family):
    out = []
    for case in cases.REGISTRY[family](TINY):
        why = case.unavailable()
        marks = [pytest.mark.skip(reason=why)] if why else []
        if case.impl in ("cupy", "torch-cuda"):
            marks.append(pytest.mark.gpu)
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def host(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return cases._ops("cupy").to_host(x) if type(x).__module__.startswith("cupy") else \
        numpy.asarray(x)


# ----------------------------------------------------------------- the registry
def test_registry_covers_the_issue():
    full, quick = cases.SIZES["full"], cases.SIZES["quick"]
    for size in (full, quick, TINY):
        ids = [c.id for c in cases.all_cases(size)]
        assert len(ids) == len(set(ids)), "case ids must be unique"
    assert full.batch_sizes == (1, 8, 32, 128, 512, 2048)
    assert full.train_slice == full.per_sample_slice == 4096
    assert quick.per_sample_slice == 512 and len(quick.batch_sizes) < len(full.batch_sizes)
    assert full.epoch_samples == 60_000 and full.epoch_batch_sizes == (32, 128, 512)
    assert full.infer_batch_sizes == (1, 1024)
    assert set(full.fused_shapes.values()) == {(128, 256), (128, 128), (128, 10), (4096, 1000)}
    assert set(TINY.fused_shapes) == set(full.fused_shapes)
    fused = cases.fused_cases(full)
    assert {c.op for c in fused} == set(cases.FUSED_OPS)
    assert {c.variant for c in fused} == {"fused", "composed"}
    epoch = cases.epoch_cases(full)
    assert {(c.kind, getattr(c, "optimizer", None)) for c in epoch} == {
        ("epoch", "sgd"), ("epoch", "adam"), ("floor", None)}
    assert {"torch-cpu", "torch-cuda"} <= {c.impl for c in epoch}
    for case in cases.all_cases(full):
        info = case.info()
        assert info["kind"] == case.kind and info["impl"] == case.impl
        assert case.group and case.id in repr(case)


def test_backend_probe_never_raises():
    names = cases.bench_backends()
    assert "numpy" in names
    for name in cases.backend_names():
        why = cases.backend_unavailable(name)
        assert why is None or isinstance(why, str)


def test_importing_the_bench_package_is_light():
    code = ("import sys, scratchnet.bench, scratchnet.bench.cases, scratchnet.bench.report, "
            "scratchnet.bench.run\n"
            "heavy = [m for m in ('torch', 'numba', 'cupy', 'matplotlib', 'pytest', "
            "'scratchnet.backends.numba_ops', 'scratchnet.backends.cupy_ops') "
            "if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# ------------------------------------------------------------------------- data
def test_random_data_has_fashion_mnist_shape():
    X, y, src = cases.make_data(50, source="random")
    assert src == "random" and X.shape == (50, 784) and y.shape == (50,)
    assert X.dtype == numpy.float32 and y.dtype == numpy.int64
    assert 0 <= X.min() and X.max() <= 1 and set(numpy.unique(y)) <= set(range(10))
    X2, y2, _ = cases.make_data(50, source="random")
    assert numpy.array_equal(X, X2) and numpy.array_equal(y, y2)
    Xt, _, _ = cases.make_data(50, split="test", source="random")
    assert not numpy.array_equal(X, Xt)


def test_real_fashion_mnist_when_installed(monkeypatch):
    monkeypatch.delenv(cases.DATA_ENV, raising=False)
    if cases._fashion() is None:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    X, y, src = cases.make_data(100)
    assert src == "fashion-mnist" and X.shape == (100, 784) and X.dtype == numpy.float32
    (Xtr, ytr), _ = cases._fashion()
    assert numpy.array_equal(X, Xtr[:100]) and numpy.array_equal(y, ytr[:100])


def test_data_env_forces_random(monkeypatch):
    monkeypatch.setenv(cases.DATA_ENV, "random")
    assert cases.make_data(5)[2] == "random"


# -------------------------------------------------------------- group 1: training
@pytest.mark.parametrize("case", _params("train"))
def test_train_case_runs(case):
    prepared = case.prepare()
    hist = prepared.run()
    assert prepared.samples == case.n_samples == TINY.train_slice
    assert math.isfinite(hist.history["loss"][-1])
    assert prepared.info["mode"] == case.mode and prepared.info["batch_size"] == case.batch_size


@pytest.mark.parametrize("backend", [p for p in cases.backend_names()])
@pytest.mark.parametrize("batch_size", [1, 8, 32])
def test_per_sample_and_minibatch_cases_make_the_same_update(backend, batch_size):
    """The two timed paths of group 1 do the same work: same weights after a pass."""
    why = cases.backend_unavailable(backend)
    if why:
        pytest.skip(why)
    models = []
    for mode in ("per_sample", "minibatch"):
        prepared = cases.TrainCase(backend, TINY, mode=mode, batch_size=batch_size).prepare()
        prepared.run()
        models.append(prepared.model)
    for a, b in zip(*(m.parameters() for m in models)):
        numpy.testing.assert_allclose(host(a), host(b), rtol=1e-4, atol=2e-5)


# ------------------------------------------------------- group 2: fused vs composed
def _check_same(op, fused, composed, inputs):
    fused = [host(x) for x in fused]
    composed = [host(x) for x in composed]
    assert len(fused) == len(composed)
    if op == "dropout":
        X = host(inputs["X"])
        out, mask = fused
        assert set(numpy.unique(mask)) <= {0.0, 2.0}, "mask must be 0 or 1/(1-p)"
        numpy.testing.assert_allclose(out, X * mask, rtol=1e-6)
        keep = (mask > 0).mean()
        assert abs(keep - 0.5) < 0.1, f"keep fraction {keep} for p=0.5"
        if not numpy.array_equal(mask, composed[1]):
            # a backend may draw its mask from another stream: the statistics
            # above are then what "same result" can mean
            return
    for f, c in zip(fused, composed):
        assert f.shape == c.shape and f.dtype == c.dtype
        numpy.testing.assert_allclose(f, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", _params("fused"))
def test_fused_case_equals_composed(case):
    ops = cases._ops(case.impl)
    result = case.prepare().run()          # the registered, timed call
    fused, composed = cases.fused_pair(case.op, ops, case.shape)
    ref = composed()
    _check_same(case.op, result, ref, composed.inputs)
    if case.variant == "fused":
        _check_same(case.op, fused(), ref, fused.inputs)


def test_fused_pair_gives_separate_inputs():
    ops = cases._ops("numpy")
    assert not cases.is_fused(ops, "bias_act")      # NumPy runs the composed defaults
    fused, composed = cases.fused_pair("sgd_update", ops, (3, 4))
    p0 = host(fused.inputs["param"]).copy()
    fused()
    assert not numpy.array_equal(p0, host(fused.inputs["param"]))   # updated in place
    assert numpy.array_equal(p0, host(composed.inputs["param"]))    # separate inputs
    with pytest.raises(ValueError, match="unknown fused op"):
        cases.fused_pair("matmul", ops, (2, 2))


# --------------------------------------------------- groups 3 and 4: end to end
@pytest.mark.parametrize("case", _params("epoch"))
def test_epoch_case_runs(case):
    prepared = case.prepare()
    result = prepared.run()
    assert prepared.samples == TINY.epoch_samples
    if case.kind == "floor":
        steps = cases.batch_rows(TINY.epoch_samples, case.batch_size)
        assert prepared.info["steps"] == len(steps) and sum(steps) == TINY.epoch_samples
        for rows, (a, o) in result.items():
            assert o["z1"].shape == (rows, 256) and o["dW1"].shape == (784, 256)
            numpy.testing.assert_allclose(host(o["dW3"]), host(a["h2"]).T @ host(a["d3"]),
                                          rtol=1e-4, atol=1e-3)
    else:
        assert math.isfinite(result)


def test_torch_peer_is_the_same_model():
    if cases.torch_unavailable("torch-cpu"):
        pytest.skip(cases.torch_unavailable("torch-cpu"))
    tm = cases.make_torch_mlp("cpu")
    sm = cases.make_mlp("numpy")
    assert sum(p.numel() for p in tm.parameters()) == sm.count_params() == 235_146
    shapes = [tuple(p.shape) for p in tm.parameters()]
    assert shapes == [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)]
    w = tm[0].weight.detach().numpy()
    assert abs(w.std() - (2 / 784) ** 0.5) < 0.005        # kaiming-normal, fan_in
    assert not tm[0].bias.detach().numpy().any()


@pytest.mark.parametrize("case", _params("inference"))
def test_inference_case_runs(case):
    prepared = case.prepare()
    out = host(prepared.run())
    assert out.shape == (TINY.infer_samples, 10) and numpy.isfinite(out).all()
    if case.impl not in cases.TORCH_IMPLS:
        ref = cases.make_mlp("numpy").predict(cases.make_data(TINY.infer_samples, "test")[0])
        numpy.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", _params("compile"))
def test_compile_case_runs(case):
    prepared = case.prepare()
    method = prepared.run()
    assert method == cases.compile_method(cases._ops(case.impl))


# ------------------------------------------------------------ the reference CNN
def test_cnn_registry():
    full = cases.SIZES["full"]
    layer = cases.cnn_layer_cases(full)
    assert {(c.layer, c.direction) for c in layer} == {
        (name, d) for name in cases.CNN_LAYERS for d in ("forward", "backward")}
    assert {"torch-cpu", "torch-cuda", "numpy", "numba"} <= {c.impl for c in layer}
    step = cases.cnn_step_cases(full)
    assert {c.kind for c in step} == {"cnn_step", "cnn_floor"}
    assert {c.group for c in step} == {"cnn_step-b128"}
    train = cases.cnn_train_cases(full)
    assert {(c.mode, c.batch_size) for c in train} == {
        (m, b) for m in ("per_sample", "minibatch") for b in full.cnn_batch_sizes}
    assert full.cnn_batch == 128


def _torch_layer_result(case):
    torch_case = dataclasses.replace(case, impl="torch-cpu")
    return [host(x) for x in torch_case.prepare().run()]


@pytest.mark.parametrize("case", [p for p in _params("cnn_layer")
                                  if p.values[0].impl not in cases.TORCH_IMPLS])
def test_cnn_layer_case_matches_torch(case):
    """Each backend's timed call gives PyTorch's result on the same inputs."""
    got = [host(x) for x in case.prepare().run() if x is not None]
    if cases.torch_unavailable("torch-cpu"):
        pytest.skip(cases.torch_unavailable("torch-cpu"))
    want = _torch_layer_result(case)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == numpy.float32
        numpy.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", _params("cnn_step"))
def test_cnn_step_case_runs(case):
    prepared = case.prepare()
    if case.kind == "cnn_floor":
        products = prepared.run()
        shapes = cases.cnn_gemm_shapes(TINY.cnn_batch)
        assert len(products) == len(shapes) == prepared.info["gemms_per_step"]
        for (a, b, out), (_, sa, sb, _) in zip(products, shapes):
            assert tuple(a.shape) == sa and tuple(b.shape) == sb
            numpy.testing.assert_allclose(host(out), host(a) @ host(b), rtol=1e-4, atol=1e-4)
        return
    first, second = prepared.run(), prepared.run()
    assert math.isfinite(first) and math.isfinite(second) and second != first
    assert prepared.samples == TINY.cnn_batch


def test_torch_cnn_is_the_same_model():
    if cases.torch_unavailable("torch-cpu"):
        pytest.skip(cases.torch_unavailable("torch-cpu"))
    tm, sm = cases.make_torch_cnn("cpu"), cases.make_cnn("numpy")
    assert sum(p.numel() for p in tm.parameters()) == sm.count_params() == 421_642
    assert [tuple(p.shape) for p in tm.parameters()][:2] == [(32, 1, 3, 3), (32,)]


@pytest.mark.parametrize("case", _params("cnn_inference"))
def test_cnn_inference_case_runs(case):
    prepared = case.prepare()
    out = host(prepared.run())
    assert case.batch_size == 1024 and case.group == "cnn_inference-b1024"
    assert out.shape == (TINY.infer_samples, 10) and numpy.isfinite(out).all()
    assert prepared.samples == TINY.infer_samples


@pytest.mark.parametrize("case", _params("cnn_train") + _params("lstm_train"))
def test_network_train_case_runs(case):
    """The CNN's and the LSTM's per-sample and mini-batch passes over their slices."""
    prepared = case.prepare()
    hist = prepared.run()
    assert prepared.samples == getattr(TINY, f"{case.net.name}_slice")
    assert math.isfinite(hist.history["loss"][-1])


@pytest.mark.parametrize("case_type", [cases.CnnTrainCase, cases.LstmTrainCase])
@pytest.mark.parametrize("backend", cases.backend_names())
def test_network_per_sample_and_minibatch_make_the_same_update(backend, case_type):
    why = cases.backend_unavailable(backend)
    if why:
        pytest.skip(why)
    models = []
    for mode in ("per_sample", "minibatch"):
        prepared = case_type(backend, TINY, mode=mode, batch_size=4).prepare()
        prepared.run()
        models.append(prepared.model)
    for a, b in zip(*(m.parameters() for m in models)):
        numpy.testing.assert_allclose(host(a), host(b), rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------- the reference LSTM
def test_lstm_registry():
    full = cases.SIZES["full"]
    step = cases.lstm_step_cases(full)
    assert {c.kind for c in step} == {"lstm_step", "lstm_floor"}
    assert {c.group for c in step} == {"lstm_step-b128"}
    assert {"torch-cpu", "torch-cuda", "numpy", "numba"} <= {c.impl for c in step}
    train = cases.lstm_train_cases(full)
    assert {(c.mode, c.batch_size) for c in train} == {
        (m, b) for m in ("per_sample", "minibatch") for b in full.lstm_batch_sizes}
    assert full.lstm_batch == cases.SIZES["quick"].lstm_batch == 128
    # the step's products: the input projection, T-1 recurrent ones each way,
    # dU, dW and the Dense layer's three
    assert len(cases.lstm_gemm_shapes(128)) == 1 + 2 * (cases.LSTM_STEPS - 1) + 2 + 3


@pytest.mark.parametrize("case", _params("lstm_step"))
def test_lstm_step_case_runs(case):
    prepared = case.prepare()
    if case.kind == "lstm_floor":
        products = prepared.run()
        shapes = cases.lstm_gemm_shapes(TINY.lstm_batch)
        assert len(products) == len(shapes) == prepared.info["gemms_per_step"]
        for (a, b, out), (_, sa, sb, _) in zip(products, shapes):
            assert tuple(a.shape) == sa and tuple(b.shape) == sb
            numpy.testing.assert_allclose(host(out), host(a) @ host(b), rtol=1e-4, atol=1e-4)
        return
    first, second = prepared.run(), prepared.run()
    assert math.isfinite(first) and math.isfinite(second) and second != first
    assert prepared.samples == TINY.lstm_batch


def test_torch_lstm_is_the_same_model():
    """The same layers and parameters, but for PyTorch's second LSTM bias (b_hh,
    which scratchnet's single b stands for with b_ih)."""
    if cases.torch_unavailable("torch-cpu"):
        pytest.skip(cases.torch_unavailable("torch-cpu"))
    tm, sm = cases.make_torch_lstm("cpu"), cases.make_lstm("numpy")
    h = cases.LSTM_HIDDEN
    assert sum(p.numel() for p in tm.parameters()) - 4 * h == sm.count_params() == 81_674
    X, _, _ = cases.make_sequences(3)
    assert tuple(tm(__import__("torch").from_numpy(X)).shape) == (3, 10)
    assert sm.predict(X).shape == (3, 10)


# ---------------------------------------------------------------------- timing
class _FakeBenchmark:
    """Just what ``time_case`` uses of pytest-benchmark's fixture."""

    def __init__(self):
        self.extra_info, self.calls = {}, []

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        self.calls.append((rounds, iterations, warmup_rounds))
        for _ in range(rounds * iterations):
            fn()
        self.stats = type("M", (), {"stats": type("S", (), {"median": 0.5})()})()


def test_time_case_slow_call_gets_the_minimum_rounds():
    prepared = cases.Prepared(lambda: time.sleep(0.02), {"kind": "x"})
    bench = _FakeBenchmark()
    size = cases.SIZES["quick"]
    cases.time_case(bench, prepared, dataclasses.replace(size, case_s=0.01))
    assert bench.calls[0][:2] == (size.rounds, 1)
    assert "samples_per_s" not in bench.extra_info


def test_time_case_warms_up_and_records_samples_per_s():
    counter = []
    prepared = cases.Prepared(lambda: counter.append(1), {"kind": "x"}, samples=100)
    bench = _FakeBenchmark()
    size = cases.SIZES["quick"]
    median = cases.time_case(bench, prepared, size)
    rounds, iterations, _ = bench.calls[0]
    assert iterations > 1                                   # a fast call is looped
    assert size.rounds <= rounds <= size.max_rounds         # and gets extra rounds
    assert len(counter) == 2 + rounds * iterations          # + warm call + calibration call
    assert median == 0.5 and bench.extra_info["samples_per_s"] == 200
    assert bench.extra_info["kind"] == "x" and "first_call_s" in bench.extra_info
