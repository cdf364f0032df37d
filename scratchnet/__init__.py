"""scratchnet: a neural-network library written from scratch.

Every forward pass, gradient and optimizer step is scratchnet's own code; the
array work goes through one backend object -- NumPy, Numba-fused CPU kernels
or CuPy on a CUDA GPU -- so the same model trains unchanged on any of them::

    import scratchnet as sn
    model = sn.Sequential([sn.Dense(784, 256, init="he"), sn.ReLU(),
                           sn.Dense(256, 10)], seed=0)
    hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(1e-3),
                     epochs=10, batch_size=128)

``import scratchnet`` imports neither numba, cupy nor mpi4py: backends load on
demand, MPI only when ``scratchnet.distributed.init()`` finds a launcher.
"""

__version__ = "0.1.0"

from . import datasets, schedules
from .backends import (BackendUnavailableError, available_backends, get_backend, set_backend,
                       use_backend)
from .gradcheck import GradCheckResult, gradcheck
from . import training
from . import distributed
from .conv import AvgPool2D, BatchNorm2D, Conv2D, GlobalAvgPool2D, MaxPool2D
from .recurrent import GRU, LSTM, RNN, Embedding
from .layers import (Activation, BatchNorm, Dense, Dropout, Flatten, Layer, LeakyReLU, ReLU,
                     Residual, Sigmoid, Softmax, Tanh, register_layer)
from .losses import (MSE, BCEWithLogits, BinaryCrossEntropy, BinaryCrossEntropyWithLogits,
                     CrossEntropy, Loss, SoftmaxCrossEntropy)
from .model import History, Sequential, TrainingDivergedError, load
from .optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get_optimizer
from .training import Callback, clip_grad_norm

__all__ = [
    "Sequential", "History", "TrainingDivergedError",
    "Layer", "Dense", "Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax",
    "Dropout", "BatchNorm", "Residual", "Flatten", "register_layer",
    "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm2D",
    "RNN", "LSTM", "GRU", "Embedding",
    "Loss", "SoftmaxCrossEntropy", "CrossEntropy", "BinaryCrossEntropy",
    "BinaryCrossEntropyWithLogits", "BCEWithLogits", "MSE",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get_optimizer",
    "Callback", "clip_grad_norm", "training", "distributed",
    "set_backend", "use_backend", "get_backend", "available_backends",
    "BackendUnavailableError", "gradcheck", "GradCheckResult", "load", "datasets", "schedules",
]
