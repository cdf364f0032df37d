"""Training diagnostics (scratchnet.diagnostics) and optimizer comparison
(scratchnet.compare): the detectors fire on the classic cases and stay quiet
on healthy runs; the recorded numbers match a plain NumPy reference; the
recorder reads the device once per epoch; plots are PNGs."""

import math

import numpy
import pytest

import scratchnet as sn
from scratchnet.compare import Comparison, compare_optimizers, plot_comparison
from scratchnet.diagnostics import Diagnostics, Problem, Recorder
from conftest import to_host as host

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return sn.datasets.load_digits()


def deep_net(act, init, backend, depth=10, width=64, seed=0):
    """``depth`` Dense layers on the 64 digit pixels, ``act`` between them."""
    layers, n = [], 64
    for _ in range(depth - 1):
        layers += [sn.Dense(n, width, init=init), act()]
        n = width
    layers.append(sn.Dense(n, 10, init=init))
    return sn.Sequential(layers, seed=seed, backend=backend)


def kinds(d):
    return [p.kind for p in d.problems]


# -- the classic cases ---------------------------------------------------------

def test_vanishing_gradients_deep_sigmoid_small_init(backend, digits):
    (X, y), val = digits
    model = deep_net(sn.Sigmoid, "normal", backend)
    h = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=64,
                  validation_data=val, diagnostics=True)
    d = h.diagnostics
    assert isinstance(d, Diagnostics)
    vanishing = [p for p in d.problems if p.kind == "vanishing_gradients"]
    assert len(vanishing) == 1
    p = vanishing[0]
    assert p.layer == 0
    assert p.numbers["first_grad_norm"] < 1e-3 * p.numbers["last_grad_norm"]
    assert "layer 0 (Dense 64->64)" in p.message and "vanishing gradients" in p.message
    assert p.message in d.summary()
    # the gradient shrinks layer by layer towards the input
    g = [d.epochs[-1]["layers"][i]["grad_norm"] for i in range(0, 19, 2)]
    assert g[0] < g[4] < g[8] < g[-1]


def test_no_vanishing_gradients_deep_relu_he_init(backend, digits):
    (X, y), val = digits
    model = deep_net(sn.ReLU, "he", backend)
    h = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=64,
                  validation_data=val, diagnostics=True)
    assert "vanishing_gradients" not in kinds(h.diagnostics)
    assert "exploding_gradients" not in kinds(h.diagnostics)


def test_dead_relu_layer_detected(backend, digits):
    (X, y), _ = digits
    model = sn.Sequential([sn.Dense(64, 64, init="he"), sn.ReLU(),
                           sn.Dense(64, 64, init="he"), sn.ReLU(), sn.Dense(64, 10)],
                          seed=0, backend=backend)
    model.layers[2].b[...] = -10.0           # every pre-activation far below zero
    h = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=64,
                  diagnostics=Recorder(every=1))
    d = h.diagnostics
    assert d.epochs[-1]["layers"][3]["dead_fraction"] == 1.0
    assert d.epochs[-1]["layers"][1]["dead_fraction"] < 0.25
    dead = [p for p in d.problems if p.kind == "dead_relu"]
    assert [p.layer for p in dead] == [3]
    assert "layer 3 (ReLU): 100% of units dead" in dead[0].message


def test_saturated_sigmoid_detected(backend, digits):
    (X, y), _ = digits
    model = sn.Sequential([sn.Dense(64, 32), sn.Sigmoid(), sn.Dense(32, 32), sn.Tanh(),
                           sn.Dense(32, 10)], seed=0, backend=backend)
    model.layers[0].W *= 40                  # huge pre-activations: outputs pinned at 0 or 1
    h = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.01), epochs=1, batch_size=128,
                  diagnostics=Recorder(every=1))
    sat = {p.layer: p for p in h.diagnostics.problems if p.kind == "saturation"}
    assert 1 in sat and sat[1].numbers["saturated_fraction"] > 0.5
    assert 3 not in sat


def train_overfit(X, y, val, n, dropout, weight_decay, epochs, batch_size):
    layers = [sn.Dense(64, 256 if not dropout else 128, init="he"), sn.ReLU()]
    width = layers[0].n_out
    layers += [sn.Dropout(dropout)] if dropout else []
    layers += [sn.Dense(width, width, init="he"), sn.ReLU()]
    layers += [sn.Dropout(dropout)] if dropout else []
    layers.append(sn.Dense(width, 10))
    model = sn.Sequential(layers, seed=0)
    h = model.fit(X[:n], y[:n], "softmax_cross_entropy", sn.Adam(2e-3, weight_decay=weight_decay),
                  epochs=epochs, batch_size=batch_size, validation_data=val, diagnostics=True)
    return h.diagnostics


