"""Adapt-Pruner: layer-wise adaptive structured pruning, incremental, interleaved with training
(Pan, Shekhar, Wang, Diao, Zhang, Pan, Pi, Zhang, 2025, arXiv:2502.03460; "Adapt-Accel" is the
interleaving).

The target ``S`` (fraction of decoder-block parameters) is reached in ``T = ceil(S / step)``
steps of ``Δ = S / T`` each (``step`` ≈ 5%). At step ``t``, on calibration windows with the
current (already pruned, already trained) model:

1. Layer importance from the input/output mapping of each block,
   ``I_l = 1 - E_t[cos(h_t^(l), h_t^(l+1))]``, normalised to ``Î_l = (I_l - mean I) / max|I - mean I|``
   in [-1, 1]. The block sparsities move by the step minus an importance term,

       s_l(t) = s_l(t-1) + Δ - A · Î_l(t)          (A = ``amplitude``)

   so blocks whose input and output are most similar (low ``I``) lose more; ``s_l`` never
   decreases (removed units are not restored), and a common offset keeps the mean at ``t · Δ``.
2. Importance inside the block: first-order Taylor ``|w · dL/dw|`` summed over each coupled
   group (query head, KV head, MLP channel; ``llm_pruner.taylor_importance``), as in the paper's
   LLM-Pruner-based implementation.
3. Each block is cut to ``s_l(t)`` of its original parameters: among the GQA-valid head counts
   not above its current ones, the one whose removed heads plus the lowest-importance MLP
   channels filling the rest of its budget remove the least total importance
   (``structure=cost``; ``ratio``: the head count closest to ``s_l`` of the attention).
   MLP widths are rounded to ``align`` with the total kept to the budget (``common.align_widths``).
4. Recovery training: ``recover_tokens`` tokens of LoRA fine-tuning, merged
   (``prunekit.recovery.lora.recover_``; LLM-Pruner's recipe, rank 8), on the **calibration**
   windows (C4 in the benchmarks), never on evaluation text.

Default recovery budget: ``recover_tokens=8192`` per step (4 steps at 20%: 32,768 tokens in
all; windows of ``recover_seqlen=512``, batch 2, lr 5e-4, LoRA rank 8); Taylor and similarity use
``windows=8`` x ``seqlen=512`` calibration tokens per step. Recovery reads at most one pass of
the calibration windows per step (fewer tokens when the calibration set is smaller);
``recover_tokens=0`` gives the pruning schedule alone (still incremental, no training).

Deviations: the paper trains between steps on a large pre-training mix with full fine-tuning
(its budget is billions of tokens); here recovery is short LoRA on the calibration set, so the
"Accel" effect is small and is stated in the report. The paper's layer importance is the
cosine *similarity* with the sign flipped; ``1 - cos`` is the same after normalisation. The
output has per-block widths (``prunekit.load`` or ``from_pretrained(..., trust_remote_code=True)``).
"""

from __future__ import annotations

import dataclasses
import math
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
from .llm_pruner import taylor_importance
from .shortgpt import block_influence

SPEC = {
    "step": Setting(float, 0.05, ge=0.005, le=1, help="fraction of block parameters removed per step (~5%)"),
    "amplitude": Setting(float, 0.03, ge=0, le=1, help="A: how far a block's sparsity moves per step with its importance"),
    "structure": Setting(str, "cost", choices=("cost", "ratio")),
    "windows": Setting(int, 8, ge=1, le=1 << 16, help="calibration windows for similarity and gradients per step"),
    "seqlen": Setting(int, 512, ge=2, le=1 << 20, help="tokens per window"),
    "recover_tokens": Setting(int, 8192, ge=0, le=10**12, help="LoRA recovery tokens after each step (0: none)"),
    "recover_seqlen": Setting(int, 512, ge=2, le=1 << 20, help="tokens per recovery window"),
    "recover_lr": Setting(float, 5e-4, gt=0, le=1, help="LoRA learning rate"),
    "recover_batch": Setting(int, 2, ge=1, le=1 << 16, help="recovery windows per optimizer step"),
    "align": C.ALIGN_SETTING,
}

MAX_BLOCK_SPARSITY = 0.95


# --- the schedule -------------------------------------------------------------------------------
def normalised_importance(importance: list[float]) -> list[float]:
    """``(I - mean I) / max|I - mean I|`` in [-1, 1] (all zeros when every block is alike)."""
    x = torch.tensor(importance, dtype=torch.float64)
    x = x - x.mean()
    m = x.abs().max()
    return (x / m if m > 0 else torch.zeros_like(x)).tolist()


