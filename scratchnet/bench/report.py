"""Turn the pytest-benchmark JSON of scratchnet's suite into ``report.md`` and plots.

``write_report(json_path, out_dir)`` writes

* ``report.md``: the machine, then one Markdown table per question -- per-sample
  vs mini-batch speed-up at each batch size per backend, fused vs composed
  speed-up per primitive, epoch time against PyTorch, NumPy and the GEMM floor,
  inference throughput, compile times;
* ``samples_per_s.png``: training samples/s against batch size, per backend
  and mode (log-log);
* ``speedup.png``: mini-batch over per-sample speed-up at each batch size.

Plots need matplotlib (``pip install 'scratchnet[plot]'``); without it the
Markdown is still written and says so. Every number is the median over the
benchmark's rounds; ratios of two cases come from the same run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from .._progress import plural

PLOTS = ("samples_per_s.png", "speedup.png")
TORCH_CPU = "torch-cpu"
NAMES = {"numpy": "numpy", "numba": "numba", "cupy": "cupy", "torch-cpu": "PyTorch CPU",
         "torch-cuda": "PyTorch CUDA"}
_VERSIONED = ("numpy", "numba", "llvmlite", "torch", "cupy", "cupy-cuda12x", "cupy-cuda13x",
              "matplotlib", "threadpoolctl", "pytest", "pytest-benchmark")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "SCRATCHNET_BACKEND")


# --------------------------------------------------------------- machine info
def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores():
    """Distinct (package, core) pairs in /proc/cpuinfo; None when unknown."""
    try:
        cores, phys = set(), None
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    cores.add((phys, value.strip()))
        return len(cores) or None
    except OSError:
        return None


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _versions():
    from importlib import metadata
    out = {}
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if not dist.startswith("cupy-"):
                out[dist] = None
    return out


def _blas_info():
    """BLAS libraries and their thread counts: threadpoolctl when installed,
    else numpy's build configuration (threads then unknown)."""
    import numpy
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        libs = [{"library": d.get("internal_api"), "user_api": d.get("user_api"),
                 "version": d.get("version"), "threads": d.get("num_threads"),
                 "architecture": d.get("architecture"),
                 "threading_layer": d.get("threading_layer"),
                 "file": os.path.basename(d.get("filepath") or "")}
                for d in threadpoolctl.threadpool_info()]
        return {"source": f"threadpoolctl {threadpoolctl.__version__}", "libraries": libs}
    libs = []
    try:
        deps = numpy.show_config(mode="dicts").get("Build Dependencies", {})
        for api in ("blas", "lapack"):
            d = deps.get(api, {})
            libs.append({"library": d.get("name"), "user_api": api, "version": d.get("version"),
                         "threads": "unknown (install threadpoolctl)"})
    except Exception as err:   # numpy < 1.26 has no mode="dicts"
        libs.append({"library": f"unknown ({type(err).__name__})", "threads": "unknown"})
    return {"source": "numpy.show_config", "libraries": libs}


def _backends():
    from .cases import backend_names, backend_unavailable, torch_unavailable
    from ..backends import get_ops
    out = {}
    for name in backend_names():
        why = backend_unavailable(name)
        out[name] = f"unavailable: {why}" if why else get_ops(name).describe()
    torch_mod = sys.modules.get("torch")
    for impl in ("torch-cpu", "torch-cuda"):
        why = torch_unavailable(impl) if impl == "torch-cpu" or torch_mod else \
            "not probed (PyTorch not imported)"
        if why:
            out[impl] = f"unavailable: {why}"
        elif impl == "torch-cpu":
            import torch
            out[impl] = f"torch {torch.__version__}, {plural(torch.get_num_threads(), 'thread')}"
        else:
            import torch
            out[impl] = f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"
    return out


