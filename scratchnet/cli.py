"""The ``scratchnet`` command: ``train``, ``compare``, ``info``, ``bench`` and ``sample``.

``mpiexec -n N scratchnet train ...`` trains data-parallel on N ranks
(``scratchnet.distributed``): ``--batch-size`` is per rank, rank 0 prints,
saves and writes checkpoints and diagnostics.

Errors a user can cause (bad option, unusable backend, missing data, a
diverging run) print one line and exit with status 2 -- no traceback
(``SCRATCHNET_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import re
import sys
import time

import numpy

from . import __version__
from . import layers as L
from ._atomic import check_file_target, check_folder_target
from ._progress import plural
from .backends import BackendUnavailableError, backend_status, get_ops
from .activations import cli_choices
from .datasets import DatasetNotFoundError
from .optimizers import PRESETS, get_optimizer

DATASETS = ("digits", "fashion-mnist", "mnist", "fortunes")
#: --optimizer choices: the named recipes of scratchnet.optimizers.PRESETS.
OPTIMIZER_NAMES = tuple(PRESETS)
#: --activation choices: the entries of the activation table offered to the CLI.
ACTIVATIONS = {name: L.ACTIVATION_LAYERS[name] for name in cli_choices()}

#: Per-dataset defaults for options left unset: small and quick for the
#: embedded digits, the classic recipe for the 28x28 sets.
DEFAULTS = {
    "digits": {"epochs": 30, "batch_size": 32, "hidden": "128,64"},
    "fashion-mnist": {"epochs": 10, "batch_size": 128, "hidden": "256,128"},
    "mnist": {"epochs": 10, "batch_size": 128, "hidden": "256,128"},
}
#: The same for the text of --model charlm.
TEXT_DEFAULTS = {"fortunes": {"epochs": 5, "batch_size": 64}}
#: --model choices: recurrent classifiers read each image's rows as time
#: steps; charlm is the character-level language model on --dataset fortunes.
RECURRENT_MODELS = ("rnn", "lstm", "gru")
#: --hidden-size defaults and charlm's --seq-len default.
DEFAULT_HIDDEN_SIZE = {"rnn": 128, "lstm": 128, "gru": 128, "charlm": 256}
DEFAULT_SEQ_LEN = 100
DEFAULT_LR = {name: lr for name, (_, lr, _) in PRESETS.items()}
DEFAULT_MOMENTUM = 0.9
#: Options that only some optimizers take: giving one to another optimizer is an error.
OPTION_APPLIES_TO = {"momentum": ("momentum", "nesterov", "rmsprop")}
#: --model cnn: conv+pool block channels by default, the dense layers after
#: them unless --hidden says otherwise, and each data set's image side.
CNN_DEFAULT_CONV = "32,64"
CNN_DEFAULT_HIDDEN = "128"
IMAGE_SIDE = {"digits": 8, "fashion-mnist": 28, "mnist": 28}
#: Per-model defaults for options left unset (models not listed take "mlp"'s):
#: --model cnn trains with BatchNorm2D after each convolution (and BatchNorm
#: after the dense layer), dropout after it, a cosine schedule, on the whole
#: training set (README, Results: Convolutional networks).
MODEL_DEFAULTS = {
    "mlp": {"batchnorm": False, "dropout": 0.0, "schedule": "constant", "val_split": 0.1},
    "cnn": {"batchnorm": True, "dropout": 0.3, "schedule": "cosine", "val_split": 0.0},
}


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def build_parser():
    p = _Parser(prog="scratchnet", description="A neural-network library written from scratch.")
    p.add_argument("--version", action="version", version=f"scratchnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,compare,info,bench,sample}")
    sub.required = True

    t = sub.add_parser("train", help="train an MLP or a CNN and report test accuracy")
    _add_data_and_model_options(t)
    t.add_argument("--mode", choices=("minibatch", "per_sample", "full_batch"), default="minibatch",
                   help="backprop on the whole batch, one sample at a time, or one step per "
                        "epoch (default: %(default)s)")
    t.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="adam",
                   help="(default: %(default)s)")
    t.add_argument("--lr", type=float, help="learning rate (default: " + ", ".join(
        f"{lr:g} {name}" for name, lr in DEFAULT_LR.items()) + ")")
    # None, not 0.9: an explicit --momentum with an optimizer that has none is an error
    t.add_argument("--momentum", type=float, default=None,
                   help=f"for {'/'.join(OPTION_APPLIES_TO['momentum'])} only "
                        f"(default: {DEFAULT_MOMENTUM}); rmsprop's own default is 0")
    t.add_argument("--weight-decay", type=float, default=0.0,
                   help="weight decay: an L2 term, decoupled for adamw (default: %(default)s)")
    t.add_argument("--clip-grad-norm", type=float, default=None, metavar="C",
                   help="clip the global gradient norm to C before each update (default: off)")
    t.add_argument("--schedule", choices=("constant", "cosine", "step"), default=None,
                   help=f"learning-rate schedule over the epochs "
                        f"(default: {_per_model('schedule')})")
    t.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
    t.add_argument("--checkpoint", metavar="PATH",
                   help="write a checkpoint (model, optimizer state, generators, epochs done) "
                        "after every epoch, atomically; '{epoch}' in PATH keeps one per epoch")
    t.add_argument("--resume", metavar="PATH",
                   help="continue from a --checkpoint file: the same options then give the "
                        "trajectory of an uninterrupted run (--epochs counts every epoch)")
    t.add_argument("--threads", type=int, metavar="N",
                   help="BLAS/Numba threads per process (default: unchanged for one process; "
                        "cores // ranks per node under mpiexec)")
    t.add_argument("--diagnostics", metavar="DIR",
                   help="record per-layer statistics; write plots and a summary to DIR")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    c = sub.add_parser("compare", help="train one model with several optimizers, same start")
    _add_data_and_model_options(c)
    c.add_argument("--optimizers", default="sgd,momentum,adam",
                   help=f"comma-separated, from {','.join(OPTIMIZER_NAMES)} "
                        f"(default: %(default)s)")
    c.add_argument("--lr", type=float, help="one learning rate for all (default: each its own)")
    c.add_argument("--out", metavar="DIR", help="write comparison.png and comparison.md here")
    c.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    sub.add_parser("info", help="version, backends and why any cannot run, compile times")
    b = sub.add_parser("bench", help="run the benchmark suite (see scratchnet bench --help)",
                       add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    s = sub.add_parser("sample", help="print text generated by a saved character-level "
                                      "language model (scratchnet train --model charlm --save)")
    s.add_argument("model_path", metavar="MODEL", help="the saved model (.npz)")
    s.add_argument("--length", type=int, default=300,
                   help="characters to generate (default: %(default)s)")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature: lower is more conservative, 1 samples the "
                        "model's own distribution (default: %(default)s)")
    s.add_argument("--prime", default="", help="text to start from (default: a new line)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    s.add_argument("--backend", default="auto", help="numpy, numba, cupy or auto (default)")
    return p


def _per_dataset(key):
    """'30 for digits, 10 for fashion-mnist and mnist': a default that depends on --dataset."""
    groups = {}
    for dataset, values in DEFAULTS.items():
        groups.setdefault(values[key], []).append(dataset)
    return ", ".join(f"{value} for {' and '.join(names)}" for value, names in groups.items())


def _per_model(key, show=str):
    """'0.1; 0.0 for cnn': a default that depends on --model."""
    base = MODEL_DEFAULTS["mlp"][key]
    rest = [f"{show(d[key])} for {m}" for m, d in MODEL_DEFAULTS.items()
            if d[key] != base]
    return "; ".join([show(base), *rest])


def apply_model_defaults(args):
    """Fill the options left unset (None) from MODEL_DEFAULTS for --model; no
    BatchNorm by default with --mode per_sample (one sample has no batch statistics)."""
    model = getattr(args, "model", None)
    if model is None:
        return
    for key, value in MODEL_DEFAULTS.get(model, MODEL_DEFAULTS["mlp"]).items():
        if key == "batchnorm" and getattr(args, "mode", None) == "per_sample":
            value = False
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)


def _add_data_and_model_options(p):
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="(default: digits); fortunes (text) is the data of --model charlm, "
                        "and its default")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the IDX files")
    p.add_argument("--download", action="store_true", help="download the data if missing")
    p.add_argument("--backend", default="auto", help="numpy, numba, cupy or auto (default)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, help=f"(default: {_per_dataset('epochs')})")
    p.add_argument("--batch-size", type=int, help=f"(default: {_per_dataset('batch_size')})")
    p.add_argument("--hidden", help=f"hidden layer sizes, e.g. 256,128 "
                                    f"(default: {_per_dataset('hidden')})")
    p.add_argument("--model", choices=("mlp", "cnn", *RECURRENT_MODELS, "charlm"),
                   default="mlp",
                   help="mlp: Dense layers on the flattened pixels; cnn: the --conv blocks, "
                        "then the --hidden Dense layers (128 unless given); rnn, lstm, gru: one "
                        "recurrent layer of --hidden-size units reading each image's rows as "
                        "time steps, then Dense to the classes; charlm: the character-level "
                        "language model Embedding(64) -> LSTM(--hidden-size) -> Dense on "
                        "--dataset fortunes, 5 epochs of batch 64 unless given "
                        "(default: %(default)s)")
    p.add_argument("--hidden-size", type=int,
                   help="units of the recurrent layer of --model rnn/lstm/gru/charlm (default: " +
                        ", ".join(f"{v} {k}" for k, v in DEFAULT_HIDDEN_SIZE.items()) + ")")
    p.add_argument("--seq-len", type=int,
                   help=f"with --model charlm: characters per training window "
                        f"(default: {DEFAULT_SEQ_LEN})")
    p.add_argument("--conv", help=f"with --model cnn: channels of the conv+pool blocks, each a "
                                  f"3x3 convolution (padding 1), the activation and a 2x2 "
                                  f"max-pool (default: {CNN_DEFAULT_CONV})")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu",
                   help="(default: %(default)s)")
    p.add_argument("--init", choices=("he", "xavier", "normal"), default=None,
                   help="weight init (default: he for relu-like, xavier otherwise)")
    p.add_argument("--dropout", type=float, default=None,
                   help=f"dropout after each hidden layer (default: {_per_model('dropout')})")
    p.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after each hidden Dense and, for a cnn, BatchNorm2D after "
                        "each convolution (default: " +
                        _per_model("batchnorm", lambda on: "on" if on else "off") +
                        " unless per_sample)")
    p.add_argument("--val-split", type=float, default=None,
                   help=f"fraction of the training set held out for validation, 0 for none "
                        f"(default: {_per_model('val_split')})")
    p.add_argument("--seed", type=int, default=0,
                   help="weights, data order, dropout and the validation split "
                        "(default: %(default)s)")


# -- building blocks shared by train and compare ------------------------------

def load_data(args):
    from . import datasets
    model = getattr(args, "model", "mlp")
    flat = model != "cnn"     # a CNN takes (N, 1, side, side) images
    seq = model in RECURRENT_MODELS      # (N, side, side): rows as time steps
    if args.dataset == "digits":
        return datasets.load_digits(seed=args.seed, flat=flat, sequences=seq)
    if args.dataset == "fashion-mnist":
        return datasets.load_fashion_mnist(args.data_dir, download=args.download, flat=flat,
                                           sequences=seq)
    return datasets.load_mnist(args.data_dir, download=args.download, flat=flat, sequences=seq)


def split_validation(X, y, fraction, seed):
    """Hold out ``fraction`` of (X, y), chosen with ``seed``; returns train, val.
    A fraction that leaves no sample on either side is a UsageError."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--val-split must be in [0, 1), got {fraction}")
    if fraction == 0:
        return (X, y), None
    n = len(X)
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise UsageError(
            f"--val-split {fraction:g} of {n} samples leaves {n - n_val} for training and "
            f"{n_val} for validation; choose a fraction that leaves some for both "
            f"(or 0 for no validation)")
    order = numpy.random.default_rng(seed).permutation(n)
    val, tr = order[:n_val], order[n_val:]
    return (X[tr], y[tr]), (X[val], y[val])


