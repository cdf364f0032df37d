"""The reference CNN (see ``scratchnet.bench.cases``): what the fused
convolution kernels buy, against PyTorch and against the GEMM floor.

* ``cnn_layer-<layer>-<direction>``: each conv (with its ReLU) and pool layer,
  forward and backward, on every backend and PyTorch at the same shapes;
* ``cnn_step-b<B>``: one training step (Adam) per backend and PyTorch, and the
  step's 11 matrix products alone;
* ``cnn_per_sample_vs_minibatch-b<B>``: one pass of ``fit`` over a slice of
  images, the per-sample loop against matrix backprop.
* ``cnn_inference-b<B>``: ``predict`` over the test images at batch 1,024.
"""


def test_cnn_layer(cnn_layer_case, measure):
    measure(cnn_layer_case)


def test_cnn_step(cnn_step_case, measure):
    measure(cnn_step_case)


def test_cnn_per_sample_vs_minibatch(cnn_train_case, measure):
    measure(cnn_train_case)


def test_cnn_inference(cnn_inference_case, measure):
    measure(cnn_inference_case)
