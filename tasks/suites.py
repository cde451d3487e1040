"""Held-out evaluation suites and the seeds of every held-out task stream: defined here only.

A suite is ``num_tasks`` tasks of one registered family, each trained for ``num_steps`` steps.
Task ``i`` of a suite is ``family.sample(keys[i])`` and trains with ``keys[num_tasks + i]`` of
``split(PRNGKey(seed), 2 * num_tasks)`` (:meth:`Suite.tasks`); the same name always means the same
tasks, initialisations and batches, on any machine. Three seeds, three streams that no meta-training
run draws from (meta-training samples its tasks from keys split off the run's own seed):

- ``SUITE_SEED``: every report suite (named suites, and the suites ``lopt report`` derives from a
  checkpoint's meta-training config with :func:`suites_for`);
- ``PERIODIC_EVAL_SEED``: the tasks meta-training evaluates every ``eval_every`` outer steps
  (:func:`periodic_eval_keys`), a separate stream so that tracking progress during meta-training
  never looks at the report's tasks;
- ``HELDOUT_SEED``: the same suites with other tasks (``dataclasses.replace(suite,
  seed=HELDOUT_SEED)``), to check a setting chosen on the report suites on tasks it was not chosen
  on (``meta_train.evaluation.bench.bench_suites``: ``lopt bench --held-out``,
  ``benchmarks/guard_settings.py --held-out``).

Kinds, relative to the meta-training distribution:
- ``in_distribution``: unseen configs and seeds of the meta-training family, at the
  meta-training horizon;
- ``long_horizon``: the same tasks, several times longer than the longest meta-training episode;
- ``ood_dataset``: the same model family on another dataset;
- ``ood_architecture``: another architecture (deeper/wider MLPs, other activations,
  another kind of model).
"""
from __future__ import annotations

import dataclasses
import functools

import jax

from tasks.base import TaskError, TaskFamily
from tasks.registry import get_family

SUITE_SEED = 20_240_917          # report suites
PERIODIC_EVAL_SEED = 10_000_019  # meta-training's periodic evaluation
HELDOUT_SEED = 30_000_023        # held-out checks of a setting chosen on the report suites
KINDS = ("in_distribution", "long_horizon", "ood_dataset", "ood_architecture")


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    kind: str
    family: str                  # a tasks.get_family name
    family_kwargs: dict
    num_tasks: int
    num_steps: int
    description: str
    seed: int = SUITE_SEED

    @functools.cached_property
    def task_family(self) -> TaskFamily:
        """The family object (built once per suite)."""
        return get_family(self.family, **self.family_kwargs)

    @property
    def title(self) -> str:
        """One line for reports: the description, prefixed by the kind when the name is not it."""
        return self.description if self.name == self.kind else f"{self.kind}: {self.description}"

    @functools.cached_property
    def curve(self) -> str:
        """What its loss curves record: ``"expected"``, the tasks' exact expected training loss
        (``Task.expected_loss``: the synthetic quadratics), or ``"batch"``, each step's batch loss."""
        cfgs, _ = self.tasks(1)
        task = self.task_family.task(jax.tree.map(lambda x: x[0], cfgs))
        return "batch" if task.expected_loss is None else "expected"

    def tasks(self, num_tasks: int | None = None):
        """(cfgs with a leading task axis, one training key per task) of the suite's first
        ``num_tasks`` (default: all) tasks: the same tasks, initialisations and batches as in
        the whole suite."""
        cfgs, keys = suite_tasks(self.task_family, self.num_tasks, self.seed)
        if num_tasks is None:
            return cfgs, keys
        if not 1 <= num_tasks <= self.num_tasks:
            raise TaskError(f"suite {self.name!r} has {self.num_tasks} tasks, asked for {num_tasks}")
        return jax.tree.map(lambda x: x[:num_tasks], cfgs), keys[:num_tasks]


