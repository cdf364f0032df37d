"""One training step of the reference CNN, broken into phases, per backend.

The network (float32, batch 128 by default, 28x28 grey images, 10 classes)::

    Conv2D(1, 32, 3, padding=1) + ReLU, MaxPool2D(2),
    Conv2D(32, 64, 3, padding=1) + ReLU, MaxPool2D(2),
    Flatten, Dense(3136, 128) + ReLU, Dense(128, 10), softmax-cross-entropy, Adam(1e-3)

For each scratchnet backend the step (``training.MatrixStep`` then the
optimizer) is timed as a whole, uninstrumented; then again with every phase
timed by wrappers around the backend's methods, its kernels and
``numpy.matmul``. Each phase's time is exclusive (a method's time minus that
of the kernels and products it called), so the phases add up to the
instrumented step:

    im2col      building the column matrix (NumPy: the padded copy, the window
                copy, and the copy of the product into NCHW; Numba: the im2col
                kernel)
    GEMM        every matrix product (BLAS)
    col2im      the adjoint (NumPy: the transposes of dY and Y, the strided
                adds, the crop; Numba: the col2im kernel)
    bias+act    bias and activation, forward and backward (with db)
    pooling     max pooling, forward and backward
    loss        softmax-cross-entropy and the accuracy count
    optimizer   the update of every parameter
    other       the rest: Python in the layers and the model, allocations,
                the methods' own glue (Numba: argument checks, dispatch)

PyTorch (eager, CPU, the same threads) runs the same network, data, loss and
optimizer. The GEMM floor is the step's 11 matrix products alone, at the
shapes the Numba backend uses. Every time is the minimum over ``--repeats``
steps after ``--warmup`` untimed ones (JIT compilation and first-touch
allocations excluded); medians are printed beside them.

On a machine shared with other work, two BLAS threads lose their time slices
to it and a product's wall time can grow tenfold. ``--threads 1 --clock
thread`` then gives a steadier comparison: one thread everywhere (BLAS,
PyTorch), timed by the CPU time of that thread, which other processes do not
inflate.

    python benchmarks/profile_cnn_step.py                   # numpy, numba, torch
    python benchmarks/profile_cnn_step.py --backends numba --repeats 50
    python benchmarks/profile_cnn_step.py --threads 1 --clock thread
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scratchnet as sn  # noqa: E402
from scratchnet import training  # noqa: E402
from scratchnet.backends import BackendUnavailableError, get_ops  # noqa: E402
from scratchnet.bench import cases  # noqa: E402

PHASES = ("im2col", "GEMM", "col2im", "bias+act", "pooling", "loss", "optimizer", "other")

#: backend method -> phase of its exclusive time (what it does besides the
#: kernels and products it calls); the conv methods depend on the backend.
METHOD_PHASES = {
    "bias_act": "bias+act", "act_backward": "bias+act", "act_backward_bias": "bias+act",
    "maxpool2d_forward": "pooling", "maxpool2d_backward": "pooling",
    "softmax_cross_entropy": "loss", "count_correct": "loss",
    "adam_update": "optimizer", "sgd_update": "optimizer", "matmul": "GEMM",
}
CONV_METHOD_PHASES = {  # composed defaults: the copies around the product
    "numpy": {"conv2d_forward": "im2col", "conv2d_backward": "col2im"},
}
#: Numba kernel -> phase.
KERNEL_PHASES = {
    "im2col": "im2col", "col2im": "col2im",
    "conv_bias_act": "bias+act", "conv_act_backward": "bias+act", "bias_act": "bias+act",
    "act_backward": "bias+act", "column_sum": "bias+act",
    "maxpool_forward": "pooling", "maxpool_backward": "pooling",
    "softmax_cross_entropy": "loss", "count_correct": "loss",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}


def make_data(batch, seed=0):
    rng = numpy.random.default_rng(seed)
    X = rng.random((batch, 1, 28, 28), dtype=numpy.float32)
    y = rng.integers(0, 10, batch).astype(numpy.int64)
    return X, y


def scratchnet_step(backend, X, y):
    """A zero-argument callable running one training step on ``backend``."""
    ops = get_ops(backend)
    model = cases.make_cnn(backend)
    step = training.MatrixStep(model, sn.SoftmaxCrossEntropy())
    opt = sn.Adam(1e-3)
    Xd, yd = ops.asarray(X), ops.asarray(y)

    def run():
        step(Xd, yd)
        opt.step(model)
        ops.synchronize()
    return run, ops


class PhaseTimer:
    """Exclusive time per label of nested timed calls."""

    def __init__(self):
        self.totals = {}
        self._child = [0.0]

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            self._child.append(0.0)
            t0 = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = CLOCK() - t0
                children = self._child.pop()
                self.totals[label] = self.totals.get(label, 0.0) + elapsed - children
                self._child[-1] += elapsed
        return timed


def instrument(ops, timer):
    """Wrap ``ops``'s methods, its kernels (Numba) and numpy.matmul; returns an undo."""
    patched = []
    conv = CONV_METHOD_PHASES.get(ops.name, {})
    for name in (*METHOD_PHASES, "conv2d_forward", "conv2d_backward"):
        phase = METHOD_PHASES.get(name) or conv.get(name, "other")
        setattr(ops, name, timer.wrap(phase, getattr(ops, name)))
        patched.append(name)
    if hasattr(ops, "_run"):
        run = ops._run

        def run_kernel(name, dtype, *args):
            return timer.wrap(KERNEL_PHASES.get(name, "other"), run)(name, dtype, *args)
        ops._run = run_kernel
        patched.append("_run")
    matmul = numpy.matmul
    numpy.matmul = timer.wrap("GEMM", matmul)

    def undo():
        numpy.matmul = matmul
        for name in patched:
            delattr(ops, name)
    return undo


