"""``scratchnet bench``: run the benchmark suite, then render its report.

    scratchnet bench [--quick] [--report DIR] [--json FILE] [--from-json FILE] [-k EXPR]
    python -m scratchnet.bench.run ...          (the same, without the CLI)

The suite is ``pytest <checkout>/benchmarks --benchmark-only`` in a subprocess
(so timings never share a process with this one); ``--report DIR`` turns the
JSON it writes into ``DIR/report.md`` and PNG plots; ``--from-json`` renders an
existing JSON without running anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROG = "scratchnet bench"


def find_benchmarks():
    """``(benchmarks dir, repository root)`` of a source checkout, or ``(None, looked_at)``."""
    root = Path(__file__).resolve().parents[2]
    bench = root / "benchmarks"
    if (bench / "conftest.py").is_file():
        return bench, root
    return None, bench


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run scratchnet's benchmark suite (pytest-benchmark) and write a report: "
                    "per-sample vs mini-batch backprop, fused vs composed kernels, epoch "
                    "time against PyTorch, inference.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: the whole suite in under 3 minutes on 2 cores")
    p.add_argument("--report", metavar="DIR",
                   help="write DIR/report.md and PNG plots (plots need matplotlib)")
    p.add_argument("--json", metavar="FILE",
                   help="keep pytest-benchmark's JSON here (default: DIR/benchmarks.json "
                        "with --report, else a temporary file)")
    p.add_argument("--from-json", metavar="FILE",
                   help="run nothing: render an existing JSON (to --report DIR, or print "
                        "the Markdown)")
    p.add_argument("-k", metavar="EXPR", dest="keyword",
                   help="only benchmarks matching this pytest -k expression")
    return p


def _render(json_path, report_dir):
    from . import report
    try:
        if report_dir is None:
            raw = report.load_results(json_path)
            print(report.render_markdown(raw))
            return 0
        out = report.write_report(json_path, report_dir)
    except (OSError, ValueError) as err:
        print(f"{PROG}: cannot render {json_path}: {err}", file=sys.stderr)
        return 2
    print(f"{PROG}: report written to {out['markdown']}")
    for path in out["plots"]:
        print(f"{PROG}: plot written to {path}")
    if out["note"]:
        print(f"{PROG}: {out['note']}", file=sys.stderr)
    return 0


def pytest_command(bench_dir, json_path, quick=False, keyword=None):
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
           f"--benchmark-json={json_path}", "-p", "no:cacheprovider",
           "--benchmark-columns=median,min,max,iqr,rounds,iterations",
           "--benchmark-sort=name"]
    if quick:
        cmd.append("--quick")
    if keyword:
        cmd += ["-k", keyword]
    return cmd


def main(argv=None):
    """Entry point of ``scratchnet bench``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:          # "scratchnet bench -- --quick" from an argparse REMAINDER
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.from_json:
        if args.quick or args.keyword or args.json:
            print(f"{PROG}: --from-json only renders; --quick, -k and --json are ignored",
                  file=sys.stderr)
        return _render(args.from_json, args.report)

    bench_dir, root = find_benchmarks()
    if bench_dir is None:
        print(f"{PROG}: the benchmark suite is not installed with the package: no "
              f"benchmarks/ folder at {root}.\nRun it from a source checkout of scratchnet "
              f"(git clone ...; pip install -e '.[dev]'; scratchnet bench), or render an "
              f"existing result with --from-json FILE --report DIR.", file=sys.stderr)
        return 2
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print(f"{PROG}: pytest-benchmark is not installed: pip install 'scratchnet[dev]' "
              f"(or pytest pytest-benchmark)", file=sys.stderr)
        return 2

    tmp = None
    # Absolute paths: pytest runs in the repository, not in the caller's folder.
    if args.report:
        args.report = str(Path(args.report).resolve())
    if args.json:
        json_path = Path(args.json).resolve()
    elif args.report:
        json_path = Path(args.report) / "benchmarks.json"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="scratchnet-bench-")
        json_path = Path(tmp.name) / "benchmarks.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if json_path.exists():
        json_path.unlink()   # never render a stale result after a failed run

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    cmd = pytest_command(bench_dir, json_path, args.quick, args.keyword)
    print(f"{PROG}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.call(cmd, cwd=str(root), env=env)
    except KeyboardInterrupt:
        rc = 130
    print(f"{PROG}: benchmarks finished in {time.perf_counter() - t0:.1f} s (pytest exit "
          f"status {rc})", flush=True)
    try:
        if not json_path.exists():
            print(f"{PROG}: pytest wrote no JSON ({json_path}); nothing to report",
                  file=sys.stderr)
            return rc or 1
        if args.json or args.report:
            print(f"{PROG}: results in {json_path}")
        if args.report:
            status = _render(json_path, args.report)
            rc = rc or status
        return rc
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
