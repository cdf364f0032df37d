"""The benchmark registry: every benchmarked path is a tested path.

``benchmarks/test_*.py`` (pytest-benchmark) and ``tests/test_bench_cases.py``
both read the case lists below, so what the suite times is exactly what the
tests check. A case is a small description (group, id, implementation,
parameters); ``case.prepare()`` builds its model and data and returns a
``Prepared`` whose ``run()`` is the timed call.

The questions, one group family each:

* ``per_sample_vs_minibatch-b<B>`` -- one pass over a fixed slice of
  Fashion-MNIST-shaped data, ``fit(mode="per_sample")`` (one sample's backprop
  at a time) against ``fit(mode="minibatch")`` (the matrix form), per backend;
* ``fused-<op>-<R>x<C>`` -- a fused primitive of a backend against the base
  class's composed default (``Ops.<op>(ops, ...)``) on the same backend;
* ``epoch-b<B>`` -- one training epoch with SGD(0.1) and Adam(1e-3), per
  backend, PyTorch on the same model and data, and the step's matrix products
  alone (the GEMM floor);
* ``inference-b<B>`` -- ``predict`` throughput, per backend and PyTorch;
* ``compile`` -- a backend's kernel compilation, cold, in a fresh process;
* ``cnn_layer-<layer>-<direction>`` -- one layer of the reference CNN (below),
  forward or backward, on every backend and PyTorch, at the same shapes;
* ``cnn_step-b<B>`` -- one training step of the reference CNN per backend,
  PyTorch's, and the step's 11 matrix products alone (the GEMM floor);
* ``cnn_per_sample_vs_minibatch-b<B>`` -- group 1's question for the CNN.
* ``cnn_inference-b<B>`` -- group 3's question for the CNN (B = 1,024).
* ``lstm_step-b<B>`` -- one training step of the reference LSTM (below) per
  backend, PyTorch's, and the step's matrix products alone (the GEMM floor);
* ``lstm_per_sample_vs_minibatch-b<B>`` -- group 1's question for the LSTM.

The reference CNN (28x28 grey images, 10 classes): Conv2D(1, 32, 3, padding=1)
+ ReLU, MaxPool2D(2), Conv2D(32, 64, 3, padding=1) + ReLU, MaxPool2D(2),
Flatten, Dense(3136, 128) + ReLU, Dense(128, 10); softmax-cross-entropy, Adam.

The reference LSTM reads a 28x28 image row by row (28 steps of 28 features):
LSTM(28, 128), its last step's h to Dense(128, 10); softmax-cross-entropy, Adam.

Sizes: ``SIZES["full"]`` is the real benchmark, ``"quick"`` finishes the
whole suite in under 3 minutes on 2 cores, ``"tiny"`` is what the tests run.
Nothing heavy happens at import: no data, no backends, no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy

MLP_SIZES = (784, 256, 128, 10)
N_FEATURES, N_CLASSES = MLP_SIZES[0], MLP_SIZES[-1]
FASHION_TRAIN = 60_000

#: The fused primitives of the backend seam (``scratchnet.backends.base.Ops``).
FUSED_OPS = ("bias_act", "act_backward_bias", "softmax_cross_entropy", "sgd_update",
             "adam_update", "adamw_update", "rmsprop_update", "adagrad_update", "dropout")
#: Nominal shapes of the fused cases: the MLP's activations at batch 128, and a big one.
FUSED_SHAPES = ((128, 256), (128, 128), (128, 10), (4096, 1000))
#: Learning rates of the end-to-end optimizers (the anchors' settings).
OPTIMIZERS = {"sgd": 0.1, "adam": 1e-3}
#: Group 1 trains with plain SGD at this rate: stable even at batch size 1.
TRAIN_LR = 0.01
#: Methods through which a backend compiles its kernels ahead of use.
COMPILE_METHODS = ("warmup", "compile_kernels")
TORCH_IMPLS = ("torch-cpu", "torch-cuda")
DATA_ENV = "SCRATCHNET_BENCH_DATA"     # "random" forces synthetic data


@dataclasses.dataclass(frozen=True, repr=False)
class Size:
    """How big each group's work is, and how many timed rounds it gets."""

    name: str
    train_slice: int          # group 1: samples per mini-batch pass
    per_sample_slice: int     # group 1: samples per per-sample pass
    batch_sizes: tuple        # group 1 batch sizes
    fused_shapes: dict        # nominal "RxC" label -> actual (rows, cols)
    epoch_samples: int        # group 3: samples in one "epoch"
    epoch_batch_sizes: tuple
    infer_samples: int        # group 3: samples predicted per call
    infer_batch_sizes: tuple
    rounds: int               # timed rounds per benchmark, at least
    min_round_s: float        # fast calls are looped until a round lasts this long
    case_s: float = 0.0       # fast cases get more rounds, up to about this many seconds
    max_rounds: int = 0       # ... and at most this many rounds
    cnn_batch: int = 128      # CNN layers and training step: the batch
    cnn_slice: int = 512      # CNN per-sample vs mini-batch: samples per pass
    cnn_batch_sizes: tuple = (1, 8, 32, 128)
    lstm_batch: int = 128     # LSTM training step: the batch
    lstm_slice: int = 512     # LSTM per-sample vs mini-batch: sequences per pass
    lstm_batch_sizes: tuple = (1, 8, 32, 128)

    def fused_shape(self, label):
        return self.fused_shapes[label]


def _label(shape):
    return f"{shape[0]}x{shape[1]}"


SIZES = {
    "full": Size("full", train_slice=4096, per_sample_slice=4096,
                 batch_sizes=(1, 8, 32, 128, 512, 2048),
                 fused_shapes={_label(s): s for s in FUSED_SHAPES},
                 epoch_samples=FASHION_TRAIN, epoch_batch_sizes=(32, 128, 512),
                 infer_samples=10_000, infer_batch_sizes=(1, 1024),
                 rounds=5, min_round_s=0.05, case_s=2.0, max_rounds=25,
                 cnn_batch=128, cnn_slice=512, cnn_batch_sizes=(1, 8, 32, 128),
                 lstm_batch=128, lstm_slice=512, lstm_batch_sizes=(1, 8, 32, 128)),
    "quick": Size("quick", train_slice=4096, per_sample_slice=512,
                  batch_sizes=(1, 32, 512),
                  fused_shapes={_label(s): s for s in FUSED_SHAPES},
                  epoch_samples=4096, epoch_batch_sizes=(32, 128, 512),
                  infer_samples=2048, infer_batch_sizes=(1, 1024),
                  rounds=3, min_round_s=0.01, case_s=0.3, max_rounds=11,
                  cnn_batch=32, cnn_slice=64, cnn_batch_sizes=(1, 32),
                  lstm_batch=128, lstm_slice=64, lstm_batch_sizes=(1, 32)),
    "tiny": Size("tiny", train_slice=48, per_sample_slice=48,
                 batch_sizes=(1, 8, 32, 128, 512, 2048),
                 fused_shapes={"128x256": (5, 256), "128x128": (5, 128), "128x10": (5, 10),
                               "4096x1000": (33, 1000)},
                 epoch_samples=200, epoch_batch_sizes=(32, 128, 512),
                 infer_samples=40, infer_batch_sizes=(1, 1024),
                 rounds=1, min_round_s=0.0,
                 cnn_batch=4, cnn_slice=8, cnn_batch_sizes=(1, 4),
                 lstm_batch=4, lstm_slice=8, lstm_batch_sizes=(1, 4)),
}