def collect_machine_info():
    """A JSON-able description of this machine and software, for the report."""
    import scratchnet
    info = {
        "cpu_model": _cpu_model(),
        "physical_cores": _physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "versions": _versions(),
        "scratchnet": scratchnet.__version__,
        "blas": _blas_info(),
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "collected": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["backends"] = _backends()
    except Exception as err:      # never lose the benchmark JSON over a description
        info["backends"] = {"error": f"{type(err).__name__}: {err}"}
    return info


# -------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    name: str
    group: str
    median: float
    min: float
    max: float
    rounds: int
    iterations: int
    info: dict

    @property
    def kind(self):
        return self.info.get("kind")

    @property
    def impl(self):
        return self.info.get("impl")

    @property
    def samples(self):
        return self.info.get("samples")

    @property
    def samples_per_s(self):
        return self.samples / self.median if self.samples and self.median > 0 else None


def load_results(path):
    """The parsed pytest-benchmark JSON file."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict) or "benchmarks" not in raw:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return raw


def parse_results(raw):
    out = []
    for b in raw.get("benchmarks", []):
        s = b["stats"]
        out.append(Result(b.get("name", "?"), b.get("group") or "", float(s["median"]),
                          float(s["min"]), float(s["max"]), int(s.get("rounds", 0)),
                          int(s.get("iterations", 1)), dict(b.get("extra_info") or {})))
    return out


# ---------------------------------------------------------------- formatting
def _sig3(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_time(t):
    """Seconds with a unit and about three significant figures: 1.23 s, 45.6 ms, 789 µs."""
    if t is None:
        return "—"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{_sig3(t * 1e3)} ms"
    return f"{_sig3(t * 1e6)} µs"


def fmt_rate(x):
    return "—" if x is None else f"{x:,.0f}"


def fmt_ratio(r, suffix=""):
    """Three significant figures or so: 0.953, 4.21, 12.3, 145."""
    if r is None:
        return "—"
    if r >= 100:
        return f"{r:.0f}{suffix}"
    if r >= 10:
        return f"{r:.1f}{suffix}"
    if r >= 1:
        return f"{r:.2f}{suffix}"
    return f"{r:.3f}{suffix}"


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _impl_name(impl):
    return NAMES.get(impl, impl)


def _impl_order(impl):
    order = ["numpy", "numba", "cupy", "torch-cpu", "torch-cuda"]
    return order.index(impl) if impl in order else len(order)


def _ratio(a, b):
    return a / b if a is not None and b else None


# --------------------------------------------------------------------- tables
def per_sample_table(results, kind="train"):
    """Rows (backend, batch, per-sample median, sps, mini-batch median, sps, speed-up)
    of the cases of ``kind`` ("train": the MLP; "cnn_train": the reference CNN)."""
    train = {}
    for r in results:
        if r.kind == kind:
            train[(r.impl, r.info.get("batch_size"), r.info.get("mode"))] = r
    rows = []
    keys = sorted({(i, b) for i, b, _ in train}, key=lambda k: (_impl_order(k[0]), k[1]))
    for impl, bs in keys:
        ps, mb = train.get((impl, bs, "per_sample")), train.get((impl, bs, "minibatch"))
        rows.append({
            "backend": impl, "batch": bs,
            "ps_median": ps.median if ps else None, "ps_samples": ps.samples if ps else None,
            "ps_sps": ps.samples_per_s if ps else None,
            "mb_median": mb.median if mb else None, "mb_samples": mb.samples if mb else None,
            "mb_sps": mb.samples_per_s if mb else None,
            "speedup": _ratio(mb.samples_per_s if mb else None, ps.samples_per_s if ps else None),
        })
    return rows


def fused_table(results):
    cases = {}
    for r in results:
        if r.kind == "fused":
            cases[(r.impl, r.info.get("op"), r.info.get("shape"), r.info.get("variant"))] = r
    keys = sorted({k[:3] for k in cases},
                  key=lambda k: (_impl_order(k[0]), k[1], -_shape_size(k[2])))
    rows = []
    for impl, op, shape in keys:
        c, f = cases.get((impl, op, shape, "composed")), cases.get((impl, op, shape, "fused"))
        rows.append({"backend": impl, "op": op, "shape": shape,
                     "composed": c.median if c else None, "fused": f.median if f else None,
                     "speedup": _ratio(c.median if c else None, f.median if f else None)})
    return rows


def _shape_size(label):
    try:
        a, b = label.split("x")
        return -int(a) * int(b)
    except (AttributeError, ValueError):
        return 0


def epoch_table(results):
    epochs, floors = {}, {}
    for r in results:
        if r.kind == "epoch":
            epochs[(r.info.get("batch_size"), r.info.get("optimizer"), r.impl)] = r
        elif r.kind == "floor":
            floors[(r.info.get("batch_size"), r.impl)] = r
    rows = []
    for bs, opt, impl in sorted(epochs, key=lambda k: (k[0], k[1], _impl_order(k[2]))):
        r = epochs[(bs, opt, impl)]
        torch_r = epochs.get((bs, opt, TORCH_CPU))
        numpy_r = epochs.get((bs, opt, "numpy"))
        floor = floors.get((bs, impl))
        rows.append({"batch": bs, "optimizer": opt, "impl": impl, "median": r.median,
                     "samples": r.samples, "sps": r.samples_per_s,
                     "vs_torch": _ratio(r.median, torch_r.median if torch_r else None),
                     "vs_numpy": _ratio(r.median, numpy_r.median if numpy_r else None),
                     "vs_floor": _ratio(r.median, floor.median if floor else None)})
    floor_rows = [{"batch": bs, "impl": impl, "median": f.median, "samples": f.samples,
                   "steps": f.info.get("steps")}
                  for (bs, impl), f in sorted(floors.items(),
                                              key=lambda kv: (kv[0][0], _impl_order(kv[0][1])))]
    return rows, floor_rows


def inference_table(results, kind="inference"):
    """Rows of the inference cases of ``kind`` ("inference": the MLP;
    "cnn_inference": the reference CNN)."""
    inf = {(r.info.get("batch_size"), r.impl): r for r in results if r.kind == kind}
    rows = []
    for bs, impl in sorted(inf, key=lambda k: (k[0], _impl_order(k[1]))):
        r = inf[(bs, impl)]
        torch_r, numpy_r = inf.get((bs, TORCH_CPU)), inf.get((bs, "numpy"))
        rows.append({"batch": bs, "impl": impl, "median": r.median, "samples": r.samples,
                     "us_per_sample": r.median / r.samples * 1e6 if r.samples else None,
                     "sps": r.samples_per_s,
                     "vs_torch": _ratio(r.median, torch_r.median if torch_r else None),
                     "vs_numpy": _ratio(r.median, numpy_r.median if numpy_r else None)})
    return rows


def compile_table(results):
    return [{"backend": r.impl, "method": r.info.get("method"),
             "compile_s": r.info.get("compile_s"), "cached_s": r.info.get("cached_compile_s"),
             "import_s": r.info.get("import_s")}
            for r in sorted(results, key=lambda r: _impl_order(r.impl)) if r.kind == "compile"]


def cnn_tables(results):
    """``(step_rows, layer_rows)`` of the reference CNN's cases: each
    implementation's training step against PyTorch CPU's and against its own
    GEMM floor; each layer and direction against PyTorch CPU's."""
    steps = {r.impl: r for r in results if r.kind == "cnn_step"}
    floors = {r.impl: r for r in results if r.kind == "cnn_floor"}
    torch_step = steps.get(TORCH_CPU)
    step_rows = [{"impl": impl, "batch": r.info.get("batch_size"), "median": r.median,
                  "floor": floors[impl].median if impl in floors else None,
                  "vs_torch": _ratio(r.median, torch_step.median if torch_step else None),
                  "vs_floor": _ratio(r.median, floors[impl].median if impl in floors else None)}
                 for impl, r in sorted(steps.items(), key=lambda kv: _impl_order(kv[0]))]
    layers = {(r.info.get("layer"), r.info.get("direction"), r.impl): r
              for r in results if r.kind == "cnn_layer"}
    order = ("conv1", "pool1", "conv2", "pool2")
    layer_rows = []
    for layer, direction, impl in sorted(
            layers, key=lambda k: (order.index(k[0]) if k[0] in order else len(order),
                                   k[1] != "forward", _impl_order(k[2]))):
        r = layers[(layer, direction, impl)]
        ref = layers.get((layer, direction, TORCH_CPU))
        layer_rows.append({"layer": layer, "direction": direction, "impl": impl,
                           "median": r.median,
                           "vs_torch": _ratio(r.median, ref.median if ref else None)})
    return step_rows, layer_rows


# ------------------------------------------------------------------- markdown
def _machine_section(raw):
    mi = (raw.get("machine_info") or {}).get("scratchnet")
    lines = ["## Machine and software", ""]
    if not mi:
        lines += ["The JSON carries no scratchnet machine description (it was not written by "
                  "scratchnet's benchmark suite); this is the machine that *rendered* the "
                  "report:", ""]
        mi = collect_machine_info()
    cores = mi.get("physical_cores")
    v = mi.get("versions", {})
    cupy_v = next((f"{v[k]} ({k})" for k in ("cupy", "cupy-cuda12x", "cupy-cuda13x")
                   if v.get(k)), "not installed")
    commit = raw.get("commit_info") or {}
    rows = [
        ("Date of the run", raw.get("datetime") or mi.get("collected") or "unknown"),
        ("CPU", mi.get("cpu_model")),
        ("Cores / threads", f"{cores if cores else '?'} physical cores, "
                            f"{mi.get('logical_cpus')} logical CPUs, "
                            f"{mi.get('usable_cpus')} usable by this process"),
        ("Platform", mi.get("platform")),
        ("Python", mi.get("python")),
        ("NumPy", v.get("numpy") or "not installed"),
        ("Numba", v.get("numba") or "not installed"),
        ("PyTorch", v.get("torch") or "not installed"),
        ("CuPy", cupy_v),
        ("scratchnet", f"{mi.get('scratchnet')}"
                       + (f" (git {str(commit.get('id'))[:10]}"
                          f"{', uncommitted changes' if commit.get('dirty') else ''})"
                          if commit.get("id") else "")),
    ]
    blas = mi.get("blas") or {}
    for lib in blas.get("libraries", []):
        desc = " ".join(str(x) for x in (lib.get("library"), lib.get("version")) if x)
        extra = ", ".join(str(x) for x in (lib.get("architecture"), lib.get("threading_layer"),
                                           lib.get("file")) if x)
        rows.append((f"BLAS/threads ({lib.get('user_api') or '?'})",
                     f"{desc}: {plural(lib.get('threads'), 'thread')}"
                     + (f" ({extra})" if extra else "")))
    if blas.get("source"):
        rows.append(("BLAS info from", blas["source"]))
    if mi.get("thread_env"):
        rows.append(("Thread variables", ", ".join(f"{k}={val}"
                                                   for k, val in mi["thread_env"].items())))
    for name, status in (mi.get("backends") or {}).items():
        rows.append((f"backend {_impl_name(name)}", status))
    if mi.get("load_average_start") is not None:
        rows.append(("Load average (1/5/15 min) at start / end",
                     f"{_fmt_load(mi.get('load_average_start'))} / "
                     f"{_fmt_load(mi.get('load_average_end'))}"))
    fc = mi.get("foreign_cpu") or {}
    if fc.get("foreign_share") is not None:
        rows.append(("CPU used by other processes during the run",
                     f"{fc['foreign_share']:.0%} of the machine ({fc['foreign_cpu_s']:.0f} CPU-s "
                     f"over {fc['wall_s']:.0f} s)"))
    if mi.get("bench_size"):
        rows.append(("Benchmark size", mi["bench_size"]))
    lines.append(md_table(["item", "value"], [(f"**{k}**", val) for k, val in rows]))
    busy = _busy(mi)
    if busy:
        lines += ["", f"**Warning:** {busy}"]
    return lines


def _busy(mi):
    """A sentence when other processes used more than 10% of the CPU time during
    the run, or (without that measure) the load average exceeded the CPU count."""
    cpus = mi.get("usable_cpus") or mi.get("logical_cpus")
    share = (mi.get("foreign_cpu") or {}).get("foreign_share")
    loads = [x[0] for x in (mi.get("load_average_start"), mi.get("load_average_end")) if x]
    if share is not None:
        if share <= 0.10:
            return None
        why = f"other processes used {share:.0%} of the machine's CPU time"
    elif cpus and loads and max(loads) > cpus:
        why = f"1-minute load average up to {max(loads):.1f} on {cpus} CPUs"
    else:
        return None
    return (f"the machine was busy during the run ({why}): other processes competed for "
            f"the cores, so absolute times are inflated and noisy; ratios within a group "
            f"are more robust but not immune.")


def _fmt_load(load):
    return "?" if not load else " ".join(f"{x:.2f}" for x in load)


def headline(results):
    """A few sentences with the numbers the issue asked about."""
    out = []
    ps = [r for r in per_sample_table(results) if r["speedup"]]
    by_backend = {}
    for r in ps:
        by_backend.setdefault(r["backend"], []).append(r)
    for impl, rows in by_backend.items():
        best = max(rows, key=lambda r: r["speedup"])
        parts = ", ".join(f"b{r['batch']} {fmt_ratio(r['speedup'], '×')}" for r in rows)
        ps_rates = [r["ps_sps"] for r in rows]
        ps_range = fmt_rate(min(ps_rates)) if len(rows) == 1 else \
            f"{fmt_rate(min(ps_rates))}–{fmt_rate(max(ps_rates))}"
        out.append(f"- **Matrix backprop ({impl})**: mini-batch over per-sample speed-up "
                   f"{parts}; per-sample runs at {ps_range} samples/s, mini-batch at up "
                   f"to {fmt_rate(best['mb_sps'])} samples/s (batch {best['batch']}).")
    fused = [r for r in fused_table(results) if r["speedup"]]
    if fused:
        for impl in sorted({r["backend"] for r in fused}, key=_impl_order):
            rs = [r for r in fused if r["backend"] == impl]
            lo, hi = min(rs, key=lambda r: r["speedup"]), max(rs, key=lambda r: r["speedup"])
            out.append(f"- **Fused kernels ({impl})**: composed ÷ fused time from "
                       f"{fmt_ratio(lo['speedup'], '×')} ({lo['op']} {lo['shape']}) to "
                       f"{fmt_ratio(hi['speedup'], '×')} ({hi['op']} {hi['shape']}).")
    rows, _ = epoch_table(results)
    for r in rows:
        if r["impl"] in (TORCH_CPU,):
            continue
        bits = []
        if r["vs_torch"] is not None:
            bits.append(f"{fmt_ratio(r['vs_torch'])} of PyTorch CPU's time")
        if r["vs_numpy"] is not None and r["impl"] != "numpy":
            bits.append(f"{fmt_ratio(r['vs_numpy'])} of numpy's")
        if r["vs_floor"] is not None:
            bits.append(f"{fmt_ratio(r['vs_floor'], '×')} its GEMM floor")
        if bits and r["batch"] == 128:
            out.append(f"- **Epoch, batch 128, {r['optimizer']} ({r['impl']})**: "
                       f"{fmt_time(r['median'])} for {r['samples']:,} samples; "
                       + ", ".join(bits) + ".")
    return out


def render_markdown(raw, plots=None, plot_note=None):
    results = parse_results(raw)
    sb = ((raw.get("machine_info") or {}).get("scratchnet") or {}).get("bench_size")
    lines = ["# scratchnet benchmark report", "",
             "What does the matrix form of backprop buy, and what do fused kernels and a GPU "
             "buy on top? Every time is the **median** over the benchmark's rounds "
             "(pytest-benchmark), after an untimed warm-up call that keeps compilation out; "
             "ratios compare cases of the same run. samples/s = samples per call ÷ median."
             + (f" Size: **{sb}**." if sb else ""), ""]
    head = headline(results)
    if head:
        lines += ["## Headline", "", *head, ""]
    lines += _machine_section(raw)
    lines.append("")

    ps = per_sample_table(results)
    if ps:
        n_ps = sorted({r["ps_samples"] for r in ps if r["ps_samples"]})
        n_mb = sorted({r["mb_samples"] for r in ps if r["mb_samples"]})
        lines += ["## 1. Per-sample vs mini-batch backprop", "",
                  f"One `fit` pass with SGD: per-sample over {_join(n_ps)} samples, mini-batch "
                  f"over {_join(n_mb)} samples (784 inputs, 10 classes). Speed-up = mini-batch "
                  "samples/s ÷ per-sample samples/s at the same batch size (same update).", "",
                  _per_sample_md(ps), ""]
    fz = fused_table(results)
    if fz:
        lines += ["## 2. Fused vs composed primitives", "",
                  "The backend's fused primitive against the base class's composed default "
                  "(`Ops.<op>(ops, ...)`) on the same backend and inputs. Speed-up = composed "
                  "median ÷ fused median.", "",
                  md_table(["backend", "op", "shape", "composed median", "fused median",
                            "fused speed-up"],
                           [(r["backend"], r["op"], r["shape"], fmt_time(r["composed"]),
                             fmt_time(r["fused"]), fmt_ratio(r["speedup"], "×"))
                            for r in fz]), ""]
    ep, floors = epoch_table(results)
    if ep:
        lines += ["## 3. End to end: one training epoch", "",
                  "One `fit` epoch (shuffle, gather, forward, loss, backward, update) on the "
                  "784-256-128-10 ReLU MLP; PyTorch eager on the same model, data, batch size "
                  "and optimizer (randperm + index slicing). ÷ columns are time ratios "
                  "(below 1: faster than the reference); × floor = epoch time ÷ the same "
                  "implementation's GEMM-only time.", "",
                  md_table(["batch size", "optimizer", "implementation", "epoch median",
                            "samples", "samples/s", "÷ PyTorch CPU", "÷ numpy", "× GEMM floor"],
                           [(r["batch"], r["optimizer"], _impl_name(r["impl"]),
                             fmt_time(r["median"]), f"{r['samples']:,}" if r["samples"] else "—",
                             fmt_rate(r["sps"]), fmt_ratio(r["vs_torch"]),
                             fmt_ratio(r["vs_numpy"]), fmt_ratio(r["vs_floor"], "×"))
                            for r in ep]), ""]
    if floors:
        lines += ["### GEMM floor: the step's matrix products alone", "",
                  "Per step: forward X@W1, h1@W2, h2@W3; weight gradients X.T@d1, h1.T@d2, "
                  "h2.T@d3; input gradients d3@W3.T, d2@W2.T (none for layer 1): 8 products, "
                  "for every step of the epoch.", "",
                  md_table(["batch size", "implementation", "GEMM time per epoch", "steps",
                            "samples/s"],
                           [(r["batch"], _impl_name(r["impl"]), fmt_time(r["median"]),
                             r["steps"] if r["steps"] is not None else "—",
                             fmt_rate(_ratio(r["samples"], r["median"])))
                            for r in floors]), ""]
    inf = inference_table(results)
    if inf:
        lines += ["## 4. Inference", "",
                  "`predict` (forward pass, outputs back on the host) over the test images.", "",
                  _inference_md(inf, with_rate=True), ""]
    comp = compile_table(results)
    if comp:
        lines += ["## 5. Kernel compilation (kept out of every timing above)", "",
                  md_table(["backend", "method", "cold compile", "from cache",
                            "import + backend set-up"],
                           [(r["backend"], f"`{r['method']}()`", fmt_time(r["compile_s"]),
                             fmt_time(r["cached_s"]), fmt_time(r["import_s"]))
                            for r in comp]), ""]
    steps, layers = cnn_tables(results)
    cnn_ps = per_sample_table(results, kind="cnn_train")
    cnn_inf = inference_table(results, kind="cnn_inference")
    if steps or layers or cnn_ps or cnn_inf:
        lines += ["## 6. The reference CNN", "",
                  "Conv2D(1, 32, 3, padding=1) + ReLU, MaxPool2D(2), Conv2D(32, 64, 3, "
                  "padding=1) + ReLU, MaxPool2D(2), Flatten, Dense(3136, 128) + ReLU, "
                  "Dense(128, 10) on 28x28 images, float32; PyTorch eager runs the same "
                  "network.", ""]
    if steps:
        lines += ["### One training step (Adam)", "",
                  "× GEMM floor = step time ÷ the same implementation's time for the step's "
                  "11 matrix products alone.", "",
                  md_table(["implementation", "batch size", "step median", "÷ PyTorch CPU",
                            "GEMM floor", "× GEMM floor"],
                           [(_impl_name(r["impl"]), r["batch"], fmt_time(r["median"]),
                             fmt_ratio(r["vs_torch"]), fmt_time(r["floor"]),
                             fmt_ratio(r["vs_floor"], "×")) for r in steps]), ""]
    if layers:
        lines += ["### Each layer, forward and backward", "",
                  "A conv includes its fused ReLU; its backward gives dW, db and dX (no dX "
                  "for conv1, the first layer); a pool is 2x2 max pooling. The backward is "
                  "timed alone, from one forward.", "",
                  md_table(["layer", "direction", "implementation", "median", "÷ PyTorch CPU"],
                           [(r["layer"], r["direction"], _impl_name(r["impl"]),
                             fmt_time(r["median"]), fmt_ratio(r["vs_torch"]))
                            for r in layers]), ""]
    if cnn_ps:
        lines += ["### Per-sample vs mini-batch backprop", "",
                  _per_sample_md(cnn_ps), ""]
    if cnn_inf:
        lines += ["### Inference", "",
                  "`predict` (forward pass, outputs back on the host) over the test images.", "",
                  _inference_md(cnn_inf, with_rate=False), ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    if plot_note:
        lines += [f"_{plot_note}_", ""]
    return "\n".join(lines)


def _per_sample_md(rows):
    """The per-sample vs mini-batch table of ``per_sample_table`` rows."""
    return md_table(["backend", "batch size", "per-sample median", "per-sample samples/s",
                     "mini-batch median", "mini-batch samples/s", "mini-batch speed-up"],
                    [(r["backend"], r["batch"], fmt_time(r["ps_median"]),
                      fmt_rate(r["ps_sps"]), fmt_time(r["mb_median"]),
                      fmt_rate(r["mb_sps"]), fmt_ratio(r["speedup"], "×"))
                     for r in rows])


def _inference_md(rows, with_rate):
    """The inference table of ``inference_table`` rows (``with_rate``: a
    predictions/s column too)."""
    head = ["batch size", "implementation", "median per pass", "samples", "µs/sample"]
    head += ["predictions/s"] * with_rate + ["÷ PyTorch CPU", "÷ numpy"]
    return md_table(head, [(r["batch"], _impl_name(r["impl"]), fmt_time(r["median"]),
                            f"{r['samples']:,}" if r["samples"] else "—",
                            f"{r['us_per_sample']:.2f}" if r["us_per_sample"] else "—",
                            *([fmt_rate(r["sps"])] * with_rate),
                            fmt_ratio(r["vs_torch"]), fmt_ratio(r["vs_numpy"]))
                           for r in rows])


def _join(values):
    return " / ".join(f"{v:,}" for v in values) if values else "?"


# ----------------------------------------------------------------------- plots
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 5), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _null_locator():
    from matplotlib.ticker import NullLocator
    return NullLocator()


def _plain_log_axis(axis, suffix=""):
    """Plain numbers (1,000 / 2×) on a log axis instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}{suffix}"))
    axis.set_minor_formatter(NullFormatter())


_COLORS = {"numpy": "tab:blue", "numba": "tab:orange", "cupy": "tab:green",
           "torch-cpu": "tab:red", "torch-cuda": "tab:purple"}


def plot_samples_per_s(results, path):
    rows = per_sample_table(results)
    fig, ax = _figure()
    for impl in sorted({r["backend"] for r in rows}, key=_impl_order):
        rs = [r for r in rows if r["backend"] == impl]
        for mode, key, style, marker in (("mini-batch", "mb_sps", "-", "o"),
                                         ("per-sample", "ps_sps", "--", "s")):
            pts = [(r["batch"], r[key]) for r in rs if r[key]]
            if pts:
                ax.plot(*zip(*pts), linestyle=style, marker=marker,
                        color=_COLORS.get(impl), label=f"{impl}, {mode}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.xaxis.set_minor_locator(_null_locator())
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("batch size (samples per update, log scale)")
    ax.set_ylabel("training throughput (samples/s, log scale)")
    ax.set_title("Training throughput: per-sample loop vs mini-batch matrix backprop")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def plot_speedup(results, path):
    rows = [r for r in per_sample_table(results) if r["speedup"]]
    fig, ax = _figure()
    impls = sorted({r["backend"] for r in rows}, key=_impl_order)
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        sp = {r["batch"]: r["speedup"] for r in rows if r["backend"] == impl}
        xs = [i + (k - (len(impls) - 1) / 2) * width for i, b in enumerate(batches) if b in sp]
        ys = [sp[b] for b in batches if b in sp]
        bars = ax.bar(xs, ys, width=width, color=_COLORS.get(impl), label=impl)
        for bar, y in zip(bars, ys):
            ax.annotate(fmt_ratio(y, "×"), (bar.get_x() + bar.get_width() / 2, y),
                        ha="center", va="bottom", fontsize="x-small")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis, "×")
    ax.set_xlabel("batch size (samples per update)")
    ax.set_ylabel("speed-up: mini-batch ÷ per-sample samples/s (×, log scale)")
    ax.set_title("What matrix backprop buys: mini-batch over per-sample")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if impls:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def write_plots(results, out_dir):
    """Write the PNGs; returns (paths, note) -- note says why none were made."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], ("Plots skipped: matplotlib is not installed "
                    "(pip install 'scratchnet[plot]').")
    if not any(r.kind == "train" for r in results):
        return [], ("Plots skipped: they show the MLP's per-sample vs mini-batch cases, "
                    "and the run has none.")
    paths = [Path(out_dir) / name for name in PLOTS]
    plot_samples_per_s(results, paths[0])
    plot_speedup(results, paths[1])
    return paths, None


def write_report(json_path, out_dir):
    """Render ``json_path`` into ``out_dir``: report.md and the PNGs.

    Returns ``{"markdown": path, "plots": [paths], "note": str | None}``."""
    raw = load_results(json_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, note = write_plots(parse_results(raw), out_dir)
    md = out_dir / "report.md"
    md.write_text(render_markdown(raw, plots, note) + "\n", encoding="utf-8")
    return {"markdown": md, "plots": plots, "note": note}
