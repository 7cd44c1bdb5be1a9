"""Per-block widths of a (possibly shrunk) model, for ``prunekit info``."""

from __future__ import annotations

from torch import nn

from ..models.adapters import ADAPTERS, get_adapter
from .surgery import block_widths as _widths


def block_widths(model: nn.Module) -> list[dict[str, int]]:
    """``[{index, heads, kv_heads, intermediate}, ...]``: what each decoder block keeps
    (``[]`` for a family without an adapter: structured methods never shrink those)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in ADAPTERS:
        return []
    adapter = get_adapter(model)
    head_dim = adapter.geometry(model.config)["head_dim"]
    return _widths(model, adapter, head_dim)


__all__ = ["block_widths"]
