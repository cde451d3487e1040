"""Inner problems for learned optimizers: Task / TaskFamily, datasets, registry."""
from tasks.base import DatasetNotFoundError, Task, TaskError, TaskFamily
from tasks.datasets import Dataset, load_dataset
from tasks.mlp import ACTIVATIONS, MLPClassifierFamily
from tasks.quadratic import QuadraticFamily
from tasks.autoencoder import AutoencoderFamily
from tasks.conv import ConvClassifierFamily
from tasks.nqm import NQMFamily
from tasks.parametric import ParametricImageMLPFamily
from tasks.sequence import TextRNNFamily
from tasks.registry import (
    HELD_OUT_SEED, family_kwargs, family_name_of_task, get_family, get_task,
    get_task_and_family, held_out_keys, list_families, list_tasks,
)

__all__ = [
    "ACTIVATIONS", "AutoencoderFamily", "ConvClassifierFamily", "NQMFamily",
    "ParametricImageMLPFamily", "TextRNNFamily", "Dataset", "DatasetNotFoundError", "HELD_OUT_SEED",
    "MLPClassifierFamily",
    "QuadraticFamily", "Task", "TaskError", "TaskFamily", "family_kwargs",
    "family_name_of_task", "get_family", "get_task", "get_task_and_family", "held_out_keys",
    "list_families", "list_tasks", "load_dataset",
]