def test_overfitting_detected_on_tiny_training_set(digits):
    (X, y), val = digits
    d = train_overfit(X, y, val, n=40, dropout=0, weight_decay=0, epochs=30, batch_size=40)
    over = [p for p in d.problems if p.kind == "overfitting"]
    assert len(over) == 1 and over[0].layer is None
    assert "overfitting" in over[0].message
    assert d.metric("accuracy")[-1] == 1.0
    vl = over[0].numbers["val_loss"]
    assert all(b > a for a, b in zip(vl, vl[1:]))


def test_no_overfitting_when_regularised(digits):
    (X, y), val = digits
    d = train_overfit(X, y, val, n=len(X), dropout=0.2, weight_decay=1e-3, epochs=10,
                      batch_size=64)
    assert "overfitting" not in kinds(d)
    assert d.metric("val_accuracy")[-1] > 0.9


def test_overfitting_rules_on_recorded_curves():
    def diag(loss, val_loss, acc, val_acc):
        rows = enumerate(zip(loss, val_loss, acc, val_acc))
        epochs = [{"epoch": i, "loss": a, "val_loss": b, "accuracy": c, "val_accuracy": e,
                   "layers": {}} for i, (a, b, c, e) in rows]
        return Diagnostics([], epochs)

    rising = diag([1.0, 0.8, 0.6, 0.5, 0.4], [1.0, 0.9, 0.95, 1.0, 1.1],
                  [0.5] * 5, [0.5] * 5)
    assert kinds(rising) == ["overfitting"] and "validation loss rising" in rising.summary()
    acc_falls = diag([1.0] * 5, [1.0] * 5, [0.6, 0.7, 0.8, 0.9, 0.95],
                     [0.80, 0.82, 0.81, 0.79, 0.75])
    assert kinds(acc_falls) == ["overfitting"]
    assert "validation accuracy falling for 3 epochs" in acc_falls.problems[0].message
    noisy = diag([1.0, 0.8, 0.6, 0.5, 0.4], [1.0, 0.9, 0.95, 0.92, 0.97],
                 [0.5] * 5, [0.5] * 5)
    assert kinds(noisy) == []
    both_rise = diag([1.0, 0.9, 1.0, 1.1, 1.2], [1.0, 0.9, 1.0, 1.1, 1.2],
                     [0.5] * 5, [0.5] * 5)
    assert kinds(both_rise) == []          # diverging, not overfitting


def test_exploding_gradients_rule():
    layers = [{"layer": 0, "name": "Dense 4->4", "kind": "dense"},
              {"layer": 1, "name": "Dense 4->2", "kind": "dense"}]
    d = Diagnostics(layers, [{"epoch": 0, "layers": {0: {"grad_norm": 5e3},
                                                     1: {"grad_norm": 1.0}}}])
    assert kinds(d) == ["exploding_gradients"]
    assert isinstance(d.problems[0], Problem) and d.problems[0].layer == 0


# -- what is recorded ----------------------------------------------------------

class Reference:
    """The same statistics in float64 NumPy on the host, the slow obvious way."""

    def __init__(self, every):
        self.every, self.epochs = every, []

    def on_epoch_begin(self, model, epoch):
        self.model = model
        self.dense = [(i, l) for i, l in enumerate(model.layers) if isinstance(l, sn.Dense)]
        self.acts = [(i, l) for i, l in enumerate(model.layers) if isinstance(l, sn.Activation)]
        self.prev = {i: host(l.W).astype(float) for i, l in self.dense}
        self.g = {i: [] for i, _ in self.dense}
        self.r = {i: [] for i, _ in self.dense}
        self.ys = {i: [] for i, _ in self.acts}
        self.alive = {}

    def on_batch_end(self, model, step):
        for i, l in self.dense:
            W = host(l.W).astype(float)
            if step % self.every == 0:
                self.g[i].append(numpy.linalg.norm(host(l.dW)))
                self.r[i].append(numpy.linalg.norm(W - self.prev[i]) / numpy.linalg.norm(W))
            self.prev[i] = W
        for i, l in self.acts:
            Y = host(l.Y).astype(float)
            self.alive[i] = self.alive.get(i, False) | (Y > 0).any(axis=0)
            if step % self.every == 0:
                self.ys[i].append(Y.ravel())

    def on_epoch_end(self, model, epoch, logs):
        stats = {}
        for i, l in self.dense:
            stats[i] = {"grad_norm": numpy.mean(self.g[i]), "update_ratio": numpy.mean(self.r[i]),
                        "weight_norm": numpy.linalg.norm(host(l.W))}
        for i, l in self.acts:
            Y = numpy.concatenate(self.ys[i])
            stats[i] = {"mean": Y.mean(), "std": Y.std()}
            if l.kind == "relu":
                stats[i]["dead_fraction"] = 1 - self.alive[i].mean()
            if l.kind == "sigmoid":
                stats[i]["saturated_fraction"] = ((Y < 0.01) | (Y > 0.99)).mean()
            if l.kind == "tanh":
                stats[i]["saturated_fraction"] = (numpy.abs(Y) > 0.99).mean()
        self.epochs.append(stats)