def get_size(name_or_quick):
    """``SIZES[name]``; a bool picks "quick" (True) or "full" (False)."""
    if isinstance(name_or_quick, Size):
        return name_or_quick
    if isinstance(name_or_quick, bool):
        return SIZES["quick" if name_or_quick else "full"]
    return SIZES[name_or_quick]


@dataclasses.dataclass
class Prepared:
    """A case ready to time: ``run()`` does the work once (device synchronised)
    and returns what it produced; ``samples`` is how many samples one call
    processes (None when that means nothing); ``info`` goes to extra_info."""

    run: Callable[[], object]
    info: dict
    samples: int | None = None
    model: object = None
    data: tuple = ()


# ----------------------------------------------------------------- implementations
def backend_names():
    from ..backends import BACKENDS
    return list(BACKENDS)


def backend_unavailable(name):
    """None when scratchnet backend ``name`` runs here, else the reason.

    Unlike ``available_backends()`` this never raises: a backend module that
    is missing from the checkout counts as unavailable, with the reason."""
    from ..backends import BackendUnavailableError, get_ops
    try:
        get_ops(name)
    except BackendUnavailableError as err:
        return str(err)
    except ImportError as err:
        return f"{name} backend cannot be imported: {err}"
    return None


def bench_backends():
    """Names of the scratchnet backends that run here (never raises)."""
    return [name for name in backend_names() if backend_unavailable(name) is None]


@functools.lru_cache(maxsize=None)
def torch_unavailable(impl="torch-cpu"):
    """None when the PyTorch peer ``impl`` ("torch-cpu"/"torch-cuda") runs, else why."""
    from .._compat import module_installed
    if not module_installed("torch"):
        return "PyTorch is not installed"
    if impl == "torch-cuda":
        import torch
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
    return None


def impl_unavailable(impl):
    if impl in TORCH_IMPLS:
        return torch_unavailable(impl)
    return backend_unavailable(impl)


