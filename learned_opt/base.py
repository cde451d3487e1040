"""The LearnedOptimizer interface shared by every architecture, and the step they all share.

theta is the pytree of meta-parameters. All functions are pure and jit-able:

    init(key) -> theta
    opt_init(theta, params, num_steps) -> state
    opt_update(theta, state, grads, params, loss, key) -> (new_params, state)

``as_optax(theta)`` wraps a trained optimizer as an
``optax.GradientTransformationExtraArgs`` (the loss is passed as ``value=``).

**The shared step.** Every architecture's ``opt_update`` is the one written here; an
architecture fills in three hooks (``init_slots``, ``features``, ``apply``). With ``z`` the
DMD snapshot window (``learned_opt.dmd``, kept only when the config has ``dmd_window > 0``):

    z'          = dmd.push(z, g)                         (dmd_window > 0)
    x, state'   = features(theta, state, g, p, loss)     per tensor: p.shape + (C,); state'
                                                         has its accumulators updated and
                                                         ``iteration`` advanced
    x           = [x, dmd.features(z')]                  DMD channels appended (dmd_window > 0;
                                                         ``concat_inputs``)
    u, state'   = apply(theta, state', x, p)             per tensor: the step, shaped like p
    p'          = p - u                                  (cast back to p's dtype)

``opt_init`` builds ``State(**init_slots(theta, params), iteration=0, dmd=z_0)``. A params
tree without leaves only counts the step. :class:`PerParameterMLP` adds the LOLv2 step rule
shared by the MLP-headed architectures: ``d, m = MLP(x)``,
``u = step_mult * s * d * exp(exp_mult * m)`` with a per-tensor multiplier ``s``
(``step_scales``, 1 unless an architecture learns one).

**Configs** are frozen dataclasses deriving from :class:`LOptConfig`: each declares its
value checks once, in ``checks()`` (``(field, ok, requirement)`` triples, the DMD fields'
from ``dmd.checks``), and the first failing one raises
``LearnedOptError("<Config>.<field> must be <requirement>, got <value>")``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar, Iterator

import jax
import jax.numpy as jnp
from chex import Array, ArrayTree as PyTree, PRNGKey

from learned_opt import dmd
from learned_opt.checks import Check, check_values
from learned_opt.errors import CheckpointError, LearnedOptError  # noqa: F401 (re-exported)
from learned_opt.nets import apply_step_mlp, lolv2_step

# ----------------------------------------------------------------------------- configs
def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, d: dict):
    """Build a frozen dataclass from a dict, rejecting unknown keys with a clear error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise LearnedOptError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(names)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**clean)


class LOptConfig:
    """Base of every architecture's frozen config dataclass (fields ``dmd_window``, ``dmd_rank``
    included): the checks are declared in :meth:`checks` and run on construction."""

    dmd_window: int
    dmd_rank: int

    def checks(self) -> Iterator[Check]:
        """``(field, ok, requirement)`` for each rule; subclasses extend it."""
        yield from dmd.checks(self.dmd_window, self.dmd_rank)

    def __post_init__(self):
        check_values(self, self.checks(), type(self).__name__)

    @property
    def num_dmd_inputs(self) -> int:
        """DMD channels appended to the network inputs (0 when DMD is off)."""
        return dmd.num_features(self.dmd_rank) if self.dmd_window else 0


