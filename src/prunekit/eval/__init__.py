"""Evaluation: perplexity (paper protocol), sparsity, size and speed."""

from .perplexity import perplexity
from .sparsity import model_size_bytes, parameter_count, sparsity_summary

__all__ = ["model_size_bytes", "parameter_count", "perplexity", "sparsity_summary"]
