"""Generate ``kernels/activations.cuh`` from the activation table.

The CUDA kernels take an activation code and switch on it; the codes
(``SN_ACT_*``), one device function per formula and the two switches are
all generated from ``scratchnet.activations``, so they cannot drift from the
Python side. Regenerate after changing the table::

    python3 -m scratchnet.backends.cuda_header > kernels/activations.cuh

(a test checks that the committed file is this output). The cupy backend
inlines ``cuda_header()`` of the live table when it compiles the kernels, so
an activation added with ``activations.register`` reaches the GPU too.
"""

from __future__ import annotations

import argparse

from ..activations import entries

def _c_function(name, arg, text):
    """A device function ``T name(T arg, T alpha)`` whose body is ``text``: an
    expression, or statements ending in a return."""
    lines = text.strip().splitlines() if ";" in text else [f"return {text.strip()};"]
    if "alpha" not in text:
        lines.insert(0, "(void)alpha;  // unused")
    body = "".join(f"    {line.strip()}\n" for line in lines)
    return (f"\ntemplate <typename T>\n"
            f"__device__ __forceinline__ T {name}(T {arg}, T alpha) {{\n{body}}}\n")


def cuda_header(specs=None):
    """Text of ``kernels/activations.cuh`` for ``specs`` (default: the table)."""
    specs = sorted(entries() if specs is None else specs, key=lambda spec: spec.code)
    out = [
        "// The activations of scratchnet's CUDA kernels. GENERATED from the table in\n",
        "// scratchnet/activations.py by\n",
        "//     python3 -m scratchnet.backends.cuda_header > kernels/activations.cuh\n",
        "// Do not edit: change the table and regenerate (a test checks they agree).\n",
        "//\n",
        "// scratchnet_kernels.cu includes this after its sn_* math helpers; cupy_ops\n",
        "// inlines it when it loads the source, since NVRTC reads no files.\n",
        "#ifndef SN_ACTIVATIONS_CUH\n#define SN_ACTIVATIONS_CUH\n\n",
    ]
    out += [f"#define SN_ACT_{spec.name.upper()} {spec.code}\n" for spec in specs]
    out.append("\n// f(z) and f'(z) from y = f(z), per activation; alpha is the LeakyReLU\n"
               "// slope (the others ignore it).\n")
    for spec in specs:
        out.append(_c_function(f"sn_act_{spec.name}", "z", spec.c_forward))
        if not spec.passes_gradient:
            out.append(_c_function(f"sn_act_{spec.name}_grad", "y", spec.c_derivative))
    out.append("\n// f(z) for one activation code; an unknown code leaves z.\n"
               "template <typename T>\n"
               "__device__ __forceinline__ T sn_activate(T z, int act, T alpha) {\n"
               "    switch (act) {\n")
    for spec in specs:
        out.append(f"    case SN_ACT_{spec.name.upper()}:\n"
                   f"        return sn_act_{spec.name}(z, alpha);\n")
    out.append("    default:\n        return z;\n    }\n}\n\n")
    out.append("// dy * f'(z), with f' from the forward output y; an unknown code, or one\n"
               "// whose derivative is 1, leaves dy.\n"
               "template <typename T>\n"
               "__device__ __forceinline__ T sn_act_grad(T dy, T y, int act, T alpha) {\n"
               "    switch (act) {\n")
    for spec in specs:
        if not spec.passes_gradient:
            out.append(f"    case SN_ACT_{spec.name.upper()}:\n"
                       f"        return dy * sn_act_{spec.name}_grad(y, alpha);\n")
    out.append("    default:\n        return dy;\n    }\n}\n\n#endif  // SN_ACTIVATIONS_CUH\n")
    return "".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m scratchnet.backends.cuda_header",
        description="Print kernels/activations.cuh, generated from the activation table "
                    "in scratchnet/activations.py.")
    parser.parse_args(argv)
    print(cuda_header(), end="")


if __name__ == "__main__":
    main()