def parse_hidden(text, option="--hidden", example="256,128"):
    """'256,128' -> [256, 128]; every size a positive integer, none missing."""
    parts = text.split(",")
    sizes = []
    for part in parts:
        try:
            size = int(part.strip())
        except ValueError:
            size = None
        if size is None or size <= 0:
            what = "an empty size" if not part.strip() else f"{part.strip()!r}"
            raise UsageError(f"{option} must be comma-separated integers > 0 such as "
                             f"{example}; got {text!r} ({what})")
        sizes.append(size)
    return sizes


def build_model(args, n_in, n_out, backend):
    """The model of --model: n_in is the feature count (mlp) or the per-sample
    image shape (C, H, W) (cnn)."""
    from .model import Sequential
    if getattr(args, "model", "mlp") == "cnn":
        return build_cnn(args, n_in, n_out, backend)
    if getattr(args, "model", "mlp") in (*RECURRENT_MODELS, "charlm"):
        return build_sequence_model(args, n_in, n_out, backend)
    hidden = parse_hidden(DEFAULTS[args.dataset]["hidden"] if args.hidden is None else args.hidden)
    layers = _dense_stack(args, n_in, hidden, n_out, _init(args))
    return Sequential(layers, seed=args.seed, dtype=args.dtype, backend=backend)


