"""A model's state (config + arrays) turned back into layers, checked first.

``Sequential.get_state()`` gives a JSON-able config and host arrays;
``Sequential.from_state()`` calls ``check_state`` here, which validates the
config's structure and compares every parameter and buffer shape the config
implies with the arrays that came with it *before* any layer is built. So a
crafted or corrupt config (a string where a list belongs, layers nested
thousands deep, a 2 KB file that claims a 4000x4000 Dense) is refused with a
ValueError naming the source and the problem, never a MemoryError,
RecursionError or AttributeError.

Tied layers: ``config["tied"]`` lists, for each place in the depth-first walk
of the layers, the first place of the same layer object; a place tied to an
earlier one reuses that object.
"""

from __future__ import annotations

import numbers

from . import layers as L
from ._validate import as_dtype

#: Limits on what a saved config may describe.
MAX_DEPTH = 64
MAX_LAYERS = 100_000


def _fail(source, message):
    raise ValueError(f"{source}: not a valid scratchnet model: {message}")


def _is_spec(value):
    return isinstance(value, dict) and "class" in value


def _children(spec):
    """The layer specs inside ``spec``'s config, in walk order."""
    out = []
    for value in spec.get("config", {}).values():
        if _is_spec(value):
            out.append(value)
        elif isinstance(value, list) and value and all(_is_spec(v) for v in value):
            out.extend(value)
    return out


def _walk_specs(specs, source, depth=0):
    """Every spec, depth first (the order of ``layers.walk``), checked for form."""
    if depth > MAX_DEPTH:
        _fail(source, f"layers nested more than {MAX_DEPTH} deep")
    for spec in specs:
        if not isinstance(spec, dict):
            _fail(source, f"a layer entry must be an object, got {type(spec).__name__}")
        if not isinstance(spec.get("class"), str):
            _fail(source, f"a layer entry has no class name: {str(spec)[:80]}")
        if not isinstance(spec.get("config", {}), dict):
            _fail(source, f"the config of layer {spec['class']} must be an object, got "
                          f"{type(spec['config']).__name__}")
        yield spec
        yield from _walk_specs(_children(spec), source, depth + 1)


def check_config(config, source="state"):
    """Validate the structure of a model config; returns the specs in walk order."""
    if not isinstance(config, dict):
        _fail(source, f"the config must be an object, got {type(config).__name__}")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        _fail(source, f"'layers' must be a non-empty list, got {type(layers).__name__}")
    try:
        as_dtype(config.get("dtype"))
    except ValueError as err:
        _fail(source, str(err))
    seed = config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        _fail(source, f"'seed' must be null or an integer >= 0, got {seed!r}")
    for key in ("rng", "optimizer", "metadata"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            _fail(source, f"'{key}' must be an object, got {type(config[key]).__name__}")
    rng = config.get("rng") or {}
    if not isinstance(rng.get("dropout", {}), dict) or \
            not isinstance(rng.get("data", {}), dict):
        _fail(source, "'rng' must hold objects under 'data' and 'dropout'")
    opt = config.get("optimizer")
    if opt is not None and not isinstance(opt.get("steps", {}), dict):
        _fail(source, "the optimizer's 'steps' must be an object")
    specs = []
    for spec in _walk_specs(layers, source):
        specs.append(spec)
        if len(specs) > MAX_LAYERS:
            _fail(source, f"more than {MAX_LAYERS} layers")
    tied = config.get("tied")
    if tied is not None:
        if not isinstance(tied, list) or len(tied) != len(specs) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= i
                for i, t in enumerate(tied)):
            _fail(source, "'tied' must list, for each layer, the index of an earlier or the "
                          "same layer")
        for i, t in enumerate(tied):
            if t != i and specs[t] != specs[i]:
                _fail(source, f"layer {i} is tied to layer {t} but their configs differ")
    return specs


def _paths(specs_top, tied):
    """``(path, spec)`` for each layer that owns its parameters (first use), in
    the order of ``Sequential.named_parameters``."""
    counter = [0]
    out = []

    def visit(specs, prefix):
        for i, spec in enumerate(specs):
            pos = counter[0]
            counter[0] += 1
            if tied is not None and tied[pos] != pos:
                counter[0] += _count(spec) - 1
                continue
            out.append((f"{prefix}{i}.", spec))
            visit(_children(spec), f"{prefix}{i}.")

    visit(specs_top, "")
    return out


def _count(spec):
    return 1 + sum(_count(c) for c in _children(spec))


def check_state(config, arrays, source="state"):
    """Check ``config`` and that ``arrays`` hold exactly the parameters and
    buffers it implies, with the right shapes, before building anything;
    then build and return the layers."""
    check_config(config, source)
    tied = config.get("tied")
    for prefix, spec in _paths(config["layers"], tied):
        cls = L.LAYER_REGISTRY.get(spec["class"])
        if cls is None:
            _fail(source, f"unknown layer class {spec['class']!r} (known: "
                          f"{sorted(L.LAYER_REGISTRY)}; a custom layer must be registered "
                          f"with @scratchnet.register_layer)")
        shapes = cls.state_shapes(spec.get("config", {}))
        for name, shape in (shapes or {}).items():
            kind = "buffer" if name in cls.buffer_names else "param"
            key = f"{kind}:{prefix}{name}"
            if key not in arrays:
                _fail(source, f"the file has no array {key} ({spec['class']} needs shape "
                              f"{tuple(shape)})")
            if tuple(arrays[key].shape) != tuple(shape):
                _fail(source, f"{key} has shape {tuple(arrays[key].shape)} but the config's "
                              f"{spec['class']} needs {tuple(shape)}")
    try:
        return layers_from_config(config)
    except (ValueError, TypeError) as err:
        _fail(source, str(err))


def layers_from_config(config):
    """Build the layers of ``config["layers"]``, honouring ``config["tied"]``."""
    tied = config.get("tied")
    built = {}
    counter = [0]

    def build(spec):
        pos = counter[0]
        counter[0] += 1
        if tied is not None and tied[pos] != pos:
            counter[0] += _count(spec) - 1
            return built[tied[pos]]
        cls = L.LAYER_REGISTRY.get(spec.get("class"))
        if cls is None:
            raise ValueError(f"unknown layer class {spec.get('class')!r} (known: "
                             f"{sorted(L.LAYER_REGISTRY)}; a custom layer must be registered "
                             f"with @scratchnet.register_layer)")
        kwargs = dict(spec.get("config", {}))
        if kwargs.get("init") == "custom":
            kwargs["init"] = "zeros"   # a callable init is not saved; the saved weights replace it
        for key, value in kwargs.items():
            if _is_spec(value):
                kwargs[key] = build(value)
            elif isinstance(value, list) and value and all(_is_spec(v) for v in value):
                kwargs[key] = [build(v) for v in value]
        try:
            layer = cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"layer {spec['class']}: {err}") from None
        built[pos] = layer
        return layer

    return [build(spec) for spec in config["layers"]]
