"""Group 2: what do fused kernels buy?

Each fused primitive of a backend (``ops.<op>(...)``) against the base class's
composed default on the same backend and inputs (``Ops.<op>(ops, ...)``), at the
MLP's activation shapes for batch 128 and at 4096x1000. Backends without a fused
version of an op (NumPy: none) are skipped: there is nothing to compare.
"""


def test_fused_vs_composed(fused_case, measure):
    measure(fused_case)