def _init(args):
    """--init, or the default for --activation: he for relu-like, xavier otherwise."""
    return args.init or ("he" if args.activation in ("relu", "leaky_relu") else "xavier")


def _dense_stack(args, n, hidden, n_out, init):
    """The --hidden Dense layers from n inputs, each with [BatchNorm], the
    activation and [Dropout], then the output layer Dense(., n_out)."""
    layers = []
    for size in hidden:
        layers.append(L.Dense(n, size, init=init))
        if args.batchnorm:
            layers.append(L.BatchNorm(size))
        layers.append(ACTIVATIONS[args.activation]())
        if args.dropout:
            layers.append(L.Dropout(args.dropout))
        n = size
    layers.append(L.Dense(n, n_out, init="xavier"))
    return layers


def build_cnn(args, image_shape, n_out, backend):
    """--conv blocks (3x3 conv, padding 1, [BatchNorm2D], activation, 2x2 max-pool),
    Flatten, the --hidden Dense layers ([BatchNorm], activation, [Dropout]), the output."""
    from .conv import BatchNorm2D, Conv2D, MaxPool2D
    from .model import Sequential
    channels = parse_hidden(args.conv or CNN_DEFAULT_CONV, "--conv", "32,64")
    hidden = parse_hidden(args.hidden or CNN_DEFAULT_HIDDEN)
    init = _init(args)
    layers, (c, h, w) = [], tuple(image_shape)
    for out in channels:
        layers.append(Conv2D(c, out, 3, padding=1, init=init))
        if args.batchnorm:
            layers.append(BatchNorm2D(out))
        layers += [ACTIVATIONS[args.activation](), MaxPool2D(2)]
        c, h, w = out, h // 2, w // 2
    layers.append(L.Flatten())
    layers += _dense_stack(args, c * h * w, hidden, n_out, init)
    return Sequential(layers, seed=args.seed, dtype=args.dtype, backend=backend)


