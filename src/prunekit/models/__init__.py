"""Model loading and per-family architecture adapters."""

from .adapters import ModelAdapter, get_adapter, list_families
from .loading import ALIASES, load_model, resolve_model

__all__ = ["ALIASES", "ModelAdapter", "get_adapter", "list_families", "load_model", "resolve_model"]
