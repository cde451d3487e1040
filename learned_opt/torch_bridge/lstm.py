"""``lstm`` (Andrychowicz et al. 2016) in torch: ``learned_opt.lstm``'s step.

Every coordinate is one row of a stacked LSTM shared by all coordinates, with its own hidden
and cell states. With ``P = preprocess_p`` and ``lr`` the group's learning rate (default: the
config's ``output_scale``):

    x_i   = (log|g_i| / P, sign g_i)   if |g_i| >= e^-P,   else (-1, e^P g_i)
            (then the DMD channels of coordinate i, with dmd_window > 0)
    h^0   = x;   (h^l, c^l) <- LSTM_l(h^{l-1}, (h^l, c^l))   for l = 1..num_layers
    step_i = lr * (h^L w_out + b_out)

The JAX step runs all coordinates of all tensors as one batch; the rows never interact, so
the bridge runs one batch per tensor, its state ``h``, ``c`` of shape
``(num_layers, numel, hidden_size)`` (coordinates in the haiku layout's row-major order).
The step does not depend on the layout. The loss is not read.
"""
from __future__ import annotations

import math

import torch

from learned_opt.lstm import LSTM
from learned_opt.torch_bridge import ops
from learned_opt.torch_bridge.rule import Rule, Slot

F32 = torch.float32


def preprocess_gradient(g: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """``lstm.preprocess_gradient``: ``g.shape + (2,)``."""
    g = g.to(F32)
    a = g.abs()
    big = a >= math.exp(-p)
    log_a = torch.log(torch.where(big, a, torch.ones_like(a)))
    first = torch.where(big, log_a / p, torch.full_like(a, -1.0))
    second = torch.where(big, torch.sign(g), math.exp(p) * g)
    return torch.stack([first, second], dim=-1)


class LSTMRule(Rule):
    architecture = "lstm"
    jax_class = LSTM

    @property
    def nominal_lr(self) -> float:
        return float(self.config.output_scale)

    def init_state(self, p):
        cfg = self.config
        zeros = torch.zeros((cfg.num_layers, p.numel(), cfg.hidden_size), dtype=F32, device=p.device)
        return {"step": 0, "h": zeros, "c": zeros.clone()}

    def tensor_step(self, slot: Slot) -> torch.Tensor:
        cfg = self.config
        theta = self.theta(slot.p.device)
        x = preprocess_gradient(slot.g.reshape(-1), cfg.preprocess_p)
        tail = self.dmd_inputs(slot)
        if tail is not None:
            x = torch.cat([x, tail.reshape(-1, tail.shape[-1])], dim=-1)
        hs, cs = [], []
        for layer in range(cfg.num_layers):
            x, c = ops.lstm_cell(theta["lstm"][f"layer_{layer}"], x, slot.state["h"][layer],
                                 slot.state["c"][layer])
            hs.append(x)
            cs.append(c)
        out = ops.linear(theta["head"], x)[:, 0]
        slot.state.update(step=slot.step + 1, h=torch.stack(hs), c=torch.stack(cs))
        return (slot.lr * out).reshape(slot.p.shape)


__all__ = ["LSTMRule", "preprocess_gradient"]
