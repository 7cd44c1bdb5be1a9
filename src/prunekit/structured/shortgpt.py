"""ShortGPT: remove whole decoder blocks by Block Influence (Men et al., 2024, arXiv:2403.03853).

    BI_i = 1 - E_t[ cos(h_t^(i), h_t^(i+1)) ]       h^(i): input of block i, [tokens, hidden]

measured on calibration data with the dense model. The ``n`` blocks with the lowest BI are
removed (``blocks=n``, else ``n = round(S x num_blocks)`` since all blocks are the same size).
Works on every family whose decoder blocks an adapter or discovery finds (dense and MoE).
Attention ``layer_idx`` values are renumbered and the config's ``num_hidden_layers``, per-layer
lists (``layer_types``) and dense/MoE block patterns updated
(``surgery.remove_blocks``), so KV caches and a plain ``from_pretrained`` reload work. Each
block runs with the arguments the model passed to it (per-layer sliding/full masks).
``align`` (the width methods' channel alignment) does not apply: the kept blocks keep their
full, unchanged widths; it is accepted so one ``--set align=N`` works for every structured method.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import capture_block_inputs
from ..engine.layerwise import _block_output
from ..errors import ConfigError
from ..models.discovery import engine_adapter
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C
from . import surgery

SPEC = {
    "blocks": Setting(int, None, ge=1, help="blocks to remove (default: sparsity x blocks)"),
    "align": Setting(int, None, ge=1, help="accepted for every structured method; n/a here: whole blocks go, widths stay"),
}


@torch.no_grad()
def block_influence(model: nn.Module, adapter, ids: Tensor, batch_size: int = 8, progress=None) -> list[float]:
    inputs = capture_block_inputs(model, adapter, ids, batch_size)
    blocks = adapter.blocks(model)
    sums = [0.0] * len(blocks)
    count = 0
    it = range(len(blocks))
    for i in progress(it) if progress else it:
        for inp in inputs:
            out = _block_output(blocks[i](inp.hidden, **inp.kwargs_for(i)))
            cos = torch.nn.functional.cosine_similarity(inp.hidden.float(), out.float(), dim=-1)  # [b, seq]
            sums[i] += cos.sum().item()
            if i == 0:
                count += cos.numel()
            inp.hidden = out
    return [1.0 - s / count for s in sums]


@STRUCTURED_METHODS.register("shortgpt")
def shortgpt(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
             progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("shortgpt", config.method_args, SPEC)
    adapter = engine_adapter(model)  # any family whose blocks discovery finds
    n_blocks = len(adapter.blocks(model))
    if args["blocks"] is not None:
        n = args["blocks"]
    else:
        n = round(C.resolve_sparsity(config) * n_blocks)
    if not 1 <= n < n_blocks:
        raise ConfigError(f"shortgpt: must remove between 1 and {n_blocks - 1} of {n_blocks} blocks, got {n}")
    ids = C.get_calib(config, calib, tokenizer)
    before = C.block_param_total(model, adapter)
    t0 = time.perf_counter()
    bi = block_influence(model, adapter, ids, config.calib.batch_size, C.progress_wrap(progress, "shortgpt BI"))
    t_bi = time.perf_counter() - t0
    drop = sorted(sorted(range(n_blocks), key=lambda i: bi[i])[:n])
    kept = surgery.remove_blocks(model, adapter, drop)
    after = C.block_param_total(model, adapter)
    settings = {"blocks": n, "removed": drop, "kept": kept, "block_influence": [round(b, 6) for b in bi],
                "block_params_before": before, "block_params_after": after,
                "block_sparsity": 1 - after / before}  # fmt: skip
    report = C.new_report("shortgpt", settings, n / n_blocks, ids, config)
    report.notes.append(f"removed blocks {drop} (lowest block influence); {len(kept)} blocks left")
    if args["align"] is not None:
        report.notes.append("shortgpt: align does not apply (whole blocks removed, kept widths unchanged)")
    report.timings = {"block_influence": t_bi, "total": time.perf_counter() - t_start}
    return report


shortgpt.summary = "ShortGPT: drop whole decoder blocks with the lowest block influence"
