"""Validate the cupy backend on a real GPU and write a report.

    python -m benchmarks.gpu_validate --out DIR
    python benchmarks/gpu_validate.py --out DIR [--no-tests] [--no-torch] [--quick]

Steps: run ``pytest -m gpu``; compile the CUDA kernels for this device; time each
fused primitive against its bandwidth floor (the bytes it must move, once, at the
device-to-device copy bandwidth measured here) and against the composed CuPy
default it replaces; time one training epoch at batch 512 with scratchnet and,
when installed, with PyTorch eager on the same GPU. Device work is synchronised
inside every timing. Writes ``DIR/report.md`` and ``DIR/report.json``.

Exit status: 0 all good, 1 the GPU tests failed, 2 no usable GPU (the reason is
printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT) not in sys.path:  # run as a file
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------ timing
def gpu_time_us(fn, cupy, reps=20, warmup=3):
    """Mean device time of one ``fn()`` in microseconds (CUDA events, synchronised)."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / reps


def copy_bandwidth(cupy, nbytes=512 << 20, reps=20):
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)

    def copy():
        dst.data.copy_from_device_async(src.data, src.nbytes)

    us = gpu_time_us(copy, cupy, reps=reps)
    return 2 * src.nbytes / (us * 1e-6)


# ------------------------------------------------------------ kernel cases
def kernel_cases(ops, quick=False):
    """(op, shape, dtype, bytes moved once, fused call, composed-default call)."""
    from scratchnet.backends.base import Ops

    cp = ops.xp
    rng = cp.random.default_rng(0)
    cases = []
    shapes = [(512, 256), (8192, 4096)] if not quick else [(512, 256), (4096, 1024)]
    for dtype in (numpy.float32, numpy.float64):
        for n, m in shapes:
            size = numpy.dtype(dtype).itemsize
            nm = n * m * size
            Z = rng.standard_normal((n, m), dtype=dtype)
            b = rng.standard_normal(m, dtype=dtype)
            Y = ops.bias_act(Z, b, "relu")
            dY = rng.standard_normal((n, m), dtype=dtype)
            out = cp.empty_like(Z)
            shape = f"{n}x{m}"
            cases += [
                ("bias_act relu", shape, dtype, 2 * nm + m * size,
                 lambda Z=Z, b=b, out=out: ops.bias_act(Z, b, "relu", out=out),
                 lambda Z=Z, b=b: Ops.bias_act(ops, Z, b, "relu")),
                ("bias_act sigmoid", shape, dtype, 2 * nm + m * size,
                 lambda Z=Z, b=b, out=out: ops.bias_act(Z, b, "sigmoid", out=out),
                 lambda Z=Z, b=b: Ops.bias_act(ops, Z, b, "sigmoid")),
                ("act_backward relu", shape, dtype, 3 * nm,
                 lambda dY=dY, Y=Y, out=out: ops.act_backward(dY, Y, "relu", out=out),
                 lambda dY=dY, Y=Y: Ops.act_backward(ops, dY, Y, "relu")),
                ("act_backward_bias relu", shape, dtype, 3 * nm + m * size,
                 lambda dY=dY, Y=Y, out=out: ops.act_backward_bias(dY, Y, "relu", out=out),
                 lambda dY=dY, Y=Y: Ops.act_backward_bias(ops, dY, Y, "relu")),
                ("dropout p=0.5", shape, dtype, 3 * nm,
                 lambda Z=Z, r=ops.make_rng(0): ops.dropout(Z, 0.5, r),
                 lambda Z=Z, r=ops.make_rng(0): Ops.dropout(ops, Z, 0.5, r)),
            ]
            p, g = Z.copy(), dY
            vel, m1, v1 = cp.zeros_like(p), cp.zeros_like(p), cp.zeros_like(p)
            cases += [
                ("sgd nesterov+wd", shape, dtype, 5 * nm,
                 lambda p=p, g=g, v=vel: ops.sgd_update(p, g, v, 1e-3, 0.9, True, 1e-4),
                 lambda p=p, g=g, v=vel: Ops.sgd_update(ops, p, g, v, 1e-3, 0.9, True, 1e-4)),
                ("adam", shape, dtype, 7 * nm,
                 lambda p=p, g=g, m=m1, v=v1: ops.adam_update(p, g, m, v, 10, 1e-5),
                 lambda p=p, g=g, m=m1, v=v1: Ops.adam_update(ops, p, g, m, v, 10, 1e-5)),
            ]
        for n, c in ([(512, 10), (65536, 10), (8192, 1000)] if not quick else
                     [(512, 10), (4096, 1000)]):
            size = numpy.dtype(dtype).itemsize
            logits = rng.standard_normal((n, c), dtype=dtype)
            labels = cp.asarray(numpy.random.default_rng(0).integers(0, c, n))
            cases.append(
                ("softmax_cross_entropy", f"{n}x{c}", dtype, 2 * n * c * size + 8 * n,
                 lambda x=logits, y=labels: ops.softmax_cross_entropy(x, y),
                 lambda x=logits, y=labels: Ops.softmax_cross_entropy(ops, x, y)))
    return cases


