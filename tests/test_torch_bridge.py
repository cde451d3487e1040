"""The PyTorch bridge (learned_opt.torch_bridge) against the JAX step it ports.

**Equality with JAX, every bridged architecture.** On the shared case of
benchmarks/torch_bridge.py (a 10-16-3 tanh MLP with biases, cross-entropy, fixed batches;
defined once in torch with ``nn.Linear``'s ``(out, in)`` weights and once in JAX with haiku's
``(in, out)``), torch and JAX each compute their own gradients and run 100 steps of their own
optimizer, and the parameters must agree to ``TOL = 1e-4`` (max abs, float32). Measured on
this machine (2-core CPU, torch 2.13, jax 0.10.2): mlp 3.6e-7, adafactor_mlp 4.5e-7, rnn_mlp
6.0e-7, general (norm_mlp, orthogonalised, 50 steps; ``FREE_TOL`` below) 6.1e-5, and 2.3e-7 .. 4.9e-7 for the fresh thetas with non-default
configs below (norm_mlp orthogonalised with weight decay and N = 100 known; norm_mlp without
muP and output normalisation, N unknown; adafactor_mlp with other decays); the parameters
move by 0.3 .. 2.5. Also, torch fed JAX's parameters and gradients at every one of the 100
steps (its optimizer state its own) must reproduce each JAX step to ``STEP_TOL = 2e-6``
(measured 6e-8 .. 2.4e-7, i.e. 1-2 ulp).

With DMD features on (every architecture but adafactor_mlp, whose DMD channels go in as
mlp's do; the project's window 8 and rank 3; 50 steps): measured 1.5e-7 .. 1.1e-6
free-running and up to 6.3e-6 per step (7e-5 and 5.8e-6 with another mlp theta). The DMD
channels are eigen-decompositions of near-singular float32 Gram matrices: JAX's own features
move as much (up to 1e-5 in the eigenvalue channels, 7e-3 in the mode channel) under a 1e-7
relative perturbation of the gradient window as torch's differ from JAX's on the same window
(4e-6, 1.4e-3). Hence ``DMD_TOL = 5e-4``, ``DMD_STEP_TOL = 5e-5``.

The shipped ``lstm`` is chaotic on this case: in JAX alone a 1e-6 change of the initial
weights grows to 0.1 after 100 steps, so float32 rounding differences of 4e-7 at step 1
grow to 0.027 free-running (measured). For it the free-running comparison runs
``LSTM_STEPS = 30`` steps (measured 8.0e-6) and the 100-step check is the per-step one
(measured 1.2e-7). The shipped ``general`` is chaotic here as well (``FREE_STEPS`` below).

**Layout.** A conv2d weight ``(out, in, kh, kw)``, a conv1d weight ``(out, in, k)`` and a
linear weight in torch layout get exactly JAX's update of the haiku tensors
``(kh, kw, in, out)``, ``(k, in, out)``, ``(in, out)``; a group with ``layout="haiku"``
is stepped as stored; and reading the torch layout as haiku's would give another update
(the layout-dependent rules: muP fan-in, Newton-Schulz, Adafactor rows/columns).

Also: unsupported optimizers raise one clear error naming the supported architectures; a
``state_dict`` round trip continues bit-identically; the loss is required where it is read
(rnn_mlp); ``lr`` scales the step; parameters without a gradient are skipped; the example
runs.
"""
import copy
import io
import os

import numpy as np
import pytest

if os.environ.get("CI"):     # CI installs the [torch] extra (make test): run, never skip
    import torch
else:
    torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import learned_opt  # noqa: E402
from benchmarks.torch_bridge import (batch, bridged, haiku_params, max_abs_diff,  # noqa: E402
                                     run_jax, run_torch, run_torch_forced, torch_loss,
                                     torch_params)
from learned_opt.norm_mlp import NormMLP  # noqa: E402
from learned_opt.torch_bridge import (LearnedOptim, UnsupportedOptimizerError,  # noqa: E402
                                      supported_architectures)

torch.set_num_threads(1)

STEPS = 100
TOL = 1e-4
STEP_TOL = 2e-6
LSTM_STEPS = 30
# The shipped general orthogonalises its matrix steps (Newton-Schulz) and, since its magnitude
# range is e^-3..e^3, takes large steps on this model: its run is chaotic. In JAX alone a 1e-7
# relative change of theta moves the parameters after 100 steps by 0.11 (measured); torch vs JAX
# free-running: 3.9e-6 after 25 steps, 6.1e-5 after 50, 0.026 after 100, while every single
# step of the 100 agrees to 4.8e-7. The growth depends on the CPU's floating-point kernels: on
# another machine (AMD EPYC) 8.0e-6 after 25 steps, 3.5e-5 after 35, 7.1e-4 after 50. So its
# free-running check runs FREE_STEPS steps and the 100-step check is the per-step one.
FREE_TOL = {"general": 5e-4}
FREE_STEPS = {"general": 35}
DMD_TOL = 5e-4
DMD_STEP_TOL = 5e-5