def torch_threads():
    """Threads given to PyTorch: the usable cores (2 on the reference machine),
    the same as OpenBLAS uses for NumPy by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _ops(name):
    from ..backends import get_ops
    return get_ops(name)


# ------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=1)
def _fashion():
    """Fashion-MNIST when ``load_fashion_mnist()`` finds it, else None."""
    from ..datasets import DatasetNotFoundError, load_fashion_mnist
    try:
        return load_fashion_mnist()
    except DatasetNotFoundError:
        return None


def data_source(source="auto"):
    """"fashion-mnist" or "random": what ``make_data(source=...)`` will use."""
    if source == "auto":
        source = os.environ.get(DATA_ENV, "").strip() or "auto"
    if source == "random":
        return "random"
    if source not in ("auto", "fashion-mnist"):
        raise ValueError(f"unknown data source {source!r}; expected auto, fashion-mnist "
                         f"or random")
    if _fashion() is None:
        if source == "fashion-mnist":
            from ..datasets import load_fashion_mnist
            load_fashion_mnist()   # raises DatasetNotFoundError with the places searched
        return "random"
    return "fashion-mnist"


def make_data(n, split="train", seed=0, source="auto"):
    """``(X, y, source)``: n samples, X float32 (n, 784) in [0, 1], y int64 (n,).

    The first n images of the real Fashion-MNIST split when it is installed
    (``source="auto"``), else random data of the same shape and range
    (``source="random"``, or ``$SCRATCHNET_BENCH_DATA=random``).
    """
    src = data_source(source)
    if src == "fashion-mnist":
        (Xtr, ytr), (Xte, yte) = _fashion()
        X, y = (Xtr, ytr) if split == "train" else (Xte, yte)
        if n <= len(X):
            return X[:n], y[:n], src
        reps = -(-n // len(X))
        return numpy.tile(X, (reps, 1))[:n], numpy.tile(y, reps)[:n], src
    rng = numpy.random.default_rng([seed, 0 if split == "train" else 1])
    X = rng.integers(0, 256, size=(n, N_FEATURES), dtype=numpy.uint8)
    X = X.astype(numpy.float32) / numpy.float32(255)
    y = rng.integers(0, N_CLASSES, size=n).astype(numpy.int64)
    return X, y, src


# ----------------------------------------------------------------------- models
def make_mlp(backend="numpy", seed=0, dtype="float32"):
    """The benchmark MLP: 784-256-128-10, ReLU, He-normal weights, zero biases."""
    from .. import Dense, ReLU, Sequential
    sizes = MLP_SIZES
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(a, b, init="he"))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Sequential(layers, seed=seed, dtype=dtype, backend=backend)


def make_loss():
    from .. import SoftmaxCrossEntropy
    return SoftmaxCrossEntropy()


def make_optimizer(name, lr=None):
    from ..optimizers import get_optimizer
    return get_optimizer(name, lr=OPTIMIZERS[name] if lr is None else lr)


def _torch_device(impl):
    return "cuda" if impl == "torch-cuda" else "cpu"


def make_torch_mlp(device="cpu", seed=0):
    """The same MLP in PyTorch: nn.Linear layers with kaiming-normal (fan_in,
    ReLU) weights and zero biases, eager mode."""
    import torch
    from torch import nn
    torch.set_num_threads(torch_threads())
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def make_torch_optimizer(name, params):
    import torch
    lr = OPTIMIZERS[name]
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def _torch_sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def batch_rows(n, batch_size):
    """Rows of each step of a pass over n samples: full batches, then the rest."""
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


# ------------------------------------------------------------------------ cases
@dataclasses.dataclass(frozen=True, repr=False)
class Case:
    """One benchmark: ``group`` (pytest-benchmark group), ``id`` (unique),
    ``impl`` (a scratchnet backend name, "torch-cpu" or "torch-cuda")."""

    kind = "case"
    impl: str
    size: Size

    @property
    def group(self):
        raise NotImplementedError

    @property
    def id(self):
        raise NotImplementedError

    def unavailable(self):
        """None when this case can run here, else the reason."""
        return impl_unavailable(self.impl)

    def skip_reason(self):
        """Why the benchmark suite skips this case (unavailable, or nothing to measure)."""
        return self.unavailable()

    def params(self):
        return {}

    def info(self):
        """What goes into ``benchmark.extra_info`` (the report reads it)."""
        return {"kind": self.kind, "impl": self.impl, "size": self.size.name, **self.params()}

    def prepare(self) -> Prepared:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.id!r}, size={self.size.name!r})"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True, repr=False)
class TrainCase(Case):
    """Group 1: one pass of ``fit`` over a fixed slice, per-sample or mini-batch."""

    kind = "train"
    mode: str = "minibatch"
    batch_size: int = 32

    @property
    def group(self):
        return f"per_sample_vs_minibatch-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-{self.mode}-b{self.batch_size}"

    @property
    def n_samples(self):
        s = self.size
        return s.per_sample_slice if self.mode == "per_sample" else s.train_slice

    def params(self):
        return {"mode": self.mode, "batch_size": self.batch_size, "optimizer": "sgd",
                "lr": TRAIN_LR}

    def prepare(self):
        ops = _ops(self.impl)
        X, y, src = make_data(self.n_samples, "train")
        model = make_mlp(self.impl)
        Xd, yd = ops.asarray(X), ops.asarray(y)
        loss, opt = make_loss(), make_optimizer("sgd", TRAIN_LR)

        def run():
            hist = model.fit(Xd, yd, loss=loss, optimizer=opt, epochs=1,
                             batch_size=self.batch_size, mode=self.mode)
            ops.synchronize()
            return hist
        return Prepared(run, {**self.info(), "data": src}, len(X), model, (Xd, yd))


def fused_pair(op, ops, shape, seed=0):
    """``(fused, composed)``: zero-argument callables that run primitive ``op``
    on backend ``ops`` -- its own method, and the base class's composed
    default ``Ops.<op>(ops, ...)`` -- on equal but separate inputs of
    ``shape`` (rows, cols). Each returns the arrays it produced or updated
    (synchronised), so the two can be compared."""
    from ..backends.base import Ops
    if op not in FUSED_OPS:
        raise ValueError(f"unknown fused op {op!r}; expected one of {FUSED_OPS}")
    rng = numpy.random.default_rng(seed)
    n, m = shape
    f32 = numpy.float32

    def normal(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(f32)

    if op == "bias_act":
        host = {"Z": normal(n, m), "b": normal(m, scale=0.1)}
    elif op == "act_backward_bias":
        host = {"dY": normal(n, m), "Y": numpy.maximum(normal(n, m), 0)}
    elif op == "softmax_cross_entropy":
        host = {"logits": normal(n, m, scale=3.0),
                "labels": rng.integers(0, m, size=n).astype(numpy.int64)}
    elif op == "sgd_update":
        host = {"param": normal(n, m, scale=0.05), "grad": normal(n, m, scale=0.01),
                "velocity": normal(n, m, scale=0.01)}
    elif op == "adam_update":
        host = {"param": normal(n, m, scale=0.05), "grad": normal(n, m, scale=0.01),
                "m": normal(n, m, scale=0.01), "v": numpy.abs(normal(n, m, scale=1e-4))}
    elif op == "adamw_update":
        host = {"param": normal(n, m, scale=0.05), "grad": normal(n, m, scale=0.01),
                "m": normal(n, m, scale=0.01), "v": numpy.abs(normal(n, m, scale=1e-4))}
    elif op == "rmsprop_update":
        host = {"param": normal(n, m, scale=0.05), "grad": normal(n, m, scale=0.01),
                "square_avg": numpy.abs(normal(n, m, scale=1e-4))}
    elif op == "adagrad_update":
        host = {"param": normal(n, m, scale=0.05), "grad": normal(n, m, scale=0.01),
                "state_sum": numpy.abs(normal(n, m, scale=1e-3))}
    else:  # dropout
        host = {"X": normal(n, m)}

    def make(call):
        a = {k: ops.asarray(v.copy()) for k, v in host.items()}
        if op == "bias_act":
            out = ops.empty((n, m))

            def run():
                r = call(a["Z"], a["b"], "relu", out=out)
                ops.synchronize()
                return (r,)
        elif op == "act_backward_bias":
            out = ops.empty((n, m))

            def run():
                r = call(a["dY"], a["Y"], "relu", out=out)
                ops.synchronize()
                return tuple(r)
        elif op == "softmax_cross_entropy":
            def run():
                r = call(a["logits"], a["labels"])
                ops.synchronize()
                return tuple(r)
        elif op == "sgd_update":
            def run():
                call(a["param"], a["grad"], a["velocity"], 0.01, momentum=0.9)
                ops.synchronize()
                return a["param"], a["velocity"]
        elif op == "adam_update":
            def run():
                # a fixed step keeps every call's scalars the same
                call(a["param"], a["grad"], a["m"], a["v"], 10, 1e-3)
                ops.synchronize()
                return a["param"], a["m"], a["v"]
        elif op == "adamw_update":
            def run():
                call(a["param"], a["grad"], a["m"], a["v"], 10, 1e-3)  # weight decay 1e-2
                ops.synchronize()
                return a["param"], a["m"], a["v"]
        elif op == "rmsprop_update":
            def run():
                call(a["param"], a["grad"], a["square_avg"], 1e-3)  # PyTorch's defaults
                ops.synchronize()
                return a["param"], a["square_avg"]
        elif op == "adagrad_update":
            def run():
                call(a["param"], a["grad"], a["state_sum"], 10, 1e-2)
                ops.synchronize()
                return a["param"], a["state_sum"]
        else:
            drng = ops.make_rng(seed)

            def run():
                r = call(a["X"], 0.5, drng)
                ops.synchronize()
                return tuple(r)
        run.inputs = a
        return run

    fused = make(getattr(ops, op))
    composed = make(functools.partial(getattr(Ops, op), ops))
    return fused, composed


def is_fused(ops, op):
    """True when backend ``ops`` overrides the composed default of ``op``."""
    from ..backends.base import Ops
    return getattr(type(ops), op) is not getattr(Ops, op)


@dataclasses.dataclass(frozen=True, repr=False)
class FusedCase(Case):
    """Group 2: a backend's fused primitive or the base class's composed default."""

    kind = "fused"
    op: str = "bias_act"
    shape_label: str = "128x256"
    variant: str = "fused"      # or "composed"

    @property
    def group(self):
        return f"fused-{self.op}-{self.shape_label}"

    @property
    def id(self):
        return f"{self.impl}-{self.op}-{self.shape_label}-{self.variant}"

    @property
    def shape(self):
        return self.size.fused_shape(self.shape_label)

    def skip_reason(self):
        why = self.unavailable()
        if why is None and not is_fused(_ops(self.impl), self.op):
            why = (f"the {self.impl} backend has no fused {self.op}: it runs the composed "
                   f"default, so there is nothing to compare")
        return why

    def params(self):
        rows, cols = self.shape
        return {"op": self.op, "shape": self.shape_label, "rows": rows, "cols": cols,
                "variant": self.variant}

    def prepare(self):
        fused, composed = fused_pair(self.op, _ops(self.impl), self.shape)
        run = fused if self.variant == "fused" else composed
        return Prepared(run, self.info())


@dataclasses.dataclass(frozen=True, repr=False)
class EpochCase(Case):
    """Group 3/4: one training epoch, scratchnet on a backend or PyTorch."""

    kind = "epoch"
    batch_size: int = 128
    optimizer: str = "sgd"

    @property
    def group(self):
        return f"epoch-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-{self.optimizer}-b{self.batch_size}"

    def params(self):
        return {"batch_size": self.batch_size, "optimizer": self.optimizer,
                "lr": OPTIMIZERS[self.optimizer]}

    def prepare(self):
        X, y, src = make_data(self.size.epoch_samples, "train")
        info = {**self.info(), "data": src}
        if self.impl in TORCH_IMPLS:
            return self._prepare_torch(X, y, info)
        ops = _ops(self.impl)
        model = make_mlp(self.impl)
        Xd, yd = ops.asarray(X), ops.asarray(y)
        loss, opt = make_loss(), make_optimizer(self.optimizer)

        def run():
            hist = model.fit(Xd, yd, loss=loss, optimizer=opt, epochs=1,
                             batch_size=self.batch_size)
            ops.synchronize()
            return hist.history["loss"][-1]
        return Prepared(run, info, len(X), model, (Xd, yd))

    def _prepare_torch(self, X, y, info):
        import torch
        device = _torch_device(self.impl)
        model = make_torch_mlp(device)
        opt = make_torch_optimizer(self.optimizer, model.parameters())
        Xd = torch.from_numpy(numpy.ascontiguousarray(X)).to(device)
        yd = torch.from_numpy(numpy.ascontiguousarray(y)).to(device)
        gen = torch.Generator(device=device).manual_seed(0)
        loss_fn = torch.nn.CrossEntropyLoss()
        n, bs = len(X), self.batch_size
        info["threads"] = torch.get_num_threads()

        def run():
            perm = torch.randperm(n, device=device, generator=gen)
            total = torch.zeros((), device=device)
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                xb, yb = Xd[idx], yd[idx]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            _torch_sync(device)
            return float(total) / n
        return Prepared(run, info, n, model, (Xd, yd))


@dataclasses.dataclass(frozen=True, repr=False)
class FloorCase(Case):
    """Group 4: the matrix products of every step of an epoch, nothing else.

    Per step, for batch B: forward X@W1, h1@W2, h2@W3; weight gradients
    X.T@d1, h1.T@d2, h2.T@d3; input gradients d3@W3.T, d2@W2.T (none for
    layer 1) -- 8 products, as the training step does them (transposed
    views, preallocated outputs)."""

    kind = "floor"
    batch_size: int = 128

    @property
    def group(self):
        return f"epoch-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-gemm_floor-b{self.batch_size}"

    def params(self):
        return {"batch_size": self.batch_size, "optimizer": None, "gemms_per_step": 8}

    def prepare(self):
        n = self.size.epoch_samples
        rows_per_step = batch_rows(n, self.batch_size)
        rng = numpy.random.default_rng(0)
        s0, s1, s2, s3 = MLP_SIZES

        def host(*shape):
            return rng.standard_normal(shape).astype(numpy.float32)

        Ws = [host(s0, s1), host(s1, s2), host(s2, s3)]
        if self.impl in TORCH_IMPLS:
            import torch
            torch.set_num_threads(torch_threads())
            device = _torch_device(self.impl)

            def conv(a):
                return torch.from_numpy(a).to(device)

            def mm(a, b, out):
                return torch.matmul(a, b, out=out)

            def empty(shape):
                return torch.empty(shape, device=device)

            def sync():
                _torch_sync(device)
        else:
            ops = _ops(self.impl)
            conv, mm, sync = ops.asarray, ops.matmul, ops.synchronize

            def empty(shape):
                return ops.empty(shape)
        W1, W2, W3 = (conv(w) for w in Ws)
        steps = {}
        for rows in sorted(set(rows_per_step)):
            a = {k: conv(host(rows, c)) for k, c in
                 (("X", s0), ("h1", s1), ("h2", s2), ("d1", s1), ("d2", s2), ("d3", s3))}
            out = {"z1": empty((rows, s1)), "z2": empty((rows, s2)), "z3": empty((rows, s3)),
                   "dW1": empty((s0, s1)), "dW2": empty((s1, s2)), "dW3": empty((s2, s3)),
                   "dX3": empty((rows, s2)), "dX2": empty((rows, s1))}
            steps[rows] = (a, out)

        def run():
            for rows in rows_per_step:
                a, o = steps[rows]
                mm(a["X"], W1, o["z1"])
                mm(a["h1"], W2, o["z2"])
                mm(a["h2"], W3, o["z3"])
                mm(a["h2"].T, a["d3"], o["dW3"])
                mm(a["d3"], W3.T, o["dX3"])
                mm(a["h1"].T, a["d2"], o["dW2"])
                mm(a["d2"], W2.T, o["dX2"])
                mm(a["X"].T, a["d1"], o["dW1"])
            sync()
            return steps
        info = {**self.info(), "steps": len(rows_per_step)}
        return Prepared(run, info, n)


@dataclasses.dataclass(frozen=True, repr=False)
class InferenceCase(Case):
    """Group 3: ``predict`` over a fixed set of test images at a batch size."""

    kind = "inference"
    batch_size: int = 1

    @property
    def group(self):
        return f"inference-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-predict-b{self.batch_size}"

    def params(self):
        return {"batch_size": self.batch_size}

    #: The network and its test inputs: (n, split) -> (X, y, source), backend ->
    #: model, device -> PyTorch model.
    make_inputs = staticmethod(make_data)
    make_model = staticmethod(make_mlp)
    make_torch_model = staticmethod(make_torch_mlp)

    def prepare(self):
        X, _, src = self.make_inputs(self.size.infer_samples, "test")
        info = {**self.info(), "data": src}
        bs = self.batch_size
        if self.impl in TORCH_IMPLS:
            import torch
            device = _torch_device(self.impl)
            model = self.make_torch_model(device).eval()
            Xd = torch.from_numpy(numpy.ascontiguousarray(X)).to(device)
            info["threads"] = torch.get_num_threads()

            def run():
                with torch.inference_mode():
                    outs = [model(Xd[i:i + bs]) for i in range(0, len(X), bs)]
                    return torch.cat(outs).cpu().numpy()
            return Prepared(run, info, len(X), model, (Xd,))
        ops = _ops(self.impl)
        model = self.make_model(self.impl)
        Xd = ops.asarray(X)

        def run():
            return model.predict(Xd, batch_size=bs)   # returns host arrays: synchronised
        return Prepared(run, info, len(X), model, (Xd,))


def compile_method(ops):
    """The name of ``ops``'s ahead-of-time compile method, or None."""
    for name in COMPILE_METHODS:
        if callable(getattr(ops, name, None)):
            return name
    return None