def time_kernels(ops, bandwidth, quick=False):
    cp = ops.xp
    reps = 5 if quick else 20
    rows = []
    for op, shape, dtype, nbytes, fused, composed in kernel_cases(ops, quick):
        us = gpu_time_us(fused, cp, reps=reps)
        composed_us = gpu_time_us(composed, cp, reps=reps)
        floor_us = nbytes / bandwidth * 1e6
        rows.append({"op": op, "shape": shape, "dtype": numpy.dtype(dtype).name,
                     "bytes": int(nbytes), "us": round(us, 2), "floor_us": round(floor_us, 2),
                     "fraction_of_floor": round(floor_us / us, 3),
                     "composed_us": round(composed_us, 2),
                     "speedup_vs_composed": round(composed_us / us, 2)})
        print(f"  {op:24s} {shape:>10s} {rows[-1]['dtype']:8s} {us:9.1f} us "
              f"(floor {floor_us:8.1f} us, {floor_us / us:5.0%}; composed {composed_us:9.1f} us)",
              flush=True)
    return rows


# ----------------------------------------------------------- training epoch
def epoch_time(impl="cupy", batch_size=512, optimizer="adam", quick=False):
    """Seconds for one training epoch of the benchmark registry's MLP
    (784-256-128-10 ReLU, softmax cross-entropy; ``scratchnet.bench.cases``),
    after a warm-up epoch, device synchronised; ``impl`` is a scratchnet
    backend or "torch-cuda". None when that implementation cannot run here."""
    from scratchnet.bench.cases import EpochCase, get_size
    case = EpochCase(impl=impl, size=get_size(quick), batch_size=batch_size, optimizer=optimizer)
    if case.unavailable():
        return None
    prepared = case.prepare()
    prepared.run()  # warm-up: kernel compilation, buffers
    t0 = time.perf_counter()
    prepared.run()
    return time.perf_counter() - t0


# ------------------------------------------------------------------ report
def device_info(ops):
    from scratchnet.backends.cupy_ops import _cuda_version as ver, device_name
    cp = ops.xp
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    info = {"name": device_name(cp), "compute_capability": dev.compute_capability,
            "multiprocessors": props["multiProcessorCount"],
            "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
            "driver_cuda_version": ver(cp.cuda.runtime.driverGetVersion()),
            "cuda_runtime": ver(cp.cuda.runtime.runtimeGetVersion())}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        info["driver"] = None
    return info


def versions(cupy):
    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "cupy": cupy.__version__, "torch": None}
    try:
        import scratchnet
        out["scratchnet"] = getattr(scratchnet, "__version__", None)
    except Exception:
        out["scratchnet"] = None
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def run_gpu_tests():
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
            "passed": proc.returncode == 0, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - t0, 1),
            "output_tail": "\n".join(lines[-60:])}


