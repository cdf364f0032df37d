"""What ``profile_cnn_step.py`` and ``profile_lstm_step.py`` share: one training
step of a reference network per backend, timed whole, then broken into
phases by wrappers around the backend's methods, its kernels and
``numpy.matmul``; PyTorch's eager step and the step's GEMM floor beside it.

A script describes its network as a ``Network`` and calls ``main(network)``.
Each phase's time is exclusive (a method's time minus that of the kernels and
products it called), so the phases add up to the instrumented step. Every
time is the minimum over ``--repeats`` steps after ``--warmup`` untimed ones
(JIT compilation and first-touch allocations excluded); medians are printed
beside them.

On a machine shared with other work, two BLAS threads lose their time slices
to it and a product's wall time can grow tenfold. ``--threads 1 --clock
thread`` then gives a steadier comparison: one thread everywhere (BLAS,
PyTorch), timed by the CPU time of that thread, which other processes do not
inflate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scratchnet as sn  # noqa: E402
from scratchnet import training  # noqa: E402
from scratchnet.backends import BackendUnavailableError, get_ops  # noqa: E402
from scratchnet.bench import cases  # noqa: E402


@dataclasses.dataclass
class Network:
    """A reference network to profile.

    ``net``: the benchmark suite's description of it (``cases.CNN``,
    ``cases.LSTM_NET``: the model in scratchnet and PyTorch, its learning rate,
    its data, the products of one step); ``method_phases(backend)``: backend
    method -> the phase of its exclusive time; ``kernel_phases``: Numba kernel
    -> phase (others count as "other"); ``gemm_phase(timer, a, b, X)``: the
    phase of the product a @ b in a step on the batch X; ``title(batch)``: the
    first line of the report; ``make_data(batch)``: (X, y), by default
    ``net.make_data``'s."""
    net: object
    phases: tuple
    method_phases: Callable[[str], dict]
    kernel_phases: dict
    gemm_phase: Callable
    title: Callable[[int], str]
    make_data: Callable = None

    def data(self, batch):
        if self.make_data is not None:
            return self.make_data(batch)
        X, y, _ = self.net.make_data(batch)
        return X, y

    def gemm_floor(self, batch):
        """A callable running the step's products alone at the Numba backend's
        shapes (``net.gemm_shapes``), into preallocated outputs."""
        return cases.gemm_floor("numpy", self.net.gemm_shapes(batch), {}, batch).run


#: The clock every time is read from: time.perf_counter, or time.thread_time (--clock).
CLOCK = time.perf_counter


class PhaseTimer:
    """Exclusive time per label of nested timed calls; ``inside`` is the stack
    of labels of the calls running now. Only the thread that made the timer
    is timed: where a backend runs parts of the batch in several threads at
    once (the Numba recurrences), the first part's (this thread's) time stands
    for the phase, so that the phases still add up to the step."""

    def __init__(self):
        self.totals = {}
        self._child = [0.0]
        self.inside = []
        self.thread = threading.get_ident()

    def wrap(self, label, fn):
        def timed(*args, **kwargs):
            if threading.get_ident() != self.thread:
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


def instrument(ops, timer, network, X):
    """Wrap ``ops``'s methods, its kernels (Numba) and numpy.matmul; returns an undo."""
    patched = []
    for name, phase in network.method_phases(ops.name).items():
        setattr(ops, name, timer.wrap(phase, getattr(ops, name)))
        patched.append(name)
    if hasattr(ops, "_run"):
        run = ops._run

        def run_kernel(name, dtype, *args):
            return timer.wrap(network.kernel_phases.get(name, "other"), run)(name, dtype, *args)
        ops._run = run_kernel
        patched.append("_run")
    matmul = numpy.matmul

    def timed_matmul(a, b, *args, **kwargs):
        return timer.wrap(network.gemm_phase(timer, a, b, X), matmul)(a, b, *args, **kwargs)
    numpy.matmul = timed_matmul

    def undo():
        numpy.matmul = matmul
        for name in patched:
            delattr(ops, name)
    return undo