def run_compile(ops, method):
    """Call ``ops.<method>`` for float32 (the dtype every benchmark uses) and wait
    for the device; returns what the method returned."""
    fn = getattr(ops, method)
    try:
        takes_args = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_args = False
    result = fn("float32") if takes_args else fn()
    ops.synchronize()
    return result


_COMPILE_SNIPPET = """\
import sys, time
t0 = time.perf_counter()
from scratchnet.backends import get_ops
from scratchnet.bench.cases import run_compile
ops = get_ops(sys.argv[1])
t1 = time.perf_counter()
run_compile(ops, sys.argv[2])
t2 = time.perf_counter()
print("SCRATCHNET_COMPILE", t1 - t0, t2 - t1)
"""


def time_compile(backend, method, cache_dir):
    """(load_s, compile_s) of ``ops.<method>()`` in a fresh Python process whose
    Numba and CuPy kernel caches live in ``cache_dir``."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), CUPY_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                          if p))
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET, backend, method], env=env,
                          capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("SCRATCHNET_COMPILE"):
            _, load_s, compile_s = line.split()
            return float(load_s), float(compile_s)
    raise RuntimeError(f"timing {backend}.{method}() failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-2000:]}")


@dataclasses.dataclass(frozen=True, repr=False)
class CompileCase(Case):
    """A backend's kernel compilation (``warmup()``/``compile_kernels()``),
    cold (empty kernel cache) then from the cache, each in a fresh process.

    At the "tiny" size it calls the method in this process instead."""

    kind = "compile"

    @property
    def group(self):
        return "compile"

    @property
    def id(self):
        return f"{self.impl}-compile"

    def skip_reason(self):
        why = self.unavailable()
        if why is None and compile_method(_ops(self.impl)) is None:
            why = f"the {self.impl} backend has no compile step ({' / '.join(COMPILE_METHODS)})"
        return why

    def prepare(self):
        ops = _ops(self.impl)
        method = compile_method(ops)
        info = {**self.info(), "method": method}
        if self.size.name == "tiny" or method is None:
            def run():
                if method is not None:
                    run_compile(ops, method)
                ops.synchronize()
                return method
            return Prepared(run, info)

        def run():
            with tempfile.TemporaryDirectory(prefix="scratchnet-bench-cache-") as cache:
                info["import_s"], info["compile_s"] = time_compile(self.impl, method, cache)
                _, info["cached_compile_s"] = time_compile(self.impl, method, cache)
            return info["compile_s"]
        return Prepared(run, info)


# ------------------------------------------------- the reference networks' cases
@dataclasses.dataclass(frozen=True)
class ReferenceNet:
    """What the step, GEMM-floor and per-sample cases of a reference network
    need: ``name`` ("cnn", "lstm": the prefix of the case kinds and ids, and of
    the ``Size`` fields ``<name>_batch``, ``<name>_slice``,
    ``<name>_batch_sizes``), its learning rate, the network in scratchnet
    (``make(backend)``) and in PyTorch (``make_torch(device)``), its data
    (``make_data(n)`` -> (X, y, source)), the products of one step
    (``gemm_shapes(batch)``), and what else its step case reports."""
    name: str
    lr: float
    make: object
    make_torch: object
    make_data: object
    gemm_shapes: object
    step_params: tuple = ()


class _NetCase(Case):
    """A case of the reference network ``net`` (a class attribute)."""

    net = None      # a ReferenceNet, set by each network's subclasses

    @property
    def batch(self):
        return getattr(self.size, f"{self.net.name}_batch")


@dataclasses.dataclass(frozen=True, repr=False)
class NetStepCase(_NetCase):
    """One training step of a reference network (Adam) at its batch size:
    forward, loss, backward (no input gradient for the first layer), update;
    PyTorch's eager step for the torch implementations."""

    @property
    def kind(self):
        return f"{self.net.name}_step"

    @property
    def group(self):
        return f"{self.net.name}_step-b{self.batch}"

    @property
    def id(self):
        return f"{self.impl}-{self.net.name}_step-b{self.batch}"

    def params(self):
        return {"batch_size": self.batch, **dict(self.net.step_params), "optimizer": "adam",
                "lr": self.net.lr}

    def prepare(self):
        X, y, src = self.net.make_data(self.batch)
        info = {**self.info(), "data": src}
        if self.impl in TORCH_IMPLS:
            import torch
            device = _torch_device(self.impl)
            model = self.net.make_torch(device)
            opt = torch.optim.Adam(model.parameters(), lr=self.net.lr)
            loss_fn = torch.nn.CrossEntropyLoss()
            Xd, yd = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
            info["threads"] = torch.get_num_threads()

            def run():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(Xd), yd)
                loss.backward()
                opt.step()
                _torch_sync(device)
                return float(loss.detach())
            return Prepared(run, info, len(X), model, (Xd, yd))
        from ..optimizers import Adam
        from ..training import MatrixStep
        ops = _ops(self.impl)
        model = self.net.make(self.impl)
        step = MatrixStep(model, make_loss())
        opt = Adam(self.net.lr)
        Xd, yd = ops.asarray(X), ops.asarray(y)

        def run():
            loss, _ = step(Xd, yd)
            opt.step(model)
            ops.synchronize()
            return float(ops.to_host(loss))
        return Prepared(run, info, len(X), model, (Xd, yd))


