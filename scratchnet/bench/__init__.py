"""scratchnet's benchmark suite: the case registry, the runner and the report.

``scratchnet bench [--quick] [--report DIR] [--json FILE] [--from-json FILE] [-k EXPR]``
calls ``main(argv)``: it runs ``pytest benchmarks/ --benchmark-only`` (a source
checkout is needed: the benchmarks are not in the wheel) and renders the JSON
into a Markdown report with plots (``report``). ``cases`` is the registry that
the benchmarks and ``tests/test_bench_cases.py`` both read. Importing this
package imports nothing heavy.
"""

__all__ = ["main"]


def main(argv=None):
    """``scratchnet bench``: see ``scratchnet.bench.run``; returns the exit status."""
    from .run import main as run_main
    return run_main(argv)
