"""The normalised per-parameter MLP ("norm_mlp") and its muP / Newton-Schulz helpers against their
formulas (numpy, float64). The shared contract is tests/test_architectures.py."""
import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import mup
from learned_opt.norm_mlp import NormMLP, NormMLPConfig, fraction_features
from oracles import G1, G2, KEY, P, np_mlp


def np_norm_mlp_step(theta, grads, p, t, n, cfg, scale):
    """The step of one tensor after gradients ``grads`` (last = this step's), at iteration t
    (updates already taken) of a run of n steps (0 = unknown): the module docstring in numpy."""
    decays = np.array((cfg.beta1, *cfg.decays))
    m = np.zeros(np.shape(p) + (len(decays),))
    v = np.zeros(np.shape(p))
    for g in grads:
        g = np.asarray(g, np.float64)
        m = decays * m + (1 - decays) * g[..., None]
        v = cfg.beta2 * v + (1 - cfg.beta2) * g ** 2
    g = np.asarray(grads[-1], np.float64)
    a = (m[..., 0] / (1 - cfg.beta1 ** (t + 1))) / (np.sqrt(v / (1 - cfg.beta2 ** (t + 1))) + 1e-8)
    raw = np.concatenate([g[..., None], np.asarray(p, np.float64)[..., None], m,
                          np.sqrt(v)[..., None], a[..., None]], axis=-1)
    axes = tuple(range(raw.ndim - 1))
    x = raw / np.sqrt(cfg.norm_eps + np.mean(raw ** 2, axis=axes, keepdims=True))
    tau = np.array([min(t / n, 1.0), 1.0]) if n > 0 else np.zeros(2)
    r = np.sqrt(np.mean(a ** 2))
    const = np.append(tau, r) if (cfg.adam_scale or cfg.noise_input) else tau   # r as an input
    if cfg.scale_input:   # sigma: the matrix's log scale against 1/sqrt(fan_in); 0 for vectors
        fan_in = np.prod(np.shape(p)[:-1]) if np.ndim(p) >= 2 else 0
        sigma = np.clip(0.5 * np.log(fan_in * np.mean(np.square(p))), -3, 3) if fan_in else 0.0
        const = np.append(const, sigma)
    inputs = np.concatenate([x, np.broadcast_to(const, np.shape(p) + const.shape)], axis=-1)
    d, mm = np_mlp(theta["mlp"], inputs)
    d0, m0 = np_mlp(theta["mlp"], np.concatenate([np.zeros(x.shape[-1]), const])[None])
    d, mm = d - d0[0], mm - m0[0]
    D = cfg.nominal * x[..., -1] + d
    u = D / np.sqrt(1e-12 + np.mean(D ** 2)) if cfg.normalize_output else D
    u = u * r if cfg.adam_scale else u
    k = cfg.noise_power_vectors if (np.ndim(p) < 2 and cfg.noise_power_vectors > 0) else cfg.noise_power
    base = np.minimum(np.abs(a), 1.0) if cfg.noise_per_parameter else r   # each |a_i|, or the tensor's r
    u = u * base ** k   # noise_power (vectors: noise_power_vectors if set): r^k, r not an input
    mag = np.exp(cfg.max_log_scale * np.tanh(np.mean(mm)))
    if n > 0:   # the built-in cosine over the run (1 with cosine_floor = 1)
        mag *= cfg.cosine_floor + (1 - cfg.cosine_floor) * 0.5 * (1 + np.cos(np.pi * min(t / n, 1.0)))
    if 0 < cfg.trained_horizon < n:   # past the meta-training horizon: (H / N)^q
        mag *= (cfg.trained_horizon / n) ** cfg.horizon_power
    step = cfg.lr * scale * mag * u * float(np.any(g != 0))
    if np.ndim(p) >= 2:
        step = step + cfg.lr * cfg.weight_decay * np.asarray(p, np.float64)
    return step


@pytest.mark.parametrize("n, normalize, adam_scale, floor, horizon, noise_power, noise_input, scale_input", [
    (0, True, False, 1.0, 0, 0.0, False, False), (8, True, False, 1.0, 0, 0.0, False, False),
    (8, False, False, 1.0, 0, 0.0, False, False), (8, True, True, 1.0, 0, 0.0, False, False),
    (3, True, False, 0.1, 0, 0.0, False, False), (0, True, False, 0.1, 0, 0.0, False, False),
    (8, True, False, 0.1, 2, 0.0, False, False), (8, True, False, 1.0, 8, 0.0, False, False),
    (0, True, False, 1.0, 2, 0.0, False, False), (8, True, False, 0.1, 0, 0.5, False, False),
    (0, False, False, 1.0, 0, 1.0, False, False), (8, True, False, 0.1, 0, 0.0, True, False),
    (8, True, False, 0.1, 0, 0.0, False, True), (8, True, True, 1.0, 0, 0.0, False, True)])
def test_step_equals_formula(n, normalize, adam_scale, floor, horizon, noise_power, noise_input,
                             scale_input):
    cfg = NormMLPConfig(output_init_scale=1.0, weight_decay=0.1, lr=0.01, max_log_scale=1.0,
                        normalize_output=normalize, adam_scale=adam_scale, cosine_floor=floor,
                        trained_horizon=horizon, horizon_power=0.7, noise_power=noise_power,
                        noise_input=noise_input, scale_input=scale_input)
    lopt = NormMLP(cfg)
    theta = jax.device_get(lopt.init(jax.random.PRNGKey(3)))
    state = lopt.opt_init(theta, P, n or None)
    update = jax.jit(lopt.opt_update)
    _, state = update(theta, state, G1, P, jnp.float32(0.0), KEY)
    new_p, state = update(theta, state, G2, P, jnp.float32(0.0), KEY)
    assert int(state.iteration) == 2 and int(state.num_steps) == n
    scales = dict(zip(sorted(P), mup.step_scales({k: P[k] for k in sorted(P)}, 32.0)))
    assert scales == {"b": 1.0, "s": 1.0, "w": 32.0 / 3}
    for k in P:
        want = P[k] - np_norm_mlp_step(theta, [G1[k], G2[k]], P[k], 1, n, cfg, scales[k])
        np.testing.assert_allclose(new_p[k], want, rtol=2e-4, atol=1e-6)


