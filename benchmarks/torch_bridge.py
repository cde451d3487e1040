"""The torch bridge against JAX, and its step cost against ``torch.optim.Adam``, in one process.

    python benchmarks/torch_bridge.py [--steps 100] [--repeats 7]

**The shared case** (also used by tests/test_torch_bridge.py): a 10-16-3 tanh MLP with
biases, cross-entropy on 256 fixed Gaussian points labelled by a random linear teacher,
batches of 32 taken in order (step i uses batch i mod 8). It is defined once in torch
(``nn.Linear`` layout: weights ``(out, in)``) and once in JAX (haiku layout: ``(in, out)``),
from the same numbers; each framework computes its own gradients and runs its own optimizer.

Per shipped optimizer it prints

- ``free-running``: max |p_jax - p_torch| over all parameters after ``--steps`` steps;
- ``per-step``: torch fed JAX's parameters and gradients at every step of JAX's run (its own
  optimizer state carried through all steps), the largest one-step difference: what the
  bridge adds per step, without the training dynamics amplifying it;
- the torch step's wall time (``opt.step()`` alone, gradients already computed) as a ratio to
  ``torch.optim.Adam``'s on the same model, median over ``--repeats`` interleaved timings (of
  20 steps each on the shared case, 227 parameters: per-call overhead; of 3 steps each on a
  256-512-512-10 MLP, 400k parameters: per-element cost), one torch thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import learned_opt  # noqa: E402
from learned_opt.torch_bridge import LearnedOptim  # noqa: E402

D_IN, HIDDEN, N_OUT, N_DATA, BATCH = 10, 16, 3, 256, 32


# ------------------------------------------------------------------------- the shared case
def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs, labels and the initial weights (torch layout), float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_DATA, D_IN)).astype(np.float32)
    return {"x": x, "y": np.argmax(x @ rng.normal(size=(D_IN, N_OUT)), axis=1),
            "w1": (rng.normal(size=(HIDDEN, D_IN)) / np.sqrt(D_IN)).astype(np.float32),
            "b1": (0.1 * rng.normal(size=HIDDEN)).astype(np.float32),
            "w2": (rng.normal(size=(N_OUT, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32),
            "b2": (0.1 * rng.normal(size=N_OUT)).astype(np.float32)}


DATA = make_data()


def batch(i: int) -> tuple[np.ndarray, np.ndarray]:
    s = (i % (N_DATA // BATCH)) * BATCH
    return DATA["x"][s:s + BATCH], DATA["y"][s:s + BATCH]


def haiku_params() -> dict:
    """The initial parameters as haiku would hold them: ``w`` is ``(in, out)``."""
    return {"linear": {"w": DATA["w1"].T.copy(), "b": DATA["b1"].copy()},
            "linear_1": {"w": DATA["w2"].T.copy(), "b": DATA["b2"].copy()}}


def torch_params() -> list[torch.Tensor]:
    """The same parameters as torch holds them: ``[W1 (out, in), b1, W2, b2]``."""
    return [torch.tensor(DATA[k].copy(), requires_grad=True) for k in ("w1", "b1", "w2", "b2")]


def to_haiku(params: list[torch.Tensor]) -> dict:
    w1, b1, w2, b2 = (p.detach().numpy().copy() for p in params)
    return {"linear": {"w": w1.T, "b": b1}, "linear_1": {"w": w2.T, "b": b2}}


def to_torch(tree: dict) -> list[np.ndarray]:
    return [np.asarray(tree["linear"]["w"]).T, np.asarray(tree["linear"]["b"]),
            np.asarray(tree["linear_1"]["w"]).T, np.asarray(tree["linear_1"]["b"])]


def jax_loss(params: dict, x, y):
    h = jnp.tanh(x @ params["linear"]["w"] + params["linear"]["b"])
    logits = h @ params["linear_1"]["w"] + params["linear_1"]["b"]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1)
                    - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0])


def torch_loss(params: list[torch.Tensor], x, y) -> torch.Tensor:
    w1, b1, w2, b2 = params
    return TF.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)


class Step(NamedTuple):
    """One JAX step, haiku layout: the parameters, their gradients, the loss, the result."""
    params: dict
    grads: dict
    loss: float
    new_params: dict


def run_jax(lopt, theta, steps: int, num_steps: int | None = None) -> list[Step]:
    """JAX's run of ``steps`` steps of ``lopt.opt_update`` on the shared case."""
    params = jax.tree.map(jnp.asarray, haiku_params())
    state = lopt.opt_init(theta, params, num_steps)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(jax_loss)(params, x, y)
        new, state = lopt.opt_update(theta, state, grads, params, loss, jax.random.PRNGKey(0))
        return new, state, grads, loss

    out = []
    for i in range(steps):
        new, state, grads, loss = step(params, state, *batch(i))
        out.append(Step(*jax.device_get((params, grads, loss, new))))
        params = new
    return out