# ----------------------------------------------------------------------------- optimizers
class LearnedOptimizer:
    """Base class. Subclasses set ``architecture``, ``Config`` (a frozen dataclass) and
    ``State`` (a NamedTuple with fields ``iteration`` and ``dmd``), and implement ``init``,
    ``init_slots``, ``features`` and ``apply`` (see the module docstring); or override
    ``opt_init`` / ``opt_update`` altogether."""

    architecture: ClassVar[str] = "base"
    Config: ClassVar[type] = None  # type: ignore[assignment]
    State: ClassVar[type] = None  # type: ignore[assignment]
    # Whether opt_update uses its ``key``; the optax adapter only carries a PRNG
    # key in its state when this is True.
    needs_key: ClassVar[bool] = True

    def __init__(self, config=None, **overrides):
        if config is None:
            config = config_from_dict(self.Config, overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    # -- the interface
    def init(self, key: PRNGKey) -> PyTree:
        raise NotImplementedError

    def opt_init(self, theta: PyTree, params: PyTree, num_steps: int | None = None) -> PyTree:
        return self.State(**self.init_slots(theta, params), iteration=jnp.zeros((), jnp.int32),
                          dmd=self.init_dmd(params))

    def opt_update(self, theta, state, grads, params, loss=None, key=None):
        loss = jnp.zeros((), jnp.float32) if loss is None else loss
        dmd_state = self.push_dmd(state.dmd, grads)
        if not jax.tree.leaves(params):   # nothing to update: just count the step
            return params, state._replace(iteration=state.iteration + 1, dmd=dmd_state)
        inputs, new_state = self.features(theta, state, grads, params, loss)
        inputs = self.append_dmd(inputs, dmd_state)
        steps, new_state = self.apply(theta, new_state, inputs, params)
        new_params = jax.tree.map(lambda p, u: (p - u).astype(jnp.result_type(p)), params, steps)
        return new_params, new_state._replace(dmd=dmd_state)

    def adapt_theta(self, theta: PyTree, source: "LearnedOptimizer") -> PyTree | None:
        """``source``'s meta-parameters ``theta`` mapped onto this optimizer's when this one only
        adds meta-parameters that can start as a no-op (fine-tuning a trained rule with a new
        input, ``init_from``); None when there is no such map (the default)."""
        return None

    # -- the hooks
    def init_slots(self, theta: PyTree, params: PyTree) -> dict:
        """The architecture's own state fields at step 0 (all but ``iteration`` and ``dmd``)."""
        raise NotImplementedError

    def features(self, theta, state, grads, params, loss) -> tuple[PyTree, PyTree]:
        """``(inputs, new_state)``: this step's network inputs without the DMD channels
        (per tensor, leaves ``p.shape + (C,)``, unless :meth:`concat_inputs` says otherwise)
        and the state with the feature accumulators updated and ``iteration`` advanced
        (``dmd`` is the base's)."""
        raise NotImplementedError

    def apply(self, theta, state, inputs, params) -> tuple[PyTree, PyTree]:
        """``(steps, new_state)``: the network on the full inputs; ``steps`` is shaped like
        ``params`` and subtracted from it; the state gets any recurrent network state updated."""
        raise NotImplementedError

    def concat_inputs(self, inputs: PyTree, extra: PyTree) -> PyTree:
        """``inputs`` with the per-tensor channels ``extra`` (leaves ``p.shape + (C,)``)
        appended; an architecture whose inputs have another layout overrides it."""
        return jax.tree.map(lambda x, f: jnp.concatenate([x, f], axis=-1), inputs, extra)

    def advance(self, state, **slots):
        """``state`` with ``slots`` replaced and ``iteration`` advanced by one."""
        return state._replace(iteration=state.iteration + 1, **slots)

    # -- DMD features (learned_opt.dmd), wired here once for every architecture
    @property
    def uses_dmd(self) -> bool:
        return bool(getattr(self.config, "dmd_window", 0))

    def init_dmd(self, params: PyTree) -> dmd.DMDState | None:
        return dmd.init(params, self.config.dmd_window) if self.uses_dmd else None

    def push_dmd(self, dmd_state: dmd.DMDState | None, grads: PyTree) -> dmd.DMDState | None:
        return dmd.push(dmd_state, grads) if self.uses_dmd else dmd_state

    def append_dmd(self, inputs: PyTree, dmd_state: dmd.DMDState | None) -> PyTree:
        """``inputs`` with the DMD features of ``dmd_state`` (already pushed) appended."""
        if not self.uses_dmd:
            return inputs
        return self.concat_inputs(inputs, dmd.features(dmd_state, self.config.dmd_rank))

    # -- misc
    def as_optax(self, theta: PyTree, num_steps: int | None = None):
        from learned_opt.optax_adapter import as_optax
        return as_optax(self, theta, num_steps)

    def describe(self) -> dict:
        return {"architecture": self.architecture, "config": config_to_dict(self.config)}

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(config_to_dict(self.config))})"


class PerParameterMLP(LearnedOptimizer):
    """Architectures whose step is LOLv2's: one MLP ``theta["mlp"]`` (2 outputs d, m) applied
    to every parameter's inputs, ``u = step_mult * s * d * exp(exp_mult * m)``. The config
    has ``step_mult`` and ``exp_mult``; ``s`` comes from :meth:`step_scales`."""

    def constant_channels(self) -> tuple[int, int] | None:
        """``(a, b)``: input channels ``a..b-1`` hold the same value for every parameter of a
        tensor (time features, per-tensor context), so the network's first layer computes their
        contribution once per tensor (``nets.apply_mlp``); None when there are none."""
        return None

    def network(self, theta, inputs: Array) -> tuple[Array, Array]:
        """Apply the MLP to one tensor's inputs; returns ``(d, m)`` shaped like the tensor."""
        return apply_step_mlp(theta["mlp"], inputs, self.constant_channels())

    def step(self, theta, inputs: Array, scale: Array | None = None) -> Array:
        """``step_mult [* scale] * d * exp(exp_mult * m)`` for one tensor (subtracted from p)."""
        d, m = self.network(theta, inputs)
        return lolv2_step(d, m, self.config.step_mult, self.config.exp_mult, scale)

    def step_scales(self, theta, state) -> Array | None:
        """Per-tensor step multipliers ``s`` (``(T,)``, tensors in ``jax.tree.leaves`` order),
        or None for ``s = 1``."""
        return None

    def apply(self, theta, state, inputs, params):
        scales = self.step_scales(theta, state)
        leaves, treedef = jax.tree.flatten(inputs)
        steps = [self.step(theta, x, None if scales is None else scales[j])
                 for j, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, steps), state


_REGISTRY: dict[str, type[LearnedOptimizer]] = {}


def register(cls: type[LearnedOptimizer]) -> type[LearnedOptimizer]:
    _REGISTRY[cls.architecture] = cls
    return cls


def architectures() -> dict[str, type[LearnedOptimizer]]:
    return dict(_REGISTRY)


def make(architecture: str, config: dict | None = None) -> LearnedOptimizer:
    """Build an optimizer by architecture name and a config dict."""
    if architecture not in _REGISTRY:
        raise LearnedOptError(
            f"unknown learned-optimizer architecture {architecture!r}; "
            f"known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[architecture]
    return cls(config_from_dict(cls.Config, config or {}))


__all__ = ["LearnedOptimizer", "PerParameterMLP", "LOptConfig", "register", "architectures", "make",
           "config_to_dict", "config_from_dict", "LearnedOptError", "CheckpointError"]
