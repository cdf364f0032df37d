"""pytest-benchmark set-up for scratchnet's suite (``pytest benchmarks/ --benchmark-only``).

Every test takes one case from the registry ``scratchnet.bench.cases`` through a
fixture named after its family (``train_case``, ``fused_case``, ``epoch_case``,
``inference_case``, ``compile_case``); cases that cannot run here (backend or
PyTorch missing, no fused kernel to compare) are collected as skips with the
reason, so the report never hides what was left out.

``--quick`` (or ``SCRATCHNET_BENCH_QUICK=1``) selects the small sizes: the
whole suite then finishes in under 3 minutes on 2 cores.
"""

import os
import time

import pytest

from scratchnet.bench import cases

QUICK_ENV = "SCRATCHNET_BENCH_QUICK"
FIXTURES = {f"{family}_case": family for family in cases.REGISTRY}


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help=f"scratchnet: small benchmark sizes, whole suite < 3 min on 2 cores "
                          f"(also ${QUICK_ENV}=1)")


def is_quick(config):
    env = os.environ.get(QUICK_ENV, "").strip().lower()
    return bool(config.getoption("--quick")) or env in ("1", "true", "yes", "on")


def bench_size(config):
    return cases.get_size(is_quick(config))


def pytest_configure(config):
    config._scratchnet_load = {"start": _loadavg(), "cpu": _cpu_counters()}


def pytest_generate_tests(metafunc):
    for fixture, family in FIXTURES.items():
        if fixture not in metafunc.fixturenames:
            continue
        params = []
        for case in cases.REGISTRY[family](bench_size(metafunc.config)):
            why = case.skip_reason()
            marks = [pytest.mark.skip(reason=why)] if why else []
            if case.impl in ("cupy", "torch-cuda"):
                marks.append(pytest.mark.gpu)
            params.append(pytest.param(case, id=case.id, marks=marks))
        metafunc.parametrize(fixture, params)


@pytest.fixture
def size(request):
    return bench_size(request.config)


@pytest.fixture
def measure(benchmark, size):
    """``measure(case)``: prepare the case, time it into its group, return the median (s)."""
    def run(case):
        benchmark.group = case.group
        return cases.time_case(benchmark, case.prepare(), size)
    return run


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_counters():
    """(wall s, busy CPU-s of the whole machine, CPU-s of this process and its
    children); busy is None where /proc/stat is missing."""
    busy = None
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait
        busy = (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def _foreign_cpu(start):
    """Share of the machine's CPU time that other processes used since ``start``."""
    end = _cpu_counters()
    if start is None or start[1] is None or end[1] is None:
        return None
    wall = end[0] - start[0]
    cpus = os.cpu_count() or 1
    foreign = (end[1] - start[1]) - (end[2] - start[2])
    return {"wall_s": wall, "foreign_cpu_s": max(0.0, foreign),
            "foreign_share": max(0.0, foreign) / (wall * cpus) if wall > 0 else None}


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add scratchnet's machine description (CPU, BLAS, versions, backends) to the JSON."""
    from scratchnet.bench.report import collect_machine_info
    info = collect_machine_info()
    load = getattr(config, "_scratchnet_load", {})
    info["load_average_start"] = load.get("start")
    info["load_average_end"] = _loadavg()
    info["foreign_cpu"] = _foreign_cpu(load.get("cpu"))
    info["bench_size"] = bench_size(config).name
    machine_info["scratchnet"] = info
