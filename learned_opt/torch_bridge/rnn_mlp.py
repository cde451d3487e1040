"""``rnn_mlp`` (per-tensor LSTM + per-parameter MLP) in torch: ``learned_opt.rnn_mlp``'s step.

The only bridged architecture that reads the loss (``step(loss=...)``) and couples tensors:
all tensors with a gradient go through one LSTM batch, whose input averages the previous
hidden states of all of them. Per tensor j (haiku layout) with momenta already updated
(``m_k <- d_k m_k + (1 - d_k) g``), n its number of elements, ``eps = stat_eps``,
``a = stat_scale``, t the updates taken:

    S_j  = [a log(eps + mean|m_k|) (k = 1..K), a/2 log(eps^2 + mean g^2), a/2 log(eps^2 + mean p^2),
            a/2 log(eps^2 + sum g^2), a log max(n, 1), onehot(ndim = 0, 1, 2, >= 3),
            a clip(l_t - l_0), a clip(l_t - e_{t-1}), tanh(t / s - 1) (s in time_scales)]
    l_t  = log max(loss, eps);  l_0 = l_t at t = 0;  e_{-1} = l_0,  e_t = b e_{t-1} + (1 - b) l_t
    h_j, c_j = LSTM([S_j, mean_i h_i], (h_j, c_j))          (one batch over the tensors)
    ctx_j = h_j W_c + b_c;  s_j = exp(lr_mult * (h_j w_s + b_s))
    x     = normalize([g, p, m_1..m_K]) per channel, over the tensor
    d, m  = MLP([x, tanh(t / s - 1), ctx_j, DMD])            (time and context: constant channels;
                                                              DMD channels with dmd_window > 0)
    step  = (lr s_j) d exp(exp_mult m)                       (lr: the group's, default step_mult)

Every statistic is a mean or a sum over the tensor and ``ndim`` is the same in both layouts,
so the step does not depend on the layout. State per tensor: ``momenta``, the LSTM's ``h``
and ``c`` (``(lstm_hidden,)``), and the loss statistics ``log_loss0``, ``log_loss_ema``
(the same values in every tensor's state: they are the run's, kept per tensor so that the
state dict holds parameter-keyed entries only).
"""
from __future__ import annotations

import math

import torch

from learned_opt.errors import LearnedOptError
from learned_opt.rnn_mlp import RNNMLP
from learned_opt.torch_bridge import ops
from learned_opt.torch_bridge.rule import Rule, Slot

F32 = torch.float32


def tensor_statistics(g: torch.Tensor, p: torch.Tensor, m: torch.Tensor, cfg) -> torch.Tensor:
    """``rnn_mlp.tensor_statistics``: the ``(K + 8,)`` loss- and time-independent statistics."""
    n = int(g.numel())
    inv_n = 1.0 / max(n, 1)
    eps, a = cfg.stat_eps, cfg.stat_scale
    mean_abs_m = m.reshape(-1, m.shape[-1]).abs().sum(dim=0) * inv_n
    sum_g2 = torch.sum(g.square())
    sum_p2 = torch.sum(p.square())
    logs = torch.cat([
        torch.log(eps + mean_abs_m),
        torch.stack([0.5 * torch.log(eps ** 2 + sum_g2 * inv_n),
                     0.5 * torch.log(eps ** 2 + sum_p2 * inv_n),
                     0.5 * torch.log(eps ** 2 + sum_g2),
                     torch.tensor(math.log(max(n, 1)), dtype=F32, device=g.device)])])
    d = g.dim()
    onehot = torch.tensor([d == 0, d == 1, d == 2, d >= 3], dtype=F32, device=g.device)
    return torch.cat([a * logs, onehot])


def loss_statistics(loss: torch.Tensor, t: int, log_loss0: torch.Tensor,
                    log_loss_ema: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rnn_mlp.loss_statistics``: ``(features (2,), l_0, e_t)``."""
    ell = torch.log(torch.clamp(loss.to(F32), min=cfg.stat_eps))
    l0 = ell if t == 0 else log_loss0
    ema_prev = ell if t == 0 else log_loss_ema
    c = cfg.loss_clip
    feats = cfg.stat_scale * torch.stack([torch.clamp(ell - l0, -c, c),
                                          torch.clamp(ell - ema_prev, -c, c)])
    beta = cfg.loss_ema_decay
    return feats, l0, beta * ema_prev + (1.0 - beta) * ell


class RNNMLPRule(Rule):
    architecture = "rnn_mlp"
    jax_class = RNNMLP
    uses_loss = True
    couples_tensors = True

    @property
    def nominal_lr(self) -> float:
        return float(self.config.step_mult)

    def init_state(self, p):
        cfg = self.config
        dev = p.device

        def zeros(s):
            return torch.zeros(s, dtype=F32, device=dev)

        return {"step": 0, "momenta": zeros(p.shape + (len(cfg.decays),)),
                "h": zeros((cfg.lstm_hidden,)), "c": zeros((cfg.lstm_hidden,)),
                "log_loss0": zeros(()), "log_loss_ema": zeros(())}

    def step(self, slots: list[Slot], loss: torch.Tensor | None) -> list[torch.Tensor]:
        cfg = self.config
        if not slots:
            return []
        steps_taken = {s.step for s in slots}
        if len(steps_taken) > 1:
            raise LearnedOptError(
                f"rnn_mlp steps all its tensors together, but they have taken different numbers "
                f"of steps ({sorted(steps_taken)}): a parameter group added after the first step "
                "is not supported; build a new optimizer")
        t = slots[0].step
        dev = slots[0].p.device
        theta = self.theta(dev)
        tfeat = ops.time_features(t, cfg.time_scales, dev)
        pair = ops.decay_pair(cfg.decays, dev)
        first = slots[0].state
        loss_feats, l0, ema = loss_statistics(loss.to(dev), t, first["log_loss0"],
                                              first["log_loss_ema"], cfg)
        glob = torch.cat([loss_feats, tfeat])

        xs, momenta, rows = [], [], []
        tails = [self.dmd_inputs(s) for s in slots]
        for s in slots:
            m = ops.ema(s.state["momenta"], s.g, pair)
            xs.append(ops.normalize(ops.stack_channels(s.g, s.p, m), cfg.norm_eps))
            momenta.append(m)
            rows.append(torch.cat([tensor_statistics(s.g, s.p, m, cfg), glob]))
        stats = torch.stack(rows)
        h_prev = torch.stack([s.state["h"] for s in slots])
        c_prev = torch.stack([s.state["c"] for s in slots])
        hbar = torch.mean(h_prev, dim=0, keepdim=True).expand(len(slots), -1)
        h, c = ops.lstm_cell(theta["lstm"], torch.cat([stats, hbar], dim=-1), h_prev, c_prev)
        ctx = ops.linear(theta["context_head"], h)
        scales = torch.exp(cfg.lr_mult * ops.linear(theta["lr_head"], h)[:, 0])

        out = []
        for j, s in enumerate(slots):
            s.state.update(step=t + 1, momenta=momenta[j], h=h[j], c=c[j], log_loss0=l0,
                           log_loss_ema=ema)
            y = ops.mlp(theta["mlp"], xs[j], torch.cat([tfeat, ctx[j]]), tails[j])
            out.append(ops.lolv2_step(y, s.lr * scales[j], cfg.exp_mult))
        return out


__all__ = ["RNNMLPRule", "tensor_statistics", "loss_statistics"]
