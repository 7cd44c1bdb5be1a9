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
    """Per-matrix and overall zero fractions.

    ``linears`` lists every Linear and GPT-2 ``Conv1D`` outside the decoder blocks plus every
    prunable matrix inside them (MoE experts one by one, as ``…experts.{e}.gate_up_proj``);
    ``block_linear_sparsity`` covers the matrices inside the decoder blocks.
    """
    from ..engine.targets import _is_conv1d, prunable_in, weight_of
    from ..errors import PrunekitError
    from ..models.discovery import engine_adapter

    inside: dict[str, Any] = {}
    prefixes: tuple[str, ...] = ()
    try:
        loc = engine_adapter(model)
        blocks = loc.blocks(model)
        prefixes = tuple(loc.block_prefix(i) + "." for i in range(len(blocks)))
        for i, blk in enumerate(blocks):
            inside.update(prunable_in(blk, loc.block_prefix(i)))
    except PrunekitError:  # no recognisable blocks, or a quantized layer: count plain Linears
        inside, prefixes = {}, ()
    layers = []
    tot = zeros = btot = bzeros = 0

    def add(name: str, W, in_block: bool) -> None:
        nonlocal tot, zeros, btot, bzeros
        n = W.numel()
        z = int((W == 0).sum().item())
        layers.append({"name": name, "shape": list(W.shape), "sparsity": z / n})
        tot += n
        zeros += z
        if in_block:
            btot += n
            bzeros += z

    for name, m in inside.items():
        add(name, weight_of(m), True)
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) or _is_conv1d(m)) and not (prefixes and name.startswith(prefixes)):
            add(name, weight_of(m), False)
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
