"""A pytest plugin that reports the benchmark run's progress to ``scratchnet bench``.

The runner starts pytest with ``-p scratchnet.bench.progress`` and names a
file in ``$SCRATCHNET_BENCH_PROGRESS``; this plugin appends one line per
event to it, which the runner reads to draw its progress bar (or print one
line per finished benchmark), while pytest's own output goes to a log:

    total<TAB>N          after collection: N benchmarks will run or skip
    start<TAB>NODEID     a benchmark begins
    done<TAB>NODEID<TAB>OUTCOME    it ended: passed, skipped or failed

Without the variable the plugin does nothing.
"""

import os

ENV = "SCRATCHNET_BENCH_PROGRESS"


def _emit(*fields):
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\t".join(str(x) for x in fields) + "\n")


def pytest_collection_finish(session):
    _emit("total", len(session.items))


def pytest_runtest_logstart(nodeid, location):
    _emit("start", nodeid)


def pytest_runtest_logreport(report):
    # A test's outcome is its call's, or its setup's when it never got to run.
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _emit("done", report.nodeid, report.outcome)
