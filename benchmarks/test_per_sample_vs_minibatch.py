"""Group 1: what does the matrix form of backprop buy?

One pass of ``fit`` over a fixed slice (784 inputs, 10 classes), the classic
per-sample loop (``mode="per_sample"``: one sample's backprop at a time,
gradients summed) against matrix backprop (``mode="minibatch"``), at each batch
size, on every backend. Samples/s is in ``extra_info``; the report divides them.
"""


def test_per_sample_vs_minibatch(train_case, measure):
    measure(train_case)