def run_torch(make_opt: Callable[[list], torch.optim.Optimizer], steps: int) -> dict:
    """torch's run: ``make_opt(params)`` trains the torch model ``steps`` steps; the final
    parameters in haiku layout."""
    params = torch_params()
    opt = make_opt(params)
    for i in range(steps):
        x, y = batch(i)
        opt.zero_grad()
        loss = torch_loss(params, torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        opt.step(loss=loss)
    return to_haiku(params)


def run_torch_forced(make_opt: Callable[[list], torch.optim.Optimizer], trajectory: list[Step]) -> float:
    """The largest one-step difference when torch gets JAX's parameters and gradients at every
    step of ``trajectory`` (its optimizer state is its own, carried through all steps)."""
    params = torch_params()
    opt = make_opt(params)
    worst = 0.0
    for s in trajectory:
        with torch.no_grad():
            for p, v, g in zip(params, to_torch(s.params), to_torch(s.grads)):
                p.copy_(torch.from_numpy(np.array(v)))
                p.grad = torch.from_numpy(np.array(g))
        opt.step(loss=torch.tensor(s.loss))
        worst = max(worst, max_abs_diff(to_haiku(params), s.new_params))
    return worst


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bridged(name_or_lopt, theta=None, **kwargs) -> Callable[[list], LearnedOptim]:
    """``params -> LearnedOptim`` for a checkpoint name/path, or an optimizer and its theta."""
    if theta is None:
        return lambda params: LearnedOptim.from_checkpoint(name_or_lopt, params, **kwargs)
    return lambda params: LearnedOptim.from_lopt(name_or_lopt, theta, params, **kwargs)


# ------------------------------------------------------------------------- step cost
def big_mlp_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = (256, 512, 512, 10)
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out += [torch.randn(n_out, n_in, generator=g) / n_in ** 0.5, torch.zeros(n_out)]
    return [p.requires_grad_() for p in out]


def step_times(make_opts: dict[str, Callable], params_fn: Callable, repeats: int,
               steps: int = 20) -> dict[str, float]:
    """Median seconds per ``opt.step()`` of each optimizer (fixed random gradients), the
    optimizers timed in turn within each repeat."""
    setups = {}
    for name, make in make_opts.items():
        params = params_fn()
        g = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = 1e-2 * torch.randn(p.shape, generator=g)
        opt = make(params)
        kwargs = {"loss": torch.tensor(1.0)} if isinstance(opt, LearnedOptim) else {}
        opt.step(**kwargs)   # warm up: state created
        setups[name] = (opt, kwargs)
    times = {name: [] for name in setups}
    for _ in range(repeats):
        for name, (opt, kwargs) in setups.items():
            t = time.perf_counter()
            for _ in range(steps):
                opt.step(**kwargs)
            times[name].append((time.perf_counter() - t) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    names = [n for n in learned_opt.shipped_names()]
    rows = []
    for name in names:
        loaded = learned_opt.load(name)
        traj = run_jax(loaded.lopt, loaded.theta, args.steps)
        free = max_abs_diff(run_torch(bridged(name), args.steps), traj[-1].new_params)
        forced = run_torch_forced(bridged(name), traj)
        moved = max_abs_diff(traj[-1].new_params, haiku_params())
        rows.append((name, loaded.lopt.architecture, free, forced, moved))
        print(f"  measured {name}", file=sys.stderr, flush=True)

    adam = {"Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3)}
    learned = {name: bridged(name) for name in names}
    small = step_times({**adam, **learned}, torch_params, args.repeats)
    big = step_times({**adam, **learned}, big_mlp_params, args.repeats, steps=3)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; jax {jax.__version__} "
          f"on {jax.devices()[0].platform}; {args.steps} steps of the shared case")
    print("\n| optimizer | architecture | max abs diff, free-running | max abs diff, per step "
          "| largest move | step / Adam (227 params) | step / Adam (400k params) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| Adam | - | - | - | - | 1.00 ({1e6 * small['Adam']:.0f} us) "
          f"| 1.00 ({1e6 * big['Adam']:.0f} us) |")
    for name, arch, free, forced, moved in rows:
        print(f"| {name} | {arch} | {free:.2e} | {forced:.2e} | {moved:.2f} "
              f"| {small[name] / small['Adam']:.1f} | {big[name] / big['Adam']:.1f} |")


if __name__ == "__main__":
    main()
