"""The command line: the default job, options, and one-line errors."""

import subprocess
import sys

import numpy
import pytest

import scratchnet as sn
from scratchnet.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_digits_reports_test_accuracy(capsys, tmp_path):
    path = tmp_path / "digits.npz"
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "3", "--save", str(path))
    assert code == 0, err
    assert "digits: 1293 train / 144 validation / 360 test, 64 features, 10 classes" in out
    line = [x for x in out.splitlines() if x.startswith("test accuracy")][0]
    assert float(line.split()[2]) > 0.8
    assert "epoch 3/3" in err and "val_accuracy" in err
    model = sn.load(path)
    assert model.layers[0].W.shape == (64, 128)


def test_train_options_build_the_model_asked_for(capsys, tmp_path):
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "1", "--hidden", "32",
                         "--activation", "tanh", "--init", "xavier", "--dropout", "0.1",
                         "--batchnorm", "--optimizer", "nesterov", "--schedule", "cosine",
                         "--mode", "full_batch", "--dtype", "float64", "--quiet", "--save", str(path))
    assert code == 0, err
    model = sn.load(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "BatchNorm", "Tanh", "Dropout", "Dense"]
    assert model.dtype == numpy.float64


def test_per_sample_mode_from_the_cli(capsys):
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "1", "--mode",
                         "per_sample", "--quiet")
    assert code == 0, err
    assert "test accuracy" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--epochs", "-1"], "--epochs must be >= 0"),
    (["train", "--batch-size", "0"], "--batch-size must be positive"),
    (["train", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["train", "--mode", "sideways"], "invalid choice"),
    (["train", "--hidden", "12,abc"], "--hidden must be comma-separated integers"),
    (["train", "--val-split", "1.5"], "--val-split must be in [0, 1)"),
    (["train", "--dropout", "1.0"], "Dropout p must be < 1.0"),
    (["train", "--lr", "-1"], "lr must be >= 0.0"),
    (["compare", "--optimizers", "sgd,lbfgs"], "unknown ['lbfgs']"),
])
def test_user_errors_are_one_line_without_traceback(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("scratchnet") and message in lines[0]
    assert "Traceback" not in err


def test_missing_dataset_names_the_fix(capsys, tmp_path, monkeypatch):
    from scratchnet.datasets import loaders
    monkeypatch.setattr(loaders, "DEBIAN_DIRS", {k: tmp_path / "none" for k in loaders.DEBIAN_DIRS})
    monkeypatch.setenv("SCRATCHNET_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, err = run(capsys, "train", "--dataset", "fashion-mnist", "--data-dir",
                         str(tmp_path / "empty"))
    assert code == 2
    assert "dataset-fashion-mnist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_info_lists_every_backend_with_a_reason(capsys):
    code, out, err = run(capsys, "info")
    assert code == 0
    assert "scratchnet " + sn.__version__ in out
    for name in ("numpy", "numba", "cupy"):
        assert f"  {name}" in out
    assert "numpy  available" in out


def test_console_script_module_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "scratchnet.cli", "train", "--epochs", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "invalid int value" in proc.stderr


def test_compare_writes_table_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "compare", "--backend", "numpy", "--epochs", "2",
                         "--optimizers", "sgd,adam", "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| sgd" in table and "| adam" in table
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_diagnostics_names_vanishing_gradients(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "2", "--quiet",
                         "--activation", "sigmoid", "--init", "normal", "--optimizer", "sgd",
                         "--hidden", ",".join(["64"] * 9), "--diagnostics", str(tmp_path / "d"))
    assert code == 0, err
    assert "vanishing gradients" in out
    assert (tmp_path / "d" / "gradient_norms.png").exists()


def test_bench_receives_its_options(monkeypatch):
    import scratchnet.bench as bench
    seen = {}
    monkeypatch.setattr(bench, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    assert main(["bench", "--quick", "--report", "out"]) == 0
    assert seen["argv"] == ["--quick", "--report", "out"]
