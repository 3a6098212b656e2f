"""Tasks, tokenizers and the shared masked loss.

``build_task(name, **kwargs)`` builds any task listed in ``TASKS``; the language-modelling
tasks (``lm``, ``penn_tree_bank``) have a dedicated builder, ``build_lm_task``.
"""

from __future__ import annotations

from .base import Task, sample_predictions
from .batch import Batch
from .loss import IGNORE_INDEX, LossAccumulator, masked_accuracy, masked_ce_sum, masked_cross_entropy
from .synthetic import AddTask, CopyTask, RepeatCopyTask, ReverseTask, SortTask
from .corpus import load_embedded_corpus, unigram_entropy_bits
from .lm_data import greedy_decode, greedy_samples, lm_metrics
from .text import LM_TASKS, CharLMTask, LMTask, PennTreebankTask, build_lm_task
from .tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SEP_ID,
    TOKENIZERS,
    CharTokenizer,
    HFTokenizer,
    NumericTokenizer,
    get_tokenizer,
    load_text_tokenizer,
)

TASKS: dict[str, type[Task]] = {
    "copy": CopyTask,
    "repeat_copy": RepeatCopyTask,
    "reverse": ReverseTask,
    "sort": SortTask,
    "add": AddTask,
    "lm_char": CharLMTask,
    "lm": LMTask,
    "penn_tree_bank": PennTreebankTask,
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
    "LMTask",
    "PennTreebankTask",
    "LM_TASKS",
    "build_lm_task",
    "lm_metrics",
    "greedy_decode",
    "greedy_samples",
    "load_embedded_corpus",
    "unigram_entropy_bits",
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
    "HFTokenizer",
    "TOKENIZERS",
    "get_tokenizer",
    "load_text_tokenizer",
]
