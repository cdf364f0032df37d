"""Groups 3 and 4: end to end, against PyTorch and against the GEMM floor.

* ``epoch-b<B>``: one training epoch (60,000 samples; a subset with --quick) with
  SGD(0.1) and Adam(1e-3) per backend; PyTorch eager on the same model, data,
  batch size and optimizer when installed; and the step's matrix products alone
  (8 GEMMs a step) as the floor.
* ``inference-b<B>``: ``predict`` throughput at batch 1 and 1,024.
"""


def test_epoch(epoch_case, measure):
    measure(epoch_case)


def test_inference(inference_case, measure):
    measure(inference_case)