def next_sparsities(prev: list[float], importance: list[float], delta: float, amplitude: float,
                    mean_target: float) -> list[float]:  # fmt: skip
    """``s_l(t) = max(s_l(t-1), s_l(t-1) + Δ - A·Î_l + δ)``, clipped to [0, 0.95], with the common
    offset ``δ`` (bisection) that puts the mean at ``mean_target``."""
    norm = normalised_importance(importance)
    raw = [p + delta - amplitude * n for p, n in zip(prev, norm)]

    def at(off: float) -> list[float]:
        return [min(max(r + off, p, 0.0), MAX_BLOCK_SPARSITY) for r, p in zip(raw, prev)]

    lo, hi = -2.0, 2.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if sum(at(mid)) / len(raw) < mean_target:
            lo = mid
        else:
            hi = mid
    return at((lo + hi) / 2)


def step_targets(sparsity: float, step: float) -> list[float]:
    """Cumulative mean sparsity after each step: ``Δ, 2Δ, ..., S`` with ``Δ = S / ceil(S / step)``."""
    T = max(1, math.ceil(sparsity / step - 1e-9))
    return [sparsity * (t + 1) / T for t in range(T)]


# --- one block ----------------------------------------------------------------------------------
def _block_geometry(block: nn.Module, adapter, geo: C.Geometry) -> C.Geometry:
    heads, kv = surgery.attention_widths(block, adapter, geo.head_dim)
    return C.Geometry(heads, kv, geo.head_dim, geo.hidden, surgery.mlp_width(block, adapter), geo.attn_prunable)


def _removed_heads_importance(hs: Tensor, kv: Tensor, cur: C.Geometry, kk: int, qq: int) -> float:
    keep_q, keep_kv = C.select_heads(hs, cur, kk, qq, kv)
    gone = torch.ones(cur.heads, dtype=torch.bool)
    gone[keep_q] = False
    gone_kv = torch.ones(cur.kv_heads, dtype=torch.bool)
    gone_kv[keep_kv] = False
    return hs.float()[gone].sum().item() + kv.float()[gone_kv].sum().item()


def choose_heads(geo: C.Geometry, cur: C.Geometry, c: C.Costs, budget: float, scores: tuple[Tensor, Tensor, Tensor],
                 structure: str) -> tuple[int, int]:  # fmt: skip
    """GQA-valid ``(kk, qq)`` not above the block's current ones for a block budget of ``budget``
    parameters removed (relative to the original block)."""
    hs, kv, ch = scores
    cur_kk, cur_qq = cur.kv_heads, cur.group
    opts = [(kk, qq) for kk, qq in C.attention_options(geo) if kk <= cur_kk and qq <= cur_qq] or [(cur_kk, cur_qq)]
    already_ch = geo.intermediate - cur.intermediate
    if structure == "ratio":
        attn_total = geo.heads * c.q_head + geo.kv_heads * c.kv_head
        frac = budget / c.block
        return min(opts, key=lambda o: (abs(C.attn_removed(geo, c, *o) / attn_total - frac), C.attn_removed(geo, c, *o)))
    sorted_ch = ch.float().sort().values
    cum = torch.cat([torch.zeros(1), sorted_ch.cumsum(0)])
    best = None
    for kk, qq in opts:
        rm_attn = C.attn_removed(geo, c, kk, qq)
        n_rm_total = round((budget - rm_attn) / c.channel)  # channels gone from the original width
        n_rm = n_rm_total - already_ch  # of those, still to remove now
        if n_rm < 0 or n_rm >= cur.intermediate:
            continue
        cost = _removed_heads_importance(hs, kv, cur, kk, qq) if (kk, qq) != (cur_kk, cur_qq) else 0.0
        cost += cum[n_rm].item()
        if best is None or cost < best[0]:
            best = (cost, (kk, qq))
    if best is None:  # the budget is below what is already removed, or needs more than the MLP: keep heads
        return cur_kk, cur_qq
    return best[1]


