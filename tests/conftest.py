"""Shared fixtures: every backend-parametrized test runs on each backend that
works here; the NumPy backend is the reference the others are compared with.

Unavailable backends appear as skipped parameters with the reason their
backend gave, so a missing backend is visible, never counted as a pass.
"""


import numpy
import pytest

from scratchnet.backends import BACKENDS, BackendUnavailableError, get_ops

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _backend_params():
    params = []
    for name in BACKENDS:
        marks = [pytest.mark.gpu] if name == "cupy" else []
        try:
            get_ops(name)
        except BackendUnavailableError as err:
            marks.append(pytest.mark.skip(reason=f"{name} backend unavailable: {err}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


BACKEND_PARAMS = _backend_params()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Name of a working backend."""
    return request.param


@pytest.fixture
def ops(backend):
    return get_ops(backend)


@pytest.fixture
def ref():
    """The NumPy reference backend."""
    return get_ops("numpy")


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


def to_host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, numpy.ndarray) else numpy.asarray(x)


@pytest.fixture(scope="session")
def fashion():
    """Fashion-MNIST, or a skip naming how to install it."""
    from scratchnet.datasets import DatasetNotFoundError, load_fashion_mnist
    try:
        return load_fashion_mnist()
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def one_blas_thread():
    """For modules of small matrices: a second BLAS thread only adds contention
    (each tiny product can take milliseconds of it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def one_torch_and_blas_thread(one_blas_thread):
    """For modules that compare with PyTorch on tiny arrays: torch's thread pool
    too (beside it, a second BLAS thread makes each small product take
    milliseconds)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