@pytest.mark.parametrize("every", [1, 3])
def test_recorded_statistics_match_reference(backend, digits, every):
    (X, y), _ = digits
    X, y = X[:500], y[:500]
    model = sn.Sequential([sn.Dense(64, 32, init="he"), sn.ReLU(), sn.Dense(32, 32), sn.Sigmoid(),
                           sn.Dense(32, 16), sn.Tanh(), sn.Dense(16, 10)], seed=1,
                          backend=backend)
    model.layers[0].b[:8] = -50.0            # 8 of 32 ReLU units dead
    model.layers[2].W *= 6                   # some sigmoid saturation
    ref, rec = Reference(every), Recorder(every=every)
    model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.05, momentum=0.9), epochs=2,
              batch_size=64, callbacks=[ref, rec])
    d = rec.report()
    assert [e["steps"] for e in d.epochs] == [8, 8]
    assert d.epochs[0]["sampled_steps"] == len(range(0, 8, every))
    assert [x["layer"] for x in d.layers] == list(range(7))
    for got, want in zip(d.epochs, ref.epochs):
        assert got["layers"][1]["dead_fraction"] == pytest.approx(want[1]["dead_fraction"])
        assert got["layers"][1]["dead_fraction"] >= 0.25
        for layer, stats in want.items():
            for key, value in stats.items():
                assert got["layers"][layer][key] == pytest.approx(value, rel=2e-3, abs=1e-6), \
                    (layer, key)
    assert d.epochs[-1]["layers"][3]["saturated_fraction"] > 0


def test_device_read_once_per_epoch(backend, digits, monkeypatch):
    """The recorder adds exactly one ``ops.to_host`` per epoch."""
    (X, y), val = digits
    X, y = X[:256], y[:256]
    ops = sn.backends.get_ops(backend)
    calls = []
    real = ops.to_host
    monkeypatch.setattr(ops, "to_host", lambda x: calls.append(1) or real(x))

    def reads(diagnostics):
        model = deep_net(sn.ReLU, "he", backend, depth=3, width=16)
        calls.clear()
        model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=3, batch_size=32,
                  validation_data=val, diagnostics=diagnostics)
        return len(calls)

    assert reads(Recorder(every=1)) - reads(False) == 3


def test_nested_layers_and_other_layer_types(digits):
    (X, y), _ = digits
    model = sn.Sequential([sn.Dense(64, 32), sn.BatchNorm(32), sn.LeakyReLU(),
                           sn.Residual([sn.Dense(32, 32, init="he"), sn.ReLU()]),
                           sn.Dropout(0.1), sn.Dense(32, 10)], seed=0)
    d = model.fit(X, y, "softmax_cross_entropy", sn.Adam(), epochs=1, batch_size=128,
                  diagnostics=Recorder(every=2)).diagnostics
    assert [(x["layer"], x["kind"]) for x in d.layers] == [
        (0, "dense"), (2, "leaky_relu"), ("3.0", "dense"), ("3.1", "relu"), (5, "dense")]
    assert d.epochs[0]["layers"]["3.1"]["dead_fraction"] <= 1
    assert "dead_fraction" not in d.epochs[0]["layers"][2]
    assert math.isfinite(d.series("3.0", "grad_norm")[0])


