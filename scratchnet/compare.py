"""Train one model with several optimizers from the same start and compare.

::

    from scratchnet.compare import compare_optimizers, plot_comparison
    result = compare_optimizers(model, X, y, optimizers=("sgd", "momentum", "adam"),
                                epochs=10, batch_size=128, validation_data=(Xv, yv))
    print(result.table())                       # Markdown table, readable as plain text
    plot_comparison(result, "optimizers.png")   # loss | validation accuracy per epoch

Every optimizer trains its own copy of the *same* initial weights (copied
from ``model``, or from one model built by a factory), with the same
mini-batch order and dropout masks (all drawn from ``seed``), so the curves
differ only by the optimizer.

Presets (``lr=`` replaces the learning rate of every optimizer compared):

============  ==========================================
``sgd``       ``SGD(0.1)``
``momentum``  ``SGD(0.05, momentum=0.9)``
``nesterov``  ``SGD(0.05, momentum=0.9, nesterov=True)``
``adam``      ``Adam(1e-3)``
============  ==========================================
"""

from __future__ import annotations

import time

import numpy

from ._plotting import plain_log_ticks
from ._progress import Progress
from ._validate import check_number
from .model import Sequential
from .optimizers import PRESETS, Optimizer, get_optimizer

__all__ = ["compare_optimizers", "plot_comparison", "Comparison", "PRESETS", "make_optimizer"]

PLOT_MISSING = "plot_comparison needs matplotlib: pip install scratchnet[plot]"


def make_optimizer(spec, lr=None):
    """``(label, fresh Optimizer)`` for a preset name or an Optimizer instance
    (copied, so its state never leaks between runs); ``lr`` overrides."""
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name not in PRESETS:
            raise ValueError(f"unknown optimizer {spec!r}; expected one of {sorted(PRESETS)} "
                             "or an Optimizer instance")
        label, opt = name, get_optimizer(name)
    elif isinstance(spec, Optimizer):
        label, opt = type(spec).__name__.lower(), type(spec)(**spec.get_config())
    else:
        raise TypeError(f"optimizers must be preset names or Optimizer instances, got "
                        f"{type(spec).__name__}")
    if lr is not None:
        opt.lr = check_number(lr, "lr", low=0.0)
    return label, opt


def _settings(opt):
    cfg = opt.get_config()
    parts = [f"lr={cfg['lr']:g}"]
    if cfg.get("momentum"):
        parts.append(f"momentum={cfg['momentum']:g}" + (", nesterov" if cfg.get("nesterov")
                                                        else ""))
    if cfg.get("weight_decay"):
        parts.append(f"wd={cfg['weight_decay']:g}")
    return ", ".join(parts)


class Comparison:
    """What ``compare_optimizers`` returns.

    runs: ``{label: {"optimizer", "settings", "history", "model", "time",
    "initial_loss"}}`` in the order compared; ``histories``: ``{label: History}``.
    ``table()`` is a Markdown table of the results (``time``: wall seconds of
    ``fit``, validation included); ``str(result)`` too.
    """

    def __init__(self, runs, epochs):
        self.runs = runs
        self.epochs = epochs

    @property
    def histories(self):
        return {label: run["history"] for label, run in self.runs.items()}

    def rows(self):
        """One dict per optimizer: the numbers in ``table()``."""
        rows = []
        for label, run in self.runs.items():
            h = run["history"].history
            last = {k: v[-1] for k, v in h.items() if v}
            row = {"optimizer": label, "settings": run["settings"],
                   "initial_loss": run["initial_loss"], "loss": last.get("loss"),
                   "accuracy": last.get("accuracy"), "val_loss": last.get("val_loss"),
                   "val_accuracy": last.get("val_accuracy"), "time": run["time"]}
            if h.get("val_accuracy"):
                best = int(numpy.argmax(h["val_accuracy"]))
                row.update(best_val_accuracy=h["val_accuracy"][best], best_epoch=best + 1)
            rows.append(row)
        return rows

    def table(self):
        """Markdown table: optimizer, settings, start and final loss, training and
        validation accuracy, best validation accuracy (epoch), seconds."""
        rows = self.rows()
        has_val = any(r["val_loss"] is not None for r in rows)
        head = ["optimizer", "settings", "start loss", "final loss", "train acc"]
        if has_val:
            head += ["val loss", "val acc", "best val acc (epoch)"]
        head.append("time (s)")
        body = []
        for r in rows:
            cells = [r["optimizer"], r["settings"], _num(r["initial_loss"]), _num(r["loss"]),
                     _pct(r["accuracy"])]
            if has_val:
                best = (f"{_pct(r['best_val_accuracy'])} ({r['best_epoch']})"
                        if "best_val_accuracy" in r else "-")
                cells += [_num(r["val_loss"]), _pct(r["val_accuracy"]), best]
            cells.append(f"{r['time']:.2f}")
            body.append(cells)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

        def line(cells):
            return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(c) for c in body]
        return "\n".join(out)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"Comparison(optimizers={list(self.runs)}, epochs={self.epochs})"