@dataclasses.dataclass(frozen=True, repr=False)
class NetFloorCase(_NetCase):
    """A reference network's step's matrix products alone (``net.gemm_shapes``),
    through the implementation's matmul into preallocated outputs."""

    @property
    def kind(self):
        return f"{self.net.name}_floor"

    @property
    def group(self):
        return f"{self.net.name}_step-b{self.batch}"

    @property
    def id(self):
        return f"{self.impl}-{self.net.name}_gemm_floor-b{self.batch}"

    def params(self):
        return {"batch_size": self.batch, "gemms_per_step": len(self.net.gemm_shapes(self.batch))}

    def prepare(self):
        return gemm_floor(self.impl, self.net.gemm_shapes(self.batch), self.info(), self.batch)


@dataclasses.dataclass(frozen=True, repr=False)
class NetTrainCase(_NetCase):
    """Group 1's question for a reference network: one pass of ``fit`` over
    ``size.<name>_slice`` samples, per sample or as a mini-batch, SGD(0.01)."""

    mode: str = "minibatch"
    batch_size: int = 32

    @property
    def kind(self):
        return f"{self.net.name}_train"

    @property
    def group(self):
        return f"{self.net.name}_per_sample_vs_minibatch-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-{self.net.name}-{self.mode}-b{self.batch_size}"

    def params(self):
        return {"mode": self.mode, "batch_size": self.batch_size, "optimizer": "sgd",
                "lr": TRAIN_LR}

    def prepare(self):
        ops = _ops(self.impl)
        X, y, src = self.net.make_data(getattr(self.size, f"{self.net.name}_slice"))
        model = self.net.make(self.impl)
        Xd, yd = ops.asarray(X), ops.asarray(y)
        loss, opt = make_loss(), make_optimizer("sgd", TRAIN_LR)

        def run():
            hist = model.fit(Xd, yd, loss=loss, optimizer=opt, epochs=1,
                             batch_size=self.batch_size, mode=self.mode)
            ops.synchronize()
            return hist
        return Prepared(run, {**self.info(), "data": src}, len(X), model, (Xd, yd))


