"""Weight perturbation: WRF4CIR's adversarial step and its relatives, as an optimizer wrapper.

Notation (METHOD.md): weights ``w``, one weight tensor ``w_l``, loss gradient ``g = dL/dw``,
radius ``gamma`` (``rho`` for SAM/ASAM). One perturbed step is

1. forward/backward at ``w``                      -> ``g``
2. ``first_step``: save ``w``, move to ``w + e``   (``e`` below, per kind)
3. forward/backward at ``w + e``                  -> ``g'``
4. ``second_step``: copy ``w`` back, base optimizer steps with ``g'``.

==========  ==========================================================  ===========
kind        perturbation ``e``                                           radius
==========  ==========================================================  ===========
``none``    no perturbation: the base optimizer alone                     -
``wrf``     per tensor ``gamma * ||w_l|| * g_l / ||g_l||``                gamma
``random``  per tensor ``gamma * ||w_l|| * u_l / ||u_l||``, u ~ N(0, I)  gamma
``sam``     global ``rho * g / ||g||_2`` over all perturbed tensors       rho
``asam``    global ``rho * T^2 g / ||T g||_2`` with ``T = |w|``           rho
==========  ==========================================================  ===========

``random`` needs no gradient for its direction, so it perturbs *before* the single
forward/backward: one pass per step instead of two.

Which tensors are perturbed: those with ``p.ndim >= min_ndim`` (default 2: weight
matrices, conv kernels, embeddings; not biases or norm gains), that require grad, in
parameter groups whose ``perturb`` key is not False and whose ``radius`` is not 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

KINDS = ("none", "wrf", "random", "sam", "asam")
# kinds whose direction is built from the gradient at w, hence a second forward/backward
GRADIENT_KINDS = ("wrf", "sam", "asam")


def compute_perturbation(
    kind: str,
    params: Sequence[tuple[Tensor, float]],
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """The perturbation ``e`` for each ``(tensor, radius)`` pair, per the table above.

    Gradient kinds read ``p.grad`` (tensors without a gradient, or a zero one, get a zero
    ``e``). ``random`` draws from ``generator`` on the CPU, so a seeded generator gives the
    same directions on any device.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "none" or not params:
        return [torch.zeros_like(p) for p, _ in params]
    if kind in ("wrf", "random"):
        out = []
        for p, radius in params:
            if kind == "wrf":
                d = p.grad if p.grad is not None else torch.zeros_like(p)
            else:
                d = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                d = d.to(device=p.device, dtype=p.dtype)
            d_norm = d.norm()
            if d_norm == 0:
                out.append(torch.zeros_like(p))
                continue
            # layer-wise: the step length is gamma * ||w_l||, whatever the gradient's scale
            out.append(d * (radius * p.norm() / d_norm))
        return out
    # sam / asam: one global normalisation over every perturbed tensor
    adaptive = kind == "asam"
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p, _ in params]
    scaled = [(p.abs() * g if adaptive else g) for (p, _), g in zip(params, grads, strict=True)]
    total = torch.linalg.vector_norm(torch.stack([s.norm() for s in scaled]))
    if total == 0:
        return [torch.zeros_like(p) for p, _ in params]
    # ASAM: e = rho * T^2 g / ||T g||, with T g already in `scaled`
    return [
        (p.abs() * s if adaptive else s) * (radius / total)
        for (p, radius), s in zip(params, scaled, strict=True)
    ]


@contextlib.contextmanager
def perturbed(
    params: Sequence[tuple[Tensor, float]],
    kind: str,
    generator: torch.Generator | None = None,
) -> Iterator[None]:
    """Apply ``compute_perturbation`` inside the block, then copy the saved weights back.

    Used by the sharpness measurement; the optimizer below does the same in two calls.
    """
    with torch.no_grad():
        deltas = compute_perturbation(kind, params, generator)
        saved = [p.detach().clone() for p, _ in params]
        for (p, _), e in zip(params, deltas, strict=True):
            p.add_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), w in zip(params, saved, strict=True):
                p.copy_(w)