def best_of(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times), statistics.median(times)


def scratchnet_step(network, backend, X, y):
    """A zero-argument callable running one training step on ``backend``."""
    ops = get_ops(backend)
    model = network.net.make(backend)
    step = training.MatrixStep(model, sn.SoftmaxCrossEntropy())
    opt = sn.Adam(network.net.lr)
    Xd, yd = ops.asarray(X), ops.asarray(y)

    def run():
        step(Xd, yd)
        opt.step(model)
        ops.synchronize()
    return run, ops


def profile_backend(network, backend, X, y, repeats, warmup):
    """{"step": (min, median), "phases": {phase: (min, median)}} for one backend."""
    run, ops = scratchnet_step(network, backend, X, y)
    result = {"step": best_of(run, repeats, warmup)}
    timer = PhaseTimer()
    undo = instrument(ops, timer, network, X)
    per_phase = {p: [] for p in network.phases}
    steps = []
    try:
        for _ in range(repeats):
            timer.totals = {}
            t0 = CLOCK()
            timer.wrap("other", run)()
            steps.append(CLOCK() - t0)
            for p in network.phases:
                per_phase[p].append(timer.totals.get(p, 0.0))
    finally:
        undo()
    result["phases"] = {p: (min(v), statistics.median(v)) for p, v in per_phase.items()}
    result["instrumented"] = (min(steps), statistics.median(steps))
    return result


def torch_step(network, X, y, threads):
    import torch
    model = network.net.make_torch("cpu")
    torch.set_num_threads(threads)
    opt = torch.optim.Adam(model.parameters(), lr=network.net.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(Xt), yt).backward()
        opt.step()
    return run


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(network, description, argv=None):
    parser = argparse.ArgumentParser(description=description)
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

    X, y = network.data(args.batch)
    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            get_ops(backend)
        except BackendUnavailableError as err:
            print(f"{backend}: unavailable ({err})")
            continue
        results[backend] = profile_backend(network, backend, X, y, args.repeats, args.warmup)

    torch_time = None
    if not args.no_torch:
        try:
            torch_time = best_of(torch_step(network, X, y, threads), args.repeats, args.warmup)
        except ImportError:
            print("torch: not installed")
    floor = best_of(network.gemm_floor(args.batch), args.repeats, args.warmup)

    ms = 1e3
    print(f"{network.title(args.batch)}: one training step (Adam), min (median) over "
          f"{args.repeats} steps, ms; {threads} thread(s), "
          f"{'thread CPU time' if args.clock == 'thread' else 'wall time'}")
    names = list(results)
    print(f"\n| phase | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))

    def cells(key, bold=False):
        fmt = "**{:.2f}** ({:.2f})" if bold else "{:.2f} ({:.2f})"
        return " | ".join(fmt.format(*(t * ms for t in results[b][key])) for b in names)
    for p in network.phases:
        row = " | ".join(f"{results[b]['phases'][p][0] * ms:.2f} "
                         f"({results[b]['phases'][p][1] * ms:.2f})" for b in names)
        print(f"| {p} | {row} |")
    row = " | ".join(f"{sum(results[b]['phases'][p][0] for p in network.phases) * ms:.2f}"
                     for b in names)
    print(f"| sum of the phases' minima | {row} |")
    print(f"| step, instrumented | {cells('instrumented')} |")
    print(f"| step | {cells('step', bold=True)} |")
    print(f"\nGEMM floor (the step's {len(network.net.gemm_shapes(args.batch))} products alone): "
          f"{floor[0] * ms:.2f} ({floor[1] * ms:.2f}) ms")
    if torch_time:
        print(f"PyTorch {__import__('torch').__version__} eager, {threads} thread(s): "
              f"{torch_time[0] * ms:.2f} ({torch_time[1] * ms:.2f}) ms")
    for b in names:
        step = results[b]["step"][0]
        line = f"{b}: {step / floor[0]:.2f}x the GEMM floor"
        if torch_time:
            line += f", {step / torch_time[0]:.2f}x PyTorch's step"
        print(line)