def test_cosine_floor_anneals_a_known_run_from_1_to_the_floor():
    """``cosine_floor``: the zero-network step is lr * c_t * normalised Adam, c_t a cosine from 1
    (first step) through (1 + f) / 2 (half way) to f (last step); a run of unknown length keeps 1."""
    from learned_opt.norm_mlp import cosine_factor
    lopt = NormMLP(NormMLPConfig(mup=False, cosine_floor=0.2, lr=0.01))
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    params = {"w": jnp.asarray(P["w"])}
    n = 11
    for num_steps, want in ((n, [1.0, 0.6, 0.2]), (None, [1.0, 1.0, 1.0])):
        state = lopt.opt_init(theta, params, num_steps)
        rms = []
        for t in range(n):
            new, state = lopt.opt_update(theta, state, {"w": jnp.asarray(G1["w"])}, params, 0.0, KEY)
            rms.append(float(jnp.sqrt(jnp.mean(jnp.square(new["w"] - params["w"])))) / 0.01)
        # t = 0, 5, 10 of 11 steps: tau = 0, 5/11, 10/11
        expect = [1.0 if num_steps is None else 0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * k / n))
                  for k in (0, 5, 10)]
        np.testing.assert_allclose([rms[0], rms[5], rms[10]], expect, rtol=1e-4)
    np.testing.assert_allclose(cosine_factor(jnp.array([0.5, 1.0]), 0.2), 0.6, rtol=1e-6)
    np.testing.assert_allclose(cosine_factor(jnp.array([1.0, 1.0]), 0.2), 0.2, rtol=1e-6)
    np.testing.assert_allclose(cosine_factor(jnp.array([0.0, 0.0]), 0.2), 1.0)


def test_horizon_factor_shrinks_only_runs_longer_than_the_trained_horizon():
    """``trained_horizon``: a known run of N > H steps takes every step times (H / N)^q; runs of
    at most H steps, runs of unknown length and H = 0 are unchanged."""
    from learned_opt.norm_mlp import horizon_factor
    np.testing.assert_allclose(horizon_factor(20000, 2000, 0.5), 10 ** -0.5, rtol=1e-6)
    np.testing.assert_allclose(horizon_factor(8000, 2000, 1.0), 0.25, rtol=1e-6)
    for n, h in ((2000, 2000), (100, 2000), (0, 2000), (20000, 0)):
        assert float(horizon_factor(n, h, 0.5)) == 1.0
    lopt = NormMLP(NormMLPConfig(mup=False, lr=0.01, trained_horizon=10, horizon_power=0.5))
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    params = {"w": jnp.asarray(P["w"])}
    rms = {}
    for n in (None, 10, 40):
        new, _ = lopt.opt_update(theta, lopt.opt_init(theta, params, n), {"w": jnp.asarray(G1["w"])},
                                 params, 0.0, KEY)
        rms[n] = float(jnp.sqrt(jnp.mean(jnp.square(new["w"] - params["w"])))) / 0.01
    np.testing.assert_allclose([rms[None], rms[10], rms[40]], [1.0, 1.0, 0.5], rtol=1e-4)


def test_fraction_features():
    np.testing.assert_allclose(fraction_features(25, 100), [0.25, 1.0])
    np.testing.assert_allclose(fraction_features(250, 100), [1.0, 1.0])
    np.testing.assert_allclose(fraction_features(25, 0), [0.0, 0.0])


def test_zero_gradient_tensor_does_not_move_and_untrained_rule_is_normalised_adam():
    """A tensor with an all-zero gradient keeps its values; an untrained optimizer with a zero
    network is Adam's direction normalised to RMS lr * s_mup per tensor."""
    lopt = NormMLP(NormMLPConfig(mup=False))
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    params = {"w": jnp.asarray(P["w"]), "z": jnp.asarray([1.0, -2.0])}
    grads = {"w": jnp.asarray(G1["w"]), "z": jnp.zeros(2)}
    new, _ = lopt.opt_update(theta, lopt.opt_init(theta, params), grads, params, 0.0, KEY)
    np.testing.assert_array_equal(new["z"], params["z"])
    step = np.asarray(params["w"] - new["w"], np.float64)
    np.testing.assert_allclose(np.sqrt(np.mean(step ** 2)), 1e-3, rtol=1e-4)
    adam = np.sign(G1["w"]) * (G1["w"] != 0)   # first Adam step: g / |g|
    np.testing.assert_allclose(step / 1e-3, adam / np.sqrt(np.mean(adam ** 2)), rtol=1e-4, atol=1e-6)


def test_adam_scaled_rule_with_a_zero_network_is_adam():
    """With ``adam_scale`` the normalised step gets the RMS of Adam's direction back: a zero
    network (no muP, no orthogonalisation) steps exactly as optax.adam over a whole run,
    including the noise-dominated phase where Adam's steps shrink."""
    lopt = NormMLP(NormMLPConfig(mup=False, adam_scale=True, lr=0.01))
    theta = jax.tree.map(jnp.zeros_like, lopt.init(KEY))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    adam = optax.adam(0.01, eps=1e-8)
    ours, ref = params, params
    s_ours, s_ref = lopt.opt_init(theta, params), adam.init(params)
    sizes = []
    for t in range(30):   # a consistent gradient, then pure noise
        g = {k: jnp.asarray(rng.normal(size=v.shape) + (3.0 if t < 10 else 0.0), jnp.float32)
             for k, v in params.items()}
        ours, s_ours = lopt.opt_update(theta, s_ours, g, ours, 0.0, KEY)
        upd, s_ref = adam.update(g, s_ref)
        new_ref = optax.apply_updates(ref, upd)
        sizes.append(float(jnp.sqrt(jnp.mean(jnp.square(new_ref["w"] - ref["w"])))))
        ref = new_ref
        for k in params:
            np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6)
    assert sizes[-1] < 0.6 * sizes[5]   # Adam's steps do shrink once noise dominates


