"""The reference LSTM (see ``scratchnet.bench.cases``): what the fused recurrent
cells buy, against PyTorch and against the GEMM floor.

* ``lstm_step-b<B>``: one training step (Adam) per backend and PyTorch, and the
  step's matrix products alone;
* ``lstm_per_sample_vs_minibatch-b<B>``: one pass of ``fit`` over a slice of
  sequences, the per-sample loop against matrix backprop.
"""


def test_lstm_step(lstm_step_case, measure):
    measure(lstm_step_case)


def test_lstm_per_sample_vs_minibatch(lstm_train_case, measure):
    measure(lstm_train_case)
