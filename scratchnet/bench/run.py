"""``scratchnet bench``: run the benchmark suite, then render its report.

    scratchnet bench [--quick] [--report DIR] [--json FILE] [--from-json FILE] [-k EXPR]
    python -m scratchnet.bench.run ...          (the same, without the CLI)

The suite is ``pytest <checkout>/benchmarks --benchmark-only`` in a subprocess
(so timings never share a process with this one). Its output goes to
``pytest.log`` beside the JSON; the terminal shows a progress bar (a log or a
pipe: one line per finished benchmark). ``--report DIR`` turns the JSON into
``DIR/report.md`` and PNG plots; without it the report's Markdown is printed.
``--from-json`` renders an existing JSON without running anything.

The suite is not part of the wheel: it needs a source checkout (the one this
package is imported from, or the current folder). Without one, and for a bad
option or output path, the command stops at once with one line and status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .._progress import Progress
from . import progress as progress_plugin

PROG = "scratchnet bench"


class BenchUsageError(Exception):
    """A problem with what the user asked for: one line, exit status 2."""


def _is_suite(root):
    """``root`` holds scratchnet's own benchmark suite (not some other project's
    ``benchmarks/`` folder that happens to sit in the same place)."""
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return ((root / "benchmarks" / "conftest.py").is_file()
            and re.search(r'^name\s*=\s*"scratchnet"', project, re.M) is not None)


def find_benchmarks():
    """``(benchmarks dir, repository root)`` of a source checkout, or ``(None,
    [folders looked in])``. The checkout is the one this package was imported
    from (an editable install), or else the current folder: an installed wheel
    run inside a clone of the repository uses that clone's suite."""
    here = Path(__file__).resolve().parents[2]
    candidates = [here] + [p for p in (Path.cwd().resolve(),) if p != here]
    for root in candidates:
        if _is_suite(root):
            return root / "benchmarks", root
    return None, [root / "benchmarks" for root in candidates]


NO_SUITE = ("the benchmark suite is not installed with the package (it is the benchmarks/ "
            "folder of a source checkout; looked in {looked}): clone the scratchnet repository, "
            "pip install -e '.[dev]' in it and run scratchnet bench there; or render a saved "
            "result with --from-json FILE")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BenchUsageError(f"{message} (see --help)")


def build_parser():
    p = _Parser(
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
           "-p", "scratchnet.bench.progress",
           "--benchmark-columns=median,min,max,iqr,rounds,iterations",
           "--benchmark-sort=name"]
    if quick:
        cmd.append("--quick")
    if keyword:
        cmd += ["-k", keyword]
    return cmd


def _check_outputs(report, json):
    """Refuse an unusable --report / --json path before anything runs."""
    from .._atomic import check_folder_target
    for option, path in (("--report", report), ("--json", json)):
        if path is None:
            continue
        try:
            if option == "--report":
                check_folder_target(path)
            elif path == "" or path.endswith(("/", os.sep)) or os.path.isdir(path):
                raise BenchUsageError(f"--json: {path!r} is not a file name")
            else:     # the JSON's folder is created if missing
                check_folder_target(os.path.dirname(os.path.abspath(path)))
        except (OSError, ValueError) as err:
            raise BenchUsageError(f"{option}: {err}") from None


