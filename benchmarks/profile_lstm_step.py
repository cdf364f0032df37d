"""One training step of the reference LSTM, broken into phases, per backend.

The network (float32, batch 128 by default, sequences of 28 steps of 28
features: an image read row by row, 10 classes)::

    LSTM(28, 128) (the last step's h), Dense(128, 10), softmax-cross-entropy, Adam(1e-3)

For each scratchnet backend the step (``training.MatrixStep`` then the
optimizer) is timed as a whole, uninstrumented; then again with every phase
timed by wrappers around the backend's methods, its kernels and
``numpy.matmul``. Each phase's time is exclusive (a method's time minus that
of the kernels and products it called), so the phases add up to the
instrumented step:

    input GEMM         the input projection X (N*T, F) @ W of every step at once
                       (and X's gradient, when a layer needs it)
    recurrent GEMMs    h_{t-1} @ U forward and dZ_t @ U^T backward, one per step
    cell forward       the recurrent forward primitive less its products: the
                       gate non-linearities and the state update (Numba: the
                       fused cell kernel and the loop around it)
    cell backward      the same for the backward: gate derivatives, the carried
                       gradients, the per-step gradient norms
    weight-grad GEMMs  dU = Hprev^T dZ and dW = X^T dZ over all N*T rows, and
                       the Dense layer's dW
    optimizer          the update of every parameter
    other              the rest: the input bias, db, the Dense layer's other
                       products, the loss, Python in the layers and the model

PyTorch (eager, CPU, the same threads; its LSTM runs oneDNN's fused RNN
primitive) trains the same network on the same data with the same loss and
optimizer. The GEMM floor is the step's matrix products alone, at the shapes
the Numba backend runs them (``cases.lstm_gemm_shapes``). Every time is the
minimum over ``--repeats`` steps after ``--warmup`` untimed ones; medians are
printed beside them.

On a machine shared with other work, ``--threads 1 --clock thread`` gives a
steadier comparison: one thread everywhere (BLAS, PyTorch), timed by the CPU
time of that thread.

    python benchmarks/profile_lstm_step.py                   # numpy, numba, torch
    python benchmarks/profile_lstm_step.py --backends numba --repeats 50
    python benchmarks/profile_lstm_step.py --threads 1 --clock thread
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scratchnet as sn  # noqa: E402
from scratchnet import training  # noqa: E402
from scratchnet.backends import BackendUnavailableError, get_ops  # noqa: E402
from scratchnet.bench import cases  # noqa: E402

PHASES = ("input GEMM", "recurrent GEMMs", "cell forward", "cell backward",
          "weight-grad GEMMs", "optimizer", "other")

#: backend method -> phase of its exclusive time.
METHOD_PHASES = {
    "lstm_forward": "cell forward", "lstm_backward": "cell backward",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}
#: Numba kernel -> phase.
KERNEL_PHASES = {
    "lstm_cell_forward": "cell forward", "lstm_cell_backward": "cell backward",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}


class PhaseTimer:
    """Exclusive time per label of nested timed calls; ``inside`` is the stack
    of labels of the calls running now. Only the thread that made the timer
    is timed: where a backend runs the recurrence on chunks of the batch in
    several threads at once, the first chunk's (this thread's) time stands for
    the phase, so that the phases still add up to the step."""

    def __init__(self):
        self.totals = {}
        self._child = [0.0]
        self.inside = []
        self._thread = threading.get_ident()

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            if threading.get_ident() != self._thread:
                return fn(*args, **kwargs)
            self._child.append(0.0)
            self.inside.append(label)
            t0 = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = CLOCK() - t0
                self.inside.pop()
                children = self._child.pop()
                self.totals[label] = self.totals.get(label, 0.0) + elapsed - children
                self._child[-1] += elapsed
        return timed


def gemm_phase(timer, a, b, rows):
    """The phase of the product a @ b: by the primitive it runs in, else by its
    shape (``rows`` = N*T, the rows of the input projection)."""
    k = a.shape[-1]
    if threading.get_ident() != timer._thread:
        return "recurrent GEMMs"         # in another chunk's thread: not timed
    if timer.inside and timer.inside[-1] in ("cell forward", "cell backward"):
        # dU sums over the N*T (or N*(T-1)) rows; a step's product over H or 4H
        return "weight-grad GEMMs" if 2 * k >= rows else "recurrent GEMMs"
    if 2 * k >= rows or (a.ndim == 2 and a.strides[0] < a.strides[1]):
        return "weight-grad GEMMs"       # X^T dZ: a transposed view summed over the rows
    if a.shape[0] == rows:
        return "input GEMM"
    return "other"


def instrument(ops, timer, rows):
    """Wrap ``ops``'s methods, its kernels (Numba) and numpy.matmul; returns an undo."""
    patched = []
    for name, phase in METHOD_PHASES.items():
        setattr(ops, name, timer.wrap(phase, getattr(ops, name)))
        patched.append(name)
    if hasattr(ops, "_run"):
        run = ops._run

        def run_kernel(name, dtype, *args):
            return timer.wrap(KERNEL_PHASES.get(name, "other"), run)(name, dtype, *args)
        ops._run = run_kernel
        patched.append("_run")
    matmul = numpy.matmul

    def timed_matmul(a, b, *args, **kwargs):
        return timer.wrap(gemm_phase(timer, a, b, rows), matmul)(a, b, *args, **kwargs)
    numpy.matmul = timed_matmul

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


def scratchnet_step(backend, X, y):
    """A zero-argument callable running one training step on ``backend``."""
    ops = get_ops(backend)
    model = cases.make_lstm(backend)
    step = training.MatrixStep(model, sn.SoftmaxCrossEntropy())
    opt = sn.Adam(cases.LSTM_LR)
    Xd, yd = ops.asarray(X), ops.asarray(y)

    def run():
        step(Xd, yd)
        opt.step(model)
        ops.synchronize()
    return run, ops


def profile_backend(backend, X, y, repeats, warmup):
    """{"step": (min, median), "phases": {phase: (min, median)}} for one backend."""
    run, ops = scratchnet_step(backend, X, y)
    result = {"step": best_of(run, repeats, warmup)}
    timer = PhaseTimer()
    undo = instrument(ops, timer, X.shape[0] * X.shape[1])
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
    model = cases.make_torch_lstm("cpu")
    torch.set_num_threads(threads)
    opt = torch.optim.Adam(model.parameters(), lr=cases.LSTM_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(Xt), yt).backward()
        opt.step()
    return run


def gemm_floor(batch):
    """A callable running the step's products at the Numba backend's shapes
    (``cases.lstm_gemm_shapes``), into preallocated outputs."""
    size = cases.dataclasses.replace(cases.SIZES["tiny"], lstm_batch=batch)
    return cases.LstmFloorCase("numpy", size).prepare().run


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

    X, y, _ = cases.make_sequences(args.batch)
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
    n_gemms = len(cases.lstm_gemm_shapes(args.batch))
    print(f"reference LSTM, float32, batch {args.batch}, {cases.LSTM_STEPS} steps: one training "
          f"step (Adam), min (median) over {args.repeats} steps, ms; {threads} thread(s), "
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
    print(f"\nGEMM floor (the step's {n_gemms} products alone): {floor[0] * ms:.2f} "
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