def net_step_cases(case_types, size):
    """The step and GEMM-floor cases (``case_types``) of every implementation."""
    size = get_size(size)
    impls = [*backend_names(), *TORCH_IMPLS]
    return [case(impl, size) for case in case_types for impl in impls]


def net_train_cases(case_type, size):
    """Per-sample and mini-batch passes of every backend at the network's batch sizes."""
    size = get_size(size)
    return [case_type(b, size, mode=m, batch_size=bs) for b in backend_names()
            for bs in getattr(size, f"{case_type.net.name}_batch_sizes")
            for m in ("per_sample", "minibatch")]


# ---------------------------------------------------------------- the reference CNN
#: name -> (kind, input (C, H, W), output channels): the layers of the reference CNN
#: that the ``cnn_layer`` cases time (a conv includes its fused ReLU).
CNN_LAYERS = {"conv1": ("conv", (1, 28, 28), 32), "pool1": ("pool", (32, 28, 28), 32),
              "conv2": ("conv", (32, 14, 14), 64), "pool2": ("pool", (64, 14, 14), 64)}
CNN_LR = 1e-3


def make_cnn(backend="numpy", seed=0, dtype="float32"):
    """The reference CNN: He-normal weights (Conv2D's default), zero biases."""
    from .. import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
    return Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2),
                       Conv2D(32, 64, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(64 * 7 * 7, 128, init="he"), ReLU(), Dense(128, 10, init="he")],
                      seed=seed, dtype=dtype, backend=backend)


def make_torch_cnn(device="cpu", seed=0):
    """The same CNN in PyTorch (kaiming-normal fan_in weights, zero biases), eager."""
    import torch
    from torch import nn
    torch.set_num_threads(torch_threads())
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model.to(device)


def make_images(n, split="train", seed=0, source="auto"):
    """``(X, y, source)`` as ``make_data``, X as (n, 1, 28, 28) images."""
    X, y, src = make_data(n, split, seed, source)
    return numpy.ascontiguousarray(X).reshape(n, 1, 28, 28), y, src


