"""Structured width baselines from the FLAP / LLM-Pruner papers: ``wanda-sp`` and ``magnitude-sp``.

Both score the *input columns* of the attention output projection and of the MLP output
projection (W: [out, in]) and remove whole heads / channels with the same per-block plan
(``common.plan_ratio``: ~S of the attention parameters, MLP channels fill the rest; GQA-valid):

* ``wanda-sp`` (An et al., 2024, structured Wanda): ``s_j = mean_i |W_ij| * ||x_j||₂``, with the
  input norm from calibration data; blocks are pruned in sequence, each calibrated on the pruned
  outputs of the previous ones. A head's score is the sum over its ``head_dim`` columns.
* ``magnitude-sp``: ``s_j = ||W[:, j]||₂``, no data. Head score = sum over its columns.

No bias compensation (that is FLAP's contribution). ``align=N``: kept MLP channels a multiple
of N (``common.resolve_align``: default 64 from 1024 channels up).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import Stat, run_layerwise
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C

SPEC = {
    "heads": Setting(int, None, ge=1, help="query heads kept per block"),
    "kv_heads": Setting(int, None, ge=1, help="KV heads kept per block"),
    "align": C.ALIGN_SETTING,
}


def _head_sum(col: Tensor, geo: C.Geometry) -> Tensor:
    return col.reshape(geo.heads, geo.head_dim).sum(1)


def _blocks_linear(block: nn.Module, adapter) -> tuple[nn.Linear, nn.Linear]:
    return (adapter.attention(block).get_submodule(adapter.o),
            adapter.mlp_module(block).get_submodule(adapter.mlp_out))  # fmt: skip


def _settings(args: dict[str, Any], plan: C.Plan, align: int) -> dict[str, Any]:
    s = {k: v for k, v in args.items() if v is not None}
    s["align"] = align
    s["plan"] = {"kv_heads": plan.kk, "heads": plan.heads, "intermediate": plan.channels}
    return s


@STRUCTURED_METHODS.register("wanda-sp")
def wanda_sp(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
             progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("wanda-sp", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    align = C.resolve_align(args, geo.intermediate, "wanda-sp")
    plan = C.plan_ratio(geo, costs, sparsity, C.fixed_heads(args, geo), align=align)
    timings: dict[str, float] = {}
    ids = C.get_calib(config, calib, tokenizer)
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    blocks = adapter.blocks(model)
    info: dict[int, dict] = {}

    def on_block(i: int, targets, stats) -> None:
        o, d = _blocks_linear(blocks[i], adapter)
        names = {id(m): n for n, m in targets.items()}
        so = (o.weight.data.float().abs().mean(0) * stats[names[id(o)]][Stat.INPUT_SQNORM].sqrt())
        sd = (d.weight.data.float().abs().mean(0) * stats[names[id(d)]][Stat.INPUT_SQNORM].sqrt())
        info[i] = C.apply_block(blocks[i], adapter, geo, plan, _head_sum(so, geo), sd)

    o_suffix, d_suffix = f".{adapter.attn}.{adapter.o}", f".{adapter.mlp_out}"
    run_layerwise(
        model, adapter, ids, needs={Stat.INPUT_SQNORM},
        select=lambda n, _m: n.endswith(o_suffix) or (n.endswith(d_suffix) and o_suffix not in n),
        on_block=on_block, batch_size=config.calib.batch_size, propagate="pruned",
        progress=C.progress_wrap(progress, "wanda-sp"), timings=timings,
    )  # fmt: skip
    report = C.new_report("wanda-sp", _settings(args, plan, align), sparsity, ids, config)
    report.timings.update(timings)
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info)


wanda_sp.summary = "structured Wanda (|W| x input norm per column), uniform GQA-valid widths"


@STRUCTURED_METHODS.register("magnitude-sp")
def magnitude_sp(model: nn.Module, config: PruneConfig, calib: Tensor | None = None, tokenizer: Any = None,
                 progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("magnitude-sp", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    align = C.resolve_align(args, geo.intermediate, "magnitude-sp")
    plan = C.plan_ratio(geo, costs, sparsity, C.fixed_heads(args, geo), align=align)
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    info = {}
    with torch.no_grad():
        for i, block in enumerate(adapter.blocks(model)):
            o, d = _blocks_linear(block, adapter)
            hs = _head_sum(o.weight.data.float().norm(dim=0), geo)
            cs = d.weight.data.float().norm(dim=0)
            info[i] = C.apply_block(block, adapter, geo, plan, hs, cs)
    report = C.new_report("magnitude-sp", _settings(args, plan, align), sparsity, None, config)
    report.calib = {"source": None, "note": "data-free"}
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info)


magnitude_sp.summary = "structured magnitude (column L2 norm of o_proj/down_proj), data-free"