def fresh(arch: str, config: dict, seed: int = 1):
    lopt = learned_opt.make(arch, config)
    return lopt, lopt.init(jax.random.PRNGKey(seed))


# name -> (lopt, theta) factory, num_steps. Fresh thetas use non-default configs with visible
# (output_init_scale 1) networks, so every part of the step matters.
CASES = {
    "general": (lambda: learned_opt.load("general")[:2], None),
    "mlp": (lambda: learned_opt.load("mlp")[:2], None),
    "adafactor_mlp": (lambda: learned_opt.load("adafactor_mlp")[:2], None),
    "rnn_mlp": (lambda: learned_opt.load("rnn_mlp")[:2], None),
    "norm_mlp orthogonalize wd, N=100": (lambda: fresh("norm_mlp", {
        "orthogonalize": True, "ns_steps": 4, "weight_decay": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp no muP raw output, N unknown": (lambda: fresh("norm_mlp", {
        "mup": False, "normalize_output": False, "nominal": 0.5, "hidden_sizes": [16],
        "decays": [0.9], "lr": 3e-3, "output_init_scale": 1.0}), None),
    "norm_mlp cosine_floor trained_horizon, N=100": (lambda: fresh("norm_mlp", {
        "cosine_floor": 0.1, "orthogonalize": True, "output_init_scale": 1.0,
        "trained_horizon": 30, "horizon_power": 0.7}), 100),
    "norm_mlp adam_scale, N=100": (lambda: fresh("norm_mlp", {
        "adam_scale": True, "max_log_scale": 3.0, "output_init_scale": 1.0}), 100),
    "norm_mlp mup_power, N=100": (lambda: fresh("norm_mlp", {
        "mup_power": 0.5, "mup_base_fan_in": 8.0, "orthogonalize": True, "output_init_scale": 1.0}), 100),
    # base 12 lies between the fan-ins 10 and 16: one layer keeps muP, one gets alpha
    "norm_mlp mup_power wide_only, N=100": (lambda: fresh("norm_mlp", {
        "mup_power": 0.5, "mup_power_wide_only": True, "mup_base_fan_in": 12.0, "output_init_scale": 1.0}), 100),
    "norm_mlp noise_input, N=100": (lambda: fresh("norm_mlp", {
        "noise_input": True, "orthogonalize": True, "cosine_floor": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp scale_input noise_input, N=100": (lambda: fresh("norm_mlp", {
        "scale_input": True, "noise_input": True, "orthogonalize": True, "cosine_floor": 0.1,
        "output_init_scale": 1.0}), 100),
    "norm_mlp noise_power, N=100": (lambda: fresh("norm_mlp", {
        "noise_power": 0.5, "orthogonalize": True, "cosine_floor": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp noise_power_vectors, N=100": (lambda: fresh("norm_mlp", {
        "noise_power": 0.25, "noise_power_vectors": 0.75, "hypergrad": 0.1, "hypergrad_vectors": 0.3,
        "orthogonalize": True, "cosine_floor": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp noise_per_parameter, N=100": (lambda: fresh("norm_mlp", {
        "noise_power": 0.25, "noise_power_vectors": 0.5, "noise_per_parameter": True, "hypergrad_vectors": 0.3,
        "orthogonalize": True, "cosine_floor": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp hypergrad, N=100": (lambda: fresh("norm_mlp", {
        "hypergrad": 0.2, "hypergrad_bound": 1.0, "hypergrad_vectors": 0.5, "orthogonalize": True,
        "weight_decay": 0.1, "output_init_scale": 1.0}), 100),
    "norm_mlp hypergrad grow_only, N=100": (lambda: fresh("norm_mlp", {
        "hypergrad": 0.2, "hypergrad_grow_only": True, "hypergrad_vectors": 0.5, "orthogonalize": True,
        "output_init_scale": 1.0}), 100),
    "adafactor_mlp fresh": (lambda: fresh("adafactor_mlp", {
        "momentum_decays": [0.5, 0.9], "adafactor_decays": [0.8, 0.99], "rms_decay": 0.99,
        "output_init_scale": 1.0, "step_mult": 0.01}), None),
}


