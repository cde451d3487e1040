"""The interface between the torch optimizer and one architecture's step.

A :class:`Rule` is one architecture's ``opt_update`` rewritten in torch. The optimizer hands
it, per step, one :class:`Slot` per parameter tensor that has a gradient: the parameter and
its gradient in haiku layout (``learned_opt.torch_bridge.layout``), float32, and the tensor's
state dict (``optimizer.state[p]``, also in haiku layout). The rule returns each tensor's
step ``u`` (haiku layout, float32; the optimizer applies ``p <- p - u``) and replaces the
entries of the state dicts with their new values; it never modifies a tensor in place, so
a ``state_dict()`` taken earlier stays valid.

With DMD features on (``dmd_window > 0``), every tensor's state also holds its gradient window
``"dmd"`` (``learned_opt.torch_bridge.dmd``), pushed and read by :meth:`Rule.dmd_inputs`; the
architectures append those channels where JAX's ``concat_inputs`` does (last).

The count of updates a tensor has taken is its state's ``"step"`` (an int, as in
``torch.optim.Adam``): JAX's ``state.iteration``. The group's ``lr`` stands where the JAX
step has its step-size constant (see :attr:`Rule.nominal_lr`); at its default the torch step
is the JAX step, and a learning-rate scheduler multiplies the whole step by
``lr / nominal_lr``, as ``optax.chain(tx, optax.scale_by_schedule(f))`` does in JAX.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from learned_opt.base import LearnedOptimizer
from learned_opt.torch_bridge import dmd, ops


@dataclasses.dataclass
class Slot:
    """One parameter tensor in one step (every tensor in haiku layout, float32)."""

    p: torch.Tensor
    g: torch.Tensor
    state: dict[str, Any]     # the tensor's optimizer state; the step replaces its entries
    lr: float                 # the group's learning rate (the architecture's step constant)
    num_steps: int            # the run's length, 0 when unknown
    role: str | None = None   # muP role (``mup.ROLES``); None: by shape (read by norm_mlp)

    @property
    def step(self) -> int:
        return int(self.state["step"])


class Rule:
    """One architecture's step in torch. Subclasses set ``architecture`` and ``jax_class``
    and implement :meth:`init_state` and either :meth:`tensor_step` (tensors stepped
    independently) or :meth:`step` (tensors coupled)."""

    architecture: ClassVar[str] = ""
    jax_class: ClassVar[type] = LearnedOptimizer
    uses_loss: ClassVar[bool] = False          # step() needs the loss
    couples_tensors: ClassVar[bool] = False    # every tensor must be stepped together

    def __init__(self, lopt: LearnedOptimizer, theta):
        self.config = lopt.config
        self._theta_host = theta
        self._theta: dict[torch.device, dict] = {}

    def theta(self, device: torch.device) -> dict:
        """theta as float32 torch tensors on ``device`` (converted once per device)."""
        if device not in self._theta:
            self._theta[device] = self.prepare(ops.tree_to_torch(self._theta_host, device), device)
        return self._theta[device]

    def prepare(self, theta: dict, device: torch.device) -> dict:
        """Hook: add derived constants (e.g. decays) to the converted theta."""
        return theta

    @property
    def nominal_lr(self) -> float:
        """The JAX step's step-size constant, the default of the group's ``lr``."""
        raise NotImplementedError

    def init_state(self, p: torch.Tensor) -> dict[str, Any]:
        """The architecture's state of tensor ``p`` (haiku layout) before its first step."""
        raise NotImplementedError

    @property
    def uses_dmd(self) -> bool:
        return bool(getattr(self.config, "dmd_window", 0))

    def initial_state(self, p: torch.Tensor) -> dict[str, Any]:
        """:meth:`init_state`, with the empty DMD window when DMD features are on."""
        state = self.init_state(p)
        if self.uses_dmd:
            state["dmd"] = dmd.init(p, self.config.dmd_window)
        return state

    def dmd_inputs(self, slot: Slot) -> torch.Tensor | None:
        """Push this step's gradient into the tensor's window (``slot.state["dmd"]``) and return
        its DMD channels ``p.shape + (2 dmd_rank + 2,)``; None when DMD is off. Call it before the
        state's ``"step"`` advances."""
        if not self.uses_dmd:
            return None
        window = dmd.push(slot.state["dmd"], slot.g)
        slot.state["dmd"] = window
        count = min(slot.step + 1, self.config.dmd_window)
        return dmd.tensor_features(window, count, self.config.dmd_rank)

    def tensor_step(self, slot: Slot) -> torch.Tensor:
        """The step of one tensor (haiku layout); advances ``slot.state``."""
        raise NotImplementedError

    def step(self, slots: list[Slot], loss: torch.Tensor | None) -> list[torch.Tensor]:
        """The steps of all tensors with a gradient this step."""
        return [self.tensor_step(s) for s in slots]


__all__ = ["Slot", "Rule"]