def test_auto_sampling_and_arguments(digits):
    (X, y), _ = digits
    model = deep_net(sn.ReLU, "he", None, depth=3, width=32)
    rec = Recorder()
    model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=16, callbacks=[rec])
    for e in rec.report().epochs:
        assert 1 <= e["sampled_steps"] <= e["steps"] == 90 and e["every"] >= 1
        assert 1 <= e["dead_tracked_steps"] <= 90 and e["recorder_time"] >= 0
        assert e["layers"][1]["dead_fraction"] <= 1
    for bad in (0, -1, 1.5, True, "often"):
        with pytest.raises(ValueError):
            Recorder(every=bad)
    with pytest.raises(ValueError):
        Recorder(budget=0)


def test_summary_and_series(digits):
    (X, y), val = digits
    model = deep_net(sn.ReLU, "he", None, depth=3, width=32)
    h = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=64,
                  validation_data=val, diagnostics=True)
    d = h.diagnostics
    text = d.summary()
    assert "No problems found." in text and "Dense 64->32" in text
    assert "validation accuracy" in text
    assert d.series(0, "grad_norm").shape == (2,)
    numpy.testing.assert_allclose(d.metric("val_loss"), h.history["val_loss"])
    assert "overfitting not checked" in deep_net(sn.ReLU, "he", None, depth=2).fit(
        X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=1, diagnostics=True
    ).diagnostics.summary()


# -- plots ---------------------------------------------------------------------

def test_plot_writes_pngs_and_summary(tmp_path, digits):
    pytest.importorskip("matplotlib")
    (X, y), val = digits
    model = sn.Sequential([sn.Dense(64, 32), sn.ReLU(), sn.Dense(32, 16), sn.Sigmoid(),
                           sn.Dense(16, 10)], seed=0)
    d = model.fit(X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=2, batch_size=128,
                  validation_data=val, diagnostics=True).diagnostics
    written = d.plot(tmp_path / "diag")
    names = sorted(p.rsplit("/", 1)[-1] for p in map(str, written))
    assert names == ["curves.png", "dead_units.png", "gradient_norms.png", "saturation.png",
                     "summary.txt", "update_ratios.png"]
    for name in (n for n in names if n.endswith(".png")):
        assert (tmp_path / "diag" / name).read_bytes()[:8] == PNG
    assert (tmp_path / "diag" / "summary.txt").read_text() == d.summary() + "\n"


def trained_diagnostics(act, init, epochs=2, depth=4):
    (X, y), val = sn.datasets.load_digits()
    return deep_net(act, init, "numpy", depth=depth).fit(
        X, y, "softmax_cross_entropy", sn.SGD(0.1), epochs=epochs, batch_size=128,
        validation_data=val, diagnostics=Recorder(every=1)).diagnostics


def legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_sigmoid_net_plots_saturation_not_dead_units():
    pytest.importorskip("matplotlib")
    d = trained_diagnostics(sn.Sigmoid, "normal")
    figures = d.figures()
    assert "saturation.png" in figures and "dead_units.png" not in figures
    ax_sat, ax_std = figures["saturation.png"].axes
    assert "saturated" in ax_sat.get_ylabel() and ax_std.get_yscale() == "log"
    # the spread panel holds each sigmoid layer's recorded output std
    sigmoids = [x["layer"] for x in d.layers if x["kind"] == "sigmoid"]
    stds = sorted(tuple(line.get_ydata()) for line in ax_std.get_lines())
    assert stds == sorted(tuple(d.series(p, "std")) for p in sigmoids)


def test_equal_curves_share_one_line_and_say_so():
    pytest.importorskip("matplotlib")
    d = trained_diagnostics(sn.Sigmoid, "normal")
    sigmoids = [x["layer"] for x in d.layers if x["kind"] == "sigmoid"]
    assert all((d.series(p, "saturated_fraction") == 0).all() for p in sigmoids)
    ax_sat = d.figures()["saturation.png"].axes[0]
    assert len(ax_sat.get_lines()) == 1            # not three lines on top of each other
    assert legend_labels(ax_sat) == [f"layers {', '.join(map(str, sigmoids))} (Sigmoid)"]


def test_relu_net_plots_dead_units_not_saturation():
    pytest.importorskip("matplotlib")
    d = trained_diagnostics(sn.ReLU, "he")
    figures = d.figures()
    assert "dead_units.png" in figures and "saturation.png" not in figures
    relus = [x["layer"] for x in d.layers if x["kind"] == "relu"]
    drawn = numpy.concatenate([line.get_ydata() for line in figures["dead_units.png"].axes[0]
                               .get_lines()])
    recorded = numpy.concatenate([d.series(p, "dead_fraction") for p in relus])
    assert set(drawn.tolist()) == set(recorded.tolist())