def _compare(lopt, theta, num_steps=None, steps=STEPS, free_steps=None) -> tuple[float, float]:
    """(free-running over ``free_steps`` (default ``steps``), per-step over ``steps``) max abs
    differences between torch and JAX."""
    free_steps = free_steps or steps
    opt = bridged(lopt, theta, num_steps=num_steps)
    traj = run_jax(lopt, theta, steps, num_steps)
    assert max_abs_diff(traj[-1].new_params, haiku_params()) > 0.1   # it did train
    return (max_abs_diff(run_torch(opt, free_steps), traj[free_steps - 1].new_params),
            run_torch_forced(opt, traj))


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_matches_jax_over_100_steps(name):
    make, num_steps = CASES[name]
    free, forced = _compare(*make(), num_steps, free_steps=FREE_STEPS.get(name))
    assert free <= FREE_TOL.get(name, TOL), (name, free)
    assert forced <= STEP_TOL, (name, forced)


# DMD features on (the project's dmd_window 8, rank 3), fresh visible thetas with other
# non-default options. adafactor_mlp appends the DMD channels as mlp does (ops.mlp's tail).
DMD_CASES = {
    "mlp": {"hidden_sizes": [8], "decays": [0.5, 0.9, 0.99], "step_mult": 0.01},
    "norm_mlp": {"hidden_sizes": [8], "weight_decay": 0.01, "adam_scale": True},
    "rnn_mlp": {"hidden_sizes": [8], "lstm_hidden": 8, "lr_init_scale": 1.0, "step_mult": 0.01},
    "lstm": {"hidden_size": 8, "output_scale": 0.03},
}
DMD_STEPS = 50


@pytest.mark.parametrize("arch", sorted(DMD_CASES))
def test_torch_matches_jax_with_dmd_features(arch):
    lopt, theta = fresh(arch, {"dmd_window": 8, "dmd_rank": 3, "output_init_scale": 1.0,
                               **DMD_CASES[arch]}, seed=2)
    free, forced = _compare(lopt, theta, steps=DMD_STEPS)
    assert free <= DMD_TOL, (arch, free)
    assert forced <= DMD_STEP_TOL, (arch, forced)


def test_lstm_matches_jax_step_by_step():
    lopt, theta, _ = learned_opt.load("lstm")
    traj = run_jax(lopt, theta, STEPS)
    assert run_torch_forced(bridged("lstm"), traj) <= STEP_TOL
    free = max_abs_diff(run_torch(bridged("lstm"), LSTM_STEPS), traj[LSTM_STEPS - 1].new_params)
    assert free <= TOL, free


def test_every_registered_architecture_is_bridged():
    # (test stand-ins register names starting with "_")
    assert supported_architectures() == sorted(a for a in learned_opt.architectures()
                                               if not a.startswith("_"))


# ------------------------------------------------------------------------------ layout
TORCH_SHAPES = {"conv2d": (5, 3, 2, 4), "conv1d": (6, 4, 3), "linear": (7, 3), "bias": (7,)}
EMBED = (11, 6)   # stored in haiku layout already (an nn.Embedding table)


def _haiku(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (*range(2, x.ndim), 1, 0)) if x.ndim >= 2 else x


def _run_layout(lopt, theta, steps=6, torch_layout="torch", with_jax=True):
    """Torch and JAX on the tensors of TORCH_SHAPES (+ EMBED) with the same gradients;
    returns (torch result in haiku layout, JAX result or None)."""
    rng = np.random.default_rng(3)
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in TORCH_SHAPES.items()}
    init["embed"] = rng.normal(size=EMBED).astype(np.float32)
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()}
             for _ in range(steps)]
    tparams = {k: torch.tensor(v.copy()) for k, v in init.items()}
    opt = LearnedOptim.from_lopt(lopt, theta, [
        {"params": [tparams[k] for k in TORCH_SHAPES], "layout": torch_layout},
        {"params": [tparams["embed"]], "layout": "haiku"}], num_steps=10)
    for g in grads:
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        opt.step(loss=1.0)

    def as_haiku(tree):
        return {k: (v if k == "embed" else _haiku(v)) for k, v in tree.items()}

    mine = as_haiku({k: p.numpy() for k, p in tparams.items()})
    if not with_jax:
        return mine, None
    params = as_haiku(init)
    state = lopt.opt_init(theta, params, 10)
    update = jax.jit(lopt.opt_update)
    for g in grads:
        params, state = update(theta, state, as_haiku(g), params, jnp.float32(1.0), None)
    return mine, jax.device_get(params)


