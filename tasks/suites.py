"""Named held-out evaluation suites: fixed lists of tasks with a fixed step budget.

A suite is ``num_tasks`` tasks of one registered family, their configs drawn with
``family.sample`` from keys split off ``SUITE_SEED`` (a stream no meta-training run or
periodic evaluation uses; task i gets ``family.sample(keys[i])`` and trains with
``keys[num_tasks + i]`` of ``split(PRNGKey(seed), 2 * num_tasks)``), each trained for
``num_steps`` steps. The same name always
means the same tasks, initialisations and batches, on any machine.

Kinds, relative to the default meta-training distribution (``mnist1d_mlp``):
- ``in_distribution``: unseen configs and seeds of the meta-training family, at the
  meta-training horizon;
- ``long_horizon``: the same tasks, 5x longer than the longest meta-training episode;
- ``ood_dataset``: the same model family on another dataset;
- ``ood_architecture``: another architecture (deeper/wider MLPs, other activations,
  another kind of model).
"""
from __future__ import annotations

import dataclasses

from tasks.base import TaskError, TaskFamily
from tasks.registry import get_family, list_families

SUITE_SEED = 20_240_917   # the held-out stream of meta_train.compare (same tasks)
KINDS = ("in_distribution", "long_horizon", "ood_dataset", "ood_architecture")


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    name: str
    kind: str
    family: str
    family_kwargs: dict
    num_tasks: int
    num_steps: int
    description: str
    seed: int = SUITE_SEED

    def get_family(self) -> TaskFamily:
        return get_family(self.family, **self.family_kwargs)


_ARCH_SHIFT = {"hidden_sizes": [128, 64, 32], "activations": ["sigmoid", "elu", "softplus"]}
_SPECS = [
    SuiteSpec("mnist1d_mlp", "in_distribution", "mnist1d_mlp", {}, 8, 400,
              "8 unseen tasks of the default family (MLP (32, 32) on MNIST-1D), 400 steps"),
    SuiteSpec("mnist1d_mlp_long", "long_horizon", "mnist1d_mlp", {}, 8, 2000,
              "the same 8 tasks for 2000 steps (5x the longest default meta-training episode)"),
    SuiteSpec("digits_mlp", "ood_dataset", "digits_mlp", {}, 4, 400,
              "4 MLP (32, 32) tasks on sklearn digits (8x8), 400 steps"),
    SuiteSpec("mnist1d_mlp_deep", "ood_architecture", "mnist1d_mlp", _ARCH_SHIFT, 4, 400,
              "4 MLPs (128, 64, 32) with sigmoid/elu/softplus on MNIST-1D, 400 steps"),
    SuiteSpec("quadratic_30d", "ood_architecture", "quadratic", {"dim": 30, "max_cond": 1000.0}, 4, 400,
              "4 noisy 30-d quadratics, condition number up to 1000, 400 steps"),
]
# Suites over task kinds that other modules register (conv, autoencoder, sequence, NQM,
# parametric classifiers): listed only when their family is registered.
_OPTIONAL = [
    SuiteSpec("image_mlp", "ood_architecture", "image_mlp", {}, 4, 400,
              "4 parametric image classifiers (sampled depth, widths, activation, batch, dataset), "
              "400 steps"),
    SuiteSpec("digits_conv", "ood_architecture", "digits_conv", {}, 4, 400,
              "4 small conv nets on digits (8x8), 400 steps"),
    SuiteSpec("mnist1d_conv", "ood_architecture", "mnist1d_conv", {}, 4, 400,
              "4 small 1-D conv nets on MNIST-1D, 400 steps"),
    SuiteSpec("digits_autoencoder", "ood_architecture", "digits_autoencoder", {}, 4, 400,
              "4 MLP autoencoders on digits, 400 steps"),
    SuiteSpec("text_rnn", "ood_architecture", "text_rnn", {}, 4, 400,
              "4 character-level RNN language models, 400 steps"),
    SuiteSpec("nqm", "ood_architecture", "nqm", {}, 4, 400,
              "4 noisy quadratic models (sampled conditioning and noise), 400 steps"),
]


def _available() -> dict[str, SuiteSpec]:
    families = list_families()
    return {s.name: s for s in _SPECS + _OPTIONAL if s.family in families}


def list_suites() -> dict[str, str]:
    """{suite name: one-line description (kind, tasks, steps)}."""
    return {name: f"[{s.kind}] {s.description}" for name, s in _available().items()}


def get_suite(name: str) -> SuiteSpec:
    suites = _available()
    if name not in suites:
        raise TaskError(f"unknown suite {name!r}; choose one of {', '.join(suites)} (see `lopt tasks`)")
    return suites[name]