def assert_legends_cover_no_axes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend, ax)


def test_no_legend_covers_a_plot(digits):
    pytest.importorskip("matplotlib")
    from scratchnet.compare import comparison_figure
    for act, init in ((sn.Sigmoid, "normal"), (sn.ReLU, "he"), (sn.Tanh, "xavier")):
        for fig in trained_diagnostics(act, init).figures().values():
            assert_legends_cover_no_axes(fig)
    (X, y), val = digits
    result = compare_optimizers(deep_net(sn.ReLU, "he", "numpy", depth=2), X[:300], y[:300],
                                "sgd,adam", epochs=2, batch_size=50, validation_data=val)
    assert_legends_cover_no_axes(comparison_figure(result))


def test_comparison_plots_the_loss_on_a_log_axis(digits):
    pytest.importorskip("matplotlib")
    from scratchnet.compare import comparison_figure
    (X, y), val = digits
    result = compare_optimizers(deep_net(sn.ReLU, "he", "numpy", depth=2), X[:300], y[:300],
                                "sgd,momentum", epochs=3, batch_size=50, validation_data=val)
    ax_loss, ax_acc = comparison_figure(result).axes
    assert ax_loss.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    assert [line.get_ydata().tolist() for line in ax_loss.get_lines()] == \
        [h.history["loss"] for h in result.histories.values()]


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    d = Diagnostics([], [{"epoch": 0, "loss": 1.0, "layers": {}}])
    with pytest.raises(ImportError, match=r"pip install scratchnet\[plot\]"):
        d.plot(tmp_path)
    with pytest.raises(ImportError, match=r"pip install scratchnet\[plot\]"):
        plot_comparison({}, tmp_path / "x.png")


# -- comparing optimizers --------------------------------------------------------

def test_compare_optimizers_same_start(backend, digits, tmp_path):
    (X, y), val = digits
    X, y = X[:400], y[:400]
    model = sn.Sequential([sn.Dense(64, 32, init="he"), sn.ReLU(), sn.Dense(32, 10)], seed=3,
                          backend=backend)
    W0 = host(model.layers[0].W).copy()
    result = compare_optimizers(model, X, y, optimizers=("sgd", "momentum", "nesterov", "adam"),
                                epochs=2, batch_size=64, validation_data=val, seed=0)
    assert isinstance(result, Comparison)
    assert list(result.histories) == ["sgd", "momentum", "nesterov", "adam"]
    numpy.testing.assert_array_equal(host(model.layers[0].W), W0)   # the start is untouched
    starts = [run["initial_loss"] for run in result.runs.values()]
    assert starts == [starts[0]] * 4
    for label, h in result.histories.items():
        assert len(h.history["loss"]) == 2 and len(h.history["val_accuracy"]) == 2
    finals = {label: h.history["loss"][-1] for label, h in result.histories.items()}
    assert len(set(finals.values())) == 4          # the optimizers really differ
    table = result.table()
    for label in ("sgd", "momentum", "nesterov", "adam"):
        assert f"| {label} " in table
    assert "val acc" in table and str(result) == table
    if pytest.importorskip("matplotlib"):
        path = plot_comparison(result, tmp_path / "cmp.png")
        assert (tmp_path / "cmp.png").read_bytes()[:8] == PNG and str(path).endswith("cmp.png")


def test_compare_optimizers_factory_lr_and_errors(digits):
    (X, y), _ = digits
    X, y = X[:200], y[:200]

    def factory():
        return sn.Sequential([sn.Dense(64, 16), sn.ReLU(), sn.Dense(16, 10)])   # unseeded

    result = compare_optimizers(factory, X, y, "sgd,adam", epochs=1, batch_size=50, lr=0.02)
    assert [run["optimizer"].lr for run in result.runs.values()] == [0.02, 0.02]
    starts = [run["initial_loss"] for run in result.runs.values()]
    assert starts[0] == starts[1]
    assert "val acc" not in result.table()
    custom = compare_optimizers(factory, X, y, [sn.SGD(0.1), sn.SGD(0.1, momentum=0.5)],
                                epochs=1, batch_size=50)
    assert list(custom.runs) == ["sgd", "sgd-2"]
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        compare_optimizers(factory, X, y, ("sgd", "lbfgs"), epochs=1)
    with pytest.raises(TypeError):
        compare_optimizers(lambda: "not a model", X, y, ("sgd",), epochs=1)
