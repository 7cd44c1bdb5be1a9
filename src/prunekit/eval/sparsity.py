"""Measured sparsity, parameter count and size on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
    return total


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """Per-Linear and overall zero fractions; ``blocks`` covers Linears inside decoder blocks."""
    from ..models.adapters import ADAPTERS

    mt = getattr(getattr(model, "config", None), "model_type", None)
    blocks_path = ADAPTERS[mt].blocks_path + "." if mt in ADAPTERS else None
    layers = []
    tot = zeros = btot = bzeros = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            n = m.weight.numel()
            z = int((m.weight == 0).sum().item())
            layers.append({"name": name, "shape": list(m.weight.shape), "sparsity": z / n})
            tot += n
            zeros += z
            if blocks_path and name.startswith(blocks_path):
                btot += n
                bzeros += z
    return {
        "linears": layers,
        "linear_sparsity": zeros / tot if tot else 0.0,
        "block_linear_sparsity": bzeros / btot if btot else 0.0,
        "parameters": parameter_count(model),
    }


def model_size_bytes(path: str | os.PathLike) -> int:
    """Bytes of weight files in a saved folder (or one file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".gguf", ".pt"))