def cnn_layer_inputs(layer, batch, seed=0):
    """Host float32 inputs of a ``CNN_LAYERS`` layer at batch ``batch``: X, and
    W and b for a conv; dY, the gradient of its output."""
    kind, (c, h, w), o = CNN_LAYERS[layer]
    rng = numpy.random.default_rng(seed)
    f32 = numpy.float32
    X = rng.standard_normal((batch, c, h, w)).astype(f32)
    if layer == "conv1":
        X = rng.random((batch, c, h, w), dtype=f32)         # an image in [0, 1)
    elif kind == "pool" or c > 1:
        X = numpy.maximum(X, 0)                              # after a ReLU
    out = {"X": X}
    if kind == "conv":
        out["W"] = (rng.standard_normal((o, c, 3, 3)) * (2 / (9 * c)) ** 0.5).astype(f32)
        out["b"] = (rng.standard_normal(o) * 0.1).astype(f32)
        out["dY"] = rng.standard_normal((batch, o, h, w)).astype(f32)
    else:
        out["dY"] = rng.standard_normal((batch, o, h // 2, w // 2)).astype(f32)
    return out


@dataclasses.dataclass(frozen=True, repr=False)
class CnnLayerCase(Case):
    """One layer of the reference CNN, forward or backward, at ``size.cnn_batch``.

    A conv is Conv2D with its fused ReLU (``ops.conv2d_forward(..., "relu")``;
    PyTorch: ``relu(conv2d(...))``); its backward gives dW, db and, except for
    the first layer, dX. A pool is 2x2 max pooling. The backward is timed alone,
    from one forward made in ``prepare`` (PyTorch: ``autograd.grad`` with the
    graph kept)."""

    kind = "cnn_layer"
    layer: str = "conv2"
    direction: str = "forward"

    @property
    def group(self):
        return f"cnn_layer-{self.layer}-{self.direction}"

    @property
    def id(self):
        return f"{self.impl}-{self.layer}-{self.direction}"

    def params(self):
        kind, chw, o = CNN_LAYERS[self.layer]
        return {"layer": self.layer, "direction": self.direction, "layer_kind": kind,
                "batch_size": self.size.cnn_batch, "input": list(chw), "out_channels": o}

    def prepare(self):
        host = cnn_layer_inputs(self.layer, self.size.cnn_batch)
        kind = CNN_LAYERS[self.layer][0]
        need_dX = self.layer != "conv1"
        if self.impl in TORCH_IMPLS:
            return self._prepare_torch(host, kind, need_dX)
        ops = _ops(self.impl)
        a = {k: ops.asarray(v) for k, v in host.items()}
        if kind == "conv":
            def forward():
                return ops.conv2d_forward(a["X"], a["W"], a["b"], (1, 1), (1, 1), "relu")
        else:
            def forward():
                return ops.maxpool2d_forward(a["X"], (2, 2), (2, 2))
        if self.direction == "forward":
            def run():
                Y = forward()[0]
                ops.synchronize()
                return (Y,)
        else:
            Y, ctx = forward()
            if kind == "conv":
                def run():
                    r = ops.conv2d_backward(a["dY"], Y, ctx, a["W"], "relu", need_dX=need_dX)
                    ops.synchronize()
                    return r
            else:
                def run():
                    r = ops.maxpool2d_backward(a["dY"], ctx)
                    ops.synchronize()
                    return (r,)
        run.inputs = a
        return Prepared(run, self.info(), self.size.cnn_batch)

    def _prepare_torch(self, host, kind, need_dX):
        import torch
        F = torch.nn.functional
        torch.set_num_threads(torch_threads())
        device = _torch_device(self.impl)
        t = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
        grads = [t["X"]] if need_dX else []
        if kind == "conv":
            grads += [t["W"], t["b"]]
        for g in grads:
            g.requires_grad_(True)

        def forward():
            if kind == "conv":
                return F.relu(F.conv2d(t["X"], t["W"], t["b"], padding=1))
            return F.max_pool2d(t["X"], 2)

        if self.direction == "forward":
            def run():
                Y = forward()
                _torch_sync(device)
                return (Y,)
        else:
            Y = forward()

            def run():
                r = torch.autograd.grad(Y, grads, t["dY"], retain_graph=True)
                _torch_sync(device)
                return r
        info = {**self.info(), "threads": torch.get_num_threads()}
        return Prepared(run, info, self.size.cnn_batch)


def cnn_gemm_shapes(batch):
    """The reference CNN step's 11 products ``(a, b)``, as the Numba backend runs
    them (a conv's columns are (C*kh*kw, B*Ho*Wo)): (name, a shape, b shape,
    whether a and b are transposed views)."""
    p1, p2 = batch * 28 * 28, batch * 14 * 14
    return [("conv1", (32, 9), (9, p1), ""), ("conv1.dW", (32, p1), (p1, 9), "b"),
            ("conv2", (64, 288), (288, p2), ""), ("conv2.dW", (64, p2), (p2, 288), "b"),
            ("conv2.dX", (288, 64), (64, p2), "a"),
            ("dense1", (batch, 3136), (3136, 128), ""), ("dense1.dW", (3136, batch), (batch, 128), "a"),
            ("dense1.dX", (batch, 128), (128, 3136), "b"),
            ("dense2", (batch, 128), (128, 10), ""), ("dense2.dW", (128, batch), (batch, 10), "a"),
            ("dense2.dX", (batch, 10), (10, 128), "b")]


def gemm_floor(impl, shapes, info, samples):
    """A ``Prepared`` running the products ``shapes`` (as ``cnn_gemm_shapes`` gives
    them) through ``impl``'s matmul into preallocated outputs, random float32 inputs."""
    rng = numpy.random.default_rng(0)
    if impl in TORCH_IMPLS:
        import torch
        torch.set_num_threads(torch_threads())
        device = _torch_device(impl)

        def conv(a):
            return torch.from_numpy(a).to(device)

        def mm(a, b, out):
            return torch.matmul(a, b, out=out)

        def empty(shape):
            return torch.empty(shape, device=device)

        def sync():
            _torch_sync(device)
    else:
        ops = _ops(impl)
        conv, mm, sync = ops.asarray, ops.matmul, ops.synchronize

        def empty(shape):
            return ops.empty(shape)
    products = []
    for _, sa, sb, trans in shapes:
        a = conv(rng.standard_normal(sa[::-1] if "a" in trans else sa).astype(numpy.float32))
        b = conv(rng.standard_normal(sb[::-1] if "b" in trans else sb).astype(numpy.float32))
        products.append((a.T if "a" in trans else a, b.T if "b" in trans else b,
                         empty((sa[0], sb[1]))))

    def run():
        for a, b, out in products:
            mm(a, b, out)
        sync()
        return products
    return Prepared(run, info, samples)


CNN = ReferenceNet("cnn", CNN_LR, make_cnn, make_torch_cnn, make_images, cnn_gemm_shapes)


@dataclasses.dataclass(frozen=True, repr=False)
class CnnStepCase(NetStepCase):
    """One training step of the reference CNN (Adam 1e-3) at ``size.cnn_batch``."""
    net = CNN


@dataclasses.dataclass(frozen=True, repr=False)
class CnnFloorCase(NetFloorCase):
    """The reference CNN step's 11 matrix products alone (``cnn_gemm_shapes``)."""
    net = CNN


@dataclasses.dataclass(frozen=True, repr=False)
class CnnTrainCase(NetTrainCase):
    """One pass of ``fit`` over ``size.cnn_slice`` images, per sample or mini-batch."""
    net = CNN


@dataclasses.dataclass(frozen=True, repr=False)
class CnnInferenceCase(InferenceCase):
    """Group 3's question for the reference CNN: ``predict`` over the test
    images, as (N, 1, 28, 28), at a batch size."""

    kind = "cnn_inference"
    batch_size: int = 1024
    make_inputs = staticmethod(make_images)
    make_model = staticmethod(make_cnn)
    make_torch_model = staticmethod(make_torch_cnn)

    @property
    def group(self):
        return f"cnn_inference-b{self.batch_size}"

    @property
    def id(self):
        return f"{self.impl}-cnn-predict-b{self.batch_size}"


def cnn_layer_cases(size):
    size = get_size(size)
    return [CnnLayerCase(impl, size, layer=layer, direction=d) for layer in CNN_LAYERS
            for d in ("forward", "backward") for impl in [*backend_names(), *TORCH_IMPLS]]


def cnn_step_cases(size):
    return net_step_cases((CnnStepCase, CnnFloorCase), size)


def cnn_train_cases(size):
    return net_train_cases(CnnTrainCase, size)


def cnn_inference_cases(size):
    """The CNN's inference at the largest inference batch size (1,024)."""
    size = get_size(size)
    return [CnnInferenceCase(impl, size, batch_size=max(size.infer_batch_sizes))
            for impl in [*backend_names(), *TORCH_IMPLS]]


# --------------------------------------------------------------- the reference LSTM
#: The reference LSTM reads a 28x28 image row by row: 28 steps of 28 features,
#: LSTM(28, 128) (the last step's h), Dense(128, 10); softmax-cross-entropy, Adam.
LSTM_STEPS, LSTM_FEATURES, LSTM_HIDDEN = 28, 28, 128
LSTM_LR = 1e-3


def make_lstm(backend="numpy", seed=0, dtype="float32"):
    """The reference LSTM: PyTorch's initialisation (uniform(-1/sqrt(H), 1/sqrt(H)))."""
    from .. import LSTM, Dense, Sequential
    return Sequential([LSTM(LSTM_FEATURES, LSTM_HIDDEN), Dense(LSTM_HIDDEN, N_CLASSES)],
                      seed=seed, dtype=dtype, backend=backend)


def make_torch_lstm(device="cpu", seed=0):
    """The same network in PyTorch (nn.LSTM, batch first, its default
    initialisation, then nn.Linear on the last step's output), eager."""
    import torch
    from torch import nn
    torch.set_num_threads(torch_threads())
    torch.manual_seed(seed)

    class LastStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(LSTM_FEATURES, LSTM_HIDDEN, batch_first=True)
            self.fc = nn.Linear(LSTM_HIDDEN, N_CLASSES)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])
    return LastStep().to(device)


