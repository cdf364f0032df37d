"""Progress for long jobs: a tqdm bar on a terminal, plain lines anywhere else.

A log file or a pipe gets one clean line per finished step (no carriage
returns, no trailing spaces); a terminal gets a ``tqdm.auto`` bar. tqdm is
imported only when a bar is drawn, so importing scratchnet does not load it.
"""

from __future__ import annotations

import sys

__all__ = ["Progress", "plural"]


def plural(n, noun, nouns=None):
    """``n`` and the noun in agreement: ``plural(1, "epoch")`` is ``"1 epoch"``,
    ``plural(3, "epoch")`` is ``"3 epochs"`` (``nouns``: an irregular plural)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False


class Progress:
    """``total`` steps of work, reported on ``file`` (default: stderr).

    ``update(n, line=..., postfix=...)`` advances by ``n`` steps: a bar shows
    ``postfix`` beside the count; without a bar, ``line`` is printed on its
    own line. ``note(text)`` prints a line either way without breaking the
    bar. ``bar``: True / False forces the choice; None (the default) draws a
    bar only when ``file`` is a terminal and tqdm is installed. ``enabled=False``
    prints nothing at all. Use it as a context manager, or call ``close()``.
    """

    def __init__(self, total, desc="", unit="step", file=None, bar=None, enabled=True):
        self.file = sys.stderr if file is None else file
        self.enabled = enabled
        self._bar = None
        if enabled and (bar if bar is not None else _isatty(self.file)):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.file,
                                 dynamic_ncols=True)

    @property
    def has_bar(self):
        return self._bar is not None

    def set_description(self, desc):
        if self._bar is not None:
            self._bar.set_description_str(desc)

    def update(self, n=1, line=None, postfix=None):
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        elif line:
            self._print(line)

    def note(self, text):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text.rstrip(), file=self.file)
        else:
            self._print(text)

    def _print(self, text):
        for part in str(text).splitlines():
            print(part.rstrip(), file=self.file, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