class PerturbedOptimizer(Optimizer):
    """Wrap a base optimizer with a weight-perturbation step (WRF, random, SAM, ASAM).

    Args:
        params: parameters or parameter groups. Groups may carry ``perturb`` (bool, default
            True) and ``radius`` (overrides the global one) keys.
        base_optimizer: the base optimizer class (e.g. ``torch.optim.AdamW``); it is built
            on the same parameter groups, so LR schedulers attached to this wrapper drive it.
        kind: one of ``KINDS``.
        radius: ``gamma`` for wrf/random, ``rho`` for sam/asam. ``0`` is the base optimizer.
        perturb_every: perturb on every k-th step only (the others are plain base steps).
        min_ndim: tensors with fewer dimensions are never perturbed.
        seed: seeds the generator of ``random`` directions (its state is checkpointed).
        **base_kwargs: passed to ``base_optimizer`` (lr, weight_decay, betas, ...).

    Use either ``step(closure)`` (closure: zero the grads, compute the loss, backward,
    return the loss), or by hand, asking ``needs_second_pass`` first::

        compute_loss().backward()
        if opt.needs_second_pass:
            opt.first_step(zero_grad=True)
            compute_loss().backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        kind: str = "wrf",
        radius: float = 1e-3,
        *,
        perturb_every: int = 1,
        min_ndim: int = 2,
        seed: int = 0,
        **base_kwargs: Any,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")
        if not (radius >= 0 and math.isfinite(radius)):
            raise ValueError(f"radius must be a finite number >= 0, got {radius}")
        if perturb_every < 1:
            raise ValueError(f"perturb_every must be >= 1, got {perturb_every}")
        super().__init__(params, dict(radius=radius, perturb=True, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of groups shared by both: schedulers and the base see the same lr.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.kind = kind
        self.perturb_every = perturb_every
        self.min_ndim = min_ndim
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_taken = 0  # base-optimizer updates so far; drives perturb_every
        self._saved: list[tuple[Tensor, Tensor]] = []

    # -- what the trainer asks -------------------------------------------------------
    @property
    def perturbs_this_step(self) -> bool:
        """Whether the coming step perturbs the weights at all."""
        if self.kind == "none" or self.steps_taken % self.perturb_every != 0:
            return False
        return any(g.get("perturb", True) and g["radius"] > 0 for g in self.param_groups)

    @property
    def needs_second_pass(self) -> bool:
        """Whether the coming step needs a second forward/backward (the capability flag)."""
        return self.kind in GRADIENT_KINDS and self.perturbs_this_step

    def perturbed_params(self) -> list[tuple[Tensor, float]]:
        """The ``(tensor, radius)`` pairs the perturbation applies to."""
        needs_grad = self.kind in GRADIENT_KINDS
        out = []
        for group in self.param_groups:
            if not group.get("perturb", True) or group["radius"] == 0:
                continue
            for p in group["params"]:
                if not p.requires_grad or p.ndim < self.min_ndim:
                    continue
                if needs_grad and p.grad is None:
                    continue
                out.append((p, float(group["radius"])))
        return out

    # -- the two half-steps ------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + e``. Gradient kinds read the gradient at ``w``."""
        if self._saved:
            raise RuntimeError("first_step called twice without second_step")
        params = self.perturbed_params()
        for (p, _), e in zip(params, compute_perturbation(self.kind, params, self.generator),
                             strict=True):
            self._saved.append((p, p.detach().clone()))
            p.add_(e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Copy ``w`` back (exactly, not by subtraction), then take the base step with ``g'``."""
        for p, w in self._saved:
            p.copy_(w)
        self._saved.clear()
        self.base_optimizer.step()
        self.steps_taken += 1
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One full update. Returns the closure's loss at ``w`` (at ``w + e`` for ``random``).

        Without a closure only a plain base step is possible, so a step that must perturb
        raises.
        """
        if not self.perturbs_this_step:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self.base_optimizer.step()
            self.steps_taken += 1
            return loss
        if closure is None:
            raise RuntimeError(
                f"a {self.kind!r} step needs a closure (or call first_step/second_step yourself)"
            )
        with torch.enable_grad():
            if self.needs_second_pass:
                loss = closure()
                self.first_step(zero_grad=True)
                closure()
            else:  # random: the direction needs no gradient, so one pass at w + e
                self.first_step()
                loss = closure()
        self.second_step()
        return loss

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's full state (e.g. AdamW moments) plus the wrapper's own."""
        return {
            "base": self.base_optimizer.state_dict(),
            "perturb": {
                "kind": self.kind,
                "steps_taken": self.steps_taken,
                "generator": self.generator.get_state(),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore what :meth:`state_dict` saved (the kind must match)."""
        own = state_dict["perturb"]
        if own["kind"] != self.kind:
            raise ValueError(f"checkpoint was saved with kind {own['kind']!r}, not {self.kind!r}")
        self.base_optimizer.load_state_dict(state_dict["base"])
        # loading rebuilds the base's group dicts; share them again
        self.param_groups = self.base_optimizer.param_groups
        self.steps_taken = int(own["steps_taken"])
        self.generator.set_state(own["generator"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and hence to this wrapper)."""
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key in ("radius", "perturb"):
            param_group.setdefault(key, self.defaults[key])
        self.base_optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return (f"PerturbedOptimizer(kind={self.kind!r}, radius={self.defaults['radius']}, "
                f"perturb_every={self.perturb_every}, base={self.base_optimizer!r})")