def suite_tasks(family: TaskFamily, num_tasks: int, seed: int = SUITE_SEED):
    """``num_tasks`` held-out task configs of ``family`` and their training keys (see the module
    docstring)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_tasks)
    return jax.vmap(family.sample)(keys[:num_tasks]), keys[num_tasks:]


def periodic_eval_keys(n: int, seed: int = PERIODIC_EVAL_SEED) -> jax.Array:
    """``n`` keys for meta-training's periodic evaluation: task ``i`` is
    ``family.sample(split(keys[i])[0])`` (see ``meta_train.trainer``)."""
    return jax.random.split(jax.random.PRNGKey(seed), n)


# Out-of-distribution suites per meta-training family: (kind, description, family, kwargs).
MLP_ARCH_SHIFT = {"hidden_sizes": [128, 64, 32], "activations": ["sigmoid", "elu", "softplus"]}
OOD_FAMILIES = {
    "mnist1d_mlp": [("ood_dataset", "another dataset: sklearn digits (8x8)", "digits_mlp", {}),
                    ("ood_architecture", "another architecture: MLP (128, 64, 32) with sigmoid/elu/"
                     "softplus on MNIST-1D", "mnist1d_mlp", MLP_ARCH_SHIFT)],
    "digits_mlp": [("ood_dataset", "another dataset: MNIST-1D", "mnist1d_mlp", {}),
                   ("ood_architecture", "another architecture: MLP (128, 64, 32) with sigmoid/elu/"
                    "softplus on digits", "digits_mlp", MLP_ARCH_SHIFT)],
    "quadratic": [("ood_dataset", "other quadratics: 30-d, condition number up to 1000",
                   "quadratic", {"dim": 30, "max_cond": 1000.0})],
}


def suites_for(family: str, family_kwargs: dict | None = None, num_tasks: int = 8,
               num_steps: int | None = None, long_factor: int = 5, ood_tasks: int = 4,
               min_episode_length: int | str = "?", max_episode_length: int = 400) -> list[Suite]:
    """The suites a report derives from a meta-training distribution: unseen tasks of the family at
    the horizon H (default: the longest meta-training episode), the same tasks ``long_factor``
    times longer (if > 1), and ``ood_tasks`` tasks of each out-of-distribution family
    (:data:`OOD_FAMILIES`, if > 0)."""
    kwargs = dict(family_kwargs or {})
    longest = int(max_episode_length)
    H = int(num_steps or longest)
    episodes = f"meta-training episodes were {min_episode_length}-{longest} steps"
    out = [Suite("in_distribution", "in_distribution", family, kwargs, num_tasks, H,
                 f"{num_tasks} unseen tasks of the meta-training family `{family}`, {H} steps "
                 f"({episodes})")]
    if long_factor > 1:
        out.append(Suite("long_horizon", "long_horizon", family, kwargs, num_tasks, long_factor * H,
                         f"the same tasks for {long_factor * H} steps "
                         f"({long_factor * H / longest:.1f}x the longest meta-training episode)"))
    if ood_tasks > 0:
        for kind, desc, other, other_kwargs in OOD_FAMILIES.get(family, []):
            out.append(Suite(kind, kind, other, other_kwargs, ood_tasks, H,
                             f"{ood_tasks} tasks of {desc}, {H} steps"))
    return out


_NAMED = [
    Suite("mnist1d_mlp", "in_distribution", "mnist1d_mlp", {}, 8, 400,
          "8 unseen tasks of the default family (MLP (32, 32) on MNIST-1D), 400 steps"),
    Suite("mnist1d_mlp_long", "long_horizon", "mnist1d_mlp", {}, 8, 2000,
          "the same 8 tasks for 2000 steps (5x the longest default meta-training episode)"),
    Suite("digits_mlp", "ood_dataset", "digits_mlp", {}, 4, 400,
          "4 MLP (32, 32) tasks on sklearn digits (8x8), 400 steps"),
    Suite("mnist1d_mlp_deep", "ood_architecture", "mnist1d_mlp", MLP_ARCH_SHIFT, 4, 400,
          "4 MLPs (128, 64, 32) with sigmoid/elu/softplus on MNIST-1D, 400 steps"),
    Suite("quadratic_30d", "ood_architecture", "quadratic", {"dim": 30, "max_cond": 1000.0}, 4, 400,
          "4 noisy 30-d quadratics, condition number up to 1000, 400 steps"),
    Suite("image_mlp", "ood_architecture", "image_mlp", {}, 4, 400,
          "4 parametric image classifiers (sampled depth, widths, activation, batch, dataset), "
          "400 steps"),
    Suite("digits_conv", "ood_architecture", "digits_conv", {}, 4, 400,
          "4 small conv nets on digits (8x8), 400 steps"),
    Suite("mnist1d_conv", "ood_architecture", "mnist1d_conv", {}, 4, 400,
          "4 small 1-D conv nets on MNIST-1D, 400 steps"),
    Suite("digits_autoencoder", "ood_architecture", "digits_autoencoder", {}, 4, 400,
          "4 MLP autoencoders on digits, 400 steps"),
    Suite("text_rnn", "ood_architecture", "text_rnn", {}, 4, 400,
          "4 character-level RNN language models, 400 steps"),
    Suite("nqm", "ood_architecture", "nqm", {}, 4, 400,
          "4 noisy quadratic models (sampled conditioning and noise), 400 steps"),
    Suite("mnist1d_mlp_wide", "ood_architecture", "mnist1d_mlp", {"hidden_sizes": [512, 512]}, 4, 400,
          "width transfer: 4 MLPs (512, 512) on MNIST-1D (16x the (32, 32) default family), 400 steps"),
    Suite("mnist1d_mlp_4096", "ood_architecture", "mnist1d_mlp", {"hidden_sizes": [4096]}, 4, 400,
          "width transfer: 4 one-hidden-layer MLPs (4096) on MNIST-1D (16x the widest layer the "
          "general optimizer was meta-trained on, 256), 400 steps"),
    Suite("mnist1d_mlp_horizon", "long_horizon", "mnist1d_mlp", {}, 2, 20000,
          "horizon transfer: 2 tasks of the default family for 20,000 steps (50x the longest "
          "meta-training episode of the shipped general and default optimizers, 400 steps)"),
    Suite("text_transformer", "ood_architecture", "text_transformer", {}, 4, 400,
          "4 causal transformer character LMs (attention, LayerNorm), 400 steps"),
]
SUITES: dict[str, Suite] = {s.name: s for s in _NAMED}


def list_suites() -> dict[str, str]:
    """{suite name: one-line description (kind, tasks, steps)}."""
    return {name: f"[{s.kind}] {s.description}" for name, s in SUITES.items()}


def get_suite(name: str) -> Suite:
    if not isinstance(name, str) or name not in SUITES:
        raise TaskError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)} (see `lopt tasks`)")
    return SUITES[name]


__all__ = ["Suite", "SUITES", "KINDS", "SUITE_SEED", "PERIODIC_EVAL_SEED", "OOD_FAMILIES",
           "MLP_ARCH_SHIFT", "suite_tasks", "periodic_eval_keys", "suites_for", "list_suites",
           "get_suite"]