def main(argv=None):
    """Entry point of ``scratchnet bench``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:          # "scratchnet bench -- --quick" from an argparse REMAINDER
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
        if args.from_json:
            if args.quick or args.keyword or args.json:
                print(f"{PROG}: --from-json only renders; --quick, -k and --json are ignored",
                      file=sys.stderr)
            _check_outputs(args.report, None)
            return _render(args.from_json, args.report)
        bench_dir, root = find_benchmarks()
        if bench_dir is None:
            raise BenchUsageError(NO_SUITE.format(looked=", ".join(map(str, root))))
        _check_outputs(args.report, args.json)
        try:
            import pytest_benchmark  # noqa: F401
        except ImportError:
            raise BenchUsageError("pytest-benchmark is not installed: pip install "
                                  "'scratchnet[dev]' (or pytest pytest-benchmark)") from None
    except BenchUsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return _run(args, bench_dir, root)


def _run(args, bench_dir, root):
    tmp = tempfile.TemporaryDirectory(prefix="scratchnet-bench-")
    # Absolute paths: pytest runs in the repository, not in the caller's folder.
    if args.report:
        args.report = str(Path(args.report).resolve())
    if args.json:
        json_path = Path(args.json).resolve()
    elif args.report:
        json_path = Path(args.report) / "benchmarks.json"
    else:
        json_path = Path(tmp.name) / "benchmarks.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if json_path.exists():
        json_path.unlink()   # never render a stale result after a failed run
    # pytest's own output goes to a log beside the results (or with the
    # temporary JSON); the terminal shows progress instead.
    log_path = json_path.parent / "pytest.log"
    events = Path(tmp.name) / "progress"

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env[progress_plugin.ENV] = str(events)
    cmd = pytest_command(bench_dir, json_path, args.quick, args.keyword)
    print(f"{PROG}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=str(root), env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            rc = _follow(proc, events)
        print(f"{PROG}: benchmarks finished in {time.perf_counter() - t0:.1f} s (pytest exit "
              f"status {rc}{'; ' + _last_line(log_path) if _last_line(log_path) else ''})",
              flush=True)
        if rc != 0:
            print(f"{PROG}: the end of pytest's output:", file=sys.stderr)
            print(_tail(log_path, 25), file=sys.stderr)
        if args.json or args.report:
            print(f"{PROG}: pytest's output in {log_path}")
        if not json_path.exists():
            print(f"{PROG}: pytest wrote no JSON ({json_path}); nothing to report",
                  file=sys.stderr)
            return rc or 1
        if args.json or args.report:
            print(f"{PROG}: results in {json_path}")
        status = _render(json_path, args.report)    # no --report: the Markdown on stdout
        return rc or status
    finally:
        tmp.cleanup()


def _follow(proc, events):
    """Wait for the pytest process, turning the plugin's events into progress:
    a bar on a terminal, one line per finished benchmark elsewhere."""
    bar, done, total, offset, t0 = None, 0, 0, 0, time.perf_counter()
    try:
        while True:
            finished = proc.poll() is not None     # read the events once more after the end
            try:
                with open(events, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = ""
            complete = chunk[:chunk.rfind("\n") + 1]   # a line still being written waits
            offset += len(complete.encode("utf-8"))
            for line in complete.splitlines():
                kind, *rest = line.split("\t")
                if kind == "total" and bar is None:
                    total = int(rest[0])
                    bar = Progress(total, unit="benchmark")
                elif kind == "start" and bar is not None:
                    bar.set_description(_short(rest[0]))
                elif kind == "done" and bar is not None:
                    done += 1
                    outcome = rest[1] if len(rest) > 1 else "passed"
                    elapsed = time.perf_counter() - t0
                    bar.update(1, line=f"{PROG}: [{done}/{total}] {outcome:7} {_short(rest[0])} "
                                       f"({elapsed:.0f} s)")
                    if outcome == "failed" and bar.has_bar:
                        bar.note(f"{PROG}: FAILED {rest[0]}")
            if finished:
                return proc.returncode
            time.sleep(0.2)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 130
    finally:
        if bar is not None:
            bar.close()


def _short(nodeid):
    """'test_fused_ops.py::test_fused[numba-adam-(128, 10)]' without the folder."""
    return nodeid.rsplit("/", 1)[-1]


def _tail(path, n):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:]).rstrip()
    except OSError:
        return ""


def _last_line(path):
    """pytest's summary line ('80 passed, 12 skipped in 170.2s'), without its '=' rule."""
    return _tail(path, 1).strip("= \n")


if __name__ == "__main__":
    sys.exit(main())
