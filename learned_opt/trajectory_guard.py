"""Trajectory-level guard: a learned optimizer that ends within a tolerance of a fallback's run.

The per-step guard (``learned_opt.loss_guard``, LGL2O) picks, at every step, the better of two
candidates from the *same* point. That bounds one step, not the outcome: a learned optimizer
whose small steps always lower the loss wins every greedy comparison and can end far above
what the fallback reaches on its own (the short-horizon bias of greedy step selection). This
guard compares *trajectories* instead. The fallback F (default Adam 1e-3) runs its own
trajectory y_t alongside the run x_t, from the same initialisation, on the same training
batches, with its own gradient at its own parameters; the run is never allowed to end (or sit
at a check) behind it by more than a tolerance:

    u_t, s_t' <- candidate.update(g(x_t), s_t, x_t)       x' = x_t + u_t      (the run)
    v_t, r_t' <- fallback.update(g(y_t), r_t, y_t)        y' = y_t + v_t      (F alone)
    l_x = f(x'),  l_y = f(y')                  f = value_fn: loss on this step's guard batch
    m_x <- b m_x + (1-b) l_x,   m_y <- b m_y + (1-b) l_y,   n <- n + 1        (b = ema)
    S_x = m_x / (1 - b^n),      S_y = m_y / (1 - b^n)      bias-corrected EMAs (b = 0: the
                                                           last guard losses themselves)
    check  = t+1 is a multiple of check_every, or t+1 == num_steps, or x' / l_x is non-finite
             (with defer_last_check: not at t+1 == num_steps unless non-finite; final_choice decides)
    last   = t+1 == num_steps
    k      = tol if last else tol_mid          (tol_mid = max(interim_tolerance, tol); inf: none)
    ok     = x', l_x, S_x finite and (S_x <= S_y + k |S_y| or S_y non-finite)
    last:    ok = ok and (l_x <= l_y + tol |l_y| or l_y non-finite)
    switch = check and not ok
    if switch:  x_{t+1} = y',  s_{t+1} = s_t' with keep_state (if finite), else candidate.init(y'),
                m_x, m_y, n <- restart at l_y
    else:       x_{t+1} = x',  s_{t+1} = s_t'
    always:     y_{t+1} = y',  r_{t+1} = r_t'             (the fallback run is never moved)

(g(.) is the gradient on the step's training batch; t counts steps from 0; for a non-negative
loss the kept condition is S_x <= (1 + tol) S_y; "restart at l_y": m_x = m_y = (1-b) l_y and
n = 1, so S_x = S_y = l_y right after a switch and the next check compares the two runs over the
steps since the switch only. The last step also compares the final parameters themselves, l_x
with l_y: the smoothed losses lag, and a learned run that got worse in its last few steps must
not be kept on the strength of its earlier ones.) After a switch the learned optimizer carries on from the
fallback's parameters: with ``keep_state`` (the default) with its own state, moments and step
counter, so a rule conditioned on the fraction of training (``norm_mlp``'s schedule) stays where
it was in the run; without it with a freshly initialised state (its step counter and PRNG key
restart, so a scheduled rule starts its schedule again at full step size and trails Adam again:
on the shipped ``general``'s 1-D conv nets 89% of checks switched and the guarded median speedup
over tuned Adam was 0.85, against 1.00 with the state kept and 1.42 with the interim checks at
50% as well; ``benchmarks/guard_settings.py``). The fallback's parameters and state (y, r) are never touched by the run:
they are exactly those of the fallback run alone from the same initialisation on the same
batches.

**Interim checks.** Only the last check carries the guarantee on the returned parameters; the
checks before it are a rescue (move a run that has fallen behind onto the fallback's better
point and carry on learning from there). A rule with a schedule trails a constant-rate Adam
mid-run by design (large steps keep the loss up until it anneals), so the default checks before
the last step allow ``interim_tolerance`` (default ``DEFAULT_INTERIM_TOLERANCE``) instead of
``tolerance``; ``interim_tolerance=tolerance`` checks every time as strictly as at the end, ``inf``
rescues only non-finite steps.

**Guarantee.** After every check step, in terms of the smoothed guard losses,

    S_run <= S_fallback + tol * |S_fallback|        ((1 + tol) S_fallback for a loss >= 0)

where S_fallback is that of the fallback run alone (smoothed over the same steps, since the last
switch): either the learned trajectory met it and is kept, or the returned parameters *are* the
fallback run's (S_run = S_fallback = its guard loss). With ``num_steps`` given, the final step
is a check, so the returned final parameters are within the tolerance of the fallback run's
final parameters, in smoothed guard loss and in the last guard batch's loss, whatever the
learned optimizer does (or they are the fallback run's final parameters); with
``defer_last_check`` the same holds after :func:`final_choice`, in the loss it was given. Assumptions
and limits:

- it is a statement about guard-batch losses (one batch per step, both trajectories scored on
  the same batch, so the comparison shares the batch noise): the test or full-data loss can
  differ by the minibatch noise (where one batch's loss says little about another's, as on
  tasks memorised to losses of 1e-4 with spikes of 1e-2, the full-data loss of kept learned
  parameters can exceed the fallback's by more than the tolerance), and with ``ema > 0`` S is an
  average over about 1 / (1 - ema) recent guard batches, so a learned trajectory that got worse
  within the last few steps before an intermediate check is judged with that lag (``ema=0``:
  the last guard batch alone, noisier);
- between checks nothing is promised: the run follows the learned optimizer for up to
  ``check_every - 1`` steps and can fall arbitrarily far behind (a non-finite step or guard
  loss is caught at once: it is always an immediate check, which switches, so the run's
  parameters stay finite); without ``num_steps`` the last step is a check only if it falls on
  the schedule;
- the fallback run itself must stay finite (if its smoothed loss is non-finite the learned
  trajectory is kept whenever it is finite), and the initial parameters must be finite;
- a switch is returned as the update ``y' - x``, so ``optax.apply_updates`` lands on ``y'`` up
  to float rounding (relative error ~ eps |x| / |y'|), like ``as_optax``'s updates.

**Deferring the last check** (``defer_last_check=True``, what every report, ``lopt bench`` and
``lopt apply --guard trajectory`` use): the last step is then not checked on its guard batch, and
:func:`final_choice` alone decides between the run's final parameters and the fallback's, on the
loss the caller gives it. Where one batch's loss is mostly noise near the optimum this matters: on
a noisy quadratic model the batch loss is L(x) + sum_i sqrt(s h_i) b_i x_i, whose noise term (standard
deviation sqrt(2 s L(x))) dwarfs L(x) itself once L is small, so the in-loop last check is a coin
flip between two runs that differ by less than the noise. On held-out NQM tasks the shipped
``general`` ended unguarded at 0.80x tuned Adam's (exact) final loss or better on every task, yet
the in-loop last check moved 6 of 8 runs onto the fallback's parameters (``benchmarks/guard_settings.py
--held-out --suite nqm``: rule ``final`` vs ``final+defer``).

**The last check on more data.** One guard batch per step says little about the full loss when
per-example losses are heavy-tailed (measured on a digits MLP memorised to losses ~1e-3: the
kept learned parameters were better on the median batch, per-batch ratio 0.70, and 2x worse on
the mean of 64 batches, because of rare batches 5x worse; a decision on 16 fresh batches still
kept a run that was 2x worse on 8 others, on small conv nets on digits). :func:`final_choice`
makes the final decision on any loss the caller passes (the training set, many batches), with
the same tolerance; ``tasks.training.train(..., finalize=...)`` and every report do it on the
final training loss they report (the whole training split). With it the guarantee is in that
loss: the returned parameters are the fallback run's final ones or within the tolerance of them.

**Cost per step: about 2x an unguarded step.** Besides the caller's forward+backward on the
training batch and the learned optimizer's update: one more forward+backward (the fallback's
gradient at its own parameters, ``grad_fn``), two guard-batch forward passes (``value_fn``) and
the fallback's update. Where gradients dominate the step that is 2x the gradient work plus two
forward passes (a forward is roughly a third of a forward+backward: up to ~2.7x); where the
learned optimizer's own update dominates (small models) it is less (measured on 2 CPU cores,
300-step jitted runs of the shipped ``mlp``: 1.44x the unguarded learned step on
mnist1d_mlp_relu, 1.46x on quadratic_10d). The per-step guard (LGL2O) costs the two forward
passes and the fallback's update, without the extra gradient (1.26x and 1.32x there).

    tx = trajectory_guard(learned_opt.as_optax(lopt, theta), optax.adam(1e-3), num_steps=T)
    state = tx.init(params)                                # or trajectory_guarded(lopt, theta)
    loss, grads = jax.value_and_grad(f)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss,
                               value_fn=lambda p: f(p, guard_batch),
                               grad_fn=lambda p: jax.value_and_grad(f)(p, batch))
    params = optax.apply_updates(params, updates)
    switch_rate(state)           # switches / checks;  state.switches, state.last_switch_step
    params, state = final_choice(state, params, full_loss)   # optional: the last check on more data

Everything is selected with ``jnp.where`` per leaf: jit-able and vmappable (no Python branching
on values). ``tasks.training.train(..., guarded=True)`` passes both functions.
"""
from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from chex import ArrayTree as PyTree

