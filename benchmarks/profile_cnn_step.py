"""One training step of the reference CNN, broken into phases, per backend.

The network (float32, batch 128 by default, 28x28 grey images, 10 classes)::

    Conv2D(1, 32, 3, padding=1) + ReLU, MaxPool2D(2),
    Conv2D(32, 64, 3, padding=1) + ReLU, MaxPool2D(2),
    Flatten, Dense(3136, 128) + ReLU, Dense(128, 10), softmax-cross-entropy, Adam(1e-3)

For each scratchnet backend the step (``training.MatrixStep`` then the
optimizer) is timed as a whole, uninstrumented; then again with every phase
timed by wrappers around the backend's methods, its kernels and
``numpy.matmul``. Each phase's time is exclusive (a method's time minus that
of the kernels and products it called), so the phases add up to the
instrumented step:

    im2col      building the column matrix (NumPy: the padded copy, the window
                copy, and the copy of the product into NCHW; Numba: the im2col
                kernel)
    GEMM        every matrix product (BLAS)
    col2im      the adjoint (NumPy: the transposes of dY and Y, the strided
                adds, the crop; Numba: the col2im kernel)
    bias+act    bias and activation, forward and backward (with db)
    pooling     max pooling, forward and backward
    loss        softmax-cross-entropy and the accuracy count
    optimizer   the update of every parameter
    other       the rest: Python in the layers and the model, allocations,
                the methods' own glue (Numba: argument checks, dispatch)

PyTorch (eager, CPU, the same threads) runs the same network, data, loss and
optimizer. The GEMM floor is the step's 11 matrix products alone, at the
shapes the Numba backend uses. How the times are taken, and ``--threads 1
--clock thread`` for a shared machine: ``_step_profile.py``.

    python benchmarks/profile_cnn_step.py                   # numpy, numba, torch
    python benchmarks/profile_cnn_step.py --backends numba --repeats 50
    python benchmarks/profile_cnn_step.py --threads 1 --clock thread
"""

from __future__ import annotations

import numpy

import _step_profile  # puts the checkout on sys.path
from scratchnet.bench import cases  # noqa: E402

PHASES = ("im2col", "GEMM", "col2im", "bias+act", "pooling", "loss", "optimizer", "other")

#: backend method -> phase of its exclusive time (what it does besides the
#: kernels and products it calls); the conv methods depend on the backend.
METHOD_PHASES = {
    "bias_act": "bias+act", "act_backward": "bias+act", "act_backward_bias": "bias+act",
    "maxpool2d_forward": "pooling", "maxpool2d_backward": "pooling",
    "softmax_cross_entropy": "loss", "count_correct": "loss",
    "adam_update": "optimizer", "sgd_update": "optimizer", "matmul": "GEMM",
}
CONV_METHOD_PHASES = {  # composed defaults: the copies around the product
    "numpy": {"conv2d_forward": "im2col", "conv2d_backward": "col2im"},
}
#: Numba kernel -> phase.
KERNEL_PHASES = {
    "im2col": "im2col", "col2im": "col2im",
    "conv_bias_act": "bias+act", "conv_act_backward": "bias+act", "bias_act": "bias+act",
    "act_backward": "bias+act", "column_sum": "bias+act",
    "maxpool_forward": "pooling", "maxpool_backward": "pooling",
    "softmax_cross_entropy": "loss", "count_correct": "loss",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}


def method_phases(backend):
    conv = CONV_METHOD_PHASES.get(backend, {})
    return {**METHOD_PHASES, "conv2d_forward": conv.get("conv2d_forward", "other"),
            "conv2d_backward": conv.get("conv2d_backward", "other")}


def make_data(batch, seed=0):
    rng = numpy.random.default_rng(seed)
    X = rng.random((batch, 1, 28, 28), dtype=numpy.float32)
    y = rng.integers(0, 10, batch).astype(numpy.int64)
    return X, y


NETWORK = _step_profile.Network(
    cases.CNN, phases=PHASES, method_phases=method_phases, kernel_phases=KERNEL_PHASES,
    gemm_phase=lambda timer, a, b, X: "GEMM",
    title=lambda batch: f"reference CNN, float32, batch {batch}", make_data=make_data)


if __name__ == "__main__":
    _step_profile.main(NETWORK, __doc__.split("\n\n")[0])
