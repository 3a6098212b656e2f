"""Tasks, tokenizers and the shared masked loss.

``build_task(name, **kwargs)`` builds any task listed in ``TASKS``.
"""

from __future__ import annotations

from .base import Task, sample_predictions
from .batch import Batch
from .loss import IGNORE_INDEX, LossAccumulator, masked_accuracy, masked_ce_sum, masked_cross_entropy
from .synthetic import AddTask, CopyTask, RepeatCopyTask, ReverseTask, SortTask
from .text import CharLMTask
from .tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SEP_ID,
    TOKENIZERS,
    CharTokenizer,
    NumericTokenizer,
    get_tokenizer,
)

TASKS: dict[str, type[Task]] = {
    "copy": CopyTask,
    "repeat_copy": RepeatCopyTask,
    "reverse": ReverseTask,
    "sort": SortTask,
    "add": AddTask,
    "lm_char": CharLMTask,
}


def build_task(name: str, **kwargs) -> Task:
    """Build the task registered under ``name``; keyword args go to its constructor."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = [
    "TASKS",
    "build_task",
    "Task",
    "Batch",
    "sample_predictions",
    "CopyTask",
    "RepeatCopyTask",
    "ReverseTask",
    "SortTask",
    "AddTask",
    "CharLMTask",
    "IGNORE_INDEX",
    "masked_ce_sum",
    "masked_cross_entropy",
    "masked_accuracy",
    "LossAccumulator",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "SEP_ID",
    "CharTokenizer",
    "NumericTokenizer",
    "TOKENIZERS",
    "get_tokenizer",
]