from learned_opt.errors import LearnedOptError
from learned_opt.loss_guard import all_finite, find_state
from learned_opt.optax_adapter import as_optax

DEFAULT_CHECK_EVERY = 50
DEFAULT_TOLERANCE = 0.05
DEFAULT_EMA = 0.9
DEFAULT_INTERIM_TOLERANCE = 0.5
DEFAULT_KEEP_STATE = True
DEFAULT_DEFER_LAST_CHECK = False

_HOW_TO_CALL = ("call tx.update(grads, state, params, value=loss, "
                "value_fn=lambda p: loss_fn(p, guard_batch), "
                "grad_fn=lambda p: jax.value_and_grad(loss_fn)(p, batch))")


class TrajectoryGuardState(NamedTuple):
    """The guard's state (see the module docstring for the rule).

    ``candidate``: the learned optimizer's state along the run; ``fallback``, ``fallback_params``:
    the fallback run's own state and parameters (never moved by the run); ``ema_learned``,
    ``ema_fallback``: float32 EMA accumulators of the run's and the fallback run's guard-batch
    losses, ``ema_weight``: their total weight 1 - ema^n after n steps (0 before the first), so
    the smoothed losses are ``ema_* / ema_weight`` (see :func:`smoothed_losses`);
    ``steps``: int32 steps taken; ``checks``: int32 checks made (scheduled ones plus non-finite
    steps); ``switches``: int32 checks that moved the run to the fallback's parameters;
    ``last_switch_step``: int32 index (0-based) of the step that last switched, -1 if none;
    ``following_learned``: bool, False when the latest check switched, True when it kept the
    run's own learned trajectory (and before the first check; after :func:`final_choice`, False
    when the returned parameters are the fallback run's: it switched, or the last step did);
    ``tolerance``: float32, the
    guard's (read by :func:`final_choice`)."""

    candidate: PyTree
    fallback: PyTree
    fallback_params: PyTree
    ema_learned: jax.Array
    ema_fallback: jax.Array
    ema_weight: jax.Array
    steps: jax.Array
    checks: jax.Array
    switches: jax.Array
    last_switch_step: jax.Array
    following_learned: jax.Array
    tolerance: jax.Array


