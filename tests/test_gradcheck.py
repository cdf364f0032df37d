"""``sn.gradcheck``: backprop's gradients agree with central differences (float64)
for every layer, activation and loss, on every backend -- and a broken backward
pass is caught."""

import numpy as np
import pytest

import scratchnet as sn

N, D, C = 6, 4, 3


def data(seed=0, n=N, d=D):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng


def check(model, loss, X, y, **kw):
    """gradcheck, and the check touched every parameter and the input."""
    res = sn.gradcheck(model, loss, X, y, **kw)
    assert res, repr(res)
    paths = {path for path, _, _ in model.named_parameters()}
    assert paths | {"input"} == set(res.errors), res.errors
    return res


def labels(rng, n=N, c=C):
    return rng.integers(0, c, size=n)


# --- layers and activations ---------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_dense(backend, bias):
    X, rng = data()
    model = sn.Sequential([sn.Dense(D, C, bias=bias)], seed=0, dtype="float64", backend=backend)
    check(model, sn.MSE(), X, rng.normal(size=(N, C)))


@pytest.mark.parametrize("act", [sn.ReLU, lambda: sn.LeakyReLU(0.1), sn.Sigmoid, sn.Tanh],
                         ids=["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation(backend, act):
    X, rng = data(1)
    model = sn.Sequential([sn.Dense(D, 5, init="he"), act(), sn.Dense(5, C)], seed=1,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


@pytest.mark.parametrize("act", [sn.ReLU, lambda: sn.LeakyReLU(0.2), sn.Sigmoid, sn.Tanh],
                         ids=["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation_not_after_dense(backend, act):
    """An activation that is not fused into a Dense (here after a BatchNorm)."""
    X, rng = data(2)
    model = sn.Sequential([sn.Dense(D, 5), sn.BatchNorm(5), act(), sn.Dense(5, C)], seed=2,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


# --- losses -------------------------------------------------------------------

def test_softmax_then_cross_entropy(backend):
    X, rng = data(3)
    model = sn.Sequential([sn.Dense(D, C), sn.Softmax()], seed=3, dtype="float64",
                          backend=backend)
    check(model, sn.CrossEntropy(), X, labels(rng))


def test_softmax_then_cross_entropy_one_hot(backend):
    X, rng = data(4)
    model = sn.Sequential([sn.Dense(D, C), sn.Softmax()], seed=4, dtype="float64",
                          backend=backend)
    check(model, sn.CrossEntropy(), X, np.eye(C)[labels(rng)])


def test_softmax_cross_entropy_int_labels(backend):
    X, rng = data(5)
    model = sn.Sequential([sn.Dense(D, 5), sn.Tanh(), sn.Dense(5, C)], seed=5, dtype="float64",
                          backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


def test_softmax_cross_entropy_one_hot(backend):
    X, rng = data(6)
    model = sn.Sequential([sn.Dense(D, 5), sn.Tanh(), sn.Dense(5, C)], seed=6, dtype="float64",
                          backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, np.eye(C)[labels(rng)])


def test_softmax_cross_entropy_unnormalised_targets(backend):
    """Target rows that do not sum to 1 (PyTorch accepts them): the gradient must
    still be the loss's."""
    X, rng = data(25)
    model = sn.Sequential([sn.Dense(D, C)], seed=25, dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, rng.uniform(size=(N, C)))


def test_mse_regression(backend):
    X, rng = data(7)
    model = sn.Sequential([sn.Dense(D, 5), sn.Sigmoid(), sn.Dense(5, 2)], seed=7,
                          dtype="float64", backend=backend)
    check(model, sn.MSE(), X, rng.normal(size=(N, 2)))


def test_mse_single_output_1d_targets(backend):
    X, rng = data(8)
    model = sn.Sequential([sn.Dense(D, 5), sn.Tanh(), sn.Dense(5, 1)], seed=8, dtype="float64",
                          backend=backend)
    check(model, sn.MSE(), X, rng.normal(size=N))


def test_mse_int_labels(backend):
    X, rng = data(9)
    model = sn.Sequential([sn.Dense(D, 5), sn.Sigmoid(), sn.Dense(5, C), sn.Sigmoid()], seed=9,
                          dtype="float64", backend=backend)
    check(model, sn.MSE(), X, labels(rng))


def test_binary_cross_entropy(backend):
    X, rng = data(10)
    model = sn.Sequential([sn.Dense(D, 5), sn.ReLU(), sn.Dense(5, 2), sn.Sigmoid()], seed=10,
                          dtype="float64", backend=backend)
    check(model, sn.BinaryCrossEntropy(), X, rng.integers(0, 2, size=(N, 2)).astype(float))


def test_binary_cross_entropy_single_output(backend):
    X, rng = data(11)
    model = sn.Sequential([sn.Dense(D, 1), sn.Sigmoid()], seed=11, dtype="float64",
                          backend=backend)
    check(model, sn.BinaryCrossEntropy(), X, rng.integers(0, 2, size=N))


# --- BatchNorm, Dropout, Residual -------------------------------------------

def test_batchnorm_training(backend):
    X, rng = data(12)
    model = sn.Sequential([sn.Dense(D, 5), sn.BatchNorm(5), sn.Tanh(), sn.Dense(5, C)], seed=12,
                          dtype="float64", backend=backend)
    bn = model.layers[1]
    bn.gamma[...] = bn.ops.asarray(rng.uniform(0.5, 1.5, 5))
    bn.beta[...] = bn.ops.asarray(rng.normal(size=5))
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


def test_batchnorm_eval(backend):
    X, rng = data(13)
    model = sn.Sequential([sn.Dense(D, 5), sn.BatchNorm(5), sn.Tanh(), sn.Dense(5, C)], seed=13,
                          dtype="float64", backend=backend)
    bn, ops = model.layers[1], model.ops
    bn.gamma[...] = ops.asarray(rng.uniform(0.5, 1.5, 5))
    bn.beta[...] = ops.asarray(rng.normal(size=5))
    bn.running_mean[...] = ops.asarray(rng.normal(size=5))
    bn.running_var[...] = ops.asarray(rng.uniform(0.5, 2.0, 5))
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng), training=False)


def test_batchnorm_standalone_input_gradient(backend):
    """BatchNorm first: the input gradient is BatchNorm's own dX."""
    X, rng = data(14, n=8)
    model = sn.Sequential([sn.BatchNorm(D), sn.Dense(D, C)], seed=14, dtype="float64",
                          backend=backend)
    check(model, sn.MSE(), X, rng.normal(size=(8, C)))


def test_dropout_fixed_mask(backend):
    X, rng = data(15, n=10)
    model = sn.Sequential([sn.Dense(D, 8), sn.ReLU(), sn.Dropout(0.5), sn.Dense(8, C)], seed=15,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng, n=10))


def test_dropout_mask_released_after_check(backend):
    X, rng = data(16)
    model = sn.Sequential([sn.Dense(D, 8), sn.Dropout(0.3), sn.Dense(8, C)], seed=16,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))
    assert model.layers[1].fixed_mask is None


def test_residual(backend):
    X, rng = data(17)
    model = sn.Sequential([sn.Residual([sn.Dense(D, D), sn.Tanh()]), sn.Dense(D, C)], seed=17,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


def test_nested_residual_with_batchnorm(backend):
    X, rng = data(18, n=8)
    inner = sn.Residual([sn.Dense(D, D), sn.BatchNorm(D), sn.Tanh()])
    outer = sn.Residual([sn.Dense(D, D), sn.BatchNorm(D), sn.ReLU(), inner, sn.Dense(D, D)])
    model = sn.Sequential([outer, sn.Dense(D, C)], seed=18, dtype="float64", backend=backend)
    res = check(model, sn.SoftmaxCrossEntropy(), X, labels(rng, n=8))
    assert {"0.1.gamma", "0.3.1.beta", "0.3.0.W"} <= set(res.errors)


def test_deep_mixed_network(backend):
    X, rng = data(19, n=10, d=6)
    model = sn.Sequential([
        sn.Dense(6, 8, init="he"), sn.ReLU(),
        sn.BatchNorm(8),
        sn.Residual([sn.Dense(8, 8), sn.LeakyReLU(0.1), sn.Dense(8, 8, bias=False)]),
        sn.Dropout(0.25),
        sn.Dense(8, 6), sn.Sigmoid(),
        sn.Dense(6, 5, init="xavier_normal"), sn.Tanh(),
        sn.Dense(5, 4),
    ], seed=19, dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng, n=10, c=4))


def test_float32_model_is_checked_in_float64(backend):
    """gradcheck works on a float64 copy: a float32 model passes at the float64 tolerance
    and is left unchanged."""
    X, rng = data(20)
    model = sn.Sequential([sn.Dense(D, 5), sn.BatchNorm(5), sn.Tanh(), sn.Dense(5, C)], seed=20,
                          dtype="float32", backend=backend)
    before = {k: v.copy() for k, v in model.state_arrays().items()}
    check(model, sn.SoftmaxCrossEntropy(), X.astype(np.float32), labels(rng))
    after = model.state_arrays()
    for k in before:
        assert after[k].dtype == np.float32
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_dense_with_custom_initializer(backend):
    """gradcheck works on a copy of the model, which must not need the init function."""
    X, rng = data(24)
    model = sn.Sequential([sn.Dense(D, C, init=lambda r, i, o: r.normal(size=(i, o)))], seed=24,
                          dtype="float64", backend=backend)
    check(model, sn.SoftmaxCrossEntropy(), X, labels(rng))


# --- the result object, and a check that can fail -----------------------------

def test_result_is_a_float_with_errors_per_path(backend):
    X, rng = data(21)
    model = sn.Sequential([sn.Dense(D, 5), sn.ReLU(), sn.Dense(5, C)], seed=21, dtype="float64",
                          backend=backend)
    res = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), X, labels(rng))
    assert isinstance(res, float) and isinstance(res, sn.GradCheckResult)
    assert res < 1e-5
    assert res.passed is True and bool(res) is True
    assert set(res.errors) == {"0.W", "0.b", "2.W", "2.b", "input"}
    assert float(res) == max(res.errors.values())
    assert "passed" in repr(res)


def test_broken_backward_is_caught(backend, monkeypatch):
    X, rng = data(22)
    model = sn.Sequential([sn.Dense(D, 5), sn.Tanh(), sn.Dense(5, C)], seed=22, dtype="float64",
                          backend=backend)
    y = labels(rng)
    assert sn.gradcheck(model, sn.SoftmaxCrossEntropy(), X, y)   # sound before breaking it
    original = sn.Dense.backward

    def broken(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        self.dW *= 1.01
        return out

    monkeypatch.setattr(sn.Dense, "backward", broken)
    res = sn.gradcheck(model, sn.SoftmaxCrossEntropy(), X, y)
    assert not res
    assert res.passed is False
    assert float(res) > res.tol
    assert 0.005 < float(res) < 0.02                       # about 1%
    assert res.errors["0.W"] > res.tol and res.errors["2.W"] > res.tol
    assert res.errors["0.b"] < res.tol and res.errors["input"] < res.tol
    assert "FAILED" in repr(res)


def test_broken_bias_gradient_is_caught(backend, monkeypatch):
    X, rng = data(23)
    model = sn.Sequential([sn.Dense(D, C)], seed=23, dtype="float64", backend=backend)
    original = sn.Dense.backward

    def broken(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        self.db *= 0.0
        return out

    monkeypatch.setattr(sn.Dense, "backward", broken)
    res = sn.gradcheck(model, sn.MSE(), X, rng.normal(size=(N, C)))
    assert not res
    assert res.errors["0.b"] > 0.5 and res.errors["0.W"] < res.tol
