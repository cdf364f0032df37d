"""The adding problem at T = 100: LSTM and GRU solve it, the tanh RNN does not,
and the gradient reaching each time step shows why.

    python benchmarks/adding_problem.py --out benchmarks/results/adding-problem

trains ``[cell(2, hidden), Dense(hidden, 1)]`` with MSE for each cell (tanh
RNN, LSTM, GRU) on the same data, from the same seed, with Adam and global
gradient-norm clipping, and writes to ``--out``:

* ``results.md`` / ``results.json``: the settings, test MSE per epoch and at
  the end, the time taken, next to the baseline of always predicting 1
  (MSE 1/6 = 0.167);
* ``grad_through_time.png``: ||dL/dh_t|| for every step t, relative to the
  last step's, before and after training (the loss reads only the last
  hidden state, so this is the gradient flowing back through time; computed
  on a float64 copy of the model, where float32 would underflow to 0);
* ``mse_curves.png``: test MSE per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import scratchnet as sn

CELLS = {
    "RNN (tanh)": lambda h: sn.RNN(2, h),
    "LSTM": lambda h: sn.LSTM(2, h),
    "GRU": lambda h: sn.GRU(2, h),
}
BASELINE = 1 / 6     # MSE of always predicting 1, the mean target


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=100, help="sequence length (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=10000, help="(default: %(default)s)")
    p.add_argument("--n-test", type=int, default=1000, help="(default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam (default: %(default)s)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="clip_grad_norm (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--backend", default="auto", help="(default: %(default)s)")
    p.add_argument("--cells", default=",".join(CELLS),
                   help="comma-separated, from: " + ", ".join(CELLS))
    p.add_argument("--out", default="benchmarks/results/adding-problem",
                   help="folder for the results and plots (default: %(default)s)")
    return p.parse_args(argv)


def gradient_through_time(model, X, y):
    """||dL/dh_t|| for every step t of the recurrent layer (a host array (T,))
    for MSE on (X, y), on a float64 copy of the model (in float32 a vanishing
    gradient underflows to 0 within 100 steps); the model is left as it was."""
    loss = sn.MSE()
    model = model.copy(dtype="float64")
    out = model.forward(X, training=True)
    loss.forward(out, y)
    model.backward(loss.backward())
    return model.ops.to_host(model.layers[0].dh_norms).astype(np.float64)


class _Log(sn.Callback):
    def __init__(self, name, t0):
        self.name, self.t0 = name, t0

    def on_epoch_end(self, model, epoch, logs):
        print(f"{self.name}: epoch {epoch + 1}  train MSE {logs['loss']:.4f}  test MSE "
              f"{logs['val_loss']:.4f}  ({time.perf_counter() - self.t0:.0f} s)", flush=True)


def run(args):
    names = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; choose from {list(CELLS)}")
    ops = sn.backends.get_ops(args.backend)
    X, y = sn.datasets.adding_problem(args.n_train, args.T, seed=args.seed)
    Xt, yt = sn.datasets.adding_problem(args.n_test, args.T, seed=args.seed + 1)
    probe = (Xt[:256], yt[:256])
    results = {}
    for name in names:
        model = sn.Sequential([CELLS[name](args.hidden), sn.Dense(args.hidden, 1)],
                              seed=args.seed, backend=ops)
        before = gradient_through_time(model, *probe)
        t0 = time.perf_counter()
        hist = model.fit(X, y, loss=sn.MSE(), optimizer=sn.Adam(args.lr), epochs=args.epochs,
                         batch_size=args.batch_size, validation_data=(Xt, yt),
                         clip_grad_norm=args.clip, callbacks=[_Log(name, t0)])
        seconds = time.perf_counter() - t0
        after = gradient_through_time(model, *probe)
        curve = hist.history["val_loss"]
        results[name] = {"test_mse": curve[-1], "best_test_mse": min(curve),
                         "test_mse_per_epoch": curve, "seconds": seconds,
                         "solved": curve[-1] < 0.01,
                         "first_epoch_below_0.01": next((i + 1 for i, v in enumerate(curve)
                                                         if v < 0.01), None),
                         "grad_norms_before": before.tolist(), "grad_norms_after": after.tolist()}
    return results, ops


def write(args, results, ops):
    os.makedirs(args.out, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("T", "n_train", "n_test", "hidden", "epochs",
                                              "batch_size", "lr", "clip", "seed")}
    settings["backend"] = ops.name
    machine = {"python": platform.python_version(), "numpy": np.__version__,
               "scratchnet": sn.__version__, "cpus": os.cpu_count()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": settings, "machine": machine, "baseline_mse": BASELINE,
                   "results": results}, f, indent=1)
    lines = [
        f"# The adding problem, T = {args.T}", "",
        "```", "python benchmarks/adding_problem.py " + " ".join(sys.argv[1:]), "```", "",
        f"{args.n_train} training and {args.n_test} test sequences; each model is "
        f"[cell(2, {args.hidden}), Dense({args.hidden}, 1)], MSE, Adam lr {args.lr:g}, "
        f"batch {args.batch_size}, clip_grad_norm {args.clip:g}, {args.epochs} epochs, "
        f"seed {args.seed}, backend {ops.name}. Always predicting 1 scores MSE "
        f"{BASELINE:.3f}; solved means test MSE < 0.01.", "",
        "| cell | test MSE | best | first epoch < 0.01 | solved | time |",
        "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test_mse']:.4f} | {r['best_test_mse']:.4f} | "
                     f"{r['first_epoch_below_0.01'] or '-'} | {'yes' if r['solved'] else 'no'} | "
                     f"{r['seconds']:.0f} s |")
    lines += ["", "Gradient through time, ||dL/dh_t|| / ||dL/dh_T|| (256 test sequences):", "",
              "| cell | t = 1 | t = T/2 | t = T - 10 | before training, t = 1 |",
              "|---|---|---|---|---|"]
    T = args.T
    for name, r in results.items():
        a, b = np.array(r["grad_norms_after"]), np.array(r["grad_norms_before"])
        lines.append(f"| {name} | {a[0] / a[-1]:.1e} | {a[T // 2 - 1] / a[-1]:.1e} | "
                     f"{a[T - 11] / a[-1]:.1e} | {b[0] / b[-1]:.1e} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(args, results)
    print("\n".join(lines))


def plot(args, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"RNN (tanh)": "tab:red", "LSTM": "tab:blue", "GRU": "tab:green"}
    steps = np.arange(1, args.T + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "grad_norms_before", "before training"),
                           (axes[1], "grad_norms_after", "after training")):
        for name, r in results.items():
            g = np.array(r[key])
            ax.semilogy(steps, g / g[-1], label=name, color=colors.get(name), lw=1.8)
        ax.set_title(title)
        ax.set_xlabel("time step t (the loss reads h_T only)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("||dL/dh_t|| / ||dL/dh_T||")
    axes[1].legend(loc="lower right")
    fig.suptitle(f"Adding problem, T = {args.T}: gradient reaching each step through time")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "grad_through_time.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, r in results.items():
        curve = r["test_mse_per_epoch"]
        ax.semilogy(np.arange(1, len(curve) + 1), curve, label=name, color=colors.get(name),
                    lw=1.8, marker="o", ms=3)
    ax.axhline(BASELINE, color="grey", ls="--", lw=1, label="always predict 1")
    ax.axhline(0.01, color="black", ls=":", lw=1, label="solved (0.01)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test MSE")
    ax.set_title(f"Adding problem, T = {args.T}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "mse_curves.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse(argv)
    results, ops = run(args)
    write(args, results, ops)


if __name__ == "__main__":
    main()