# --- the method -----------------------------------------------------------------------------------
@STRUCTURED_METHODS.register("adapt-pruner")
def adapt_pruner(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
                 progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("adapt-pruner", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    align = C.resolve_align(args, geo.intermediate, "adapt-pruner")
    C.check_feasible(geo, costs, sparsity)
    C.check_per_block_loadable("adapt-pruner", adapter.family)
    ids = C.get_calib(config, calib, tokenizer)
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    blocks = adapter.blocks(model)
    n = len(blocks)
    default_grad = all(p.requires_grad for p in model.parameters())
    w, L = args["windows"], args["seqlen"]
    timings = {"similarity": 0.0, "gradients": 0.0, "prune": 0.0, "recovery": 0.0}
    targets = step_targets(sparsity, args["step"])
    rcfg = None
    rec_tokens = min(args["recover_tokens"], ids.numel())  # at most one pass over the calibration set per step
    if rec_tokens >= 2:
        from ..recovery.lora import RecoveryConfig

        rcfg = RecoveryConfig(tokens=rec_tokens, seqlen=min(args["recover_seqlen"], ids.shape[1]),
                              lr=args["recover_lr"], batch_size=args["recover_batch"])  # fmt: skip
    s_blocks = [0.0] * n
    history: list[dict[str, Any]] = []
    recovery_losses: list[tuple[float | None, float | None]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(targets), desc="adapt-pruner", unit="step", dynamic_ncols=True)
    for t, mean_target in enumerate(targets):
        rows = torch.arange(t * w, (t + 1) * w) % ids.shape[0]  # a fresh slice of windows per step
        step_ids = ids[rows, :L]
        t0 = time.perf_counter()
        bi = block_influence(model, adapter, step_ids, config.calib.batch_size)
        timings["similarity"] += time.perf_counter() - t0
        s_blocks = next_sparsities(s_blocks, bi, mean_target - (targets[t - 1] if t else 0.0),
                                   args["amplitude"], mean_target)  # fmt: skip
        t0 = time.perf_counter()
        scores = taylor_importance(model, adapter, geo.head_dim, step_ids)
        timings["gradients"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        old = set(model.parameters())
        with torch.no_grad():
            curs = [_block_geometry(b, adapter, geo) for b in blocks]
            heads = [choose_heads(geo, cur, costs, s * costs.block, sc, args["structure"])
                     for cur, s, sc in zip(curs, s_blocks, scores)]  # fmt: skip
            ch_targets = [geo.intermediate - (s * costs.block - C.attn_removed(geo, costs, kk, qq)) / costs.channel
                          for s, (kk, qq) in zip(s_blocks, heads)]  # fmt: skip
            ch_targets = [min(max(x, 1.0), cur.intermediate) for x, cur in zip(ch_targets, curs)]
            widths = C.align_widths(ch_targets, align, [cur.intermediate for cur in curs], sum(ch_targets))
            for i, (block, cur, (kk, qq), ch, (hs, kv, cs)) in enumerate(zip(blocks, curs, heads, widths, scores)):
                C.apply_block(block, adapter, cur, C.Plan(kk, qq, ch), hs, cs, kv_scores=kv)
        for p in model.parameters():
            if p not in old:
                p.requires_grad_(default_grad)
        timings["prune"] += time.perf_counter() - t0
        after = C.block_param_total(model, adapter)
        history.append({"step": t + 1, "target": round(mean_target, 4), "block_sparsity": round(1 - after / before, 4),
                        "block_influence": [round(x, 5) for x in bi],
                        "block_targets": [round(x, 4) for x in s_blocks]})  # fmt: skip
        if rcfg is not None:
            from ..recovery.lora import recover_

            t0 = time.perf_counter()
            with torch.enable_grad():  # prune_ runs under no_grad
                rep = recover_(model, None, ids, dataclasses.replace(rcfg, seed=t), progress=False)
            timings["recovery"] += time.perf_counter() - t0
            recovery_losses.append((rep.first_loss, rep.final_loss))
            history[-1]["recovery_loss"] = [rep.first_loss, rep.final_loss]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for p in model.parameters():  # LoRA merging leaves the base weights frozen
        p.requires_grad_(default_grad)
    info = {i: {"target_sparsity": round(s, 4)} for i, s in enumerate(s_blocks)}
    settings = {k: v for k, v in args.items() if v is not None}
    settings["align"] = align
    settings["steps"] = history
    report = C.new_report("adapt-pruner", settings, sparsity, ids, config)
    report.timings.update(timings)
    rec = (f"LoRA recovery {rcfg.steps * rcfg.batch_size * rcfg.seqlen:,} calibration tokens after each step "
           f"({rcfg.steps * rcfg.batch_size * rcfg.seqlen * len(targets):,} in all)" if rcfg else "no recovery")
    report.notes.append(f"adapt-pruner: {len(targets)} incremental steps of {sparsity / len(targets):.1%}; {rec}")
    widths_now = {(c.heads, c.kv_heads, c.intermediate) for c in (_block_geometry(b, adapter, geo) for b in blocks)}
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info, per_block=len(widths_now) > 1)


adapt_pruner.summary = ("Adapt-Pruner: incremental (~5%/step) layer-adaptive Taylor pruning with LoRA "
                        "recovery between steps (per-block widths)")
