"""Learning-rate schedules: values per epoch, PyTorch's cosine, argument checks."""

import math

import pytest

import scratchnet as sn


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
def test_cosine_last_epoch_still_learns(epochs):
    sched = sn.schedules.cosine(0.1, epochs)
    values = [sched(e) for e in range(epochs)]
    assert values[0] == pytest.approx(0.1)
    assert values[-1] > 0
    assert all(a > b for a, b in zip(values, values[1:]))


def test_cosine_formula_without_torch():
    sched = sn.schedules.cosine(0.2, 4, min_lr=0.02)
    expected = [0.02 + 0.18 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [sched(e) for e in range(4)] == pytest.approx(expected)
    assert sched(4) == pytest.approx(0.02) and sched(9) == pytest.approx(0.02)


@pytest.mark.parametrize("epochs, min_lr", [(1, 0.0), (4, 0.0), (10, 0.0), (7, 1e-3)])
def test_cosine_matches_torch_cosine_annealing(epochs, min_lr):
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.05)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_lr)
    torch_lrs = []
    for _ in range(epochs):                 # stepped once per epoch, after the epoch
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_sched.step()
    sched = sn.schedules.cosine(0.05, epochs, min_lr=min_lr)
    assert [sched(e) for e in range(epochs)] == pytest.approx(torch_lrs, rel=1e-12, abs=1e-15)


def test_cosine_with_warmup_ramps_then_decays_over_the_rest():
    sched = sn.schedules.cosine(0.1, 6, warmup=2)
    values = [sched(e) for e in range(6)]
    assert values[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    after = sn.schedules.cosine(0.1, 4)      # the cosine part: 4 epochs from lr
    assert values[2:] == pytest.approx([after(e) for e in range(4)])
    assert values[-1] > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": 5}, "warmup .5. must be smaller than epochs .5."),
    ({"min_lr": 0.5}, "min_lr must be <= 0.1"),
    ({"min_lr": -1.0}, "min_lr must be >= 0.0"),
])
def test_cosine_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sn.schedules.cosine(0.1, 5, **kwargs)
