"""Data-parallel training on one machine: the allreduce's share of a step,
scaling from 1 to 2 ranks, and whether overlapping the allreduce with backward
would pay.

    python benchmarks/distributed_scaling.py --out benchmarks/results/cpu-2core

The driver launches every configuration as its own job (``mpiexec -n 2`` for
two ranks, a plain process for one), interleaved over ``--rounds`` rounds so
that other load on the machine hits every configuration alike; medians over
the rounds, ratios from the same run. Writes ``distributed.json`` and
``distributed.md`` (with the cost model at larger scale) into ``--out``.

Models (float32, Adam 1e-3, Fashion-MNIST-shaped random data, 10 classes):
the MLP 784-256-128-10 and the reference CNN (Conv2D(1,32,3,padding=1)+ReLU+
MaxPool2D, Conv2D(32,64,3,padding=1)+ReLU+MaxPool2D, Flatten,
Dense(3136,128)+ReLU, Dense(128,10)). Configurations at the same global batch:
1 rank x 2 threads, 2 ranks x 1 thread, 1 rank x 1 thread, and 2 ranks x 2
threads (oversubscribed: what happens without the thread cap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))

MODELS = {"mlp": {"global_batch": 128, "steps": 150},
          "cnn": {"global_batch": 64, "steps": 12}}
#: (ranks, threads per rank)
CONFIGS = [(1, 2), (2, 1), (1, 1), (2, 2)]
#: network models for the cost at scale: (name, bandwidth bytes/s, latency per message s)
NETWORKS = [("10 GB/s, 10 us", 10e9, 10e-6), ("100 GB/s, 2 us", 100e9, 2e-6)]
SCALE = [2, 4, 8, 16, 32, 64]


def build(kind, sn):
    if kind == "mlp":
        layers = [sn.Dense(784, 256, activation="relu", init="he"),
                  sn.Dense(256, 128, activation="relu", init="he"), sn.Dense(128, 10)]
    else:
        layers = [sn.Conv2D(1, 32, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2),
                  sn.Conv2D(32, 64, 3, padding=1), sn.ReLU(), sn.MaxPool2D(2), sn.Flatten(),
                  sn.Dense(3136, 128, activation="relu"), sn.Dense(128, 10)]
    return sn.Sequential(layers, seed=0, dtype="float32")


def data(kind, rows):
    rng = numpy.random.default_rng(0)
    shape = (rows, 784) if kind == "mlp" else (rows, 1, 28, 28)
    return rng.random(shape, dtype=numpy.float32), rng.integers(0, 10, rows)


# -- one job: a timed epoch ------------------------------------------------------------

def worker(kind, threads, backend):
    import scratchnet as sn
    world = sn.distributed.init(threads=threads)
    sn.set_backend(backend)
    if world.launched:
        sn.distributed.init(backend=backend)
    world.limit_threads(threads)
    cfg = MODELS[kind]
    G, steps = cfg["global_batch"], cfg["steps"]
    per_rank = G // world.world_size
    X, y = data(kind, G * steps)
    model = build(kind, sn)
    loss = sn.SoftmaxCrossEntropy()
    opt = sn.Adam(1e-3)
    dist = (lambda: sn.distributed.DataParallel(world)) if world.launched else (lambda: None)
    model.fit(X[:3 * G], y[:3 * G], loss=loss, optimizer=opt, epochs=1, batch_size=per_rank,
              distributed=dist())                               # compile, warm caches
    dp = dist()
    hist = model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=per_rank,
                     distributed=dp)
    step = hist.history["time"][0] / steps
    allreduce = dp.hook.seconds / max(dp.hook.calls, 1) if dp is not None else 0.0
    alone = 0.0
    if world.world_size > 1:       # the same allreduce right after a barrier: no waiting
        from mpi4py import MPI
        grads, times = model.flat_gradients(), []
        for _ in range(30):
            world.mpi.Barrier()
            t0 = time.perf_counter()
            world.mpi.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        alone = statistics.median(times)
    mine = {"step_s": step, "allreduce_s": allreduce, "alone_s": alone}
    everyone = world.allgather(mine)
    if world.is_root:
        print("RESULT " + json.dumps({
            "model": kind, "ranks": world.world_size, "threads": threads,
            "per_rank_batch": per_rank, "global_batch": G, "steps": steps,
            "step_s": max(e["step_s"] for e in everyone),
            "allreduce_s": statistics.mean(e["allreduce_s"] for e in everyone),
            "allreduce_alone_s": max(e["alone_s"] for e in everyone),
            "gradient_bytes": int(model.flat_gradients().nbytes),
            "parameters": model.count_params()}), flush=True)


def overlap_worker(kind, backend, repeats=100):
    """Two ranks x 1 thread, both starting backward together (a barrier after
    the untimed forward): backward then a blocking Allreduce, against an
    Iallreduce of the whole buffer started before backward and waited for after
    it -- the most any bucketing could overlap -- and each part alone. MPI
    progresses a non-blocking collective only inside MPI calls unless it runs
    a progress thread, which would need a core of its own."""
    import scratchnet as sn
    from mpi4py import MPI
    world = sn.distributed.init(threads=1)
    sn.set_backend(backend)
    world.limit_threads(1)
    comm = world.mpi
    G = MODELS[kind]["global_batch"]
    X, y = data(kind, G // world.world_size)
    model = build(kind, sn)
    loss = sn.SoftmaxCrossEntropy()
    Xb = model._input(X)
    yb = model._targets(loss, y, Xb)
    grads = model.flat_gradients()
    inflight = grads.copy()

    def forward():
        model.zero_grad()
        out = model._run_forward(Xb, training=True)
        loss._compute(out, yb, model.ops)

    def backward():
        model._run_backward(loss.backward(), need_input_grad=False)

    def sequential():          # -> (backward, the whole)
        t0 = time.perf_counter()
        backward()
        t1 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
        return t1 - t0, time.perf_counter() - t0

    def overlapped():          # -> (the Wait after backward, the whole)
        t0 = time.perf_counter()
        req = comm.Iallreduce(MPI.IN_PLACE, inflight, op=MPI.SUM)
        backward()
        t1 = time.perf_counter()
        req.Wait()
        return time.perf_counter() - t1, time.perf_counter() - t0

    def allreduce():
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
        return time.perf_counter() - t0

    times = {k: [] for k in ("backward", "allreduce", "sequential", "overlapped", "wait")}
    with model._reusing(True):
        for i in range(repeats + 3):
            for variant in ((0, 1) if i % 2 else (1, 0)):     # alternate which goes first
                forward()
                comm.Barrier()
                if variant == 0:
                    back, seq = sequential()
                else:
                    wait, ovl = overlapped()
            comm.Barrier()
            alone = allreduce()
            if i >= 3:
                for k, v in zip(times, (back, alone, seq, ovl, wait)):
                    times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    saved = sorted(a - b for a, b in zip(times["sequential"], times["overlapped"]))
    med["saved"] = statistics.median(saved)          # paired: same iteration, both variants
    med["saved_q1"], med["saved_q3"] = saved[len(saved) // 4], saved[3 * len(saved) // 4]
    everyone = world.allgather(med)
    if world.is_root:
        print("RESULT " + json.dumps({"model": kind, "overlap": {
            k: (max if not k.startswith("saved") else min)(e[k] for e in everyone)
            for k in med}}), flush=True)


# -- the driver ------------------------------------------------------------------

def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def _busy_seconds():
    """CPU-seconds the whole machine has been busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_for_quiet(limit=0.15, max_wait=45):
    """Wait (up to max_wait s) until other processes use under ``limit`` of the
    CPUs over one second; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        b0 = _busy_seconds()
        if b0 is None:
            return 0.0
        time.sleep(1.0)
        if (_busy_seconds() - b0) / (os.cpu_count() or 1) < limit:
            break
    return time.perf_counter() - t0


QUIET = 0.10     # a job counts when other processes used under 10% of the machine
PROCEDURE = (f"before each job the driver waits (up to 45 s) for other processes to use under "
             f"15% of the machine, and runs a job again (up to 4 tries) when they used more "
             f"than {QUIET:.0%} of it during the job")


def _launch(ranks, args, tries=4):
    """One job, repeated (up to ``tries`` times) while other processes used more
    than QUIET of the machine during it; the last try counts otherwise."""
    rejected = []
    for _ in range(tries):
        result = _launch_once(ranks, args)
        if result.get("other_load", 0.0) <= QUIET:
            break
        rejected.append(result.get("other_load"))
    result["rejected_loads"] = rejected
    return result


def _launch_once(ranks, args, timeout=600):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_", "MPI_LOCAL"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, HERE, *args]
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks), *cmd]
    waited = wait_for_quiet()
    b0, c0, t0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n"
                           f"{out.stderr}")
    result = json.loads(lines[-1])
    if b0 is not None:      # CPU used by other processes during the job, share of the machine
        other = (_busy_seconds() - b0) - (_children_cpu() - c0)
        result["other_load"] = max(0.0, other) / (wall * (os.cpu_count() or 1))
    result["waited_s"] = waited
    return result


def cost_model(step_s, grad_bytes):
    """Ring allreduce of ``grad_bytes`` at p ranks: 2(p-1)/p * bytes / bandwidth
    + 2(p-1) * latency, against the measured per-rank compute of a step."""
    rows = []
    for name, bw, lat in NETWORKS:
        for p in SCALE:
            t = 2 * (p - 1) / p * grad_bytes / bw + 2 * (p - 1) * lat
            rows.append({"network": name, "ranks": p, "allreduce_s": t,
                         "fraction": t / (t + step_s), "bound": t > step_s})
    return rows


def machine():
    info = {"python": platform.python_version(), "numpy": numpy.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = sorted({f"{x.get('internal_api')} {x.get('version')}"
                               for x in threadpool_info() if x.get("user_api") == "blas"})
    except ImportError:
        pass
    sys.path.insert(0, ROOT)
    from scratchnet.distributed import mpi_status
    info["mpi"] = mpi_status()[0] or mpi_status()[1]
    return info


def fmt_ms(s):
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us"


def _signed(s):
    return ("-" if s < 0 else "+") + fmt_ms(abs(s))


def report(res):
    lines = ["# Data-parallel training on one 2-core machine", "",
             f"`python benchmarks/distributed_scaling.py` ({res['rounds']} interleaved rounds, "
             f"medians; backend {res['backend']}, float32, Adam). Machine: "
             f"{res['machine'].get('cpus')} CPUs, Python {res['machine']['python']}, NumPy "
             f"{res['machine']['numpy']}, {', '.join(res['machine'].get('blas', []))}; "
             f"{res['machine']['mpi']}. Other processes share this machine: "
             f"{res['procedure']}. Medians are over each configuration's quiet rounds (other "
             f"processes under {QUIET:.0%} of the machine during the job; all rounds when none "
             f"was). Read the ratios.", "",
             "## Step time and allreduce share", "",
             "'allreduce' is the time in the gradient hook per step (waiting for the slower "
             "rank included); 'alone' is the same allreduce right after a barrier; 'best' is "
             "the fastest round; 'other load' is the share of the machine other processes "
             "used during the jobs (median of the quiet rounds).", "",
             "| model | gradient | ranks x threads | global batch | step (median) | "
             "step (best) | allreduce | alone | allreduce / step | samples/s | quiet rounds | "
             "other load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in MODELS:
        for r, t in CONFIGS:
            c = res["median"][f"{kind}-{r}x{t}"]
            frac = f"{c['allreduce_s'] / c['step_s']:.1%}" if r > 1 else "-"
            lines.append(f"| {kind} | {c['gradient_bytes'] / 1e6:.2f} MB | {r} x {t}"
                         f"{' (oversubscribed)' if r * t > 2 else ''} | {c['global_batch']} | "
                         f"{fmt_ms(c['step_s'])} | "
                         f"{fmt_ms(res['best'][f'{kind}-{r}x{t}']['step_s'])} | "
                         f"{fmt_ms(c['allreduce_s']) if r > 1 else '-'} | "
                         f"{fmt_ms(c['allreduce_alone_s']) if r > 1 else '-'} | {frac} | "
                         f"{c['global_batch'] / c['step_s']:,.0f} | "
                         f"{res['quiet_rounds'][f'{kind}-{r}x{t}']}/{len(res['runs'][f'{kind}-{r}x{t}'])} | "
                         f"{c.get('other_load', float('nan')):.0%} |")
    lines += ["", "## Scaling from 1 to 2 ranks (same global batch)", "",
              "Throughput of 2 ranks x 1 thread against 1 rank x 2 threads (above 1: the two "
              "ranks are faster), the speed-up over 1 rank x 1 thread and the scaling "
              "efficiency (speed-up / 2), and how much slower 2 ranks x 2 threads "
              "(oversubscribed) are. 'best' uses each configuration's fastest round (the "
              "least disturbed by other processes), 'median' the median round.", "",
              "| model | rounds | 2x1 vs 1x2 | 2x1 vs 1x1 | efficiency | 2x2 vs 2x1 (time) |",
              "|---|---|---|---|---|---|"]
    for kind in MODELS:
        for label in ("best", "median"):
            m = res[label]
            a, b, c, d = (m[f"{kind}-{k}"]["step_s"] for k in ("2x1", "1x2", "1x1", "2x2"))
            lines.append(f"| {kind} | {label} | {b / a:.2f} | {c / a:.2f}x | {c / a / 2:.0%} | "
                         f"{d / a:.1f}x slower |")
    lines += ["", "## Would overlapping the allreduce with backward pay?", "",
              "2 ranks x 1 thread, both ranks starting together after a barrier, alternating "
              "(medians of 100, the slower rank's): backward then a blocking `Allreduce` "
              "(sequential; 'backward' is its first part), against an `Iallreduce` of the "
              "whole gradient buffer started before backward and waited for after it "
              "(overlapped: the most any bucketing could hide), and the allreduce alone. "
              "'Wait' is what was left of the Iallreduce after backward: as long as the "
              "allreduce alone, nothing was done during backward (MPI progresses a "
              "non-blocking collective inside MPI calls, unless a progress thread runs, "
              "which needs a core of its own). 'saved' is the median over iterations of sequential minus overlapped (the "
              "same iteration; quartiles in brackets; negative: the overlapped step was "
              "slower), against the step's allreduce time.", "",
              "| model | backward | allreduce | sequential | overlapped | Wait | "
              "saved per step |", "|---|---|---|---|---|---|---|"]
    for kind in MODELS:
        o = res["overlap"][kind]
        lines.append(f"| {kind} | {fmt_ms(o['backward'])} | {fmt_ms(o['allreduce'])} | "
                     f"{fmt_ms(o['sequential'])} | {fmt_ms(o['overlapped'])} | "
                     f"{fmt_ms(o['wait'])} | {_signed(o['saved'])} [{_signed(o['saved_q1'])}, "
                     f"{_signed(o['saved_q3'])}] |")
    lines += ["", "## Cost model at larger scale", "",
              "Weak scaling at the per-rank batch of the 2x1 runs; compute per step as "
              "measured here with 1 thread per rank; ring allreduce "
              "2(p-1)/p x bytes / bandwidth + 2(p-1) x latency; no overlap. "
              "'bound' = the allreduce takes longer than the compute.", ""]
    for kind in MODELS:
        c = res["median"][f"{kind}-2x1"]
        compute = c["step_s"] - c["allreduce_alone_s"]
        lines += [f"**{kind}**: {c['gradient_bytes'] / 1e6:.2f} MB per allreduce, "
                  f"{fmt_ms(compute)} compute per step at batch {c['per_rank_batch']} "
                  f"per rank.", "",
                  "| network | " + " | ".join(f"p={p}" for p in SCALE) + " |",
                  "|---|" + "---|" * len(SCALE)]
        rows = cost_model(compute, c["gradient_bytes"])
        for name, _, _ in NETWORKS:
            cells = [f"{fmt_ms(r['allreduce_s'])} ({r['fraction']:.0%}"
                     f"{', bound' if r['bound'] else ''})" for r in rows if r["network"] == name]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def summarize(res):
    """Medians over each configuration's quiet rounds (other processes under
    QUIET of the machine; all rounds when none was quiet), the fastest round,
    and the cost model from the 2-rank medians."""
    median, best, quiet = {}, {}, {}
    for key, rs in res["runs"].items():
        calm = [r for r in rs if r.get("other_load", 0.0) <= QUIET] or rs
        quiet[key] = sum(r.get("other_load", 0.0) <= QUIET for r in rs)
        best[key] = min(rs, key=lambda r: r["step_s"])
        median[key] = {**calm[0], **{k: statistics.median(r[k] for r in calm) for k in
                                     ("step_s", "allreduce_s", "allreduce_alone_s",
                                      "other_load") if k in calm[0]}}
    res.update(median=median, best=best, quiet_rounds=quiet, cost_model={
        k: cost_model(median[f"{k}-2x1"]["step_s"] - median[f"{k}-2x1"]["allreduce_alone_s"],
                      median[f"{k}-2x1"]["gradient_bytes"]) for k in MODELS})
    return res


def write(res, out):
    summarize(res)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "distributed.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = report(res)
    with open(os.path.join(out, "distributed.md"), "w") as f:
        f.write(text)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cpu-2core"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--from-json", metavar="FILE",
                   help="render FILE's report again (with --overlap-only: measure the "
                        "overlap again into FILE)")
    p.add_argument("--overlap-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default=None, help="default: numba when installed, else numpy")
    p.add_argument("--worker", choices=sorted(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--overlap", choices=sorted(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import importlib.util
    backend = args.backend or ("numba" if importlib.util.find_spec("numba") else "numpy")
    if args.worker:
        return worker(args.worker, args.threads, backend)
    if args.overlap:
        return overlap_worker(args.overlap, backend)
    if _mpiexec() is None and not (args.from_json and not args.overlap_only):
        raise SystemExit("no mpiexec: pip install -e '.[mpi]'")
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
    else:
        res = {"rounds": args.rounds, "backend": backend, "machine": machine(), "runs": {},
               "procedure": PROCEDURE}
        for rnd in range(args.rounds):
            for kind in MODELS:
                order = CONFIGS if rnd % 2 == 0 else CONFIGS[::-1]
                for ranks, threads in order:
                    r = _launch(ranks, ["--worker", kind, "--threads", str(threads),
                                        "--backend", backend])
                    res["runs"].setdefault(f"{kind}-{ranks}x{threads}", []).append(r)
                    print(f"round {rnd + 1}/{args.rounds} {kind} {ranks}x{threads}: step "
                          f"{fmt_ms(r['step_s'])}, allreduce {fmt_ms(r['allreduce_s'])}, other "
                          f"load {r.get('other_load', float('nan')):.0%}", flush=True)
    if not args.from_json or args.overlap_only:
        res["overlap"] = {}
        for kind in MODELS:
            r = _launch(2, ["--overlap", kind, "--backend", res["backend"]])
            res["overlap"][kind] = {**r["overlap"], "other_load": r.get("other_load")}
    write(res, os.path.dirname(os.path.abspath(args.from_json)) if args.from_json else args.out)


if __name__ == "__main__":
    main()