LAYOUT_CASES = {
    "norm_mlp orthogonalize": ("norm_mlp", {"orthogonalize": True, "output_init_scale": 1.0}),
    "adafactor_mlp": ("adafactor_mlp", {"output_init_scale": 1.0, "step_mult": 0.01}),
    "mlp": ("mlp", {"hidden_sizes": [8], "output_init_scale": 1.0}),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_CASES))
def test_torch_layout_tensors_get_the_update_of_their_haiku_transpose(name):
    lopt, theta = fresh(*LAYOUT_CASES[name])
    mine, want = _run_layout(lopt, theta)
    for k in want:
        np.testing.assert_allclose(mine[k], want[k], atol=2e-6, rtol=0, err_msg=k)
    if name != "mlp":   # muP fan-in / Newton-Schulz / Adafactor factoring read the layout
        wrong, _ = _run_layout(lopt, theta, torch_layout="haiku", with_jax=False)
        assert max(np.max(np.abs(wrong[k] - want[k])) for k in ("conv2d", "conv1d", "linear")) > 1e-3


def test_embedding_tables_are_input_weights_as_in_jax():
    """``input_names``: JAX marks a tensor by its parameter path; torch by its name (built from
    ``named_parameters``) or the group's ``role``; both give the JAX step, and an unmarked
    table gets another one (muP fan-in = vocabulary, Newton-Schulz)."""
    lopt, theta = fresh("norm_mlp", {"orthogonalize": True, "output_init_scale": 1.0,
                                     "input_names": ["embed"]})
    rng = np.random.default_rng(0)
    params = {"embed": {"w": rng.normal(size=(12, 6)).astype(np.float32)},
              "out": {"w": rng.normal(size=(6, 4)).astype(np.float32)}}
    grads = jax.tree.map(lambda p: np.cos(3.0 * p + 1.0).astype(np.float32), params)
    state = lopt.opt_init(theta, params, 10)
    want, _ = lopt.opt_update(theta, state, grads, params, jnp.float32(0.0), jax.random.PRNGKey(0))

    def torch_step(name=None, role=None):
        e = torch.nn.Parameter(torch.tensor(params["embed"]["w"]))           # (num, dim): haiku's
        o = torch.nn.Parameter(torch.tensor(params["out"]["w"].T.copy()))    # nn.Linear's (out, in)
        e.grad = torch.tensor(grads["embed"]["w"])
        o.grad = torch.tensor(grads["out"]["w"].T.copy())
        named = name is not None      # torch: every group named (named_parameters) or none
        groups = [{"params": [(name, e)] if named else [e], "layout": "haiku", "role": role},
                  {"params": [("out.weight", o)] if named else [o]}]
        opt = LearnedOptim.from_lopt(lopt, theta, groups, num_steps=10)
        opt.step()
        return e.detach().numpy(), o.detach().numpy().T

    for kw in ({"name": "lm.Embed.weight"}, {"role": "input"}):
        e, o = torch_step(**kw)
        np.testing.assert_allclose(e, want["embed"]["w"], atol=2e-6, rtol=0, err_msg=str(kw))
        np.testing.assert_allclose(o, want["out"]["w"], atol=2e-6, rtol=0, err_msg=str(kw))
    for kw in ({"name": "lm.table"}, {}):
        e, o = torch_step(**kw)
        assert np.max(np.abs(e - want["embed"]["w"])) > 1e-3, kw
        np.testing.assert_allclose(o, want["out"]["w"], atol=2e-6, rtol=0)
    with pytest.raises(learned_opt.LearnedOptError, match="role must be one of"):
        LearnedOptim.from_lopt(lopt, theta, [{"params": [torch.nn.Parameter(torch.ones(2))],
                                              "role": "embedding"}])


# ------------------------------------------------------------------------------ errors
def test_unsupported_optimizers_raise_one_clear_error():
    class Custom(NormMLP):
        pass

    lopt = Custom()
    with pytest.raises(UnsupportedOptimizerError, match=r"supported architectures: \['adafactor_mlp'"):
        LearnedOptim.from_lopt(lopt, lopt.init(jax.random.PRNGKey(0)), torch_params())
    assert issubclass(UnsupportedOptimizerError, learned_opt.LearnedOptError)
    with pytest.raises(learned_opt.LearnedOptError, match="layout"):
        LearnedOptim.from_checkpoint("mlp", torch_params(), layout="jax")


def _backward(params, i=0):
    x, y = batch(i)
    loss = torch_loss(params, torch.from_numpy(x), torch.from_numpy(y))
    for p in params:
        p.grad = None
    loss.backward()
    return loss


