"""One training step of the reference LSTM, broken into phases, per backend.

The network (float32, batch 128 by default, sequences of 28 steps of 28
features: an image read row by row, 10 classes)::

    LSTM(28, 128) (the last step's h), Dense(128, 10), softmax-cross-entropy, Adam(1e-3)

For each scratchnet backend the step (``training.MatrixStep`` then the
optimizer) is timed as a whole, uninstrumented; then again with every phase
timed by wrappers around the backend's methods, its kernels and
``numpy.matmul``. Each phase's time is exclusive (a method's time minus that
of the kernels and products it called), so the phases add up to the
instrumented step:

    input GEMM         the input projection X (N*T, F) @ W of every step at once
                       (and X's gradient, when a layer needs it)
    recurrent GEMMs    h_{t-1} @ U forward and dZ_t @ U^T backward, one per step
    cell forward       the recurrent forward primitive less its products: the
                       gate non-linearities and the state update (Numba: the
                       fused cell kernel and the loop around it)
    cell backward      the same for the backward: gate derivatives, the carried
                       gradients, the per-step gradient norms
    weight-grad GEMMs  dU = Hprev^T dZ and dW = X^T dZ over all N*T rows, and
                       the Dense layer's dW
    optimizer          the update of every parameter
    other              the rest: the input bias, db, the Dense layer's other
                       products, the loss, Python in the layers and the model

PyTorch (eager, CPU, the same threads; its LSTM runs oneDNN's fused RNN
primitive) trains the same network on the same data with the same loss and
optimizer. The GEMM floor is the step's matrix products alone, at the shapes
the Numba backend runs them (``cases.lstm_gemm_shapes``). How the times are
taken, and ``--threads 1 --clock thread`` for a shared machine:
``_step_profile.py``.

    python benchmarks/profile_lstm_step.py                   # numpy, numba, torch
    python benchmarks/profile_lstm_step.py --backends numba --repeats 50
    python benchmarks/profile_lstm_step.py --threads 1 --clock thread
"""

from __future__ import annotations

import threading

import _step_profile  # puts the checkout on sys.path
from scratchnet.bench import cases  # noqa: E402

PHASES = ("input GEMM", "recurrent GEMMs", "cell forward", "cell backward",
          "weight-grad GEMMs", "optimizer", "other")

#: backend method -> phase of its exclusive time.
METHOD_PHASES = {
    "lstm_forward": "cell forward", "lstm_backward": "cell backward",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}
#: Numba kernel -> phase.
KERNEL_PHASES = {
    "lstm_cell_forward": "cell forward", "lstm_cell_backward": "cell backward",
    "adam_update": "optimizer", "sgd_update": "optimizer",
}


def gemm_phase(timer, a, b, X):
    """The phase of the product a @ b: by the primitive it runs in, else by its
    shape (rows = N*T, the rows of the input projection)."""
    rows = X.shape[0] * X.shape[1]
    k = a.shape[-1]
    if threading.get_ident() != timer.thread:
        return "recurrent GEMMs"         # in another chunk's thread: not timed
    if timer.inside and timer.inside[-1] in ("cell forward", "cell backward"):
        # dU sums over the N*T (or N*(T-1)) rows; a step's product over H or 4H
        return "weight-grad GEMMs" if 2 * k >= rows else "recurrent GEMMs"
    if 2 * k >= rows or (a.ndim == 2 and a.strides[0] < a.strides[1]):
        return "weight-grad GEMMs"       # X^T dZ: a transposed view summed over the rows
    if a.shape[0] == rows:
        return "input GEMM"
    return "other"


NETWORK = _step_profile.Network(
    cases.LSTM_NET, phases=PHASES, method_phases=lambda backend: METHOD_PHASES,
    kernel_phases=KERNEL_PHASES, gemm_phase=gemm_phase,
    title=lambda batch: f"reference LSTM, float32, batch {batch}, {cases.LSTM_STEPS} steps")


if __name__ == "__main__":
    _step_profile.main(NETWORK, __doc__.split("\n\n")[0])