def write_markdown(report, path):
    d, v = report["device"], report["versions"]
    lines = ["# scratchnet GPU validation", "",
             f"- device: {d['name']} (sm_{d['compute_capability']}, "
             f"{d['multiprocessors']} SMs, {d['memory_GiB']} GiB)",
             f"- driver: {d.get('driver')} (CUDA {d['driver_cuda_version']}), "
             f"CUDA runtime {d['cuda_runtime']}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]
    t = report.get("tests")
    if t:
        lines += [f"## GPU tests: {'PASS' if t['passed'] else 'FAIL'}", "",
                  f"`{t['command']}` -> {t['summary']} ({t['seconds']} s)", ""]
    c = report["compile"]
    lines += ["## Kernels", "",
              f"{c['kernels']} kernel instantiations compiled for sm_{d['compute_capability']} "
              f"in {c['seconds']} s. Device-to-device copy bandwidth: "
              f"{report['copy_bandwidth_GBps']} GB/s.", "",
              "| op | shape | dtype | fused (us) | floor (us) | floor/fused | composed (us) "
              "| speed-up |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report["kernels"]:
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['us']} | {r['floor_us']} "
                     f"| {r['fraction_of_floor']:.0%} | {r['composed_us']} "
                     f"| {r['speedup_vs_composed']}x |")
    e = report.get("epoch")
    if e:
        lines += ["", "## One training epoch", "",
                  f"MLP {e['architecture']}, {e['size']}, batch {e['batch_size']}, "
                  f"{e['optimizer']}, float32 (the benchmark registry's epoch case).", "",
                  f"- scratchnet (cupy): {e['scratchnet_s']}",
                  f"- PyTorch eager: {e['torch_s']}"]
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md/.json")
    parser.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch epoch")
    parser.add_argument("--no-epoch", action="store_true", help="skip the training epochs")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    args = parser.parse_args(argv)

    from scratchnet.backends import BackendUnavailableError, get_ops

    try:
        ops = get_ops("cupy")
    except BackendUnavailableError as err:
        print(f"gpu_validate: no usable GPU: {err}", file=sys.stderr)
        return 2
    cp = ops.xp
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": device_info(ops), "versions": versions(cp)}
    print(f"device: {report['device']['name']}", flush=True)

    if not args.no_tests:
        print("running pytest -m gpu ...", flush=True)
        report["tests"] = run_gpu_tests()
        print(f"  {report['tests']['summary']}", flush=True)

    t0 = time.perf_counter()
    names = ops.compile_kernels()
    cp.cuda.Device().synchronize()
    report["compile"] = {"kernels": len(names), "seconds": round(time.perf_counter() - t0, 2),
                         "arch": f"sm_{report['device']['compute_capability']}"}

    bandwidth = copy_bandwidth(cp)
    report["copy_bandwidth_GBps"] = round(bandwidth / 1e9, 1)
    print(f"copy bandwidth: {report['copy_bandwidth_GBps']} GB/s; timing kernels ...",
          flush=True)
    report["kernels"] = time_kernels(ops, bandwidth, quick=args.quick)

    if not args.no_epoch:
        epoch = {"architecture": "784-256-128-10", "batch_size": 512, "optimizer": "adam",
                 "size": "quick" if args.quick else "full (60,000 samples)"}
        try:
            epoch["scratchnet_s"] = round(epoch_time("cupy", quick=args.quick), 4)
        except Exception as err:  # a failure belongs in the report, not a traceback
            epoch["scratchnet_s"] = f"error: {type(err).__name__}: {err}"
        if args.no_torch:
            epoch["torch_s"] = "skipped"
        else:
            t = epoch_time("torch-cuda", quick=args.quick)
            epoch["torch_s"] = round(t, 4) if t is not None else "torch with CUDA not installed"
        report["epoch"] = epoch
        print(f"epoch: scratchnet {epoch['scratchnet_s']} s, torch {epoch['torch_s']}",
              flush=True)

    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, args.out / "report.md")
    print(f"wrote {args.out / 'report.md'} and report.json")
    return 1 if report.get("tests") and not report["tests"]["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