def test_mup_scales_by_role_and_fan_in():
    shapes = {"emb": (784, 256), "h": (256, 512), "out": (512, 10), "b": (256,), "conv": (3, 3, 16, 32)}
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    auto = dict(zip(sorted(shapes), mup.step_scales(params, 64)))
    assert auto == {"b": 1.0, "conv": 64 / 144, "emb": 64 / 784, "h": 64 / 256, "out": 64 / 512}
    roles = {"emb": "input", "h": "hidden", "out": "output", "b": "vector", "conv": "hidden"}
    got = dict(zip(sorted(shapes), mup.step_scales(params, 64, roles)))
    assert got == {"b": 1.0, "conv": 64 / 144, "emb": 1.0, "h": 64 / 256, "out": 64 / 512}
    with pytest.raises(learned_opt.LearnedOptError, match="role"):
        mup.step_scale((3, 4), 8, "middle")
    # mup_power alpha: (base / fan_in)^alpha on hidden and output weights, 1 on inputs and vectors
    half = dict(zip(sorted(shapes), mup.step_scales(params, 64, roles, 0.5)))
    assert half == pytest.approx({"b": 1.0, "conv": (64 / 144) ** 0.5, "emb": 1.0,
                                  "h": (64 / 256) ** 0.5, "out": (64 / 512) ** 0.5})
    # wide_only: alpha only on tensors wider than the base; narrower ones keep muP's n0 / fan_in
    narrow = {"n": jnp.zeros((16, 8)), "w": jnp.zeros((128, 8)), "base": jnp.zeros((64, 3))}
    got = dict(zip(sorted(narrow), mup.step_scales(narrow, 64, None, 0.5, wide_only=True)))
    assert got == pytest.approx({"base": 1.0, "n": 4.0, "w": 0.5 ** 0.5})


def test_mup_power_rescales_only_matrix_steps_by_their_fan_in():
    """A rule with ``mup_power`` alpha takes the same steps as alpha = 1 times
    ``(n0 / fan_in)^(alpha - 1)`` on matrices and exactly the same steps on vectors."""
    theta = jax.device_get(NormMLP(NormMLPConfig()).init(jax.random.PRNGKey(3)))
    full, half = NormMLP(NormMLPConfig(lr=0.01)), NormMLP(NormMLPConfig(lr=0.01, mup_power=0.5))
    p_f, _ = full.opt_update(theta, full.opt_init(theta, P, 8), G1, P, 0.0, KEY)
    p_h, _ = half.opt_update(theta, half.opt_init(theta, P, 8), G1, P, 0.0, KEY)
    for k in P:
        f = mup.fan_in(np.shape(P[k]))
        factor = (32.0 / f) ** -0.5 if np.ndim(P[k]) >= 2 else 1.0
        np.testing.assert_allclose(np.asarray(P[k]) - p_h[k], factor * (np.asarray(P[k]) - p_f[k]),
                                   rtol=1e-5, atol=1e-8)
    assert any(np.ndim(P[k]) >= 2 and mup.fan_in(np.shape(P[k])) != 32 for k in P)
    with pytest.raises(learned_opt.LearnedOptError, match="mup_power"):
        NormMLPConfig(mup_power=1.5)
    # wide_only: the alpha factor only on matrices wider than the base, muP's steps elsewhere
    params = {"narrow": P["w"], "wide": np.tile(P["w"], (16, 1)), "b": P["b"]}   # fan-in 3 and 48
    grads = {"narrow": G1["w"], "wide": np.tile(G1["w"], (16, 1)), "b": G1["b"]}
    steps = {}
    for wide_only in (False, True):
        cfg = NormMLPConfig(lr=0.01, mup_power=0.5 if wide_only else 1.0, mup_power_wide_only=wide_only)
        lopt = NormMLP(cfg)
        new, _ = lopt.opt_update(theta, lopt.opt_init(theta, params, 8), grads, params, 0.0, KEY)
        steps[wide_only] = {k: np.asarray(params[k]) - np.asarray(new[k]) for k in params}
    for k, factor in {"narrow": 1.0, "wide": (32.0 / 48) ** -0.5, "b": 1.0}.items():
        np.testing.assert_allclose(steps[True][k], factor * steps[False][k], rtol=1e-5, atol=1e-8)


def test_roles_by_name_marks_embedding_tables_as_inputs():
    params = {"Token_Embed": {"w": jnp.zeros((97, 64))}, "lm/~/embed": {"embeddings": jnp.zeros((50, 8))},
              "core": {"u": jnp.zeros((16, 64)), "b": jnp.zeros(64)}, "out": [jnp.zeros((16, 97))]}
    roles = mup.roles_by_name(params, ("embed",))
    got = dict(zip([jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]],
                   roles))
    assert got == {"['Token_Embed']['w']": "input", "['core']['b']": "vector", "['core']['u']": "hidden",
                   "['lm/~/embed']['embeddings']": "input", "['out'][0]": "hidden"}
    assert mup.step_scales(params, 32, roles) == [1.0, 1.0, 2.0, 1.0, 2.0]
    assert mup.roles_by_name(params, ()) == ["hidden", "vector", "hidden", "hidden", "hidden"]


