"""``norm_mlp`` (the shipped ``general`` optimizer) in torch: ``learned_opt.norm_mlp``'s step.

Per tensor ``p`` (haiku layout) with gradient ``g``, t = its updates taken, N = the run's
length (0 = unknown), ``lr`` the group's learning rate (default: the config's ``lr``):

    m_k <- d_k m_k + (1 - d_k) g,   d = (beta1, *decays)        v <- beta2 v + (1 - beta2) g^2
    a    = (m_0 / (1 - beta1^(t+1))) / (sqrt(v / (1 - beta2^(t+1))) + 1e-8)
    x    = normalize([g, p, m_0.., sqrt(v), a])                 per channel, over the tensor
    tau  = [min(t / N, 1), 1] if N > 0 else [0, 0]
    r    = sqrt(mean(a^2));   c = [tau, r] if adam_scale or noise_input else tau
    c   <- [c, clip(log(sqrt(fan_in * mean(p^2))), -3, 3) if ndim >= 2 else 0]   (scale_input)
    d, m = MLP([x, c, DMD]) - MLP([0, c, 0])                 (DMD channels with dmd_window > 0)
    D    = nominal * x_a + d;   D <- NewtonSchulz(D)  (orthogonalize, matrices with both sides > 1)
    u    = D * rsqrt(1e-12 + mean(D^2))                         (normalize_output)
    u   <- r * u                                                (adam_scale)
    u   <- b^k * u     (k = noise_exponent(ndim) > 0; b = r, or min(|a|, 1) per parameter with noise_per_parameter)
    c_t  = f + (1 - f) (1 + cos(pi tau_0)) / 2 if N > 0 else 1  (f = cosine_floor)
    h_N  = (H / N)^q if 0 < H < N else 1        (H = trained_horizon, q = horizon_power)
    step = lr * h_N * c_t * s_mup * exp(max_log_scale * tanh(mean(m))) * u * [x_g != 0 somewhere]
           + lr * weight_decay * p                              (ndim >= 2)
    ell <- clip(ell + beta cos(x_g, last step), -B, B); step <- exp(ell) step
                            (hypergrad beta > 0, B = hypergrad_bound; ndim >= 2; ell starts at 0;
                             ell in [0, B] with hypergrad_grow_only)
    ell <- clip(ell + beta_v cos(x_g, last step), -B, 0)    (vectors: beta_v = hypergrad_vectors)

with ``s_mup = q^mup_power``, ``q = mup_base_fan_in / prod(shape[:-1])`` (``max(q, q^mup_power)`` with
``mup_power_wide_only``) for ndim >= 2 (1 otherwise; 1
everywhere with ``mup=False``); a tensor of role ``input`` (``Slot.role``: the group's ``role``, or a name
containing one of ``input_names``) has ``s_mup = 1`` and is not orthogonalised. Read on the
haiku layout, ``prod(shape[:-1])`` is a torch ``Linear``'s
``in_features`` and a ``Conv2d``'s ``in_channels * kh * kw``; Newton-Schulz orthogonalises
``(prod(shape[:-1]), shape[-1])``. As in JAX the network runs channels first
(:meth:`NormMLPRule.network`): the raw channels are stacked on a leading axis ``(C, N)`` (the
momenta are kept as ``(K,) + shape``), the per-channel normalisation is folded into the first
layer's rows and c into its bias ``c W_c + b_0`` (which is also the subtracted ``MLP([0, c, 0])``'s
first pre-activation), and each layer is ``W^T h + b``; whole-tensor means of squares are dot
products. Eager torch writes every intermediate, so this order matters more than in XLA: the
channels-last step was 1.7x slower on a 400k-parameter MLP (``benchmarks/torch_bridge.py``).
"""
from __future__ import annotations

import torch

from learned_opt import mup
from learned_opt.norm_mlp import SCALE_BOUND, NormMLP
from learned_opt.torch_bridge import ops
from learned_opt.torch_bridge.rule import Rule, Slot

F32 = torch.float32


