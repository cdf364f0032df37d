"""Small matplotlib helpers shared by the plots of ``compare`` and ``diagnostics``."""

#: Tick positions within one power of ten: 1, 2 and 5 for data spanning several
#: powers; about evenly spaced on the log axis for data spanning less than one.
WIDE_SUBS = (1.0, 2.0, 5.0)
NARROW_SUBS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)


def plain_log_ticks(axis, ratio):
    """Plain numbers (0.02, 0.05, 0.1) instead of powers of ten on a log
    ``axis`` whose data spans ``ratio`` (max / min), with enough ticks that a
    range narrower than a power of ten still gets several labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    subs = WIDE_SUBS if ratio > 10 else NARROW_SUBS
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=40))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())