def make_sequences(n, split="train", seed=0, source="auto"):
    """``(X, y, source)`` as ``make_data``, X as (n, 28, 28) sequences: an image's rows."""
    X, y, src = make_data(n, split, seed, source)
    return numpy.ascontiguousarray(X).reshape(n, LSTM_STEPS, LSTM_FEATURES), y, src


def lstm_gemm_shapes(batch, steps=LSTM_STEPS):
    """The reference LSTM step's products ``(a, b)`` as the Numba backend runs
    them: (name, a shape, b shape, whether a and b are transposed views). The
    recurrence has steps-1 products each way (h_0 = 0 needs none, nor does
    dL/dh_0); dU and dW are one product each over all batch*steps rows; the
    first layer needs no input gradient."""
    rows, f, h, g = batch * steps, LSTM_FEATURES, LSTM_HIDDEN, 4 * LSTM_HIDDEN
    return ([("input", (rows, f), (f, g), "")]
            + [(f"h{t}.U", (batch, h), (h, g), "") for t in range(1, steps)]
            + [(f"dZ{t}.UT", (batch, g), (g, h), "b") for t in range(1, steps)]
            + [("dU", (h, rows), (rows, g), "a"), ("dW", (f, rows), (rows, g), "a"),
               ("dense", (batch, h), (h, N_CLASSES), ""),
               ("dense.dW", (h, batch), (batch, N_CLASSES), "a"),
               ("dense.dX", (batch, N_CLASSES), (N_CLASSES, h), "b")])


LSTM_NET = ReferenceNet("lstm", LSTM_LR, make_lstm, make_torch_lstm, make_sequences,
                       lstm_gemm_shapes, step_params=(("steps", LSTM_STEPS),
                                                      ("hidden", LSTM_HIDDEN)))


@dataclasses.dataclass(frozen=True, repr=False)
class LstmStepCase(NetStepCase):
    """One training step of the reference LSTM (Adam 1e-3) at ``size.lstm_batch``."""
    net = LSTM_NET


@dataclasses.dataclass(frozen=True, repr=False)
class LstmFloorCase(NetFloorCase):
    """The reference LSTM step's matrix products alone (``lstm_gemm_shapes``)."""
    net = LSTM_NET


@dataclasses.dataclass(frozen=True, repr=False)
class LstmTrainCase(NetTrainCase):
    """One pass of ``fit`` over ``size.lstm_slice`` sequences, per sample or mini-batch."""
    net = LSTM_NET


def lstm_step_cases(size):
    return net_step_cases((LstmStepCase, LstmFloorCase), size)


def lstm_train_cases(size):
    return net_train_cases(LstmTrainCase, size)


# -------------------------------------------------------------------- registry
def training_cases(size):
    size = get_size(size)
    return [TrainCase(b, size, mode=m, batch_size=bs) for b in backend_names()
            for bs in size.batch_sizes for m in ("per_sample", "minibatch")]


def fused_cases(size):
    size = get_size(size)
    return [FusedCase(b, size, op=op, shape_label=label, variant=v) for b in backend_names()
            for op in FUSED_OPS for label in size.fused_shapes for v in ("fused", "composed")]


def epoch_cases(size):
    size = get_size(size)
    out = []
    for bs in size.epoch_batch_sizes:
        for impl in [*backend_names(), *TORCH_IMPLS]:
            out += [EpochCase(impl, size, batch_size=bs, optimizer=o) for o in OPTIMIZERS]
            out.append(FloorCase(impl, size, batch_size=bs))
    return out


def inference_cases(size):
    size = get_size(size)
    return [InferenceCase(impl, size, batch_size=bs) for bs in size.infer_batch_sizes
            for impl in [*backend_names(), *TORCH_IMPLS]]


def compile_cases(size):
    size = get_size(size)
    return [CompileCase(b, size) for b in backend_names()]


#: group family -> case-list maker; the benchmarks and the tests read this.
REGISTRY = {
    "train": training_cases,
    "fused": fused_cases,
    "epoch": epoch_cases,
    "inference": inference_cases,
    "compile": compile_cases,
    "cnn_layer": cnn_layer_cases,
    "cnn_step": cnn_step_cases,
    "cnn_train": cnn_train_cases,
    "cnn_inference": cnn_inference_cases,
    "lstm_step": lstm_step_cases,
    "lstm_train": lstm_train_cases,
}


def all_cases(size):
    return [case for make in REGISTRY.values() for case in make(size)]


# --------------------------------------------------------------------- timing
def time_case(benchmark, prepared, size):
    """Time ``prepared.run`` with pytest-benchmark, compilation kept out.

    One explicit warm call first (JIT and kernel compilation, allocations;
    its time goes to ``extra_info["first_call_s"]``); calls shorter than
    ``size.min_round_s`` are looped so each round lasts about that long, and
    short cases get more rounds (up to ``size.max_rounds`` or about
    ``size.case_s`` seconds) so that a burst of foreign load on a shared
    machine moves the median less. Records samples/s (from the median) in
    ``extra_info``.
    """
    size = get_size(size)
    t0 = time.perf_counter()
    prepared.run()
    first = time.perf_counter() - t0
    t = first
    if t < size.min_round_s:           # the first call may include compilation
        t0 = time.perf_counter()
        prepared.run()
        t = time.perf_counter() - t0
    iterations = 1
    if t < size.min_round_s:
        iterations = max(1, min(100_000, round(size.min_round_s / max(t, 1e-7))))
    rounds = size.rounds
    if size.max_rounds > rounds:
        rounds = int(min(size.max_rounds, max(rounds, size.case_s // (t * iterations))))
    benchmark.pedantic(prepared.run, rounds=rounds, iterations=iterations, warmup_rounds=0)
    benchmark.extra_info.update(prepared.info)
    benchmark.extra_info["first_call_s"] = first
    median = benchmark.stats.stats.median
    if prepared.samples:
        benchmark.extra_info["samples"] = prepared.samples
        benchmark.extra_info["samples_per_s"] = prepared.samples / median
    return median
