"""MLP epoch time before and after the core refactor, measured in one run.

The core (layers, model, training loop, optimizers, saving) was rewritten in
commit b162f20; 07433df is the last commit before it. This script times one
training epoch of the 784-256-128-10 ReLU MLP (He init, SoftmaxCrossEntropy,
float32) on 60,000 rows with both versions, on the NumPy and Numba backends,
at batch 32, 128 and 512, with SGD(0.1) and Adam(1e-3).

Each version runs in its own worker process (``PYTHONPATH`` set to its
checkout; the worker checks that it imported that checkout's scratchnet). For
every case both workers build the same model (seed 0) and train one untimed
warm-up epoch (Numba compilation, first-touch allocations), then the parent
asks them for timed epochs in turn: old, new, old, new, ... Interleaving
makes the ratio meaningful on a shared machine: whatever else runs slows
both versions alike. Each number is the minimum over ``--repeats`` epochs
(default 3); the spread columns show how far the runs were from it.

The time is the epoch loop itself (``history.history["time"]``, which both
versions measure the same way: from the epoch's shuffle to the last
optimizer step), as wall time and as CPU time of the worker process (all
its threads) over the same epoch; the whole ``fit`` call (input checks
included) is kept in the per-run table as well. On a busy machine, OpenBLAS
with 2 threads on 2 cores loses whole time slices waiting for a descheduled
thread, and its epochs vary by several times; ``--threads 1`` (one BLAS
thread per worker) makes an epoch's time far less sensitive to other load
(it still varies when another program shares the physical core), so that
run gives the steadiest ratio.

The data is Fashion-MNIST when ``scratchnet.datasets.load_fashion_mnist()``
finds it (no download), else 60,000 random float32 rows in [0, 1) with
random labels 0..9 (seeded; the epoch time does not depend on the values).

Reproduce (from the repository root)::

    git worktree add ../old 07433df
    python benchmarks/core_before_after.py ../old
    git worktree remove ../old

The committed report (``benchmarks/results/cpu-2core/core-before-after.md``)
is two runs, the second appended::

    python benchmarks/core_before_after.py ../old --repeats 5 --out REPORT
    python benchmarks/core_before_after.py ../old --repeats 5 --threads 1 --out REPORT --append

``--new PATH`` times another checkout instead of this one;
``--backends``, ``--batches``, ``--optimizers`` select cases. OpenBLAS
variables that pin its kernels (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``)
change the GEMM speed: unset them for the run (``env -u OPENBLAS_CORETYPE
-u OPENBLAS_L2_SIZE python ...``); the report lists the BLAS each worker
used (threadpoolctl) and any such variable that was set.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time

BACKENDS = ("numpy", "numba")
BATCHES = (32, 128, 512)
OPTIMIZERS = ("sgd", "adam")
OPT_LABEL = {"sgd": "SGD(0.1)", "adam": "Adam(1e-3)"}
N_ROWS = 60_000
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS")


# -- the worker: one per version, driven over stdin/stdout ----------------------------

def _send(obj):
    sys.__stdout__.write(json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def worker(expected_root):
    sys.stdout = sys.stderr             # anything the library prints stays off the channel
    import numpy

    import scratchnet as sn
    here = os.path.realpath(os.path.dirname(sn.__file__))
    if os.path.dirname(here) != os.path.realpath(expected_root):
        _send({"error": f"imported scratchnet from {here}, not from {expected_root}"})
        return
    try:
        from threadpoolctl import threadpool_info
        blas = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                       "threading_layer")} for d in threadpool_info()]
    except ImportError:
        blas = None
    try:
        (X, y), _ = sn.datasets.load_fashion_mnist()
        X, y, data = X[:N_ROWS], y[:N_ROWS], "Fashion-MNIST training set"
    except Exception:       # not installed here: random rows (same shape and dtype)
        rng = numpy.random.default_rng(0)
        X = rng.random((N_ROWS, 784), dtype=numpy.float32)
        y = rng.integers(0, 10, size=N_ROWS)
        data = f"{N_ROWS:,} random float32 rows in [0, 1), random labels 0..9"
    _send({"ready": True, "version": sn.__version__, "blas": blas, "data": data,
           "backends": sn.available_backends(), "numpy": numpy.__version__})
    class Clock:
        """Wall and CPU (all threads of this process) time from the epoch's
        begin callback to its end callback."""

        def on_epoch_begin(self, model, epoch):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, model, epoch, logs):
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    model = opt = batch = None
    loss, clock = sn.SoftmaxCrossEntropy(), Clock()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "setup":
            model = sn.Sequential([sn.Dense(784, 256, init="he"), sn.ReLU(),
                                   sn.Dense(256, 128, init="he"), sn.ReLU(),
                                   sn.Dense(128, 10)], seed=0, dtype="float32",
                                  backend=cmd["backend"])
            opt = sn.SGD(0.1) if cmd["optimizer"] == "sgd" else sn.Adam(1e-3)
            batch = cmd["batch"]
            model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=batch)   # warm-up
            _send({"ok": True})
        elif cmd["cmd"] == "epoch":
            gc.collect()
            t0 = time.perf_counter()
            hist = model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=batch,
                             callbacks=[clock])
            wall = time.perf_counter() - t0
            _send({"epoch": hist.history["time"][0], "fit": wall, "cpu": clock.cpu,
                   "loss": hist.history["loss"][0]})


# -- the parent ----------------------------------------------------------------------------

class Worker:
    def __init__(self, label, root, threads=None):
        self.label, self.root = label, os.path.realpath(root)
        env = dict(os.environ, PYTHONPATH=self.root, PYTHONDONTWRITEBYTECODE="1")
        if threads:
            env.update({k: str(threads) for k in THREAD_VARS})
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", self.root],
            cwd=self.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        if "error" in self.info:
            raise SystemExit(f"{label}: {self.info['error']}")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.label} worker ({self.root}) exited "
                             f"(code {self.proc.wait()}); see its error above")
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def git_version(root):
    def run(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True,
                              text=True).stdout.strip()
    commit = run("rev-parse", "--short=7", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", "scratchnet")
    return commit + (" (+ uncommitted changes under scratchnet/)" if dirty else "")


def spread(values):
    return (max(values) - min(values)) / min(values)


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="checkout of the version before the refactor (07433df)")
    p.add_argument("--new", default=here, help="checkout of the new version (default: this one)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per version and case")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--threads", type=int, help="BLAS threads in the workers (default: as the "
                   "environment says); 1 makes CPU time a contention-free measure")
    p.add_argument("--out", help="also write the report (Markdown) here")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = p.parse_args(argv)
    backends = args.backends.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    optimizers = args.optimizers.split(",")
    for root in (args.old, args.new):
        if not os.path.isfile(os.path.join(root, "scratchnet", "__init__.py")):
            p.error(f"{root} is not a scratchnet checkout")

    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    old, new = Worker("old", args.old, args.threads), Worker("new", args.new, args.threads)
    rows = []
    if old.info["data"] != new.info["data"]:
        raise SystemExit(f"the workers found different data: old {old.info['data']}, "
                         f"new {new.info['data']}")
    try:
        for backend in backends:
            if backend not in old.info["backends"] or backend not in new.info["backends"]:
                print(f"skipping {backend}: not available", file=sys.stderr)
                continue
            for batch in batches:
                for opt in optimizers:
                    case = dict(backend=backend, batch=batch, optimizer=opt)
                    for w in (old, new):
                        w.ask(cmd="setup", **case)
                    runs = {"old": [], "new": []}
                    for _ in range(args.repeats):
                        for w in (old, new):
                            runs[w.label].append(w.ask(cmd="epoch"))
                    rows.append({**case, **runs})
                    o = min(r["epoch"] for r in runs["old"])
                    n = min(r["epoch"] for r in runs["new"])
                    print(f"{backend:6} b{batch:<4} {opt:5} old {o:.3f} s  new {n:.3f} s  "
                          f"new/old {n / o:.3f}", file=sys.stderr, flush=True)
    finally:
        old.close()
        new.close()
    report = render(rows, args, old, new, started, load0, os.getloadavg())
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a" if args.append else "w") as f:
            if args.append and f.tell():
                f.write("\n")
            f.write(report)


def render(rows, args, old, new, started, load0, load1):
    blas_env = {k: os.environ[k] for k in BLAS_VARS if k in os.environ}
    threads = f"{args.threads} BLAS thread(s) (`--threads {args.threads}`)" if args.threads \
        else "BLAS threads as the environment gives"
    lines = [f"# Core refactor: MLP epoch time before and after ({threads})", "",
             "784-256-128-10 ReLU MLP (He init), SoftmaxCrossEntropy, float32, one epoch of "
             f"{N_ROWS:,} rows (shuffled), `mode=\"minibatch\"`. Each time is the **minimum of "
             f"{args.repeats} epochs** after an untimed warm-up epoch; the two versions ran in "
             "their own processes, interleaved (old, new, old, new, ...). *wall*: the epoch as "
             "`fit` reports it; *CPU*: CPU time of the process (all its threads) over the same "
             "epoch (with one BLAS thread, far less disturbed by other programs than with two). "
             "Written by `benchmarks/core_before_after.py`.", "",
             "| backend | batch | optimizer | old epoch s | new epoch s | new/old "
             "| new/old per round | old spread | new spread | old CPU s | new CPU s "
             "| new/old CPU |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        o = [x["epoch"] for x in r["old"]]
        n = [x["epoch"] for x in r["new"]]
        oc = [x["cpu"] for x in r["old"]]
        nc = [x["cpu"] for x in r["new"]]
        per_round = [b / a for a, b in zip(o, n)]
        lines.append(f"| {r['backend']} | {r['batch']} | {OPT_LABEL[r['optimizer']]} "
                     f"| {min(o):.3f} | {min(n):.3f} | **{min(n) / min(o):.3f}** "
                     f"| {min(per_round):.2f}–{max(per_round):.2f} "
                     f"| {100 * spread(o):.0f}% | {100 * spread(n):.0f}% "
                     f"| {min(oc):.3f} | {min(nc):.3f} | **{min(nc) / min(oc):.3f}** |")
    lines += ["", "*new/old per round*: the ratio of each interleaved pair of wall times "
              "(lowest–highest); *spread*: (slowest − fastest) / fastest of a version's wall "
              "times.", ""]

    def blas(info):
        if not info.get("blas"):
            return "threadpoolctl not installed"
        return "; ".join(f"{d['internal_api']} {d['version']}, {d['num_threads']} threads "
                         f"({d['architecture']}, {d['threading_layer']})" for d in info["blas"])
    lines += ["| run | |", "|---|---|",
              f"| date | {started.isoformat(timespec='seconds')} |",
              f"| old | scratchnet {old.info['version']}, git {git_version(old.root)} |",
              f"| new | scratchnet {new.info['version']}, git {git_version(new.root)} |",
              f"| data | {old.info['data']} |",
              f"| CPU | {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
              f"CPUs |",
              f"| Python / NumPy | {platform.python_version()} / {old.info['numpy']} |",
              f"| BLAS (old worker) | {blas(old.info)} |",
              f"| BLAS (new worker) | {blas(new.info)} |",
              f"| BLAS variables set | "
              f"{', '.join(f'{k}={v}' for k, v in blas_env.items()) or 'none'} |",
              f"| load average (1 min) at start / end | {load0[0]:.2f} / {load1[0]:.2f} |", "",
              "Every run, in order: wall s / CPU s of the epoch (whole `fit` call wall s)", "",
              "| backend | batch | optimizer | old | new |", "|---|---:|---|---|---|"]

    def runs(xs):
        return ", ".join(f"{x['epoch']:.3f} / {x['cpu']:.3f} ({x['fit']:.3f})" for x in xs)
    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch']} | {OPT_LABEL[r['optimizer']]} "
                     f"| {runs(r['old'])} | {runs(r['new'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
