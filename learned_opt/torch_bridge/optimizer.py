"""The ``torch.optim.Optimizer`` that runs a learned step on torch tensors.

    opt = LearnedOptim.from_checkpoint("general", model.parameters(), num_steps=1000)
    for batch in data:
        opt.zero_grad()
        loss = loss_fn(model(batch))
        loss.backward()
        opt.step(loss=loss)            # the loss is read by rnn_mlp only; harmless otherwise

One ``step`` is JAX's ``opt_update(theta, state, grads, params, loss)`` on the tensors that
have a gradient: each parameter ``P`` and its gradient are read in haiku layout ``H``
(``learned_opt.torch_bridge.layout``: ``(out, in, *k) -> (*k, in, out)`` for ``ndim >= 2``,
unless the group says ``layout="haiku"``), the architecture's :class:`~.rule.Rule` computes
the step ``u`` on ``H`` in float32, and ``P <- P - u`` (permuted back, cast to ``P``'s dtype;
state stays float32, as in JAX, also across ``load_state_dict``).

Per-parameter-group options: ``lr`` (default: the architecture's step constant, so the step
is JAX's; a scheduler scales the step by ``lr / default``), ``num_steps`` (the run's length,
0 = unknown: ``norm_mlp``'s fraction-of-training input; ignored by the others), ``layout``,
``role`` (a muP role of ``learned_opt.mup.ROLES`` for every tensor of the group, read by
``norm_mlp``: ``role="input"`` for embedding tables). Built from ``model.named_parameters()``
(torch >= 2.6 keeps the names), a tensor whose name contains one of the config's
``input_names`` (``general``: ``"embed"``) is an input weight without saying so, as in JAX.

A parameter whose ``.grad`` is None is skipped, as torch's optimizers skip it, and its state
does not advance; ``rnn_mlp``, whose step couples all tensors, instead requires a gradient
for every parameter.
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable

import torch

from learned_opt import mup
from learned_opt.base import LearnedOptimizer
from learned_opt.errors import LearnedOptError
from learned_opt.torch_bridge import layout as L
from learned_opt.torch_bridge.registry import make_rule
from learned_opt.torch_bridge.rule import Rule, Slot


class LearnedOptim(torch.optim.Optimizer):
    """A learned optimizer of this project as a torch optimizer; build it with
    :meth:`from_checkpoint` (a checkpoint path or a shipped name) or :meth:`from_lopt`."""

    def __init__(self, params: Iterable, rule: Rule, lr: float | None = None,
                 num_steps: int | None = None, layout: str = "torch"):
        if not isinstance(rule, Rule):
            raise LearnedOptError(f"rule must be a torch_bridge Rule, got {type(rule).__name__}; "
                                  "use LearnedOptim.from_checkpoint(...)")
        lr = rule.nominal_lr if lr is None else float(lr)
        if not lr > 0:
            raise LearnedOptError(f"lr must be a positive number, got {lr}")
        if num_steps is not None and (not isinstance(num_steps, numbers.Integral) or num_steps < 0):
            raise LearnedOptError(f"num_steps must be None or an int >= 0, got {num_steps!r}")
        self.rule = rule
        super().__init__(params, {"lr": lr, "num_steps": int(num_steps or 0),
                                  "layout": L.check_layout(layout)})

    @classmethod
    def from_lopt(cls, lopt: LearnedOptimizer, theta, params: Iterable, **kwargs) -> "LearnedOptim":
        """From an optimizer object and its theta (e.g. ``learned_opt.make(...)``, ``lopt.init``)."""
        return cls(params, make_rule(lopt, theta), **kwargs)

    @classmethod
    def from_checkpoint(cls, path_or_name: str, params: Iterable, num_steps: int | None = None,
                        lr: float | None = None, layout: str = "torch") -> "LearnedOptim":
        """From a checkpoint written by ``learned_opt.save`` or a shipped optimizer's name
        (``learned_opt.shipped_names()``)."""
        import learned_opt
        loaded = learned_opt.load(path_or_name)
        return cls.from_lopt(loaded.lopt, loaded.theta, params, num_steps=num_steps, lr=lr,
                             layout=layout)

    @property
    def architecture(self) -> str:
        return self.rule.architecture

    def add_param_group(self, param_group: dict) -> None:
        if "layout" in param_group:
            L.check_layout(param_group["layout"])
        if param_group.get("role") is not None and param_group["role"] not in mup.ROLES:
            raise LearnedOptError(f"role must be one of {mup.ROLES} or None, got {param_group['role']!r}")
        super().add_param_group(param_group)

    def _role(self, group: dict, i: int) -> str | None:
        """The group's ``role``, else ``input`` when the i-th tensor's name contains one of the
        config's ``input_names`` (``mup.is_input_name``, as JAX reads a path), else None (by shape)."""
        if group.get("role") is not None:
            return group["role"]
        names = group.get("param_names")
        wanted = getattr(self.rule.config, "input_names", ())
        return "input" if names and mup.is_input_name([names[i]], wanted) else None

    @torch.no_grad()
    def step(self, closure: Callable | None = None, loss=None):
        """One learned step on every parameter with a gradient. ``loss`` (a tensor or number,
        the loss at the current parameters) or ``closure`` (re-evaluates it, under grad)
        supplies the loss to architectures that read it; returns the loss."""
        if closure is not None:
            if loss is not None:
                raise LearnedOptError("pass either closure or loss to step(), not both")
            with torch.enable_grad():
                loss = closure()
        loss_t = None
        if loss is not None:
            loss_t = torch.as_tensor(loss).detach().to(torch.float32).reshape(())
        elif self.rule.uses_loss:
            raise LearnedOptError(
                f"the {self.architecture} optimizer reads the loss: call step(loss=loss) with "
                "the loss at the current parameters (or step(closure))")

        slots, params, missing = [], [], []
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    missing.append(tuple(p.shape))
                    continue
                if p.grad.is_sparse:
                    raise LearnedOptError("the learned optimizers need dense gradients")
                h = L.to_haiku(p.detach().to(torch.float32), group["layout"])
                state = self.state[p]
                if not state:
                    state.update(self.rule.initial_state(h))
                slots.append(Slot(h, L.to_haiku(p.grad.detach().to(torch.float32), group["layout"]),
                                  state, group["lr"], group["num_steps"], self._role(group, i)))
                params.append((p, group["layout"]))
        if missing and self.rule.couples_tensors:
            raise LearnedOptError(
                f"the {self.architecture} optimizer steps all its tensors together, but "
                f"{len(missing)} parameter(s) have no gradient (shapes {missing[:5]}): give the "
                "optimizer only the parameters the loss depends on")
        steps = self.rule.step(slots, loss_t)
        for (p, layout), u in zip(params, steps):
            p.copy_((p.to(torch.float32) - L.from_haiku(u, layout)).to(p.dtype))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, keeping the state float32: torch casts floating state to each parameter's
        dtype; the learned step keeps its accumulators in float32 whatever the parameters'. A
        state whose tensors are not shaped as this optimizer keeps them (another architecture or
        config, or the bridge's layout before 2026-12-03) is refused with one line, before
        anything is loaded."""
        slots = [(p, g["layout"]) for g in self.param_groups for p in g["params"]]
        for i, saved in state_dict.get("state", {}).items():
            if not (isinstance(i, int) and 0 <= i < len(slots)) or not isinstance(saved, dict):
                continue
            p, layout = slots[i]
            want = self.rule.initial_state(L.to_haiku(p.detach().to(torch.float32), layout))
            for key, v in saved.items():
                w = want.get(key)
                if torch.is_tensor(v) and torch.is_tensor(w) and tuple(v.shape) != tuple(w.shape):
                    raise LearnedOptError(
                        f"state_dict: parameter {i}'s {key!r} has shape {tuple(v.shape)}, this "
                        f"{self.architecture} optimizer keeps {tuple(w.shape)} (a state saved by "
                        "another architecture, config or version of the bridge)")
        super().load_state_dict(state_dict)
        params = [p for p, _ in slots]
        for i, saved in state_dict["state"].items():
            if isinstance(i, int) and 0 <= i < len(params):
                p = params[i]
                self.state[p] = {k: v.detach().to(p.device).clone() if torch.is_tensor(v) else v
                                 for k, v in saved.items()}


__all__ = ["LearnedOptim"]
