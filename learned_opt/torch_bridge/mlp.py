"""``mlp`` (LOLv2, Metz et al.) in torch: ``learned_opt.mlp``'s step.

Per tensor ``p`` with gradient ``g``, t = its updates taken, ``lr`` the group's learning rate
(default: the config's ``step_mult``):

    m_k   <- d_k m_k + (1 - d_k) g                          (decays d, updated first)
    x      = normalize([g, p, m_1..m_K])                    per channel, over the tensor
    d, m   = MLP([x, tanh(t / s - 1) for s in time_scales, DMD])   (time features: constant channels;
                                                            DMD channels with dmd_window > 0)
    step   = lr * d * exp(exp_mult * m)

Every input is per element or a mean over the whole tensor, so this step does not depend on
the layout; the bridge still reads it in haiku layout, like every architecture.
"""
from __future__ import annotations

import torch

from learned_opt.mlp import MLP
from learned_opt.torch_bridge import ops
from learned_opt.torch_bridge.rule import Rule, Slot


class MLPRule(Rule):
    architecture = "mlp"
    jax_class = MLP

    @property
    def nominal_lr(self) -> float:
        return float(self.config.step_mult)

    def init_state(self, p):
        k = len(self.config.decays)
        return {"step": 0, "momenta": torch.zeros(p.shape + (k,), dtype=torch.float32, device=p.device)}

    def tensor_step(self, slot: Slot) -> torch.Tensor:
        cfg = self.config
        dev = slot.p.device
        tfeat = ops.time_features(slot.step, cfg.time_scales, dev)
        tail = self.dmd_inputs(slot)
        m = ops.ema(slot.state["momenta"], slot.g, ops.decay_pair(cfg.decays, dev))
        x = ops.normalize(ops.stack_channels(slot.g, slot.p, m), cfg.norm_eps)
        slot.state.update(step=slot.step + 1, momenta=m)
        out = ops.mlp(self.theta(dev)["mlp"], x, tfeat, tail)
        return ops.lolv2_step(out, slot.lr, cfg.exp_mult)


__all__ = ["MLPRule"]