def test_named_input_weights_step_at_scale_1_and_are_not_orthogonalised():
    """``input_names``: the named tensor's step is the formula's at s_mup = 1 without Newton-Schulz
    (the numpy oracle has none); every other tensor's step is unchanged."""
    params = {"emb": jax.random.normal(KEY, (5, 4)), "w": jax.random.normal(KEY, (3, 4)), "b": jnp.ones(4)}
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p + 1.0), params)

    def steps(names):
        cfg = NormMLPConfig(output_init_scale=1.0, lr=0.01, orthogonalize=True, input_names=names)
        lopt = NormMLP(cfg)
        theta = jax.device_get(lopt.init(jax.random.PRNGKey(3)))
        new, _ = lopt.opt_update(theta, lopt.opt_init(theta, params, 8), grads, params,
                                 jnp.float32(0.0), KEY)
        return cfg, theta, {k: np.asarray(params[k] - new[k]) for k in params}

    cfg, theta, named = steps(("EMB",))
    _, _, plain = steps(())
    want = np_norm_mlp_step(theta, [grads["emb"]], params["emb"], 0, 8, cfg, 1.0)
    np.testing.assert_allclose(named["emb"], want, rtol=2e-4, atol=1e-7)
    for k in ("w", "b"):
        np.testing.assert_array_equal(named[k], plain[k])
    # unnamed, the table is a (5, 4) matrix: s = 32 / 5 and an orthogonalised step
    no_ns = np_norm_mlp_step(theta, [grads["emb"]], params["emb"], 0, 8, cfg, 32.0 / 5)
    assert np.max(np.abs(plain["emb"] - no_ns)) > 1e-3 * np.max(np.abs(no_ns))
    assert np.linalg.cond(plain["emb"]) < 1.8 < np.linalg.cond(named["emb"])


def test_width_transfer_of_the_update_scale():
    """muP's purpose: with the per-entry step s = n0 / fan_in, a hidden layer's output change
    under an aligned (rank-one) update is the same at every width; with s = 1 it grows ~ width."""
    def output_change(width, use_mup):
        rng = np.random.default_rng(0)
        h = rng.choice([-1.0, 1.0], size=width)            # O(1) activations
        d = np.outer(h, rng.choice([-1.0, 1.0], size=width))  # aligned update, RMS 1
        s = mup.step_scale((width, width), 32) if use_mup else 1.0
        return np.sqrt(np.mean((h @ (s * d)) ** 2))
    ratios_mup = output_change(1024, True) / output_change(64, True)
    ratios_sp = output_change(1024, False) / output_change(64, False)
    assert ratios_mup == pytest.approx(1.0) and ratios_sp == pytest.approx(16.0)


def test_newton_schulz_orthogonalises():
    g = jax.random.normal(KEY, (16, 48)) * jnp.linspace(0.01, 10.0, 48)
    for x in (g, g.T):
        sv = np.linalg.svd(np.asarray(mup.newton_schulz(x), np.float64), compute_uv=False)
        assert sv.min() > 0.6 and sv.max() < 1.25, sv
    # same singular vectors: the orthogonal factor U V^T, approximately
    u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    cos = np.sum(np.asarray(mup.newton_schulz(g)) * (u @ vt)) / (
        np.linalg.norm(np.asarray(mup.newton_schulz(g))) * np.linalg.norm(u @ vt))
    assert cos > 0.95
    np.testing.assert_array_equal(mup.newton_schulz(jnp.ones(3)), jnp.ones(3))


