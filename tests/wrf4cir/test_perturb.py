"""Contract tests of PerturbedOptimizer, run over every perturbation kind."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from wrf4cir.perturb import KINDS, PerturbedOptimizer, compute_perturbation, perturbed


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def closure_for(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss
    return closure


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def plain_steps(n: int, optim_cls, **kw) -> list[torch.Tensor]:
    model = make_model()
    opt = optim_cls(model.parameters(), **kw)
    for i in range(n):
        x, y = batch(i)
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    return weights(model)


def wrapped_steps(n: int, kind: str, radius: float, optim_cls, **kw) -> list[torch.Tensor]:
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), optim_cls, kind=kind, radius=radius, **kw)
    for i in range(n):
        x, y = batch(i)
        opt.step(closure_for(model, opt, x, y))
    return weights(model)


@pytest.mark.parametrize("optim_cls,kw", [
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
])
@pytest.mark.parametrize("kind,radius", [("none", 0.05)] + [(k, 0.0) for k in KINDS])
def test_no_perturbation_is_bit_identical_to_the_base_optimizer(kind, radius, optim_cls, kw):
    expected = plain_steps(4, optim_cls, **kw)
    got = wrapped_steps(4, kind, radius, optim_cls, **kw)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["wrf", "random", "sam", "asam"])
def test_perturbation_changes_the_update(kind):
    expected = plain_steps(2, torch.optim.SGD, lr=0.1)
    got = wrapped_steps(2, kind, 0.05, torch.optim.SGD, lr=0.1)
    assert any(not torch.allclose(a, b) for a, b in zip(expected, got, strict=True))


@pytest.mark.parametrize("kind", ["wrf", "random", "sam", "asam"])
def test_second_step_restores_the_saved_weights_before_the_base_update(kind):
    model = make_model()
    before = weights(model)
    # lr=0: the base update changes nothing, so what remains is the restore
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind=kind, radius=0.1, lr=0.0)
    x, y = batch()
    loss_fn(model, x, y).backward()
    opt.first_step(zero_grad=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    loss_fn(model, x, y).backward()
    opt.second_step()
    for a, b in zip(before, weights(model), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["wrf", "sam", "asam"])
def test_base_step_uses_the_gradient_at_the_perturbed_point(kind):
    """w_new = w - lr * g(w + e), with e computed from g(w)."""
    model = make_model()
    ref = copy.deepcopy(model)
    lr = 0.5
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind=kind, radius=0.05, lr=lr)
    x, y = batch()
    opt.step(closure_for(model, opt, x, y))

    loss_fn(ref, x, y).backward()
    pairs = [(p, 0.05) for p in ref.parameters() if p.ndim >= 2]
    e = compute_perturbation(kind, pairs)
    with torch.no_grad():
        for (p, _), d in zip(pairs, e, strict=True):
            p.add_(d)
    ref.zero_grad()
    loss_fn(ref, x, y).backward()
    with torch.no_grad():
        for (p, _), d in zip(pairs, e, strict=True):
            p.sub_(d)
        for p in ref.parameters():
            p.sub_(lr * p.grad)
    for a, b in zip(weights(ref), weights(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_wrf_moves_each_tensor_by_gamma_times_its_norm_along_its_gradient():
    model = make_model()
    gamma = 3e-3
    opt = PerturbedOptimizer(model.parameters(), torch.optim.AdamW, kind="wrf", radius=gamma,
                             lr=1e-3)
    x, y = batch()
    loss_fn(model, x, y).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.first_step()
    for n, p in model.named_parameters():
        delta = p.detach() - before[n]
        if p.ndim < 2:  # biases and norm gains are not perturbed
            assert torch.equal(delta, torch.zeros_like(delta)), n
            continue
        expected_len = gamma * before[n].norm()
        torch.testing.assert_close(delta.norm(), expected_len, rtol=1e-4, atol=0)
        cos = torch.dot(delta.flatten(), grads[n].flatten()) / (delta.norm() * grads[n].norm())
        assert cos.item() == pytest.approx(1.0, abs=1e-5), n
    opt.second_step()


def test_sam_moves_the_whole_set_by_rho():
    model = make_model()
    rho = 0.05
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="sam", radius=rho, lr=0.1)
    x, y = batch()
    loss_fn(model, x, y).backward()
    before = weights(model)
    opt.first_step()
    deltas = [a - b for a, b in zip(weights(model), before, strict=True)]
    total = math.sqrt(sum(float(d.norm() ** 2) for d in deltas))
    assert total == pytest.approx(rho, rel=1e-5)
    # and only tensors with >= 2 dims moved
    for p, d in zip(model.parameters(), deltas, strict=True):
        assert (p.ndim >= 2) == bool(d.abs().sum() > 0)


def test_asam_scales_the_step_by_the_weight_magnitude():
    model = make_model()
    rho = 0.5
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="asam", radius=rho, lr=0.1)
    x, y = batch()
    loss_fn(model, x, y).backward()
    before = weights(model)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    # e = rho T^2 g / ||T g||: the T^-1-scaled step has length rho
    scaled = [(a - b) / b.abs() for a, b, p in zip(weights(model), before, model.parameters(),
                                                   strict=True) if p.ndim >= 2]
    length = math.sqrt(sum(float(s.norm() ** 2) for s in scaled))
    assert length == pytest.approx(rho, rel=1e-4)
    for a, b, g, p in zip(weights(model), before, grads, model.parameters(), strict=True):
        if p.ndim >= 2:
            direction = (a - b) / (b.abs() ** 2 * g)
            assert torch.allclose(direction, direction.flatten()[0].expand_as(direction),
                                  rtol=1e-3)


def test_random_is_one_pass_and_seeded():
    calls = []
    for seed in (0, 0, 1):
        model = make_model()
        opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="random",
                                 radius=0.01, lr=0.1, seed=seed)
        assert not opt.needs_second_pass and opt.perturbs_this_step
        n = 0

        def closure(model=model, opt=opt):
            nonlocal n
            n += 1
            opt.zero_grad()
            loss = loss_fn(model, *batch())
            loss.backward()
            return loss

        opt.step(closure)
        assert n == 1
        calls.append(weights(model))
    assert all(torch.equal(a, b) for a, b in zip(calls[0], calls[1], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(calls[0], calls[2], strict=True))


@pytest.mark.parametrize("kind", ["wrf", "sam", "asam"])
def test_gradient_kinds_take_two_passes(kind):
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind=kind, radius=0.01, lr=0.1)
    assert opt.needs_second_pass
    n = 0

    def closure():
        nonlocal n
        n += 1
        opt.zero_grad()
        loss = loss_fn(model, *batch())
        loss.backward()
        return loss

    opt.step(closure)
    assert n == 2


def test_perturb_every_perturbs_only_every_kth_step():
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="wrf", radius=0.01,
                             lr=0.1, perturb_every=3)
    seen = []
    for _ in range(7):
        seen.append(opt.needs_second_pass)
        opt.step(closure_for(model, opt, *batch()))
    assert seen == [True, False, False, True, False, False, True]


def test_step_without_closure_refuses_to_silently_skip_the_perturbation():
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="wrf", radius=0.01, lr=0.1)
    loss_fn(model, *batch()).backward()
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_groups_marked_not_perturbed_stay_put():
    model = make_model()
    first, last = model[0], model[3]
    opt = PerturbedOptimizer(
        [{"params": first.parameters(), "perturb": False}, {"params": last.parameters()}],
        torch.optim.SGD, kind="wrf", radius=0.1, lr=0.1)
    loss_fn(model, *batch()).backward()
    w_first, w_last = first.weight.detach().clone(), last.weight.detach().clone()
    opt.first_step()
    assert torch.equal(first.weight, w_first)
    assert not torch.equal(last.weight, w_last)
    opt.second_step()


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_keeps_the_base_moments_and_continues_identically(kind):
    def run(split: bool) -> list[torch.Tensor]:
        model = make_model()
        opt = PerturbedOptimizer(model.parameters(), torch.optim.AdamW, kind=kind, radius=0.01,
                                 lr=1e-2, perturb_every=2, seed=3)
        for i in range(3):
            opt.step(closure_for(model, opt, *batch(i)))
        if split:
            state = copy.deepcopy(opt.state_dict())
            assert state["base"]["state"], "AdamW moments missing from the state dict"
            model2 = make_model(seed=99)
            model2.load_state_dict(model.state_dict())
            model = model2
            opt = PerturbedOptimizer(model.parameters(), torch.optim.AdamW, kind=kind,
                                     radius=0.01, lr=1e-2, perturb_every=2, seed=3)
            opt.load_state_dict(state)
            moments = [s["exp_avg"] for s in opt.base_optimizer.state.values()]
            assert moments and all(m.abs().sum() > 0 for m in moments)
        for i in range(3, 6):
            opt.step(closure_for(model, opt, *batch(i)))
        return weights(model)

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)


def test_lr_scheduler_drives_the_base_optimizer():
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="wrf", radius=0.01, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    opt.step(closure_for(model, opt, *batch()))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


def test_perturbed_context_restores_exactly():
    model = make_model()
    before = weights(model)
    params = [(p, 0.1) for p in model.parameters() if p.ndim >= 2]
    with perturbed(params, "random", torch.Generator().manual_seed(0)):
        assert any(not torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    for a, b in zip(before, weights(model), strict=True):
        assert torch.equal(a, b)


def test_zero_gradient_tensors_are_not_perturbed_and_nothing_is_nan():
    model = make_model()
    opt = PerturbedOptimizer(model.parameters(), torch.optim.SGD, kind="wrf", radius=0.1, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = weights(model)
    opt.first_step()
    for a, b in zip(before, weights(model), strict=True):
        assert torch.equal(a, b)
    opt.second_step()


@pytest.mark.parametrize("bad", [{"kind": "adversarial"}, {"radius": -1e-3},
                                 {"radius": float("nan")}, {"perturb_every": 0}])
def test_bad_arguments_are_rejected(bad):
    args = {"kind": "wrf", "radius": 1e-3, **bad}
    with pytest.raises(ValueError):
        PerturbedOptimizer(make_model().parameters(), torch.optim.SGD, lr=0.1, **args)
