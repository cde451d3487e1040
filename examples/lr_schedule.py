"""Meta-learning a learning-rate schedule with PES: an Unroll that is not a learned optimizer.

    PYTHONPATH=. .venv/bin/python examples/lr_schedule.py [--steps 300] [--truncation 10]
                                                      [--pes-only] [--seeds 1]

The inner problem is fixed: least-squares linear regression on a generated dataset
(n=256 points, d=20 features whose scales make the Hessian's eigenvalues span 1 .. 1e-3,
label noise 0.5), trained for T=200 steps of minibatch SGD (batch 8) from w=0.
The learning rate at step t is a schedule with meta-parameters theta: the log learning
rate at 5 knots evenly spaced over the episode, linearly interpolated in between,

    lr(t) = exp(interp(t / (T - 1) * 4, [0, 1, 2, 3, 4], theta)).

The inner state is (w, t); each step's meta-loss term is the full-batch training loss
after the step, so the meta-objective is the mean training loss over the episode.

theta is meta-trained with optax.adam on PES gradients, then with truncated BPTT,
truncated ES and full-episode ES on the same budget of outer steps, and every learned
schedule is compared with the best constant learning rate from a grid, measured here
on the same episodes. Short-horizon bias (Wu et al. 2018): the truncated estimators only
see the effect of a step's learning rate on the next <= K losses, so they undervalue
the lasting progress along low-curvature directions that a large rate buys and
overvalue the noise it adds right away. Measured output and its reading: docs/unroll.md.
"""
from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_train.estimators import PES, FullES, TruncatedBPTT, TruncatedES
from meta_train.unroll import Unroll

N_KNOTS = 5
EPISODE = 200
BATCH = 8


class Problem(NamedTuple):
    """A fixed regression dataset and its least-squares optimum loss."""
    X: jax.Array        # (n, d)
    y: jax.Array        # (n,)
    min_loss: jax.Array  # the smallest training loss any w reaches


class InnerState(NamedTuple):
    w: jax.Array   # (d,) regression weights
    t: jax.Array   # int32 step within the episode


def make_problem(seed: int = 0, n: int = 256, dim: int = 20, cond: float = 1e3,
                 noise: float = 0.5) -> Problem:
    """Features scaled so that eig(X^T X / n) spans about 1 .. 1/cond."""
    kx, kw, kn = jax.random.split(jax.random.PRNGKey(seed), 3)
    scales = cond ** (-0.5 * jnp.linspace(0.0, 1.0, dim))
    X = jax.random.normal(kx, (n, dim)) * scales
    y = X @ jax.random.normal(kw, (dim,)) + noise * jax.random.normal(kn, (n,))
    w_star = jnp.linalg.lstsq(X, y)[0]
    return Problem(X, y, train_loss(Problem(X, y, 0.0), w_star))


def train_loss(problem: Problem, w: jax.Array) -> jax.Array:
    """Full-batch 0.5 * mean squared error."""
    return 0.5 * jnp.mean((problem.X @ w - problem.y) ** 2)


def log_lr(theta: jax.Array, t: jax.Array, episode: int = EPISODE) -> jax.Array:
    """The schedule: piecewise-linear log learning rate through the knots theta."""
    pos = t / (episode - 1) * (theta.shape[0] - 1)
    return jnp.interp(pos, jnp.arange(theta.shape[0], dtype=theta.dtype), theta)


def lr_schedule_unroll(problem: Problem, episode: int = EPISODE, batch: int = BATCH,
                       max_loss: float = 10.0) -> Unroll:
    """SGD on ``problem`` with the schedule theta, as an Unroll.

    The meta-loss term is the training loss after the step, capped at ``max_loss`` so a
    diverging perturbation costs a bounded amount (NaN stays NaN; estimators mask it).
    """
    n, dim = problem.X.shape

    def init(theta, key):
        return InnerState(jnp.zeros(dim), jnp.zeros((), jnp.int32))

    def step(theta, state, key):
        idx = jax.random.randint(key, (batch,), 0, n)
        Xb, yb = problem.X[idx], problem.y[idx]
        grad = Xb.T @ (Xb @ state.w - yb) / batch
        w = state.w - jnp.exp(log_lr(theta, state.t, episode)) * grad
        loss = train_loss(problem, w)
        return InnerState(w, state.t + 1), jnp.where(jnp.isnan(loss), loss, jnp.minimum(loss, max_loss))

    return Unroll(init=init, step=step, episode_length=episode)


def evaluate(problem: Problem, theta: jax.Array, episode: int = EPISODE, seeds: int = 64,
             seed: int = 12345) -> dict:
    """Run ``seeds`` whole episodes of the schedule; mean over seeds of the meta-objective
    (mean loss over the episode) and of the final loss, both as excess over the optimum."""
    return {k: float(v) for k, v in _evaluate(problem, theta, episode, seeds, seed).items()}


@jax.jit
def _episode_losses(problem, theta, keys):
    unroll = lr_schedule_unroll(problem, keys.shape[0])
    def body(state, key):
        return unroll.step(theta, state, key)
    return jax.lax.scan(body, unroll.init(theta, None), keys)[1]


