"""Compile times, kept apart from every other timing.

A backend that compiles its kernels ahead of use (``warmup()`` or
``compile_kernels()``) is timed once in a fresh process with an empty kernel cache
(``compile_s``) and once more from that cache (``cached_compile_s``); both go to
``extra_info``. Backends without a compile step are skipped.
"""


def test_compile(compile_case, benchmark):
    prepared = compile_case.prepare()
    benchmark.group = compile_case.group
    benchmark.pedantic(prepared.run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(prepared.info)