def test_learning_rate_schedule_composes_through_optax():
    """The step is lr times a normalised direction, so a schedule chained after it scales it."""
    lopt = NormMLP()
    theta = lopt.init(KEY)
    params = {k: jnp.asarray(v) for k, v in P.items()}
    grads = {k: jnp.asarray(v) for k, v in G1.items()}
    plain = lopt.as_optax(theta, 10)
    sched = optax.chain(lopt.as_optax(theta, 10), optax.scale_by_schedule(lambda c: 0.25))
    u1, _ = plain.update(grads, plain.init(params), params)
    u2, _ = sched.update(grads, sched.init(params), params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(b, 0.25 * np.asarray(a), rtol=1e-5, atol=1e-9)


def test_config_errors():
    for bad in ({"beta1": 1.0}, {"lr": -1.0}, {"mup": "yes"}, {"weight_decay": float("nan")},
                {"trained_horizon": 2.5}, {"horizon_power": -1.0}, {"hypergrad": -0.1},
                {"hypergrad_bound": float("nan")}, {"hypergrad_vectors": -0.5},
                {"hypergrad_grow_only": 1},
                {"mup_power_wide_only": True},                          # mup_power 1: changes nothing
                {"mup_power_wide_only": True, "mup_power": 0.5, "mup": False}):
        with pytest.raises(learned_opt.LearnedOptError, match=list(bad)[0]):
            learned_opt.make("norm_mlp", bad)


def test_noise_power_shrinks_the_step_by_adams_rms_without_new_meta_parameters():
    """``noise_power`` k: the same meta-parameters as k = 0 (so a trained rule can be fine-tuned
    with it), the same state but for the carried per-tensor r, and every step times r^k (r: the
    RMS of Adam's bias-corrected direction over the tensor, recomputed here in numpy)."""
    base = NormMLP(NormMLPConfig(lr=0.01))
    half = NormMLP(NormMLPConfig(lr=0.01, noise_power=0.5))
    theta = jax.device_get(base.init(jax.random.PRNGKey(3)))
    assert jax.tree.map(jnp.shape, half.init(jax.random.PRNGKey(3))) == jax.tree.map(jnp.shape, theta)
    assert base.opt_init(theta, P).adam_rms is None
    s_b, s_h = base.opt_init(theta, P, 8), half.opt_init(theta, P, 8)
    p_b, s_b = base.opt_update(theta, s_b, G1, P, 0.0, KEY)
    p_h, s_h = half.opt_update(theta, s_h, G1, P, 0.0, KEY)
    for k in P:   # Adam's direction is sign(g): r^2 is the fraction of non-zero gradients
        r1 = np.sqrt(np.mean(np.asarray(G1[k]) != 0))
        np.testing.assert_allclose(np.asarray(P[k]) - p_h[k], r1 ** 0.5 * (np.asarray(P[k]) - p_b[k]),
                                   rtol=1e-5, atol=1e-8)
    assert np.sqrt(np.mean(G1["b"] != 0)) == 1.0 and np.sqrt(np.mean(G1["w"] != 0)) < 1
    # a reversed gradient next: Adam's direction shrinks, and the step by exactly r^(1/2)
    neg = jax.tree.map(lambda g: -np.asarray(g), G1)
    q_b, _ = base.opt_update(theta, s_b, neg, P, 0.0, KEY)
    q_h, s_h = half.opt_update(theta, s_h, neg, P, 0.0, KEY)
    for k in P:
        g = np.asarray(G1[k], np.float64)
        m = 0.9 * 0.1 * g - 0.1 * g
        v = 0.999 * 0.001 * g ** 2 + 0.001 * g ** 2
        a = (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
        r = np.sqrt(np.mean(a ** 2))
        assert 0.01 < r < 0.9
        np.testing.assert_allclose(float(s_h.adam_rms[k]), r, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(P[k]) - q_h[k], r ** 0.5 * (np.asarray(P[k]) - q_b[k]),
                                   rtol=1e-4, atol=1e-8)
    with pytest.raises(learned_opt.LearnedOptError, match="noise_power"):
        NormMLPConfig(noise_power=0.5, adam_scale=True)


def two_steps_match_the_formula(cfg):
    """Two updates (G1, G2) of a run of 8 steps from P: every tensor's new value equals the numpy
    formula's; returns ``(theta, new params)``."""
    lopt = NormMLP(cfg)
    theta = jax.device_get(lopt.init(jax.random.PRNGKey(5)))
    state = lopt.opt_init(theta, P, 8)
    assert (state.adam_rms is not None) == cfg.uses_noise_power
    _, state = lopt.opt_update(theta, state, G1, P, 0.0, KEY)
    new_p, _ = lopt.opt_update(theta, state, G2, P, 0.0, KEY)
    scales = dict(zip(sorted(P), mup.step_scales({n: P[n] for n in sorted(P)}, 32.0)))
    for n in P:
        want = P[n] - np_norm_mlp_step(theta, [G1[n], G2[n]], P[n], 1, 8, cfg, scales[n])
        np.testing.assert_allclose(new_p[n], want, rtol=2e-4, atol=1e-6)
    return theta, new_p


@pytest.mark.parametrize("k, k_v", [(0.0, 0.5), (0.25, 0.75)])
def test_noise_power_vectors_takes_its_own_power_on_vectors_and_scalars_only(k, k_v):
    """``noise_power_vectors`` k_v: vectors and scalars take r^k_v, matrices keep ``noise_power``
    (none with k = 0); the formula in numpy, and the state carries r as soon as either is set."""
    cfg = NormMLPConfig(output_init_scale=1.0, lr=0.01, cosine_floor=0.1, noise_power=k,
                        noise_power_vectors=k_v)
    assert [cfg.noise_exponent(nd) for nd in (0, 1, 2, 4)] == [k_v, k_v, k, k]
    theta, new_p = two_steps_match_the_formula(cfg)
    plain = NormMLP(dataclasses.replace(cfg, noise_power=0.0, noise_power_vectors=0.0))
    s0 = plain.opt_init(theta, P, 8)
    _, s0 = plain.opt_update(theta, s0, G1, P, 0.0, KEY)
    p0, _ = plain.opt_update(theta, s0, G2, P, 0.0, KEY)
    if k == 0:   # matrices untouched
        np.testing.assert_allclose(new_p["w"], p0["w"], rtol=1e-6, atol=1e-8)
    assert not np.allclose(new_p["b"], p0["b"])   # the vector's step shrank
    with pytest.raises(learned_opt.LearnedOptError, match="noise_power_vectors"):
        NormMLPConfig(noise_power_vectors=0.5, adam_scale=True)
    with pytest.raises(learned_opt.LearnedOptError, match="noise_power_vectors"):
        NormMLPConfig(noise_power_vectors=-1.0)


@pytest.mark.parametrize("k, k_v", [(0.0, 0.5), (0.5, 0.0)])
def test_noise_per_parameter_takes_each_parameters_own_adam_direction_as_the_base(k, k_v):
    """``noise_per_parameter``: the step of parameter i is times ``min(|a_i|, 1)^k`` (its own
    Adam direction) instead of the tensor's ``r^k`` (the formula in numpy), so inside one tensor
    the coordinates whose gradients still agree keep their steps while the noise-dominated ones
    shrink (a diagonal quadratic whose well-conditioned directions have converged: per tensor,
    their noise shrinks the steps of the directions still far from the optimum too)."""
    cfg = NormMLPConfig(output_init_scale=1.0, lr=0.01, cosine_floor=0.1, noise_power=k,
                        noise_power_vectors=k_v, noise_per_parameter=True)
    two_steps_match_the_formula(cfg)
    # one vector: 5 coordinates with a steady gradient, 25 whose gradient flips sign every step
    k = 0.5
    per_tensor = NormMLP(NormMLPConfig(lr=0.01, noise_power_vectors=k))
    per_param = NormMLP(NormMLPConfig(lr=0.01, noise_power_vectors=k, noise_per_parameter=True))
    theta = jax.device_get(per_tensor.init(jax.random.PRNGKey(0)))
    x = {"x": jnp.zeros(30)}
    sign = np.where(np.arange(30) < 5, 1.0, 0.0)
    st_t, st_p = per_tensor.opt_init(theta, x, 100), per_param.opt_init(theta, x, 100)
    for t in range(20):
        g = {"x": jnp.asarray(sign + (1 - sign) * (-1.0) ** t, jnp.float32)}
        q_t, st_t = per_tensor.opt_update(theta, st_t, g, x, 0.0, KEY)
        q_p, st_p = per_param.opt_update(theta, st_p, g, x, 0.0, KEY)
    step_t, step_p = -np.asarray(q_t["x"]), -np.asarray(q_p["x"])
    r = float(st_t.adam_rms["x"])
    assert 0.2 < r < 0.7   # most of the tensor is noise
    ratio = step_p / step_t   # (|a_i| / r)^k: the steady coordinates' |a_i| is about 1
    np.testing.assert_allclose(ratio[:5], (1.0 / r) ** k, rtol=0.02)
    assert np.all(ratio[5:] < 1.0) and np.all(ratio[:5] > 1.2)
    with pytest.raises(learned_opt.LearnedOptError, match="noise_per_parameter"):
        NormMLPConfig(noise_per_parameter=True)   # no power to take


def assert_same_steps(lopt_a, theta_a, lopt_b, theta_b):
    """Three updates on ``P`` (gradients G1, G2, -G1) give the same parameters under both rules."""
    s_a, s_b = lopt_a.opt_init(theta_a, P, 8), lopt_b.opt_init(theta_b, P, 8)
    for g in (G1, G2, jax.tree.map(lambda x: -np.asarray(x), G1)):
        p_a, s_a = lopt_a.opt_update(theta_a, s_a, g, P, 0.0, KEY)
        p_b, s_b = lopt_b.opt_update(theta_b, s_b, g, P, 0.0, KEY)
        for k in P:
            np.testing.assert_allclose(p_b[k], p_a[k], rtol=1e-6, atol=1e-7)


def test_noise_input_adapts_a_trained_rule_to_the_same_steps_and_learns_from_r(tmp_path):
    """``noise_input``: r is one more network input (after tau) and does not scale the step. A rule
    saved without it loads into one with it (``init_from``'s path: ``load_theta(same_config=False)``)
    with a zero first-layer row for r, so the steps are the saved rule's exactly; a non-zero row
    changes them (r reaches the network). Shape changes with no such map stay one clear error."""
    base = NormMLP(NormMLPConfig(lr=0.01, output_init_scale=1.0))
    theta = jax.device_get(base.init(jax.random.PRNGKey(5)))
    path = str(tmp_path / "rule.npz")
    learned_opt.save(path, base, theta)
    noisy = NormMLP(NormMLPConfig(lr=0.01, output_init_scale=1.0, noise_input=True))
    assert noisy.config.num_inputs == base.config.num_inputs + 1
    adapted = learned_opt.load_theta(path, noisy, same_config=False)
    w0, w1 = np.asarray(theta["mlp"]["linear_0"]["w"]), np.asarray(adapted["mlp"]["linear_0"]["w"])
    at = base.config.num_per_parameter + 2
    np.testing.assert_array_equal(w1[at], 0.0)
    np.testing.assert_array_equal(np.delete(w1, at, axis=0), w0)
    assert_same_steps(base, theta, noisy, adapted)
    moved = jax.tree.map(lambda x: x, adapted)
    moved["mlp"]["linear_0"]["w"] = jnp.asarray(w1).at[at].set(1.0)
    p_m, _ = noisy.opt_update(moved, noisy.opt_init(moved, P, 8), G1, P, 0.0, KEY)
    p_n, _ = noisy.opt_update(adapted, noisy.opt_init(adapted, P, 8), G1, P, 0.0, KEY)
    assert max(float(np.max(np.abs(p_m[k] - p_n[k]))) for k in P) > 1e-6
    with pytest.raises(learned_opt.CheckpointError, match="rule.npz"):
        learned_opt.load_theta(path, NormMLP(NormMLPConfig(hidden_sizes=(4,), noise_input=True)),
                               same_config=False)
    with pytest.raises(learned_opt.LearnedOptError, match="noise_input"):
        NormMLPConfig(noise_input=True, adam_scale=True)


def test_scale_feature_is_the_log_scale_against_the_standard_initialisation():
    """``sigma = clip(log(sqrt(fan_in * mean(p^2))), -3, 3)`` on matrices (fan-in: all but the last
    axis), 0 on vectors and scalars: about 0 at ``N(0, 1/fan_in)``, ``log c`` at c times that scale,
    -3 for a zero matrix, clipped far out. Oracle: numpy."""
    from learned_opt.norm_mlp import scale_feature
    rng = np.random.default_rng(0)
    for shape in ((64, 16), (3, 8, 32)):
        fan_in = int(np.prod(shape[:-1]))
        w = rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in)
        want = 0.5 * np.log(fan_in * np.mean(np.square(w.astype(np.float64))))
        assert abs(want) < 0.1
        for c in (0.5, 1.0, 2.0):
            np.testing.assert_allclose(float(scale_feature(jnp.asarray(c * w))), want + np.log(c),
                                       atol=1e-5)
        assert float(scale_feature(jnp.asarray(1e3 * w))) == 3.0
        assert float(scale_feature(jnp.zeros(shape))) == -3.0
    assert float(scale_feature(jnp.asarray([5.0, -5.0]))) == 0.0
    assert float(scale_feature(jnp.asarray(7.0))) == 0.0


@pytest.mark.parametrize("source_noise", [False, True])
def test_scale_input_adapts_a_trained_rule_to_the_same_steps_and_sees_the_scale(tmp_path, source_noise):
    """``scale_input``: sigma is one more constant input (after tau, and after r when the rule has
    it). A rule saved without it (with or without r) loads into one with it (and with
    ``noise_input``) through a zero first-layer row per added channel, keeping every other row, so
    the steps are the saved rule's exactly; a non-zero sigma row changes them, differently at
    another scale of the same parameters. The reverse (dropping an input) is one clear error."""
    src_cfg = NormMLPConfig(lr=0.01, output_init_scale=1.0, noise_input=source_noise)
    base = NormMLP(src_cfg)
    theta = jax.device_get(base.init(jax.random.PRNGKey(5)))
    path = str(tmp_path / "rule.npz")
    learned_opt.save(path, base, theta)
    new = NormMLP(dataclasses.replace(src_cfg, noise_input=True, scale_input=True))
    assert new.config.num_inputs == NormMLPConfig().num_inputs + 2
    adapted = learned_opt.load_theta(path, new, same_config=False)
    w0, w1 = np.asarray(theta["mlp"]["linear_0"]["w"]), np.asarray(adapted["mlp"]["linear_0"]["w"])
    tau = base.config.num_per_parameter + 2
    added = [tau + 1] if source_noise else [tau, tau + 1]   # r's row (when new), then sigma's
    for i in added:
        np.testing.assert_array_equal(w1[i], 0.0)
    np.testing.assert_array_equal(np.delete(w1, added, axis=0), w0)
    assert_same_steps(base, theta, new, adapted)
    moved = jax.tree.map(lambda x: x, adapted)
    moved["mlp"]["linear_0"]["w"] = jnp.asarray(w1).at[tau + 1].set(1.0)
    steps = {}
    for c in (1.0, 2.0):
        Pc = {k: np.asarray(v) * c for k, v in P.items()}
        for name, th in (("moved", moved), ("adapted", adapted)):
            p_new, _ = new.opt_update(th, new.opt_init(th, Pc, 8), G1, Pc, 0.0, KEY)
            steps[name, c] = np.asarray(Pc["w"]) - np.asarray(p_new["w"])
    assert np.max(np.abs(steps["moved", 1.0] - steps["adapted", 1.0])) > 1e-6
    # without the sigma row the step does not depend on the parameters' scale; with it, it does
    np.testing.assert_allclose(steps["adapted", 2.0], steps["adapted", 1.0], rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(steps["moved", 2.0] - steps["moved", 1.0])) > 1e-6
    learned_opt.save(str(tmp_path / "scaled.npz"), new, adapted)
    with pytest.raises(learned_opt.CheckpointError, match="scaled.npz"):
        learned_opt.load_theta(str(tmp_path / "scaled.npz"), base, same_config=False)


@pytest.mark.parametrize("beta, bound, grow_only, sign", [
    (0.1, 3.0, False, 1.0), (100.0, 0.5, False, 1.0), (0.1, 3.0, False, -1.0),
    (0.1, 3.0, True, 1.0), (0.1, 3.0, True, -1.0)])
def test_hypergrad_scales_matrix_steps_by_the_cosine_of_gradient_and_last_step(beta, bound, grow_only, sign):
    """``hypergrad`` beta: no new meta-parameters; a matrix's step is the plain rule's times
    ``exp(ell)``, ``ell <- clip(ell + beta cos(g_t, step_{t-1}), lo, bound)`` from 0 (so the
    first step is the plain one: there is no last step yet), ``lo = -bound``, or 0 with
    ``hypergrad_grow_only``; vectors and scalars are unchanged. The second gradient is ``G2``
    or ``-G2``, so the cosine takes both signs. Oracle: the plain rule's steps (hypergrad 0) and
    the cosine in numpy."""
    base = NormMLP(NormMLPConfig(lr=0.01, output_init_scale=1.0))
    hyper = NormMLP(NormMLPConfig(lr=0.01, output_init_scale=1.0, hypergrad=beta,
                                  hypergrad_bound=bound, hypergrad_grow_only=grow_only))
    theta = jax.device_get(base.init(jax.random.PRNGKey(3)))
    assert jax.tree.map(jnp.shape, hyper.init(jax.random.PRNGKey(3))) == jax.tree.map(jnp.shape, theta)
    s_b, s_h = base.opt_init(theta, P, 8), hyper.opt_init(theta, P, 8)
    assert s_b.log_scale is None and s_b.prev_step is None
    p_b, s_b = base.opt_update(theta, s_b, G1, P, 0.0, KEY)
    p_h, s_h = hyper.opt_update(theta, s_h, G1, P, 0.0, KEY)
    step1 = {k: np.asarray(P[k], np.float64) - np.asarray(p_h[k]) for k in P}
    for k in P:
        np.testing.assert_allclose(p_h[k], p_b[k], rtol=1e-6, atol=1e-9)
        assert float(s_h.log_scale[k]) == 0.0
    grads2 = {k: sign * np.asarray(v) for k, v in G2.items()}
    q_b, _ = base.opt_update(theta, s_b, grads2, P, 0.0, KEY)
    q_h, s_h = hyper.opt_update(theta, s_h, grads2, P, 0.0, KEY)
    g2 = np.asarray(grads2["w"], np.float64)
    cos = np.sum(g2 * step1["w"]) / np.sqrt(np.sum(g2 ** 2) * np.sum(step1["w"] ** 2))
    ell = np.clip(beta * cos, 0.0 if grow_only else -bound, bound)
    assert sign * cos > 0.05
    np.testing.assert_allclose(float(s_h.log_scale["w"]), ell, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(P["w"]) - q_h["w"], np.exp(ell) * (np.asarray(P["w"]) - q_b["w"]),
                               rtol=1e-5, atol=1e-8)
    for k in ("b", "s"):
        np.testing.assert_allclose(q_h[k], q_b[k], rtol=1e-6, atol=1e-9)
        assert float(s_h.log_scale[k]) == 0.0
    np.testing.assert_allclose(np.asarray(s_h.prev_step["w"]), np.asarray(P["w"]) - q_h["w"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lr, grows", [(1e-4, True), (0.3, False)])
def test_hypergrad_grows_too_small_steps_and_shrinks_overshooting_ones(lr, grows):
    """The controller's purpose: on ``0.5 |W - W*|^2`` (W 8x8, start 1 away per entry) steps
    far too small keep the gradient along the last step (cos > 0), so ``ell`` climbs and the run
    ends nearer W* than the plain rule; steps far too large overshoot (the gradient turns
    against the last step), so ``ell`` falls and the run again ends nearer W*."""
    target = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
    params = {"w": target + 1.0}

    def run(beta):
        lopt = NormMLP(NormMLPConfig(lr=lr, hypergrad=beta, mup=False))
        theta = jax.device_get(lopt.init(jax.random.PRNGKey(0)))
        state, p = lopt.opt_init(theta, params, 200), params
        update = jax.jit(lopt.opt_update)
        for _ in range(200):
            p, state = update(theta, state, {"w": p["w"] - target}, p, jnp.float32(0.0), KEY)
        return float(jnp.sum(jnp.square(p["w"] - target))), state

    plain, _ = run(0.0)
    loss, state = run(0.05)
    ell = float(state.log_scale["w"])
    assert (ell > 2.0) if grows else (ell < -1.0), ell
    assert loss < 0.5 * plain, (loss, plain)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_hypergrad_vectors_only_shrink_vector_steps(sign):
    """``hypergrad_vectors`` beta_v: vectors and scalars get their own ``ell``, updated as a
    matrix's with beta_v but clipped to ``[-bound, 0]``: a gradient along the last step (cos > 0)
    leaves the step as it is, one against it shrinks it by ``exp(beta_v cos)``; matrices keep the
    plain rule while ``hypergrad`` is 0. The second gradient is ``G2`` and then ``-G2``, so
    each vector's cosine takes both signs. Oracle: the plain rule's steps and numpy."""
    beta_v, bound = 0.7, 3.0
    cfg = dict(lr=0.01, output_init_scale=1.0)
    base = NormMLP(NormMLPConfig(**cfg))
    hyper = NormMLP(NormMLPConfig(**cfg, hypergrad_vectors=beta_v, hypergrad_bound=bound))
    theta = jax.device_get(base.init(jax.random.PRNGKey(3)))
    s_b, s_h = base.opt_init(theta, P, 8), hyper.opt_init(theta, P, 8)
    p_b, s_b = base.opt_update(theta, s_b, G1, P, 0.0, KEY)
    p_h, s_h = hyper.opt_update(theta, s_h, G1, P, 0.0, KEY)
    step1 = {k: np.asarray(P[k], np.float64) - np.asarray(p_h[k]) for k in P}
    g2 = {k: sign * np.asarray(v) for k, v in G2.items()}
    q_b, _ = base.opt_update(theta, s_b, g2, P, 0.0, KEY)
    q_h, s_h = hyper.opt_update(theta, s_h, g2, P, 0.0, KEY)
    np.testing.assert_allclose(q_h["w"], q_b["w"], rtol=1e-6, atol=1e-9)
    assert float(s_h.log_scale["w"]) == 0.0
    for k in ("b", "s"):
        g = np.asarray(g2[k], np.float64)
        cos = np.sum(g * step1[k]) / np.sqrt(np.sum(g ** 2) * np.sum(step1[k] ** 2))
        assert sign * cos > 0.05   # G2 lies along the first step: both branches are exercised
        ell = min(0.0, beta_v * cos)
        np.testing.assert_allclose(float(s_h.log_scale[k]), ell, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(P[k]) - q_h[k], np.exp(ell) * (np.asarray(P[k]) - q_b[k]),
                                   rtol=1e-5, atol=1e-8)


def test_hypergrad_vectors_anneal_a_noisy_quadratic_and_never_grow():
    """The vector controller's purpose: on a noisy quadratic ``0.5 sum h x^2`` (gradient
    ``h x + 0.3 sqrt(h) b``, b ~ N(0, I), 64 coordinates) the rule's unit-RMS steps stall at a
    noise floor; steps that turn against each other there shrink ``ell`` and the run ends with a
    lower noise-free loss than the plain rule. On the same quadratic without noise and with steps
    far too small (cos > 0 throughout) ``ell`` stays exactly 0."""
    h = jnp.exp(-jnp.linspace(0.0, jnp.log(10.0), 64))
    x0 = {"x": jnp.ones((64,), jnp.float32)}

    def run(beta_v, lr, noise):
        lopt = NormMLP(NormMLPConfig(lr=lr, hypergrad_vectors=beta_v))
        theta = jax.device_get(lopt.init(jax.random.PRNGKey(0)))

        def body(carry, key):
            x, state = carry
            g = {"x": h * x["x"] + noise * jnp.sqrt(h) * jax.random.normal(key, (64,))}
            x, state = lopt.opt_update(theta, state, g, x, jnp.float32(0.0), KEY)
            return (x, state), None

        keys = jax.random.split(jax.random.PRNGKey(1), 400)
        (x, state), _ = jax.jit(lambda s: jax.lax.scan(body, (x0, s), keys))(lopt.opt_init(theta, x0, 400))
        return float(0.5 * jnp.sum(h * x["x"] ** 2)), state

    plain, _ = run(0.0, 0.05, 0.3)
    loss, state = run(0.3, 0.05, 0.3)
    assert float(state.log_scale["x"]) < -0.5
    assert loss < 0.7 * plain, (loss, plain)
    _, state = run(0.3, 1e-4, 0.0)
    assert float(state.log_scale["x"]) == 0.0