def _evaluate(problem, theta, episode, seeds, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), (seeds, episode))
    losses = jax.vmap(_episode_losses, in_axes=(None, None, 0))(problem, theta, keys)
    excess = losses - problem.min_loss
    return {"mean_excess": jnp.mean(excess), "final_excess": jnp.mean(excess[:, -1])}


def constant_grid(problem: Problem, lrs=None, episode: int = EPISODE) -> list[tuple[float, dict]]:
    """Every constant learning rate of the grid (half-decades by default), evaluated."""
    if lrs is None:
        lrs = 10.0 ** np.arange(-2.0, 0.76, 0.25)
    return [(float(lr), evaluate(problem, jnp.full(N_KNOTS, np.log(lr)), episode)) for lr in lrs]


def make_estimator(name: str, unroll: Unroll, num_pairs: int = 8, truncation_length: int = 10,
                   sigma: float = 0.1):
    """One of the four estimators, all with a population of 2 * num_pairs particles."""
    if name == "pes":
        return PES(unroll, num_pairs=num_pairs, truncation_length=truncation_length, sigma=sigma)
    if name == "tes":
        return TruncatedES(unroll, num_pairs=num_pairs, truncation_length=truncation_length, sigma=sigma)
    if name == "tbptt":
        return TruncatedBPTT(unroll, num_particles=2 * num_pairs, truncation_length=truncation_length)
    if name == "full_es":
        return FullES(unroll, num_pairs=num_pairs, sigma=sigma)
    raise ValueError(f"unknown estimator {name!r}: use pes, tes, tbptt or full_es")


def meta_train(problem: Problem, estimator_name: str = "pes", steps: int = 300,
               init_lr: float = 0.03, meta_lr: float = 0.1, seed: int = 0,
               log_every: int = 0, **estimator_kwargs) -> tuple[jax.Array, list[dict]]:
    """Meta-train the knots with optax.adam on the estimator's gradient (learning rate
    ``meta_lr``, cosine-decayed to a tenth over ``steps``), from a constant ``init_lr``.

    Returns the learned theta and a log: every ``log_every`` steps (and at the end) the
    estimator's running meta-loss and the evaluated mean excess loss of the current theta.
    """
    unroll = lr_schedule_unroll(problem)
    est = make_estimator(estimator_name, unroll, **estimator_kwargs)
    meta_opt = optax.adam(optax.cosine_decay_schedule(meta_lr, steps, alpha=0.1))
    theta = jnp.full(N_KNOTS, np.log(init_lr), jnp.float32)
    key = jax.random.PRNGKey(seed)
    key, k_init = jax.random.split(key)
    est_state, opt_state = est.init(theta, k_init), meta_opt.init(theta)

    @jax.jit
    def outer_step(theta, est_state, opt_state, key):
        grad, est_state, metrics = est.estimate(theta, est_state, key)
        updates, opt_state = meta_opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), est_state, opt_state, metrics

    log, recent = [], []
    for i in range(1, steps + 1):
        key, k = jax.random.split(key)
        theta, est_state, opt_state, metrics = outer_step(theta, est_state, opt_state, k)
        recent.append(metrics["meta_loss"])
        if (log_every and i % log_every == 0) or i == steps:
            log.append({"step": i, "meta_loss": float(np.mean(recent)),
                        **evaluate(problem, theta, seeds=16)})
            recent = []
    return theta, log


