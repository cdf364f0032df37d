"""The command line checks every option and output path before it trains, and says
what it does in plain words: help with defaults, one-line errors, progress."""

import re

import pytest

from scratchnet import cli
from scratchnet.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv):
    code, out, err = run(capsys, *argv)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("scratchnet: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a command gets as far as loading its data set."""
    def refuse(args):
        raise AssertionError("the data set was loaded before the options were checked")
    monkeypatch.setattr(cli, "load_data", refuse)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a command gets as far as building its model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the options were checked")
    monkeypatch.setattr(cli, "build_model", refuse)


# --- help -------------------------------------------------------------------------

def help_of(capsys, command, option):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    text = " ".join(text[text.index("options:"):].split())   # argparse wraps lines
    match = re.search(" " + re.escape(option) + r"\b(.*?)(?= --[a-z]|$)", text)
    assert match, f"{option} not in the help"
    return match.group(1)


@pytest.mark.parametrize("option, default", [
    ("--epochs", "(default: 30 for digits, 10 for fashion-mnist and mnist)"),
    ("--batch-size", "(default: 32 for digits, 128 for fashion-mnist and mnist)"),
    ("--hidden", "(default: 128,64 for digits, 256,128 for fashion-mnist and mnist)"),
    ("--optimizer", "(default: adam)"),
    ("--dataset", "(default: digits)"),
    ("--val-split", "(default: 0.1; 0.0 for cnn)"),
    ("--dropout", "(default: 0.0; 0.3 for cnn)"),
    ("--no-batchnorm", "(default: off; on for cnn unless per_sample)"),
    ("--schedule", "(default: constant; cosine for cnn)"),
    ("--seed", "(default: 0)"),
    ("--dtype", "(default: float32)"),
    ("--mode", "(default: minibatch)"),
    ("--momentum", "(default: 0.9)"),
])
def test_train_help_shows_every_default(capsys, option, default):
    assert default in help_of(capsys, "train", option)


def test_compare_help_shows_its_defaults(capsys):
    assert "(default: sgd,momentum,adam)" in help_of(capsys, "compare", "--optimizers")
    assert "(default: 30 for digits" in help_of(capsys, "compare", "--epochs")


# --- options ----------------------------------------------------------------------

@pytest.mark.parametrize("hidden, what", [
    ("", "(an empty size)"), ("64,,32", "(an empty size)"), ("64,", "(an empty size)"),
    ("0", "('0')"), ("64,-3", "('-3')"), ("1.5", "('1.5')"),
])
def test_bad_hidden_sizes_are_errors(capsys, no_data, hidden, what):
    line = one_line_error(capsys, "train", "--hidden", hidden)
    assert "--hidden must be comma-separated integers > 0" in line and what in line


def test_hidden_sizes_are_used(capsys, tmp_path):
    sn = pytest.importorskip("scratchnet")
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "0", "--quiet",
                         "--hidden", " 16, 8", "--save", str(path))
    assert code == 0, err
    dense = [layer for layer in sn.load(path).layers if hasattr(layer, "W")]
    assert [layer.W.shape for layer in dense] == [(64, 16), (16, 8), (8, 10)]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_momentum_with_an_optimizer_without_momentum_is_an_error(capsys, no_data, optimizer):
    line = one_line_error(capsys, "train", "--optimizer", optimizer, "--momentum", "0.5")
    assert f"--momentum applies to --optimizer momentum or nesterov or rmsprop, not {optimizer}" in line


def test_momentum_is_used_where_it_applies(capsys, tmp_path):
    sn = pytest.importorskip("scratchnet")
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "1", "--quiet",
                         "--optimizer", "nesterov", "--momentum", "0.5", "--save", str(path))
    assert code == 0, err
    config = sn.load(path).optimizer.get_config()
    assert config["momentum"] == 0.5 and config["nesterov"] is True


@pytest.mark.parametrize("fraction, counts", [
    ("0.9999", "leaves 0 for training and 1437 for validation"),
    ("0.0001", "leaves 1437 for training and 0 for validation"),
])
def test_val_split_leaving_no_samples_names_the_counts(capsys, no_training, fraction, counts):
    line = one_line_error(capsys, "train", "--val-split", fraction)
    assert f"--val-split {fraction.rstrip('0')}" in line and "of 1437 samples" in line
    assert counts in line


# --- output paths, checked before any work -----------------------------------------

def test_save_into_a_missing_folder(capsys, no_data, tmp_path):
    line = one_line_error(capsys, "train", "--save", str(tmp_path / "no" / "m.npz"))
    assert "--save" in line and "does not exist" in line and str(tmp_path / "no") in line


def test_save_to_an_existing_folder(capsys, no_data, tmp_path):
    line = one_line_error(capsys, "train", "--save", str(tmp_path))
    assert "--save" in line and "names a folder" in line


def test_save_to_an_empty_path(capsys, no_data):
    assert "path is empty" in one_line_error(capsys, "train", "--save", "")


def test_diagnostics_into_an_existing_file(capsys, no_data, tmp_path):
    target = tmp_path / "diag"
    target.write_text("not a folder")
    line = one_line_error(capsys, "train", "--diagnostics", str(target))
    assert "--diagnostics" in line and "is an existing file, not a folder" in line


def test_diagnostics_below_an_existing_file(capsys, no_data, tmp_path):
    (tmp_path / "f").write_text("")
    line = one_line_error(capsys, "train", "--diagnostics", str(tmp_path / "f" / "d"))
    assert "is a file, not a folder" in line


def test_compare_out_into_an_existing_file(capsys, no_data, tmp_path):
    target = tmp_path / "cmp"
    target.write_text("not a folder")
    line = one_line_error(capsys, "compare", "--out", str(target))
    assert "--out" in line and "is an existing file, not a folder" in line


def test_unwritable_output_folder(capsys, no_data, tmp_path, monkeypatch):
    from scratchnet import _atomic
    monkeypatch.setattr(_atomic.os, "access", lambda path, mode: False)
    line = one_line_error(capsys, "train", "--diagnostics", str(tmp_path / "new" / "deeper"))
    assert "no permission to write" in line


def test_a_missing_output_folder_is_created(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "a" / "b"
    code, _, err = run(capsys, "compare", "--backend", "numpy", "--epochs", "1", "--quiet",
                       "--optimizers", "sgd", "--out", str(out))
    assert code == 0, err
    assert (out / "comparison.png").is_file()


# --- words and progress -----------------------------------------------------------

def test_one_epoch_is_singular(capsys):
    code, out, err = run(capsys, "train", "--backend", "numpy", "--epochs", "1")
    assert code == 0, err
    assert "1 epoch," in out and "(1 epoch in" in out
    assert "1 epochs" not in out + err


def test_compare_reports_progress_in_plain_lines_when_not_a_terminal(capsys):
    code, out, err = run(capsys, "compare", "--backend", "numpy", "--epochs", "2",
                         "--optimizers", "sgd,adam")
    assert code == 0, err
    lines = err.splitlines()
    for label in ("sgd", "adam"):
        for epoch in (1, 2):
            assert any(x.startswith(f"{label} epoch {epoch}/2: loss ") for x in lines), err
    assert "\r" not in err and all(x == x.rstrip() for x in lines)
    quiet = run(capsys, "compare", "--backend", "numpy", "--epochs", "1", "--optimizers", "sgd",
                "--quiet")
    assert quiet[0] == 0 and "epoch 1/1" not in quiet[2]