def _select(pred, a, b):
    """Per leaf ``a if pred else b``, in ``b``'s dtype."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y).astype(jnp.result_type(y)), a, b)


def trajectory_guard(candidate: optax.GradientTransformation,
                     fallback: optax.GradientTransformation | None = None,
                     check_every: int = DEFAULT_CHECK_EVERY, tolerance: float = DEFAULT_TOLERANCE,
                     num_steps: int | None = None, ema: float = DEFAULT_EMA,
                     interim_tolerance: float | None = DEFAULT_INTERIM_TOLERANCE,
                     keep_state: bool = DEFAULT_KEEP_STATE,
                     defer_last_check: bool = DEFAULT_DEFER_LAST_CHECK
                     ) -> optax.GradientTransformationExtraArgs:
    """Guard ``candidate`` (any optax transformation, e.g. ``learned_opt.as_optax(lopt, theta)``)
    with a ``fallback`` run (default ``optax.adam(1e-3)``) kept alongside; see the module
    docstring for the rule, the guarantee and the cost (about 2x per step).

    ``check_every``: steps between checks (a check after every ``check_every``-th step);
    ``tolerance``: relative slack of the kept condition; ``num_steps``: the run's length, which
    makes its last step a check (no final check without it); ``ema``: smoothing of the guard
    losses in [0, 1), 0 compares the last guard losses. ``interim_tolerance`` (None: the same as
    ``tolerance``): the slack of the checks before the last step (at least ``tolerance``), ``inf``
    for none (only non-finite steps switch before the end); the last step and :func:`final_choice`
    always use ``tolerance``, so the guarantee on the returned parameters is unchanged.
    ``keep_state``: after a switch the candidate keeps its own state (its moments and step
    counter, so a time-conditioned rule stays where it was in its schedule) instead of a fresh
    ``candidate.init`` at the fallback's parameters (a non-finite state is always replaced).
    ``defer_last_check``: the last step is not checked on its guard batch (a non-finite step still
    switches at once); the caller makes the final decision with :func:`final_choice` on a better
    estimate of the final loss, and must call it: only then is the guarantee kept (in that loss).

    ``update(grads, state, params, *, value_fn, grad_fn, value=None, **extra)``: ``value_fn(p)``
    is the scalar loss at ``p`` on this step's guard batch, ``grad_fn(p)`` returns ``(loss,
    grads)`` at ``p`` on this step's training batch (the batch ``grads`` came from); both are
    required. ``value`` (the loss at ``params``) goes to the candidate; the fallback gets its own
    loss; other extra arguments go to both (a plain optax transformation ignores them).
    """
    if fallback is None:
        fallback = optax.adam(1e-3)
    for name, tx in (("candidate", candidate), ("fallback", fallback)):
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise LearnedOptError(f"trajectory_guard: {name} must be an optax transformation, "
                                  f"got {tx!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, numbers.Integral) or check_every < 1:
        raise LearnedOptError(f"trajectory_guard: check_every must be an integer >= 1, "
                              f"got {check_every!r}")
    if not (isinstance(tolerance, numbers.Real) and 0.0 <= tolerance < float("inf")):
        raise LearnedOptError(f"trajectory_guard: tolerance must be a finite number >= 0, "
                              f"got {tolerance!r}")
    if num_steps is not None and (isinstance(num_steps, bool)
                                  or not isinstance(num_steps, numbers.Integral) or num_steps < 1):
        raise LearnedOptError(f"trajectory_guard: num_steps must be None or an integer >= 1, "
                              f"got {num_steps!r}")
    if not (isinstance(ema, numbers.Real) and 0.0 <= ema < 1.0):
        raise LearnedOptError(f"trajectory_guard: ema must be a number in [0, 1), got {ema!r}")
    if interim_tolerance is None:
        interim_tolerance = tolerance
    if (isinstance(interim_tolerance, bool) or not isinstance(interim_tolerance, numbers.Real)
            or not interim_tolerance >= 0.0):
        raise LearnedOptError(f"trajectory_guard: interim_tolerance must be a number >= 0 or inf "
                              f"(None: the tolerance), got {interim_tolerance!r}")
    if not isinstance(keep_state, bool):
        raise LearnedOptError(f"trajectory_guard: keep_state must be True or False, "
                              f"got {keep_state!r}")
    if not isinstance(defer_last_check, bool):
        raise LearnedOptError(f"trajectory_guard: defer_last_check must be True or False, "
                              f"got {defer_last_check!r}")
    if defer_last_check and num_steps is None:
        raise LearnedOptError("trajectory_guard: defer_last_check needs num_steps (the step whose "
                              "check final_choice makes instead)")
    cand = optax.with_extra_args_support(candidate)
    fb = optax.with_extra_args_support(fallback)
    beta, tol, check_every = float(ema), float(tolerance), int(check_every)
    tol_mid = max(float(interim_tolerance), tol)     # never stricter than the last check
    num_steps = None if num_steps is None else int(num_steps)

    def init_fn(params):
        zero_i, zero_f = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
        return TrajectoryGuardState(
            cand.init(params), fb.init(params), jax.tree.map(jnp.asarray, params),
            zero_f, zero_f, zero_f, zero_i, zero_i, zero_i, jnp.full((), -1, jnp.int32),
            jnp.ones((), bool), jnp.full((), tol, jnp.float32))

    def update_fn(updates, state, params=None, *, value_fn: Callable | None = None,
                  grad_fn: Callable | None = None, value=None, **extra):
        if value_fn is None:
            raise LearnedOptError("the trajectory guard needs value_fn, the loss on a guard batch "
                                  "as a function of the parameters: " + _HOW_TO_CALL)
        if grad_fn is None:
            raise LearnedOptError("the trajectory guard needs grad_fn, (loss, grads) on the "
                                  "training batch as a function of the parameters (for the "
                                  "fallback's own gradient): " + _HOW_TO_CALL)
        if params is None:
            raise LearnedOptError("the trajectory guard needs the current parameters: "
                                  + _HOW_TO_CALL)
        t = state.steps
        # the run: the learned optimizer from the run's parameters
        u_l, s_l = cand.update(updates, state.candidate, params,
                               **(extra if value is None else dict(extra, value=value)))
        x_new = optax.apply_updates(params, u_l)
        # the fallback run: its own gradient at its own parameters, same training batch
        y = state.fallback_params
        l_y, g_y = grad_fn(y)
        u_f, s_f = fb.update(g_y, state.fallback, y, **dict(extra, value=l_y))
        y_new = optax.apply_updates(y, u_f)
        # both scored on this step's guard batch, smoothed
        loss_x = jnp.asarray(value_fn(x_new), jnp.float32)
        loss_y = jnp.asarray(value_fn(y_new), jnp.float32)
        weight = beta * state.ema_weight + (1.0 - beta)           # 1 - beta^n
        m_l = beta * state.ema_learned + (1.0 - beta) * loss_x
        m_f = beta * state.ema_fallback + (1.0 - beta) * loss_y
        s_run, s_fb = m_l / weight, m_f / weight
        finite_x = jnp.isfinite(loss_x) & all_finite(x_new)
        scheduled = (t + 1) % check_every == 0
        last = jnp.zeros((), bool) if num_steps is None else t + 1 == num_steps
        slack = jnp.where(last, jnp.float32(tol), jnp.float32(tol_mid))
        # (s_run - s_fb <= inf * |s_fb| is True for finite values, also when s_fb = 0)
        within = (s_run - s_fb <= slack * jnp.abs(s_fb)) | (slack == jnp.inf)
        kept_ok = finite_x & jnp.isfinite(s_run) & (within | ~jnp.isfinite(s_fb))
        if defer_last_check:
            scheduled = scheduled & ~last          # final_choice decides after the last step
        elif num_steps is not None:
            scheduled = scheduled | last
            # the final parameters themselves must also be within the tolerance on this batch
            kept_ok = kept_ok & (~last | (loss_x - loss_y <= tol * jnp.abs(loss_y))
                                 | ~jnp.isfinite(loss_y))
        check = scheduled | ~finite_x
        switch = check & ~kept_ok
        restart = jnp.float32(1.0 - beta) * loss_y     # after a switch both EMAs restart at l_y
        # a switch moves the run onto the fallback's parameters (y' - x, applied by the caller)
        to_fallback = jax.tree.map(lambda a, p: (a - p).astype(jnp.result_type(p)), y_new, params)
        new_updates = _select(switch, to_fallback,
                              jax.tree.map(lambda u, p: u.astype(jnp.result_type(p)), u_l, params))
        new_state = TrajectoryGuardState(
            candidate=_select(switch & ~(keep_state & all_finite(s_l)), cand.init(y_new), s_l),
            fallback=s_f,
            fallback_params=y_new, ema_learned=jnp.where(switch, restart, m_l),
            ema_fallback=jnp.where(switch, restart, m_f),
            ema_weight=jnp.where(switch, jnp.float32(1.0 - beta), weight), steps=t + 1,
            checks=state.checks + check.astype(jnp.int32),
            switches=state.switches + switch.astype(jnp.int32),
            last_switch_step=jnp.where(switch, t, state.last_switch_step),
            following_learned=jnp.where(check, ~switch, state.following_learned),
            tolerance=state.tolerance)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def smoothed_losses(state: PyTree) -> tuple[jax.Array, jax.Array]:
    """``(S_run, S_fallback)``: the bias-corrected smoothed guard losses after the latest step
    (after any switch, so equal right after one; NaN before the first step). ``state`` is a
    ``TrajectoryGuardState`` or an optax state that contains one."""
    g = _require(state, "smoothed_losses")
    return g.ema_learned / g.ema_weight, g.ema_fallback / g.ema_weight


def find_trajectory_guard_state(state: PyTree) -> TrajectoryGuardState | None:
    """The ``TrajectoryGuardState`` inside an optax state (itself, or nested e.g. in
    ``optax.chain``'s tuple); None if there is none. Raises if there are several."""
    return find_state(state, TrajectoryGuardState, "trajectory-guard", "switch_rate")


def _require(state, what: str) -> TrajectoryGuardState:
    g = find_trajectory_guard_state(state)
    if g is None:
        raise LearnedOptError(f"{what} needs the state of a trajectory guard "
                              "(built with trajectory_guard(...) or trajectory_guarded(...))")
    return g


def switch_rate(state: PyTree) -> jax.Array:
    """Fraction of the checks so far that switched the run to the fallback's parameters,
    ``switches / max(checks, 1)`` (0 before any check). ``state`` is a ``TrajectoryGuardState``
    or an optax state that contains one."""
    g = _require(state, "switch_rate")
    return g.switches.astype(jnp.float32) / jnp.maximum(g.checks, 1).astype(jnp.float32)


def final_choice(state: PyTree, params: PyTree, loss_fn: Callable) -> tuple[PyTree, PyTree]:
    """The last check on more data than one guard batch: after the last step, keep the run's
    ``params`` only if ``loss_fn(params) <= loss_fn(y) + tol * |loss_fn(y)|`` (the guard's
    tolerance; and both
    are finite, or the fallback's is not), else return the fallback run's final parameters
    ``y``. Returns ``(params, state)`` with the guard's counters updated (one more check, one
    more switch when it switched; the learned optimizer's state is left as it was: the run ends
    here, build a new guard to train on). ``loss_fn`` is
    whatever estimate of the final loss the caller can afford, e.g. the mean over many training
    batches or the full training set: the in-loop checks see one guard batch per step, and
    where per-example losses are heavy-tailed (a few examples dominate the mean, as when a
    model has memorised all but a few) a handful of batches can rank two parameter sets
    differently from the full data. Jit-able and vmappable. ``state`` is the guard's state or
    an optax state containing one."""
    g = _require(state, "final_choice")
    l_x = jnp.asarray(loss_fn(params), jnp.float32)
    l_y = jnp.asarray(loss_fn(g.fallback_params), jnp.float32)
    keep = (jnp.isfinite(l_x) & all_finite(params)
            & ((l_x - l_y <= g.tolerance * jnp.abs(l_y)) | ~jnp.isfinite(l_y)))
    switch = ~keep
    # a run whose last step itself switched already sits on the fallback's parameters: keeping
    # them keeps the fallback's, so it does not follow a learned trajectory either way
    on_fallback = switch | (g.last_switch_step == g.steps - 1)
    new_g = g._replace(checks=g.checks + 1, switches=g.switches + switch.astype(jnp.int32),
                       last_switch_step=jnp.where(switch, g.steps - 1, g.last_switch_step),
                       following_learned=~on_fallback)
    chosen = _select(switch, g.fallback_params, params)
    new_state = jax.tree.map(lambda x: new_g if x is g else x, state,
                             is_leaf=lambda x: isinstance(x, TrajectoryGuardState))
    return chosen, new_state


def trajectory_guarded(lopt, theta: PyTree, fallback: optax.GradientTransformation | None = None,
                       check_every: int = DEFAULT_CHECK_EVERY,
                       tolerance: float = DEFAULT_TOLERANCE, num_steps: int | None = None,
                       ema: float = DEFAULT_EMA,
                       interim_tolerance: float | None = DEFAULT_INTERIM_TOLERANCE,
                       keep_state: bool = DEFAULT_KEEP_STATE,
                       defer_last_check: bool = DEFAULT_DEFER_LAST_CHECK
                       ) -> optax.GradientTransformationExtraArgs:
    """``trajectory_guard(as_optax(lopt, theta, num_steps), fallback, ...)``: a learned
    optimizer whose run is moved onto ``fallback``'s (default Adam 1e-3) whenever it trails that
    run by more than ``tolerance`` at a check."""
    return trajectory_guard(as_optax(lopt, theta, num_steps), fallback, check_every=check_every,
                            tolerance=tolerance, num_steps=num_steps, ema=ema,
                            interim_tolerance=interim_tolerance, keep_state=keep_state,
                            defer_last_check=defer_last_check)


__all__ = ["TrajectoryGuardState", "trajectory_guard", "switch_rate", "smoothed_losses", "final_choice",
           "find_trajectory_guard_state", "trajectory_guarded", "DEFAULT_CHECK_EVERY",
           "DEFAULT_TOLERANCE", "DEFAULT_EMA", "DEFAULT_INTERIM_TOLERANCE", "DEFAULT_KEEP_STATE",
           "DEFAULT_DEFER_LAST_CHECK"]
