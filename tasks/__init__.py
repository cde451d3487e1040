"""Inner problems for learned optimizers: Task / TaskFamily, datasets, families, registry, held-out
suites and their seeds (suites.py), and how a task is trained (training.py)."""
from tasks.base import DatasetNotFoundError, Task, TaskError, TaskFamily
from tasks.datasets import Dataset, load_dataset
from tasks.mlp import ACTIVATIONS, MLPClassifierFamily
from tasks.quadratic import QuadraticFamily
from tasks.autoencoder import AutoencoderFamily
from tasks.conv import ConvClassifierFamily
from tasks.nqm import NQMFamily
from tasks.parametric import ParametricImageMLPFamily
from tasks.sequence import TextRNNFamily
from tasks.transformer import TextTransformerFamily
from tasks.registry import (
    family_kwargs, family_name_of_task, get_family, get_task, get_task_and_family, list_families,
    list_tasks,
)
from tasks.suites import (
    PERIODIC_EVAL_SEED, SUITE_SEED, Suite, get_suite, list_suites, periodic_eval_keys, suite_tasks,
    suites_for,
)
from tasks import training
from tasks.augment import AugmentedFamily, augmented

__all__ = [
    "ACTIVATIONS", "AutoencoderFamily", "ConvClassifierFamily", "NQMFamily",
    "ParametricImageMLPFamily", "TextRNNFamily", "TextTransformerFamily", "Dataset", "DatasetNotFoundError",
    "MLPClassifierFamily",
    "QuadraticFamily", "Task", "TaskError", "TaskFamily", "family_kwargs",
    "family_name_of_task", "get_family", "get_task", "get_task_and_family",
    "list_families", "list_tasks", "load_dataset",
    "PERIODIC_EVAL_SEED", "SUITE_SEED", "Suite", "get_suite", "list_suites", "periodic_eval_keys",
    "suite_tasks", "suites_for", "training", "AugmentedFamily", "augmented",
]
