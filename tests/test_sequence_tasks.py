"""Sequence data and tasks: the adding problem, images as sequences of rows,
Debian's fortunes and the character vocabulary, the recurrent classifiers and
the character-level language model on the command line, and sampling."""

import gzip
import struct

import numpy as np
import pytest

import scratchnet as sn
from scratchnet.cli import main
from scratchnet.datasets import CharVocabulary, DatasetNotFoundError, text_windows
from scratchnet.datasets.sequences import FORTUNES_DIR, fortunes_available
from scratchnet.sequence_tasks import build_charlm, sample


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the adding problem ----------------------------------------------------------------------

def test_adding_problem():
    X, y = sn.datasets.adding_problem(2000, 50, seed=3)
    assert X.shape == (2000, 50, 2) and y.shape == (2000, 1)
    assert X.dtype == np.float32 and y.dtype == np.float32
    values, marks = X[:, :, 0], X[:, :, 1]
    assert values.min() >= 0 and values.max() < 1
    assert set(np.unique(marks)) == {0.0, 1.0}
    assert (marks.sum(axis=1) == 2).all()
    assert (marks[:, :25].sum(axis=1) == 1).all() and (marks[:, 25:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (values * marks).sum(axis=1), rtol=1e-6)
    # predicting 1 (the mean) scores the variance of a sum of two uniforms, 1/6
    _, y_many = sn.datasets.adding_problem(40000, 10, seed=0)
    assert ((y_many - 1) ** 2).mean() == pytest.approx(1 / 6, abs=0.005)    # 2.5 standard errors
    again, _ = sn.datasets.adding_problem(2000, 50, seed=3)
    np.testing.assert_array_equal(again, X)
    other, _ = sn.datasets.adding_problem(2000, 50, seed=4)
    assert not np.array_equal(other, X)


@pytest.mark.parametrize("args, exc, message", [
    ((10, 1), ValueError, "T must be >= 2"),
    ((0, 10), ValueError, "adding_problem n must be > 0"),
    ((10, 2.5), TypeError, "adding_problem T must be an integer"),
])
def test_adding_problem_errors(args, exc, message):
    with pytest.raises(exc, match=message):
        sn.datasets.adding_problem(*args)


# --- images as sequences -----------------------------------------------------------------------

def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return gzip.compress(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
                         + arr.tobytes())


def test_images_as_sequences_of_rows(tmp_path):
    (Xf, _), _ = sn.datasets.load_digits()
    (Xs, _), (Xts, _) = sn.datasets.load_digits(sequences=True)
    assert Xs.shape == (len(Xf), 8, 8) and Xts.shape[1:] == (8, 8)
    np.testing.assert_array_equal(Xs.reshape(len(Xs), -1), Xf)
    rng = np.random.default_rng(0)
    pixels = {"train": rng.integers(0, 256, (4, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    for split, arr in pixels.items():
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(arr))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(len(arr))))
    for load in (sn.datasets.load_fashion_mnist, sn.datasets.load_mnist):
        (X, _), (Xt, _) = load(data_dir=tmp_path, sequences=True)
        assert X.shape == (4, 28, 28) and Xt.shape == (3, 28, 28)
        np.testing.assert_array_equal(X, pixels["train"].astype(np.float32) / np.float32(255))
        with pytest.raises(ValueError, match="flat=False .* or sequences=True .*not both"):
            load(data_dir=tmp_path, flat=False, sequences=True)


# --- fortunes and characters ------------------------------------------------------------------

def write_fortunes(folder, quotes=None):
    folder.mkdir(exist_ok=True)
    quotes = quotes or [f"Quotation number {i}: a stitch in time saves nine.\n  -- someone"
                        for i in range(40)]
    (folder / "sayings").write_text("".join(q + "\n%\n" for q in quotes[:30]))
    (folder / "more").write_text("".join(q + "\n%\n" for q in quotes[30:]))
    (folder / "sayings.dat").write_bytes(b"\x00\x01binary index")
    (folder / "sayings.u8").symlink_to("sayings")
    return folder


def test_load_fortunes_splits_by_quotation(tmp_path):
    quotes = [f"Q{i:02d} underlined: _\bw_\bo_\br_\bd, bell\a end\n -- A. Person" for i in range(40)]
    folder = write_fortunes(tmp_path / "f", quotes)
    train, test = sn.datasets.load_fortunes(folder, test_fraction=0.25, seed=1)
    assert "\b" not in train + test and "\a" not in train + test and "word" in train
    train_q = [q for q in train.split("%\n") if q]
    test_q = [q for q in test.split("%\n") if q]
    assert len(train_q) == 30 and len(test_q) == 10
    assert not set(train_q) & set(test_q)
    assert all(q.endswith("-- A. Person\n") for q in train_q + test_q)
    assert sorted(q[:3] for q in train_q + test_q) == [f"Q{i:02d}" for i in range(40)]
    assert sn.datasets.load_fortunes(folder, test_fraction=0.25, seed=1) == (train, test)
    assert sn.datasets.load_fortunes(folder, test_fraction=0.25, seed=2) != (train, test)
    only, _ = sn.datasets.load_fortunes(folder, files=["more"])
    assert "Q3" in only and "Q0" not in only.replace("Q3", "")


def test_load_fortunes_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install fortunes"):
        sn.datasets.load_fortunes(tmp_path / "nowhere")
    folder = write_fortunes(tmp_path / "f")
    with pytest.raises(ValueError, match=r"no file\(s\) \['wisdom'\]"):
        sn.datasets.load_fortunes(folder, files=["wisdom"])
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        sn.datasets.load_fortunes(folder, test_fraction=1.0)


@pytest.mark.skipif(not fortunes_available(),
                    reason=f"Debian's fortunes not installed in {FORTUNES_DIR}: "
                           f"apt-get install fortunes")
def test_debian_fortunes():
    train, test = sn.datasets.load_fortunes()
    assert len(train) > 1_000_000 and len(test) > 100_000
    vocab = CharVocabulary.from_text(train + test)
    assert 90 <= len(vocab) <= 130 and "\b" not in vocab.chars


def test_char_vocabulary_and_windows():
    vocab = CharVocabulary.from_text("hello world\n")
    assert vocab.chars == "\n dehlorw" and len(vocab) == 9
    ids = vocab.encode("hello world\n")
    assert ids.dtype == np.int64 and vocab.decode(ids) == "hello world\n"
    with pytest.raises(ValueError, match=r"character 'z' is not in the vocabulary"):
        vocab.encode("zebra")
    lenient = CharVocabulary.from_text("hello", unknown="?")
    assert lenient.decode(lenient.encode("help!")) == "hel??"
    X, y = text_windows(np.arange(11), 3)
    np.testing.assert_array_equal(X, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, X + 1)
    X, _ = text_windows(np.arange(11), 4, stride=2)
    np.testing.assert_array_equal(X[:, 0], [0, 2, 4, 6])
    with pytest.raises(ValueError, match="5 ids make no window of 5 steps"):
        text_windows(np.arange(5), 5)


# --- sampling -----------------------------------------------------------------------------------

def small_charlm(chars="ab\n", seq_len=8):
    model = build_charlm(len(chars), 8, seed=0, embedding_dim=4)
    model.metadata.update(task="charlm", vocabulary=chars, seq_len=seq_len)
    return model


def test_sample_uses_the_model_and_its_vocabulary():
    model = small_charlm()
    text = sample(model, length=50, temperature=1.0, seed=0)
    assert len(text) == 50 and set(text) <= set("ab\n")
    assert sample(model, length=50, temperature=1.0, seed=0) == text
    assert sample(model, length=0) == ""
    # a tiny temperature takes the most likely character each time
    greedy = sample(model, length=5, temperature=1e-6, prime="ab", seed=1)
    ids = list(CharVocabulary("ab\n").encode("ab"))
    for ch in greedy:
        ids.append(int(model.predict(np.array([ids[-8:]]))[0, -1].argmax()))
        assert "ab\n"[ids[-1]] == ch


def test_a_language_model_learns_a_repeating_text():
    text = "abcabcabcabc" * 40
    vocab = CharVocabulary.from_text(text)
    X, y = text_windows(vocab.encode(text), 12)
    model = small_charlm("abc", seq_len=12)
    model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(3e-2), epochs=40,
              batch_size=8)
    assert sample(model, length=30, temperature=0.1, prime="ab", seed=0) == "cab" * 10


