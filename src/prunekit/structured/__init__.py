"""Structured pruning: physically remove heads, MLP channels and blocks.

Structured methods register in :data:`STRUCTURED_METHODS` as callables
``fn(model, config, calib, tokenizer, progress) -> PruneReport`` and are dispatched by
:func:`prunekit.prune_` when ``config.method`` names one of them.
"""

from __future__ import annotations

from ..registry import Registry

STRUCTURED_METHODS: Registry = Registry("structured method")


def _load_builtin() -> None:
    """Import the built-in structured methods (explicit list; each registers itself)."""
    from ..registry import import_builtin

    import_builtin(__name__, ("flap", "width", "shortgpt", "llm_pruner", "tyr", "cfsp", "adapt_pruner", "experts"))


_load_builtin()

__all__ = ["STRUCTURED_METHODS"]
