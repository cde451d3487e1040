"""Which architectures the torch bridge steps, and the one error for the rest.

An optimizer is bridged when its class is exactly the registered JAX class of one of
:data:`RULES` (a subclass may change the step, so it is not assumed to match), with any
config of that class, DMD features included. Anything else raises
:class:`UnsupportedOptimizerError`, a ``LearnedOptError`` whose message names the supported
architectures.

None of the bridged architectures uses randomness (their ``needs_key`` is False: JAX's
``opt_update`` ignores its ``key``), so the torch step takes no key and is deterministic.
"""
from __future__ import annotations

from learned_opt.base import LearnedOptimizer
from learned_opt.errors import LearnedOptError
from learned_opt.torch_bridge.adafactor_mlp import AdafactorMLPRule
from learned_opt.torch_bridge.lstm import LSTMRule
from learned_opt.torch_bridge.mlp import MLPRule
from learned_opt.torch_bridge.norm_mlp import NormMLPRule
from learned_opt.torch_bridge.rnn_mlp import RNNMLPRule
from learned_opt.torch_bridge.rule import Rule

RULES: dict[str, type[Rule]] = {r.architecture: r for r in
                                (NormMLPRule, MLPRule, AdafactorMLPRule, RNNMLPRule, LSTMRule)}


class UnsupportedOptimizerError(LearnedOptError):
    """The torch bridge has no step for this optimizer (architecture or config)."""


def supported_architectures() -> list[str]:
    return sorted(RULES)


def make_rule(lopt: LearnedOptimizer, theta) -> Rule:
    """The torch step of ``lopt`` with meta-parameters ``theta``."""
    arch = getattr(lopt, "architecture", type(lopt).__name__)
    rule = RULES.get(arch)
    if rule is None or type(lopt) is not rule.jax_class:
        what = (f"architecture {arch!r}" if rule is None
                else f"{type(lopt).__name__} (a subclass of the bridged {rule.jax_class.__name__})")
        raise UnsupportedOptimizerError(
            f"the torch bridge has no step for {what}; supported architectures: "
            f"{supported_architectures()}")
    return rule(lopt, theta)


__all__ = ["RULES", "UnsupportedOptimizerError", "supported_architectures", "make_rule"]
