"""Saving and loading models: one ``.npz`` file holding a JSON config and arrays.

``save`` writes to a temporary file in the same folder and renames it over
the target only once it is complete, so a failed save (full disk, an
exception while writing) leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy

from .layers import Dropout, walk

FORMAT = "scratchnet-model"
VERSION = 1


def save_model(model, path):
    path = os.fspath(path)
    config = {"format": FORMAT, "version": VERSION, **model.get_config(),
              "backend": model.ops.name, "optimizer": None}
    arrays = model.state_arrays()
    config["rng"] = _rng_states(model)
    opt = model.optimizer
    if opt is not None:
        config["optimizer"] = {"class": type(opt).__name__, "config": opt.get_config(),
                               "steps": {p: st["step"] for p, st in opt.state.items()}}
        for p, st in opt.state.items():
            for k in opt.state_names:
                arrays[f"opt:{p}:{k}"] = model.ops.to_host(st[k])
    blob = numpy.frombuffer(json.dumps(config).encode("utf-8"), dtype=numpy.uint8)
    # A temporary file renamed over ``path`` when complete: a failed or killed
    # save leaves the previous file intact (see scratchnet._atomic).
    from ._atomic import atomic_write
    atomic_write(path, lambda f: numpy.savez(f, __config__=blob, **arrays))


def load(path, backend=None):
    """Load a model saved with ``model.save``; onto ``backend`` (a name) or the
    current backend. A model saved on a GPU loads on a CPU-only machine."""
    from .layers import layer_from_config
    from .model import Sequential
    from .optimizers import optimizer_from_config
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with open(path, "rb") as f:    # our handle: numpy leaks its own on a bad zip
            data = numpy.load(f, allow_pickle=False)
            if not hasattr(data, "files"):     # a .npy file holds one array, no config
                raise ValueError("it holds a single array, not a model archive")
            with data:
                arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(f"{path}: not a readable scratchnet model file (corrupt or "
                         f"truncated?): {err}") from None
    if "__config__" not in arrays:
        raise ValueError(f"{path}: not a scratchnet model file (no config inside)")
    try:
        config = json.loads(arrays.pop("__config__").tobytes().decode("utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"format is {config.get('format')!r}")
        if config.get("version", 0) > VERSION:
            raise ValueError(f"written by a newer scratchnet (format version {config['version']})")
        layers = [layer_from_config(spec) for spec in config["layers"]]
        model = Sequential(layers, seed=config.get("seed"), dtype=config["dtype"], backend=backend)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid scratchnet model file: {err}") from None
    opt_arrays = {k: arrays.pop(k) for k in list(arrays) if k.startswith("opt:")}
    model.load_state_arrays(arrays, source=path)
    _restore_rng_states(model, config.get("rng") or {})
    if config.get("optimizer"):
        opt = optimizer_from_config(config["optimizer"])
        shapes = {p: tuple(getattr(layer, name).shape)
                  for p, layer, name in model.named_parameters()}
        for p, step in config["optimizer"].get("steps", {}).items():
            st = {"step": int(step)}
            for k in opt.state_names:
                key = f"opt:{p}:{k}"
                if key not in opt_arrays:
                    raise ValueError(f"{path}: optimizer state {key} is missing")
                if opt_arrays[key].shape != shapes.get(p):
                    raise ValueError(f"{path}: optimizer state {key} has shape "
                                     f"{opt_arrays[key].shape}, the parameter {shapes.get(p)}")
                st[k] = model.ops.asarray(opt_arrays[key], dtype=model.dtype)
            opt.state[p] = st
        model.optimizer = opt
    return model


def _rng_states(model):
    """Positions of the shuffling and dropout generators, so that training
    resumed from a file continues the same random streams. A backend whose
    generator state is not plain data (JSON) leaves its dropout streams out."""
    states = {"data": model._data_rng.bit_generator.state, "dropout": {}, "backend": model.ops.name}
    for i, layer in enumerate(walk(model.layers)):
        if isinstance(layer, Dropout):
            try:
                state = model.ops.rng_state(layer.rng)
                json.dumps(state)
            except (TypeError, ValueError, NotImplementedError):
                continue
            states["dropout"][str(i)] = state
    return states


def _restore_rng_states(model, states):
    if "data" in states:
        model._data_rng.bit_generator.state = states["data"]
    if states.get("backend") != model.ops.name:
        return     # another backend's dropout generator: start from the seed
    for i, layer in enumerate(walk(model.layers)):
        state = states.get("dropout", {}).get(str(i))
        if isinstance(layer, Dropout) and state is not None:
            model.ops.set_rng_state(layer.rng, state)
