"""``adafactor_mlp`` (small_fc_lopt) in torch: ``learned_opt.adafactor_mlp``'s step.

The decays are meta-parameters: ``1 - beta = clip(exp(x), 1 - max_decay, 1)`` for each of
theta's ``log_one_minus_{momentum,rms,adafactor}_decay(s)``. Per tensor ``p`` (haiku layout)
with gradient ``g``, t = its updates taken, ``lr`` the group's learning rate (default: the
config's ``step_mult``), every accumulator updated with this g first:

    m_k <- b^m_k m_k + (1 - b^m_k) g              v <- b^v v + (1 - b^v) g^2
    a    = g^2 + 1e-30
    ndim >= 2 (rows = axis -2, columns = axis -1, leading axes batch):
      r_k <- b^f_k r_k + (1 - b^f_k) mean_cols(a)   c_k <- b^f_k c_k + (1 - b^f_k) mean_rows(a)
      vhat_k = (r_k / max(mean_rows(r_k), 1e-30)) c_k^T
    ndim < 2: r_k <- b^f_k r_k + (1 - b^f_k) a, vhat_k = r_k, and r_k also stands for c_k
    u_k  = g * rsqrt(vhat_k + 1e-9)               f_k <- b^m_k f_k + (1 - b^m_k) u_k
    x    = normalize([g, p, m, v, m rsqrt(v + 1e-6), rsqrt(v + 1e-6), u, r, c,
                      rsqrt(r + 1e-8), rsqrt(c + 1e-8), f])        (4 + 8K channels)
    d, m = MLP([x, tanh(t / s - 1) for s in time_scales, DMD])    (DMD with dmd_window > 0)
    step = lr * d * exp(exp_mult * m)

The factoring reads the layout: on the haiku view a torch ``Linear`` weight ``(out, in)`` has
rows = inputs and columns = outputs, and a ``Conv2d`` weight ``(out, in, kh, kw)`` is factored
as ``(kh, kw)`` batches of ``(in, out)`` matrices, as JAX factors the haiku kernel.
"""
from __future__ import annotations

import torch

from learned_opt import features as JF
from learned_opt.adafactor_mlp import PRECOND_EPS, RMS_EPS, ROW_COL_EPS, AdafactorMLP
from learned_opt.torch_bridge import ops
from learned_opt.torch_bridge.rule import Rule, Slot

F32 = torch.float32
DECAY_KEYS = {"momentum": "log_one_minus_momentum_decays", "rms": "log_one_minus_rms_decay",
              "adafactor": "log_one_minus_adafactor_decays"}


def decays_from_log_one_minus(x: torch.Tensor, max_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``features.decays_from_log_one_minus``: ``(beta, 1 - beta)`` with
    ``1 - beta = clip(exp(x), 1 - max_decay, 1)``."""
    omd = torch.clamp(torch.exp(x.to(F32)), 1.0 - max_decay, 1.0)
    return 1.0 - omd, omd


class AdafactorMLPRule(Rule):
    architecture = "adafactor_mlp"
    jax_class = AdafactorMLP

    @property
    def nominal_lr(self) -> float:
        return float(self.config.step_mult)

    def prepare(self, theta, device):
        theta["decays"] = {name: decays_from_log_one_minus(theta[key], self.config.max_decay)
                           for name, key in DECAY_KEYS.items()}
        return theta

    def init_state(self, p):
        k = self.config.num_decays
        shape, dev = tuple(p.shape), p.device

        def zeros(s):
            return torch.zeros(s, dtype=F32, device=dev)

        if JF.is_factored(shape):
            row, col = zeros(shape[:-1] + (k,)), zeros(shape[:-2] + shape[-1:] + (k,))
        else:
            row, col = zeros(shape + (k,)), zeros((0,))
        return {"step": 0, "momenta": zeros(shape + (k,)), "rms": zeros(shape + (1,)),
                "row": row, "col": col, "fac_momenta": zeros(shape + (k,))}

    def tensor_step(self, slot: Slot) -> torch.Tensor:
        cfg = self.config
        g, p, st, dev = slot.g, slot.p, slot.state, slot.p.device
        theta = self.theta(dev)
        dec = theta["decays"]
        factored = JF.is_factored(tuple(g.shape))
        tfeat = ops.time_features(slot.step, cfg.time_scales, dev)
        tail = self.dmd_inputs(slot)

        m = ops.ema(st["momenta"], g, dec["momentum"])
        v = ops.ema(st["rms"], g.square(), dec["rms"])
        a = g.square() + JF.ADAFACTOR_EPS
        if factored:
            r = ops.ema(st["row"], a.mean(dim=-1), dec["adafactor"])
            c = ops.ema(st["col"], a.mean(dim=-2), dec["adafactor"])
            ratio = r / torch.clamp(r.mean(dim=-2, keepdim=True), min=1e-30)
            v_hat = ratio.unsqueeze(-2) * c.unsqueeze(-3)
            r_b, c_b = torch.broadcast_tensors(r.unsqueeze(-2), c.unsqueeze(-3))
        else:
            r, c = ops.ema(st["row"], a, dec["adafactor"]), st["col"]
            v_hat, r_b, c_b = r, r, r
        u = g.unsqueeze(-1) * torch.rsqrt(v_hat + PRECOND_EPS)
        fm = ops.ema(st["fac_momenta"], u, dec["momentum"])
        rs = torch.rsqrt(v + RMS_EPS)
        x = ops.stack_channels(g, p, m, v, m * rs, rs, u, r_b, c_b, torch.rsqrt(r_b + ROW_COL_EPS),
                               torch.rsqrt(c_b + ROW_COL_EPS), fm)
        x = ops.normalize(x, cfg.norm_eps)
        st.update(step=slot.step + 1, momenta=m, rms=v, row=r, col=c, fac_momenta=fm)
        out = ops.mlp(theta["mlp"], x, tfeat, tail)
        return ops.lolv2_step(out, slot.lr, cfg.exp_mult)


__all__ = ["AdafactorMLPRule", "decays_from_log_one_minus"]
