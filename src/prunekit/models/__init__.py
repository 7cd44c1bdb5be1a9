"""Model loading and per-family architecture adapters."""

from .adapters import ModelAdapter, get_adapter, list_families
from .discovery import DiscoveredBlocks, discover_blocks, engine_adapter, family_support
from .loading import ALIASES, load_model, resolve_model

__all__ = [
    "ALIASES", "DiscoveredBlocks", "ModelAdapter", "discover_blocks", "engine_adapter",
    "family_support", "get_adapter", "list_families", "load_model", "resolve_model",
]  # fmt: skip
