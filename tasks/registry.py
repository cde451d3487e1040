"""Named task families and named single tasks (held-out suites and their seeds: tasks/suites.py)."""
from __future__ import annotations

import dataclasses
import inspect
import os

from tasks.autoencoder import AutoencoderFamily
from tasks.base import Task, TaskError, TaskFamily
from tasks.conv import ConvClassifierFamily
from tasks.datasets import DATA_DIR_ENV
from tasks.mlp import MLPClassifierFamily
from tasks.nqm import NQMFamily
from tasks.parametric import ParametricImageMLPFamily
from tasks.quadratic import QuadraticFamily
from tasks.sequence import TextRNNFamily
from tasks.transformer import TextTransformerFamily

@dataclasses.dataclass(frozen=True)
class _FamilySpec:
    cls: type
    fixed: dict        # constructor kwargs the name implies (not overridable)
    description: str


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    family: str
    family_kwargs: dict
    cfg_kwargs: dict   # passed to family.default_cfg
    description: str


_FAMILIES = {
    "quadratic": _FamilySpec(QuadraticFamily, {}, "noisy diagonal quadratics, 10-d, "
                             "condition number log-uniform in [1, 100]"),
    "mnist1d_mlp": _FamilySpec(MLPClassifierFamily, {"dataset": "mnist1d"},
                               "MLP (32, 32) on MNIST-1D (embedded); sampled activation and "
                               "init scale"),
    "digits_mlp": _FamilySpec(MLPClassifierFamily, {"dataset": "digits"},
                              "MLP (32, 32) on 8x8 sklearn digits (embedded); sampled "
                              "activation and init scale"),
    "mlp": _FamilySpec(MLPClassifierFamily, {}, "MLP on any dataset: dataset=NAME, embedded "
                       "or a TFDS dataset prepared in array_record format"),
    "digits_conv": _FamilySpec(ConvClassifierFamily, {"dataset": "digits"},
                               "2-D conv net (8, 16 channels, 3x3, stride 2, avg pool) on 8x8 "
                               "digits; sampled activation and init scale"),
    "mnist1d_conv": _FamilySpec(ConvClassifierFamily, {"dataset": "mnist1d"},
                                "1-D conv net (8, 16 channels, width 3, stride 2, avg pool) on "
                                "MNIST-1D; sampled activation and init scale"),
    "digits_autoencoder": _FamilySpec(AutoencoderFamily, {"dataset": "digits"},
                                      "MLP autoencoder 64-32-8-32-64 on digits, MSE / mean-image "
                                      "MSE; sampled activation and init scale"),
    "image_mlp": _FamilySpec(ParametricImageMLPFamily, {},
                             "MLPs with sampled dataset (mnist1d/digits), depth U{1..3}, widths "
                             "U{16,32,64} per layer, activation U(8 kinds), log init scale "
                             "U[log .5, log 2], batch U{32,64,128}; one compile"),
    "text_rnn": _FamilySpec(TextRNNFamily, {},
                            "character-level GRU (64) language model on Python stdlib docstrings "
                            "(ships with Python), windows of 32; sampled activation and init "
                            "scale; cell=rnn/gru/lstm"),
    "text_transformer": _FamilySpec(TextTransformerFamily, {},
                                    "causal transformer character LM (width 32, 2 heads, 1 block, "
                                    "MLP 128) on Python stdlib docstrings, windows of 32; sampled "
                                    "activation (gelu/relu/silu) and init scale"),
    "nqm": _FamilySpec(NQMFamily, {}, "noisy quadratic model (Zhang et al. 2019), 100-d, gradient "
                       "noise variance s*h; condition number log-uniform in [10, 1e4], s in "
                       "[1e-3, 1]"),
}