def _num(x):
    return "-" if x is None else f"{x:.4f}"


def _pct(x):
    return "-" if x is None else f"{x:.2%}"


def compare_optimizers(model, X, y, optimizers=("sgd", "momentum", "adam"), epochs=5,
                       batch_size=128, validation_data=None, lr=None, seed=0,
                       loss="softmax_cross_entropy", progress=False):
    """Train the same initial model once per optimizer; returns a ``Comparison``.

    model: a ``Sequential`` (its current weights are the common start; it is
    not trained itself) or a callable returning one (called once).
    optimizers: preset names (``"sgd"``, ``"momentum"``, ``"nesterov"``,
    ``"adam"``; see the module docstring) or ``Optimizer`` instances, or one
    comma-separated string such as ``"sgd,momentum,adam"``.
    lr: replaces every optimizer's learning rate when given.
    seed: mini-batch order and dropout masks, the same for every optimizer
    (None: the model's seed, else 0).
    epochs, batch_size, validation_data, loss: as in ``fit``.
    progress: report each optimizer's epochs on stderr (a bar on a terminal,
    one line per epoch in a log or a pipe).
    """
    if isinstance(optimizers, str):
        optimizers = [s for s in optimizers.split(",") if s.strip()]
    specs = [make_optimizer(s, lr) for s in optimizers]   # fail on a bad name before training
    if not specs:
        raise ValueError("compare_optimizers needs at least one optimizer")
    base = model if isinstance(model, Sequential) else model()
    if not isinstance(base, Sequential):
        raise TypeError(f"model must be a Sequential or a callable returning one, got "
                        f"{type(base).__name__}")
    if seed is None:
        seed = base.seed if base.seed is not None else 0
    runs, seen = {}, {}
    with Progress(len(specs) * epochs, unit="epoch", enabled=bool(progress)) as bar:
        for label, opt in specs:
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}-{seen[label]}"
            bar.set_description(label)
            bar.note(f"{label} ({_settings(opt)})")
            m = base.copy(seed=seed)
            initial = m.evaluate(X, y, loss)["loss"]
            t = time.perf_counter()
            history = m.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=batch_size,
                            validation_data=validation_data,
                            callbacks=[_EpochReport(bar, label, epochs)])
            m.ops.synchronize()
            runs[label] = {"optimizer": opt, "settings": _settings(opt), "history": history,
                           "model": m, "time": time.perf_counter() - t, "initial_loss": initial}
    return Comparison(runs, epochs)


class _EpochReport:
    """A ``fit`` callback: one progress step per epoch, with its numbers."""

    def __init__(self, bar, label, epochs):
        self.bar, self.label, self.epochs = bar, label, epochs

    def on_epoch_end(self, model, epoch, logs):
        numbers = ", ".join(f"{k} {logs[k]:.4f}" for k in
                            ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs)
        self.bar.update(1, line=f"{self.label} epoch {epoch + 1}/{self.epochs}: {numbers}",
                        postfix=numbers)


def plot_comparison(results, path):
    """Write a PNG to ``path``: training loss (left, log scale, so that late
    differences show) and validation accuracy (right; training accuracy when
    there is no validation data) per epoch, one colour per optimizer, with
    one legend below both panels. ``results``: a ``Comparison`` or
    ``{label: History}``. Returns ``path``. Needs matplotlib (``pip install
    scratchnet[plot]``)."""
    comparison_figure(results).savefig(path, dpi=100)
    return path


def comparison_figure(results):
    """The matplotlib ``Figure`` that ``plot_comparison`` writes."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ImportError(PLOT_MISSING) from err
    histories = results.histories if isinstance(results, Comparison) else dict(results)
    has_val = all(h.history.get("val_accuracy") for h in histories.values())
    acc_key = "val_accuracy" if has_val else "accuracy"
    fig = Figure(figsize=(11, 4.6))
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    losses = []
    for label, h in histories.items():
        epochs = numpy.arange(1, len(h.epoch) + 1)
        loss = h.history.get("loss", [])
        losses.extend(loss)
        line, = ax_loss.plot(epochs, loss, marker="o", ms=3, label=label)
        if h.history.get(acc_key):
            ax_acc.plot(epochs, h.history[acc_key], marker="o", ms=3, color=line.get_color(),
                        label=label)
    # A log axis needs positive values (a loss can be 0, e.g. MSE on exact targets).
    if losses and all(x > 0 for x in losses):
        ax_loss.set_yscale("log")
        plain_log_ticks(ax_loss.yaxis, max(losses) / min(losses))
        ax_loss.set_ylabel("loss (log scale)")
    else:
        ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training loss")
    ax_loss.set_xlabel("epoch")
    ax_acc.set_title("Validation accuracy" if has_val else "Training accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.15, which="minor")
    handles, labels = ax_loss.get_legend_handles_labels()
    if handles:
        # below both panels: the colours are the same in each, and no curve is covered
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6),
                   frameon=False)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return fig