def test_the_loss_is_required_where_it_is_read():
    params = torch_params()
    opt = LearnedOptim.from_checkpoint("rnn_mlp", params)
    _backward(params)
    with pytest.raises(learned_opt.LearnedOptError, match=r"reads the loss: call step\(loss=loss\)"):
        opt.step()
    assert not opt.state   # nothing happened
    assert opt.step(closure=lambda: _backward(params)) is not None
    # the others ignore it
    other = torch_params()
    _backward(other)
    LearnedOptim.from_checkpoint("general", other).step()


def test_rnn_mlp_needs_every_gradient_the_others_skip_missing_ones():
    params = torch_params()
    _backward(params)
    params[3].grad = None
    with pytest.raises(learned_opt.LearnedOptError, match="steps all its tensors together"):
        LearnedOptim.from_checkpoint("rnn_mlp", params).step(loss=1.0)
    before = params[3].detach().clone()
    opt = LearnedOptim.from_checkpoint("general", params)
    opt.step()
    assert torch.equal(params[3], before) and params[3] not in opt.state
    assert opt.state[params[0]]["step"] == 1


# ------------------------------------------------------------------------------ state, lr
def _train(params, opt, start, steps):
    for i in range(start, start + steps):
        opt.step(loss=_backward(params, i))


def _make(name, params, **kwargs):
    if name == "mlp +DMD":
        lopt, theta = fresh("mlp", {"dmd_window": 4, "dmd_rank": 2})
        return LearnedOptim.from_lopt(lopt, theta, params, **kwargs)
    if name in CASES:
        lopt, theta = CASES[name][0]()
        return LearnedOptim.from_lopt(lopt, theta, params, **kwargs)
    return LearnedOptim.from_checkpoint(name, params, **kwargs)


@pytest.mark.parametrize("name", ["adafactor_mlp", "rnn_mlp", "lstm", "mlp +DMD",
                                  "norm_mlp hypergrad, N=100"])
def test_state_dict_round_trip_continues_identically(name):
    params = torch_params()
    opt = _make(name, params, num_steps=20)
    _train(params, opt, 0, 10)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    _train(params, opt, 10, 10)

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    again = [p.clone().requires_grad_() for p in saved["params"]]
    opt2 = _make(name, again)      # num_steps comes from the state dict
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["num_steps"] == 20
    _train(again, opt2, 10, 10)
    for a, b in zip(params, again):
        assert torch.equal(a, b)


def test_a_state_of_another_layout_is_refused_in_one_line():
    """A norm_mlp state in the bridge's old channels-last layout (momenta ``shape + (K,)``) is
    refused before anything is loaded, not broadcast into wrong steps."""
    params = torch_params()
    opt = _make("general", params, num_steps=20)
    _train(params, opt, 0, 2)
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        st["momenta"] = torch.movedim(st["momenta"], 0, -1).contiguous()
    again = [p.detach().clone().requires_grad_() for p in params]
    opt2 = _make("general", again)
    with pytest.raises(learned_opt.LearnedOptError, match=r"state_dict: parameter 0's 'momenta' has shape") as e:
        opt2.load_state_dict(saved)
    assert "\n" not in str(e.value) and not opt2.state
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))      # its own layout loads
    assert len(opt2.state) == len(again)


def test_state_stays_float32_for_low_precision_parameters():
    w = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    opt = LearnedOptim.from_checkpoint("adafactor_mlp", [w])
    w.grad = torch.randn(4, 3, dtype=torch.bfloat16)
    opt.step()
    opt2 = LearnedOptim.from_checkpoint("adafactor_mlp", [w])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert w.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in opt2.state[w].values() if torch.is_tensor(v))


@pytest.mark.parametrize("name", ["general", "mlp", "lstm"])
def test_lr_scales_the_step(name):
    steps = []
    for lr_factor in (1.0, 0.25):
        params = torch_params()
        _backward(params)
        start = [p.detach().clone() for p in params]
        opt = LearnedOptim.from_checkpoint(name, params)
        assert opt.param_groups[0]["lr"] == opt.rule.nominal_lr
        opt.param_groups[0]["lr"] *= lr_factor
        opt.step()
        steps.append([s - p.detach() for s, p in zip(start, params)])
    for full, quarter in zip(*steps):
        torch.testing.assert_close(quarter, 0.25 * full, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ example
def test_the_example_trains_with_the_general_optimizer():
    from examples.torch_mlp import main
    out = main(steps=80, verbose=False)   # measured: 2.31 -> 1.02 (learned), 1.36 (Adam 1e-3)
    assert out["learned"] < 0.7 * out["initial"] and out["adam"] < out["initial"], out
    assert out["learned"] < out["adam"], out