def horizon_gradient(problem: Problem, theta: jax.Array, truncation: int, particles: int = 32,
                     seed: int = 0) -> np.ndarray:
    """The gradient of the mean-over-episode loss as truncated BPTT with truncation K sees it.

    Runs every particle through one whole episode in truncations of K (no staggering) and
    sums the estimates, each scaled by K / T, so that K = T gives the exact gradient
    (backpropagation through the whole episode, averaged over ``particles`` episodes);
    a shorter K drops every path from a step's learning rate to losses beyond its truncation.
    """
    est = TruncatedBPTT(lr_schedule_unroll(problem), num_particles=particles,
                        truncation_length=truncation, stagger=False)
    state = est.init(theta, jax.random.PRNGKey(seed))
    estimate = jax.jit(est.estimate)
    total = jnp.zeros_like(theta)
    for i in range(-(-EPISODE // truncation)):
        g, state, _ = estimate(theta, state, jax.random.PRNGKey(1000 * seed + i + 1))
        total = total + g * truncation / EPISODE
    return np.asarray(total)


def schedule_values(theta: jax.Array) -> np.ndarray:
    """The learning rates at the knots (t = 0, T/4, T/2, 3T/4, T-1)."""
    return np.exp(np.asarray(theta))


def _fmt_lrs(theta):
    return " ".join(f"{v:.3g}" for v in schedule_values(theta))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="outer (meta) steps per estimator")
    ap.add_argument("--truncation", type=int, default=10, help="K for PES, TES and TBPTT")
    ap.add_argument("--pes-only", action="store_true", help="skip the comparison")
    ap.add_argument("--seeds", type=int, default=1,
                    help="also repeat every meta-training with this many seeds and summarise")
    args = ap.parse_args(argv)

    t0 = time.time()
    problem = make_problem()
    print(f"inner problem: n={problem.X.shape[0]} d={problem.X.shape[1]}, episode {EPISODE} SGD "
          f"steps, batch {BATCH}; least-squares optimum loss {float(problem.min_loss):.4f}")
    print("all losses below are excess training loss over that optimum, mean over 64 episodes\n")

    grid = constant_grid(problem)
    best_lr, best = min(grid, key=lambda r: r[1]["mean_excess"])
    print("constant learning rates:  lr      mean-over-episode  final")
    for lr, r in grid:
        print(f"                         {lr:<7.3g} {r['mean_excess']:<18.4f} {r['final_excess']:.4f}")
    print(f"best constant lr (by mean over episode): {best_lr:.3g}\n")

    print(f"PES, K={args.truncation}, 8 antithetic pairs, sigma 0.1, adam 0.1 (cosine decay), "
          f"init lr 0.03:")
    print(" outer step  particles loss  eval mean-excess  eval final-excess")
    theta, log = meta_train(problem, "pes", steps=args.steps, truncation_length=args.truncation,
                            log_every=max(1, args.steps // 6))
    for r in log:
        print(f" {r['step']:>10}  {r['meta_loss']:>14.4f}  {r['mean_excess']:>16.4f}  "
              f"{r['final_excess']:>17.4f}")
    results = [(f"pes K={args.truncation}", theta, evaluate(problem, theta))]
    if not args.pes_only:
        results += compare_estimators(problem, args.steps, args.truncation)

    print(f"\n{'schedule':<16} {'lr at t=0, T/4, T/2, 3T/4, T':<34} {'mean-excess':>11} {'final-excess':>12}")
    print(f"{'best constant':<16} {_fmt_lrs(jnp.full(N_KNOTS, np.log(best_lr))):<34} "
          f"{best['mean_excess']:>11.4f} {best['final_excess']:>12.4f}")
    for label, th, r in results:
        print(f"{label:<16} {_fmt_lrs(th):<34} {r['mean_excess']:>11.4f} {r['final_excess']:>12.4f}")

    if not args.pes_only:
        lr0 = 0.5
        print(f"\nd(mean-over-episode loss)/d(knots) at constant lr {lr0} as truncated BPTT sees it,")
        print(f"mean over 32 episodes (K={EPISODE}: the whole episode, the true gradient):")
        k = args.truncation
        for trunc in (max(1, k // 2), k, 2 * k, EPISODE):
            g = horizon_gradient(problem, jnp.full(N_KNOTS, np.log(lr0)), trunc)
            print(f"  K={trunc:<4} " + " ".join(f"{v:+.4f}" for v in g))

    if args.seeds > 1:
        runs = {label: [(th, r)] for label, th, r in results}
        for seed in range(1, args.seeds):
            th, _ = meta_train(problem, "pes", steps=args.steps, truncation_length=args.truncation,
                               seed=seed)
            runs[f"pes K={args.truncation}"].append((th, evaluate(problem, th)))
            if not args.pes_only:
                for label, th, r in compare_estimators(problem, args.steps, args.truncation, seed):
                    runs[label].append((th, r))
        print(f"\nover {args.seeds} meta-training seeds: mean [min, max]; lrs: exp(mean log-lr)")
        print(f"{'schedule':<16} {'lr at t=0, T/4, T/2, 3T/4, T':<34} {'mean-excess':<24} final-excess")
        for label, rows in runs.items():
            th = jnp.mean(jnp.stack([t for t, _ in rows]), axis=0)
            cells = []
            for k in ("mean_excess", "final_excess"):
                v = np.array([r[k] for _, r in rows])
                cells.append(f"{v.mean():.4f} [{v.min():.4f}, {v.max():.4f}]")
            print(f"{label:<16} {_fmt_lrs(th):<34} {cells[0]:<24} {cells[1]}")
    print(f"\ntotal time {time.time() - t0:.1f} s")
    return {"grid": grid, "best_lr": best_lr, "results": results}


def compare_estimators(problem: Problem, steps: int, truncation: int,
                       seed: int = 0) -> list[tuple[str, jax.Array, dict]]:
    """The same meta-training with full-episode ES, truncated ES (K) and truncated BPTT
    (K/2, K, 2K: the shorter the truncation, the stronger its short-horizon bias).
    Returns (label, learned theta, evaluation) rows."""
    runs = [("full_es", "full_es", {}),
            (f"tes K={truncation}", "tes", {"truncation_length": truncation})]
    runs += [(f"tbptt K={k}", "tbptt", {"truncation_length": k})
             for k in (max(1, truncation // 2), truncation, 2 * truncation)]
    out = []
    for label, name, kw in runs:
        theta, _ = meta_train(problem, name, steps=steps, seed=seed, **kw)
        out.append((label, theta, evaluate(problem, theta)))
    return out


if __name__ == "__main__":
    main()