def build_sequence_model(args, sample_shape, n_out, backend):
    """--model rnn/lstm/gru (sample_shape (T, F)) or charlm (n_out characters;
    its vocabulary goes into model.metadata, so that the saved model samples)."""
    from . import sequence_tasks
    size = args.hidden_size or DEFAULT_HIDDEN_SIZE[args.model]
    if args.model != "charlm":
        return sequence_tasks.build_classifier(args.model, sample_shape, n_out, size,
                                               dropout=args.dropout, seed=args.seed,
                                               dtype=args.dtype, backend=backend)
    model = sequence_tasks.build_charlm(n_out, size, dropout=args.dropout, seed=args.seed,
                                        dtype=args.dtype, backend=backend)
    model.metadata.update(task="charlm", vocabulary=args.vocabulary.chars,
                          seq_len=args.seq_len or DEFAULT_SEQ_LEN)
    return model


def make_optimizer(name, lr=None, momentum=None, weight_decay=0.0):
    """The optimizer ``--optimizer name`` asks for, built by ``get_optimizer``."""
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if momentum is not None:
        kwargs["momentum"] = momentum
    return get_optimizer(name, **kwargs)


def check_arguments(args):
    """Every check that needs no data, run before anything is loaded or trained:
    a run must not fail at its end on an option it could have refused at once."""
    check_sequence_arguments(args)
    apply_model_defaults(args)
    for opt in ("epochs", "batch_size"):
        value = getattr(args, opt, None)
        if value is not None and (value < 0 or (opt == "batch_size" and value == 0)):
            raise UsageError(f"--{opt.replace('_', '-')} must be "
                             f"{'positive' if opt == 'batch_size' else '>= 0'}, got {value}")
    if getattr(args, "val_split", None) is not None and not 0 <= args.val_split < 1:
        raise UsageError(f"--val-split must be in [0, 1), got {args.val_split}")
    if getattr(args, "hidden", None) is not None:
        parse_hidden(args.hidden)
    clip = getattr(args, "clip_grad_norm", None)
    if clip is not None and not 0 < clip < float("inf"):
        raise UsageError(f"--clip-grad-norm must be a positive number, got {clip}")
    check_cnn_arguments(args)
    optimizer = getattr(args, "optimizer", None)
    for option, optimizers in OPTION_APPLIES_TO.items():
        if getattr(args, option, None) is not None and optimizer not in optimizers:
            raise UsageError(f"--{option} applies to --optimizer {' or '.join(optimizers)}, "
                             f"not {optimizer}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    resume = getattr(args, "resume", None)
    if resume is not None and not os.path.isfile(resume):
        raise UsageError(f"--resume: no checkpoint file at {resume!r}")
    outputs = {"save": "file", "checkpoint": "file", "diagnostics": "folder", "out": "folder"}
    for option, kind in outputs.items():
        path = getattr(args, option, None)
        if path is None:
            continue
        if option == "checkpoint":
            path = path.replace("{epoch}", "1")
        try:
            (check_file_target if kind == "file" else check_folder_target)(path)
        except (OSError, ValueError) as err:
            raise UsageError(f"--{option}: {err}") from None
        if option in ("diagnostics", "out") and importlib.util.find_spec("matplotlib") is None:
            raise UsageError(f"--{option} writes plots, which need matplotlib: "
                             f"pip install scratchnet[plot]")


def check_sequence_arguments(args):
    """The data set that goes with --model (fortunes is text, for charlm alone),
    and the options that apply to recurrent models."""
    model = getattr(args, "model", None)
    if model is None:
        return       # a command without models (info, sample)
    if args.dataset is None:
        args.dataset = "fortunes" if model == "charlm" else "digits"
    if (model == "charlm") != (args.dataset == "fortunes"):
        raise UsageError("--model charlm trains on --dataset fortunes (text), and fortunes "
                         "only trains --model charlm" if model == "charlm" else
                         f"--dataset fortunes is text: train it with --model charlm, not "
                         f"--model {model}")
    sequence = model in (*RECURRENT_MODELS, "charlm")
    for option in ("hidden_size", "seq_len"):
        value = getattr(args, option, None)
        flag = "--" + option.replace("_", "-")
        if value is None:
            continue
        if option == "seq_len" and model != "charlm":
            raise UsageError(f"{flag} applies to --model charlm, not --model {model}")
        if not sequence:
            raise UsageError(f"{flag} applies to --model {'/'.join(RECURRENT_MODELS)}/charlm, "
                             f"not --model {model} (its layer sizes are --hidden)")
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if sequence:
        for option in ("hidden", "batchnorm", "init"):
            if getattr(args, option, None):
                raise UsageError(f"--{option} applies to --model mlp or cnn; --model {model} has "
                                 f"one recurrent layer of --hidden-size units, initialised as "
                                 f"PyTorch's")


def check_cnn_arguments(args):
    """--conv only with --model cnn, well formed, and no more 2x2 pool stages
    than the data set's images can halve."""
    model, conv = getattr(args, "model", "mlp"), getattr(args, "conv", None)
    if conv is not None and model != "cnn":
        raise UsageError(f"--conv applies to --model cnn, not --model {model}")
    if model != "cnn":
        return
    stages = len(parse_hidden(CNN_DEFAULT_CONV if conv is None else conv, "--conv", "32,64"))
    side = IMAGE_SIDE[args.dataset]
    if side >> stages < 1:
        most = side.bit_length() - 1
        raise UsageError(f"--conv {conv or CNN_DEFAULT_CONV} has {stages} conv+pool blocks, "
                         f"each halving the image, but the {side}x{side} images of "
                         f"{args.dataset} allow at most {most}")


def _resolve(args):
    d = {**DEFAULTS, **TEXT_DEFAULTS}[args.dataset]
    args.epochs = d["epochs"] if args.epochs is None else args.epochs
    args.batch_size = d["batch_size"] if args.batch_size is None else args.batch_size
    return get_ops(args.backend)


def _prepare(args, out):
    if getattr(args, "model", None) == "charlm":
        return _prepare_text(args, out)
    ops = _resolve(args)
    (Xtr, ytr), (Xte, yte) = load_data(args)
    (Xtr, ytr), val = split_validation(Xtr, ytr, args.val_split, args.seed)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    out(f"scratchnet {__version__} | backend {ops.name}"
        f"{' (auto)' if args.backend == 'auto' else ''} | {args.dataset}: {len(Xtr)} train"
        f"{f' / {len(val[0])} validation' if val else ''} / {len(Xte)} test, "
        f"{_sample_text(Xtr)}, {n_classes} classes")
    return ops, (Xtr, ytr), val, (Xte, yte), n_classes


def _prepare_text(args, out):
    """--model charlm: the fortunes as windows of --seq-len characters and their
    next characters; the vocabulary is kept on args for build_model."""
    from . import sequence_tasks
    from .datasets import load_fortunes
    ops = _resolve(args)
    train_text, test_text = load_fortunes(args.data_dir, seed=args.seed)
    vocab, (Xtr, ytr), (Xte, yte) = sequence_tasks.charlm_data(
        train_text, test_text, args.seq_len or DEFAULT_SEQ_LEN)
    args.vocabulary = vocab
    (Xtr, ytr), val = split_validation(Xtr, ytr, args.val_split, args.seed)
    out(f"scratchnet {__version__} | backend {ops.name}"
        f"{' (auto)' if args.backend == 'auto' else ''} | fortunes: {len(train_text):,} "
        f"training and {len(test_text):,} held-out characters, {len(vocab)} distinct, as "
        f"{len(Xtr)} train{f' / {len(val[0])} validation' if val else ''} / {len(Xte)} test "
        f"windows of {Xtr.shape[1]}")
    return ops, (Xtr, ytr), val, (Xte, yte), len(vocab)


def _sample_text(X):
    """'64 features' for (N, 64), '1x28x28 images' for (N, 1, 28, 28), '28 steps
    of 28' for (N, 28, 28) sequences."""
    if X.ndim == 2:
        return f"{X.shape[1]} features"
    if X.ndim == 3:
        return f"sequences of {X.shape[1]} steps of {X.shape[2]}"
    return "x".join(map(str, X.shape[1:])) + " images"


def _model_input(X):
    """What build_model takes: the feature count, or the per-sample image shape."""
    return X.shape[1] if X.ndim == 2 else tuple(X.shape[1:])


# -- commands -------------------------------------------------------------------

def _silent(*args, **kwargs):
    pass


def _resume(args, ops, opt, schedule):
    """``(model, optimizer, epochs done)`` from --resume's checkpoint; the
    command line must ask for the optimizer the checkpoint was trained with."""
    from .training import load_checkpoint
    model, done = load_checkpoint(args.resume, backend=ops)
    if model.dtype.name != args.dtype:
        raise UsageError(f"--resume: {args.resume} holds a {model.dtype.name} model, but this "
                         f"command asks for --dtype {args.dtype}; resume with the options of the "
                         f"first run")
    if done >= args.epochs:
        raise UsageError(f"--resume: {args.resume} is at epoch {done}; --epochs {args.epochs} "
                         f"leaves nothing to train (--epochs counts every epoch, those done "
                         f"included)")
    saved = model.optimizer
    if saved is None:
        raise UsageError(f"--resume: {args.resume} holds no optimizer state (write it with "
                         f"--checkpoint)")

    def hyper(o):
        return {k: v for k, v in o.get_config().items() if k != "lr"}
    if type(saved) is not type(opt) or hyper(saved) != hyper(opt):
        raise UsageError(f"--resume: {args.resume} was trained with {saved!r}, but this "
                         f"command asks for {opt!r}; resume with the options of the first run")
    if schedule is None:
        saved.lr = opt.lr
    return model, saved, done


def cmd_train(args, out=print):
    from . import distributed, schedules
    from .losses import SoftmaxCrossEntropy
    from .training import Checkpoint
    world = distributed.init(threads=args.threads)
    if not world.is_root:          # rank 0 prints, saves and writes for every rank
        out = _silent
    ops, (Xtr, ytr), val, (Xte, yte), n_classes = _prepare(args, out)
    if world.launched:
        distributed.init(backend=ops)       # the gradient communicator (NCCL: one GPU per rank)
    opt = make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    schedule = None
    if args.schedule == "cosine":
        schedule = schedules.cosine(opt.lr, max(args.epochs, 1))
    elif args.schedule == "step":
        schedule = schedules.step(opt.lr, 0.1, max(1, args.epochs // 3))
    done = 0
    if args.resume:
        model, opt, done = _resume(args, ops, opt, schedule)
        out(f"resumed from {args.resume} after {plural(done, 'epoch')}")
    else:
        model = build_model(args, _model_input(Xtr), n_classes, ops)
    if not args.quiet:
        out(model.summary(input_shape=Xtr.shape[1:]))
        out(f"optimizer {opt!r}, schedule {args.schedule}, {plural(args.epochs, 'epoch')}, "
            f"batch size {args.batch_size}, mode {args.mode}")
        if world.launched:
            out(f"data-parallel: {world.describe()}; batch size {args.batch_size} per rank, "
                f"global batch {args.batch_size * world.world_size}")
    loss = SoftmaxCrossEntropy()
    callbacks = [Checkpoint(args.checkpoint)] if args.checkpoint else []
    t0 = time.perf_counter()
    hist = model.fit(Xtr, ytr, loss=loss, optimizer=opt, epochs=args.epochs,
                     batch_size=args.batch_size, mode=args.mode, validation_data=val,
                     progress=not args.quiet, lr_schedule=schedule, callbacks=callbacks,
                     diagnostics=bool(args.diagnostics) and world.is_root,
                     clip_grad_norm=args.clip_grad_norm, initial_epoch=done,
                     distributed=world if world.launched else None)
    seconds = time.perf_counter() - t0
    test = model.evaluate(Xte, yte, loss=loss)
    ranks = f" x {world.world_size} ranks" if world.world_size > 1 else ""
    out(f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}  "
        f"({plural(args.epochs - done, 'epoch')} in {seconds:.1f} s on {ops.name}{ranks})")
    if args.model == "charlm":      # accuracy is per character; the loss is in nats
        out(f"test bits per character {test['loss'] / math.log(2):.4f}")
    if args.checkpoint:
        out(f"checkpoint written to {args.checkpoint.replace('{epoch}', str(args.epochs))}")
    if not world.is_root:
        return 0
    if args.diagnostics:
        diag = hist.diagnostics
        out(diag.summary())
        written = diag.plot(args.diagnostics)
        out(f"diagnostics written to {args.diagnostics}"
            + (f": {', '.join(map(str, written))}" if written else ""))
    if args.save:
        model.save(args.save)
        out(f"model saved to {args.save}")
    return 0


def cmd_compare(args, out=print):
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_NAMES]
    if unknown or not names:
        raise UsageError(f"--optimizers: unknown {unknown or names}; choose from "
                         f"{','.join(OPTIMIZER_NAMES)}")
    from .compare import compare_optimizers, plot_comparison
    ops, (Xtr, ytr), val, _, n_classes = _prepare(args, out)
    model = build_model(args, _model_input(Xtr), n_classes, ops)
    results = compare_optimizers(model, Xtr, ytr, optimizers=names, epochs=args.epochs,
                                 batch_size=args.batch_size, validation_data=val, lr=args.lr,
                                 seed=args.seed, progress=not args.quiet)
    out(results.table())
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        table = os.path.join(args.out, "comparison.md")
        with open(table, "w") as f:
            f.write(results.table() + "\n")
        plot = plot_comparison(results, os.path.join(args.out, "comparison.png"))
        out(f"comparison written to {table} and {plot}")
    return 0


def cmd_info(args, out=print):
    out(f"scratchnet {__version__}")
    out(f"python {platform.python_version()} on {platform.machine()}, numpy {numpy.__version__}")
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                out(f"BLAS: {lib.get('internal_api')} {lib.get('version')} "
                    f"({plural(lib.get('num_threads'), 'thread')})")
    except ImportError:
        pass
    out("backends:")
    for name, why in backend_status().items():
        if why is None:
            ops = get_ops(name)
            if hasattr(ops, "warmup"):      # compile (or load) its kernels, so describe() has the time
                ops.warmup("float32")
            out(f"  {name:6} available: {ops.describe()}")
        else:
            out(f"  {name:6} unavailable: {why}")
    from . import distributed
    mpi, why = distributed.mpi_status()
    out(f"MPI: {mpi}" if mpi else f"MPI: unavailable: {why}")
    launcher = distributed.detect_launcher()
    if launcher:
        out(f"  started by {launcher[0]}"
            + (f" as one of {launcher[1]} processes" if launcher[1] else ""))
    else:
        out("  no MPI launcher: one process (mpiexec -n N scratchnet train ... runs N ranks)")
    nccl, why = distributed.nccl_status()
    out(f"NCCL: {nccl}" if nccl else f"NCCL: unavailable: {why}")
    return 0


def cmd_sample(args, out=print):
    from .model import load
    from .sequence_tasks import sample
    model = load(args.model_path, backend=get_ops(args.backend))
    out(args.prime + sample(model, length=args.length, temperature=args.temperature,
                            prime=args.prime, seed=args.seed, source=args.model_path))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if argv[:1] == ["bench"]:     # its own parser takes every option after the word
            from .bench import main as bench_main
            return bench_main(argv[1:])
        args = parser.parse_args(argv)
        check_arguments(args)
        return {"train": cmd_train, "compare": cmd_compare, "info": cmd_info,
                "sample": cmd_sample}[args.command](args)
    except (UsageError, BackendUnavailableError, DatasetNotFoundError, OSError,
            ValueError, TypeError, FloatingPointError, ImportError) as err:
        if os.environ.get("SCRATCHNET_DEBUG"):
            raise
        # one line, even for messages written as a list of hints
        message = "; ".join(re.sub(r"^\s*-\s+", "", part).strip()
                            for part in str(err).splitlines() if part.strip())
        print(f"scratchnet: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scratchnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