def test_sample_errors():
    with pytest.raises(ValueError, match="not a character-level language model"):
        sample(sn.Sequential([sn.LSTM(2, 2), sn.Dense(2, 2)], seed=0))
    model = small_charlm()
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        sample(model, temperature=0)
    with pytest.raises(ValueError, match=r"prime: character 'z' is not in the vocabulary"):
        sample(model, prime="z")


# --- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cli_trains_a_recurrent_classifier(capsys, tmp_path, kind):
    path = tmp_path / "m.npz"
    code, out, err = run_cli(capsys, "train", "--model", kind, "--hidden-size", "24",
                             "--epochs", "3", "--batch-size", "64", "--lr", "0.01",
                             "--backend", "numpy", "--save", str(path))
    assert code == 0, err
    assert "sequences of 8 steps of 8" in out and "(N, 24)" in out
    accuracy = float([x for x in out.splitlines() if x.startswith("test accuracy")][0].split()[2])
    assert accuracy > 0.5
    model = sn.load(path)
    assert [type(x).__name__ for x in model.layers] == [kind.upper(), "Dense"]
    assert model.layers[0].hidden_size == 24


def test_cli_trains_and_samples_a_language_model(capsys, tmp_path):
    folder = write_fortunes(tmp_path / "f")
    path = tmp_path / "lm.npz"
    code, out, err = run_cli(capsys, "train", "--model", "charlm", "--data-dir", str(folder),
                             "--hidden-size", "16", "--seq-len", "20", "--epochs", "2",
                             "--val-split", "0", "--backend", "numpy", "--lr", "0.01",
                             "--save", str(path))
    assert code == 0, err
    assert "fortunes: " in out and "windows of 20" in out
    bits = float([x for x in out.splitlines() if x.startswith("test bits per character")][0]
                 .split()[-1])
    loss = float([x for x in out.splitlines() if x.startswith("test accuracy")][0].split()[5])
    assert bits == pytest.approx(loss / np.log(2), abs=1e-3) and bits < np.log2(30)
    model = sn.load(path)
    assert model.metadata["task"] == "charlm" and model.metadata["seq_len"] == 20
    chars = model.metadata["vocabulary"]
    assert "Q" in chars and model.layers[0].num_embeddings == len(chars)
    code, out, err = run_cli(capsys, "sample", str(path), "--length", "120", "--temperature",
                             "0.8", "--seed", "0", "--backend", "numpy")
    assert code == 0, err
    assert len(out) == 121 and set(out[:-1]) <= set(chars)       # print's newline
    code, out2, err = run_cli(capsys, "sample", str(path), "--length", "120", "--seed", "0",
                              "--prime", "Quotation", "--backend", "numpy")
    assert code == 0 and out2.startswith("Quotation") and len(out2) == 130


