"""Evaluation: perplexity (paper protocol), zero-/few-shot tasks, sparsity, size and speed."""

from .perplexity import perplexity
from .sparsity import model_size_bytes, parameter_count, sparsity_summary
from .tasks import evaluate_tasks, parse_task_specs

__all__ = [
    "evaluate_tasks",
    "model_size_bytes",
    "parameter_count",
    "parse_task_specs",
    "perplexity",
    "sparsity_summary",
]