#: The clock every time is read from: time.perf_counter, or time.thread_time (--clock).
CLOCK = time.perf_counter


def best_of(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times), statistics.median(times)


def profile_backend(backend, X, y, repeats, warmup):
    """{"step": (min, median), "phases": {phase: (min, median)}} for one backend."""
    run, ops = scratchnet_step(backend, X, y)
    result = {"step": best_of(run, repeats, warmup)}
    timer = PhaseTimer()
    undo = instrument(ops, timer)
    per_phase = {p: [] for p in PHASES}
    steps = []
    try:
        for _ in range(repeats):
            timer.totals = {}
            t0 = CLOCK()
            timer.wrap("other", run)()
            steps.append(CLOCK() - t0)
            for p in PHASES:
                per_phase[p].append(timer.totals.get(p, 0.0))
    finally:
        undo()
    result["phases"] = {p: (min(v), statistics.median(v)) for p, v in per_phase.items()}
    result["instrumented"] = (min(steps), statistics.median(steps))
    return result


def torch_step(X, y, threads):
    import torch
    from torch import nn
    model = cases.make_torch_cnn("cpu")
    torch.set_num_threads(threads)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(Xt), yt).backward()
        opt.step()
    return run


def gemm_floor(batch):
    """A callable running the step's 11 products at the Numba backend's shapes
    (``cases.cnn_gemm_shapes``), into preallocated outputs."""
    size = cases.dataclasses.replace(cases.SIZES["tiny"], cnn_batch=batch)
    return cases.CnnFloorCase("numpy", size).prepare().run


def usable_cores():
    try:
        import os
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="numpy,numba",
                        help="scratchnet backends to profile (default: numpy,numba)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS and PyTorch threads (default: the usable cores)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: time.perf_counter; thread: the CPU time of this thread "
                             "(meaningful with --threads 1 only)")
    args = parser.parse_args(argv)
    global CLOCK
    if args.clock == "thread":
        if args.threads != 1:
            parser.error("--clock thread needs --threads 1: other threads' work is not counted")
        CLOCK = time.thread_time
    threads = args.threads or usable_cores()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")

    X, y = make_data(args.batch)
    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            get_ops(backend)
        except BackendUnavailableError as err:
            print(f"{backend}: unavailable ({err})")
            continue
        results[backend] = profile_backend(backend, X, y, args.repeats, args.warmup)

    torch_time = None
    if not args.no_torch:
        try:
            torch_time = best_of(torch_step(X, y, threads), args.repeats, args.warmup)
        except ImportError:
            print("torch: not installed")
    floor = best_of(gemm_floor(args.batch), args.repeats, args.warmup)

    ms = 1e3
    print(f"reference CNN, float32, batch {args.batch}: one training step (Adam), "
          f"min (median) over {args.repeats} steps, ms; {threads} thread(s), "
          f"{'thread CPU time' if args.clock == 'thread' else 'wall time'}")
    names = list(results)
    print(f"\n| phase | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for p in PHASES:
        cells = [f"{results[b]['phases'][p][0] * ms:.2f} ({results[b]['phases'][p][1] * ms:.2f})"
                 for b in names]
        print(f"| {p} | {' | '.join(cells)} |")
    cells = [f"{sum(results[b]['phases'][p][0] for p in PHASES) * ms:.2f}" for b in names]
    print(f"| sum of the phases' minima | {' | '.join(cells)} |")
    cells = [f"{results[b]['instrumented'][0] * ms:.2f} ({results[b]['instrumented'][1] * ms:.2f})"
             for b in names]
    print(f"| step, instrumented | {' | '.join(cells)} |")
    cells = [f"**{results[b]['step'][0] * ms:.2f}** ({results[b]['step'][1] * ms:.2f})"
             for b in names]
    print(f"| step | {' | '.join(cells)} |")
    print(f"\nGEMM floor (the step's 11 products alone): {floor[0] * ms:.2f} "
          f"({floor[1] * ms:.2f}) ms")
    if torch_time:
        print(f"PyTorch {__import__('torch').__version__} eager, {threads} thread(s): "
              f"{torch_time[0] * ms:.2f} ({torch_time[1] * ms:.2f}) ms")
    for b in names:
        step = results[b]["step"][0]
        line = f"{b}: {step / floor[0]:.2f}x the GEMM floor"
        if torch_time:
            line += f", {step / torch_time[0]:.2f}x PyTorch's step"
        print(line)


if __name__ == "__main__":
    main()