def fraction_features(t: int, num_steps: int, device=None) -> torch.Tensor:
    """``norm_mlp.fraction_features``: ``[min(t / N, 1), 1]`` if ``N > 0`` else ``[0, 0]``."""
    if num_steps <= 0:
        return torch.zeros(2, dtype=F32, device=device)
    frac = torch.tensor(float(t), dtype=F32, device=device) / torch.tensor(
        float(max(num_steps, 1)), dtype=F32, device=device)
    return torch.stack([torch.clamp(frac, max=1.0), torch.ones((), dtype=F32, device=device)])


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """``mup.newton_schulz``: the quintic iteration on ``(prod(shape[:-1]), shape[-1])``,
    on the transpose when it has more rows than columns."""
    if g.dim() < 2:
        return g
    shape = g.shape
    x = g.reshape(-1, shape[-1]).to(F32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (torch.linalg.norm(x) + eps)
    a, b, c = mup.NS_COEFFS
    for _ in range(int(steps)):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    if tall:
        x = x.T
    return x.reshape(shape)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """``mean(x^2)`` over the whole tensor, as one dot product (no ``x^2`` written)."""
    flat = x.reshape(-1)
    return torch.dot(flat, flat) / flat.numel()


class NormMLPRule(Rule):
    architecture = "norm_mlp"
    jax_class = NormMLP

    @property
    def nominal_lr(self) -> float:
        return float(self.config.lr)

    @property
    def decays(self) -> tuple[float, ...]:
        return (self.config.beta1, *self.config.decays)

    def init_state(self, p):
        k = len(self.decays)
        state = {"step": 0,
                 "momenta": torch.zeros((k,) + tuple(p.shape), dtype=F32, device=p.device),
                 "v": torch.zeros(p.shape, dtype=F32, device=p.device)}
        if self.config.uses_hypergrad:
            state.update(log_scale=torch.zeros((), dtype=F32, device=p.device),
                         prev_step=torch.zeros(p.shape, dtype=F32, device=p.device))
        return state

    def network(self, mlp: dict, x: torch.Tensor, scale: torch.Tensor,
                const: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d, m)`` of one tensor, each ``(N,)``, from its raw channels ``x`` ``(C, N)`` (the
        per-parameter ones, then any DMD ones) and their normalisation ``scale`` ``(C,)``: the
        network channels first, the scales folded into the first layer's rows and the constant
        channels into its bias (as ``NormMLP.network``), minus its value at zero inputs."""
        a = self.config.num_per_parameter
        w0, b0 = mlp["linear_0"]["w"], mlp["linear_0"]["b"]
        b = a + const.shape[0]
        w_x = torch.cat([w0[:a], w0[b:]]) * scale[:, None]
        bias = const @ w0[a:b] + b0
        h = torch.addmm(bias[:, None], w_x.T, x)
        zero = bias
        for i in range(1, len(mlp)):
            layer = mlp[f"linear_{i}"]
            h = torch.addmm(layer["b"][:, None], layer["w"].T, torch.relu_(h))
            zero = torch.relu(zero) @ layer["w"] + layer["b"]
        out = h - zero[:, None]
        return out[0], out[1]

    def tensor_step(self, slot: Slot) -> torch.Tensor:
        cfg = self.config
        g, p, st, dev = slot.g, slot.p, slot.state, slot.p.device
        t = slot.step
        t1 = torch.tensor(float(t + 1), dtype=F32, device=dev)
        c1 = 1.0 - torch.pow(torch.tensor(cfg.beta1, dtype=F32, device=dev), t1)
        c2 = 1.0 - torch.pow(torch.tensor(cfg.beta2, dtype=F32, device=dev), t1)
        tau = fraction_features(t, slot.num_steps, dev)
        tail = self.dmd_inputs(slot)

        g = g.to(F32)
        m = ops.ema(st["momenta"], g, ops.decay_pair(self.decays, dev), channels_first=True)
        v = ops.ema(st["v"][None], g.square(), ops.decay_pair((cfg.beta2,), dev), channels_first=True)[0]
        sqrt_v = torch.sqrt(v)
        a = (m[0] / c1) / (torch.sqrt(v / c2) + 1e-8)
        r = torch.sqrt(mean_square(a)) if a.numel() else torch.zeros((), dtype=F32, device=dev)
        const = torch.cat([tau, r[None]]) if cfg.r_input else tau
        if cfg.scale_input:     # sigma: the matrix's log scale against 1/sqrt(fan_in), 0 for vectors
            sigma = torch.zeros((), dtype=F32, device=dev)
            if p.dim() >= 2 and p.numel():
                ms = mup.fan_in(tuple(p.shape)) * mean_square(p.to(F32))
                sigma = torch.clamp(0.5 * torch.log(torch.clamp(ms, min=1e-30)), -SCALE_BOUND, SCALE_BOUND)
            const = torch.cat([const, sigma[None]])
        st.update(step=t + 1, momenta=m, v=v)
        if p.numel() == 0:
            return torch.zeros_like(p)

        n = g.numel()
        x = torch.cat([g.reshape(1, n), p.to(F32).reshape(1, n), m.reshape(-1, n),
                       sqrt_v.reshape(1, n), a.reshape(1, n)])     # (C, N): raw channels
        scale = torch.rsqrt(cfg.norm_eps + torch.linalg.vector_norm(x, dim=1).square() / n)
        if tail is not None:    # DMD channels, not normalised
            x = torch.cat([x, tail.reshape(n, -1).T])
            scale = torch.cat([scale, torch.ones(tail.shape[-1], dtype=F32, device=dev)])
        d, mm = self.network(self.theta(dev)["mlp"], x, scale, const)
        i_a = cfg.num_per_parameter - 1
        D = cfg.nominal * (a * scale[i_a]) + d.reshape(p.shape)
        if (cfg.orthogonalize and slot.role != "input" and D.dim() >= 2
                and min(mup.fan_in(D.shape), D.shape[-1]) > 1):
            D = newton_schulz(D, cfg.ns_steps)
        u = D * torch.rsqrt(1e-12 + mean_square(D)) if cfg.normalize_output else D
        if cfg.adam_scale:
            u = u * r
        k = cfg.noise_exponent(p.dim())
        if k > 0:
            base = r
            if cfg.noise_per_parameter:   # each |a_i| (Adam's direction), at most 1
                base = torch.clamp(a.abs(), max=1.0)
            u = u * torch.pow(torch.clamp(base, min=1e-12), k)
        gg = torch.dot(g.reshape(-1), g.reshape(-1))
        live = (gg > 0).to(F32)
        mag = torch.exp(cfg.max_log_scale * torch.tanh(torch.mean(mm)))
        if cfg.cosine_floor < 1.0 and float(tau[1]) > 0:
            f = cfg.cosine_floor
            mag = mag * (f + (1.0 - f) * 0.5 * (1.0 + torch.cos(torch.pi * tau[0])))
        scale_mup = (mup.step_scale(tuple(p.shape), cfg.mup_base_fan_in, slot.role, cfg.mup_power,
                                    cfg.mup_power_wide_only) if cfg.mup else 1.0)
        H, n_steps = cfg.trained_horizon, slot.num_steps
        horizon = (torch.pow(torch.tensor(H, dtype=F32) / torch.tensor(n_steps, dtype=F32),
                             cfg.horizon_power) if 0 < H < n_steps else 1.0)
        step = ((slot.lr * scale_mup) * horizon) * mag * live * u
        if cfg.weight_decay and p.dim() >= 2:
            step = step + slot.lr * cfg.weight_decay * p
        beta, lo, hi = cfg.hypergrad_limits(p.dim())
        if beta > 0:
            prev = st["prev_step"]
            g1, p1 = g.reshape(-1), prev.reshape(-1)
            cos = torch.dot(g1, p1) * torch.rsqrt(torch.clamp(gg * torch.dot(p1, p1), min=1e-30))
            ell = torch.clamp(st["log_scale"] + beta * cos, lo, hi)
            step = step * torch.exp(ell)
            st.update(log_scale=ell, prev_step=step.detach().clone())
        return step


__all__ = ["NormMLPRule", "fraction_features", "newton_schulz"]