@pytest.mark.parametrize("argv, message", [
    (["--model", "lstm", "--seq-len", "50"], "--seq-len applies to --model charlm, not "
                                             "--model lstm"),
    (["--hidden-size", "32"], "--hidden-size applies to --model rnn/lstm/gru/charlm, not "
                              "--model mlp"),
    (["--model", "gru", "--hidden-size", "0"], "--hidden-size must be >= 1, got 0"),
    (["--model", "lstm", "--hidden", "64"], "--hidden applies to --model mlp or cnn; --model "
                                            "lstm has one recurrent layer"),
    (["--model", "rnn", "--batchnorm"], "--batchnorm applies to --model mlp or cnn"),
    (["--dataset", "fortunes"], "--dataset fortunes is text: train it with --model charlm, not "
                                "--model mlp"),
    (["--model", "charlm", "--dataset", "mnist"], "--model charlm trains on --dataset fortunes"),
])
def test_cli_sequence_option_errors_before_loading_data(capsys, monkeypatch, argv, message):
    from scratchnet import cli

    def refuse(*args):
        raise AssertionError("the data set was loaded before the options were checked")
    monkeypatch.setattr(cli, "load_data", refuse)
    monkeypatch.setattr(cli, "_prepare_text", refuse)
    code, out, err = run_cli(capsys, "train", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_sample_errors(capsys, tmp_path):
    path = tmp_path / "mlp.npz"
    sn.Sequential([sn.Dense(2, 2)], seed=0).save(path)
    code, out, err = run_cli(capsys, "sample", str(path))
    assert code == 2 and "is not a character-level language model" in err
    code, out, err = run_cli(capsys, "sample", str(tmp_path / "missing.npz"))
    assert code == 2 and "no model file" in err
