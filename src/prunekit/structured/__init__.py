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
    import importlib

    for mod in ("flap", "width", "shortgpt", "llm_pruner", "tyr", "cfsp", "adapt_pruner", "experts"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


_load_builtin()

__all__ = ["STRUCTURED_METHODS"]