_TASKS = {
    "quadratic_10d": _TaskSpec("quadratic", {"dim": 10}, {},
                               "10-d noisy quadratic, condition number 10"),
    **{f"{ds}_mlp_{act}": _TaskSpec(f"{ds}_mlp", {}, {"activation": act},
                                    f"{act} MLP (32, 32) on {label}, init scale 1")
       for ds, label in (("mnist1d", "MNIST-1D"), ("digits", "sklearn digits"))
       for act in ("relu", "tanh")},
    "digits_conv_relu": _TaskSpec("digits_conv", {}, {"activation": "relu"},
                                  "relu 2-D conv net (8, 16) on sklearn digits, init scale 1"),
    "mnist1d_conv_relu": _TaskSpec("mnist1d_conv", {}, {"activation": "relu"},
                                   "relu 1-D conv net (8, 16) on MNIST-1D, init scale 1"),
    "digits_autoencoder_relu": _TaskSpec("digits_autoencoder", {}, {"activation": "relu"},
                                         "relu MLP autoencoder 64-32-8-32-64 on digits, "
                                         "init scale 1"),
    "image_mlp_deep_gelu": _TaskSpec("image_mlp", {}, {
        "dataset": "digits", "depth": 3, "widths": 64, "activation": "gelu", "batch_size": 128},
        "gelu MLP (64, 64, 64) on sklearn digits, batch 128, init scale 1 (image_mlp family)"),
    "image_mlp_tapered_silu": _TaskSpec("image_mlp", {}, {
        "dataset": "mnist1d", "depth": 3, "widths": [64, 32, 16], "activation": "silu",
        "batch_size": 64},
        "silu MLP (64, 32, 16) on MNIST-1D, batch 64, init scale 1 (image_mlp family)"),
    "text_rnn_lm": _TaskSpec("text_rnn", {}, {},
                             "tanh GRU (64) character LM on Python stdlib docstrings, windows of "
                             "32, batch 32, init scale 1"),
    "text_transformer_lm": _TaskSpec("text_transformer", {}, {},
                                     "gelu causal transformer (32 wide, 2 heads, 1 block) character "
                                     "LM on Python stdlib docstrings, batch 32, init scale 1"),
    "nqm_ill_conditioned": _TaskSpec("nqm", {}, {"cond": 1e4, "noise_scale": 0.1},
                                     "100-d noisy quadratic model, geometric spectrum, condition "
                                     "number 1e4, gradient noise variance 0.1*h"),
}


def list_families() -> dict[str, str]:
    """{family name: one-line description}."""
    return {name: spec.description for name, spec in _FAMILIES.items()}


def list_tasks() -> dict[str, str]:
    """{task name: one-line description}."""
    return {name: spec.description for name, spec in _TASKS.items()}


def family_kwargs(name: str) -> list[str]:
    """Keyword arguments ``get_family(name, ...)`` accepts."""
    spec = _family_spec(name)
    params = inspect.signature(spec.cls.__init__).parameters
    return [p for p in params if p != "self" and p not in spec.fixed]


def get_family(name: str, **kwargs) -> TaskFamily:
    """Family ``name``; kwargs override its constructor defaults. Instances are cached per
    (name, kwargs, $LOPT_DATA_DIR), so repeated calls share compiled functions: treat
    families as immutable."""
    spec = _family_spec(name)
    valid = family_kwargs(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TaskError(f"family {name!r} does not take {', '.join(unknown)}; "
                        f"valid arguments: {', '.join(valid)}")
    try:
        key = (name, _freeze(kwargs), os.environ.get(DATA_DIR_ENV))
        hash(key)
    except TypeError:  # unhashable values: build without caching
        return spec.cls(**spec.fixed, **kwargs)
    if key not in _FAMILY_CACHE:
        _FAMILY_CACHE[key] = spec.cls(**spec.fixed, **kwargs)
    return _FAMILY_CACHE[key]


_FAMILY_CACHE: dict = {}


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return (type(v).__name__, v)


def family_name_of_task(name: str) -> str:
    """The family a named task belongs to (same static shapes)."""
    return _task_spec(name).family


def get_task_and_family(name: str) -> tuple[Task, TaskFamily, dict]:
    """(task, its family, its cfg) for named task ``name``."""
    spec = _task_spec(name)
    family = get_family(spec.family, **spec.family_kwargs)
    cfg = family.default_cfg(**spec.cfg_kwargs)
    return dataclasses.replace(family.task(cfg), name=name), family, cfg


def get_task(name: str) -> Task:
    """Named single task, e.g. "mnist1d_mlp_relu" (see ``list_tasks``)."""
    return get_task_and_family(name)[0]


def _family_spec(name: str) -> _FamilySpec:
    if not isinstance(name, str) or name not in _FAMILIES:
        raise TaskError(f"unknown task family {name!r}; choose one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def _task_spec(name: str) -> _TaskSpec:
    if not isinstance(name, str) or name not in _TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(_TASKS)}")
    return _TASKS[name]
