"""LLM-Pruner (Ma et al., NeurIPS 2023, arXiv:2305.11627): first-order Taylor importance of
coupled structures, without the optional LoRA recovery.

For each weight, ``I(w) = |w * dL/dw|`` (element-wise first order; L = next-token loss on a few
calibration windows, gradients summed over them). A coupled group's importance is the sum over
its members:

* query head ``h``: rows ``h*hd:(h+1)*hd`` of ``q_proj`` and the same columns of ``o_proj``;
* KV head ``g``: the matching rows of ``k_proj`` and ``v_proj`` (added to the value of its group
  when whole KV groups are chosen);
* MLP channel ``c``: row ``c`` of ``gate_proj`` and ``up_proj`` (or ``fc1``), column ``c`` of
  ``down_proj`` (``fc2``).

Fused projections (Phi-3 ``qkv_proj`` / ``gate_up_proj``, GPT-NeoX ``query_key_value``) are
scored part by part: the rows of each part form the member (``surgery.qkv_parts``).

Every block gets the same GQA-valid plan, so the output is a stock config. The split between
heads and MLP channels (``structure``): ``cost`` (default) picks the head count whose uniform
plan removes the least total Taylor importance over all blocks — the importances are estimated
loss changes, so heads and channels are directly comparable; ``ratio`` removes the same fraction
of attention and MLP parameters (``common.plan_ratio``). Settings: ``windows`` (calibration
windows used for gradients, default 8) and ``seqlen`` (tokens per window, default 512),
``heads`` / ``kv_heads`` to fix the head count, ``align`` (kept MLP channels a multiple of N;
default 64 from 1024 channels up, ``common.resolve_align``).
Deviation: the paper keeps the first and last few blocks dense; here all blocks are pruned
uniformly (per-block widths would need a non-stock config).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C
from . import surgery

SPEC = {
    "structure": Setting(str, "cost", choices=("cost", "ratio")),
    "windows": Setting(int, 8, ge=1, help="calibration windows for the gradients"),
    "seqlen": Setting(int, 512, ge=2, help="tokens per gradient window"),
    "heads": Setting(int, None, ge=1, help="query heads kept per block"),
    "kv_heads": Setting(int, None, ge=1, help="KV heads kept per block"),
    "align": C.ALIGN_SETTING,
}


def _taylor(lin: nn.Linear) -> Tensor:
    return (lin.weight.detach().float() * lin.weight.grad.float()).abs()  # [out, in]


def _taylor_rows(lin: nn.Linear, rows: surgery.Rows) -> Tensor:
    """Taylor importance of some rows of ``lin`` (one part of a fused projection)."""
    return _taylor(lin)[rows]


def taylor_importance(model: nn.Module, adapter, head_dim: int, ids: Tensor, progress: bool = False
                      ) -> list[tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Per block ``(query head, KV head, MLP channel)`` Taylor importances ``sum |w * dL/dw|``,
    gradients summed over the windows of ``ids`` (one at a time). Each block is read at its
    current widths (blocks may already differ). Gradients are cleared and every parameter's
    ``requires_grad`` and the model's train/eval mode are restored afterwards."""
    blocks = adapter.blocks(model)
    lins = [m for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for lin in lins:
            lin.weight.requires_grad_(True)
        model.eval()
        device = next(model.parameters()).device
        rows = range(ids.shape[0])
        if progress:
            from tqdm.auto import tqdm

            rows = tqdm(rows, desc="taylor gradients", unit="window", dynamic_ncols=True)
        with torch.enable_grad():
            for r in rows:
                x = ids[r : r + 1].to(device)
                out = model(input_ids=x, labels=x, use_cache=False)
                out.loss.backward()
        scores = []
        with torch.no_grad():
            for block in blocks:
                attn, mlp = adapter.attention(block), adapter.mlp_module(block)
                heads, kv_heads = surgery.attention_widths(block, adapter, head_dim)
                parts = surgery.qkv_parts(attn, adapter, head_dim)  # fused q/k/v: their rows
                q = _taylor_rows(*parts["q"]).sum(1)  # [heads*hd]
                o = _taylor(attn.get_submodule(adapter.o)).sum(0)  # [heads*hd]
                head = (q + o).reshape(heads, head_dim).sum(1)
                kv = _taylor_rows(*parts["k"]).sum(1) + _taylor_rows(*parts["v"]).sum(1)
                kv = kv.reshape(kv_heads, head_dim).sum(1)
                ch = _taylor(mlp.get_submodule(adapter.mlp_out)).sum(0)
                for lin, r in surgery.mlp_in_parts(mlp, adapter):  # gate, up (fused or not)
                    ch = ch + _taylor_rows(lin, r).sum(1)
                scores.append((head.cpu(), kv.cpu(), ch.cpu()))
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(saved.get(p, True))
        model.train(was_training)
    return scores


@STRUCTURED_METHODS.register("llm-pruner")
def llm_pruner(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
               progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("llm-pruner", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    fixed = C.fixed_heads(args, geo)
    align = C.resolve_align(args, geo.intermediate, "llm-pruner")
    C.check_feasible(geo, costs, sparsity)
    ids = C.get_calib(config, calib, tokenizer)
    ids = ids[: args["windows"], : args["seqlen"]]
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    blocks = adapter.blocks(model)
    default_grad = all(p.requires_grad for p in model.parameters())  # for the Parameters surgery creates
    t0 = time.perf_counter()
    scores = taylor_importance(model, adapter, geo.head_dim, ids, progress)
    t_grad = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = set(model.parameters())
    with torch.no_grad():
        if args["structure"] == "ratio":
            plan = C.plan_ratio(geo, costs, sparsity, fixed, align=align)
        else:  # plan_cost weighs a unit's score by its parameters: pass importance per parameter
            plan = C.plan_cost(geo, costs, sparsity, [h / costs.q_head for h, _, _ in scores],
                               [c / costs.channel for _, _, c in scores], fixed, align=align)
        info = {i: C.apply_block(block, adapter, geo, plan, h, c, kv_scores=kv)
                for i, (block, (h, kv, c)) in enumerate(zip(blocks, scores))}
    for p in model.parameters():
        if p not in old:
            p.requires_grad_(default_grad)
    settings = {k: v for k, v in args.items() if v is not None}
    settings["align"] = align
    settings["plan"] = {"kv_heads": plan.kk, "heads": plan.heads, "intermediate": plan.channels}
    report = C.new_report("llm-pruner", settings, sparsity, ids, config)
    report.timings.update({"gradients": t_grad, "prune": time.perf_counter() - t0})
    report.notes.append(f"Taylor importance from {ids.shape[0]} windows x {ids.shape[1]} tokens")
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info)


llm_pruner.summary = ("LLM-Pruner: first-order Taylor importance of coupled head/channel groups "
                      "(the paper's LoRA recovery: prune --recover)")
