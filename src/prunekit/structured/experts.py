"""Mixture-of-experts pruning: whole experts (STUN, REAP) and MC-MoE dynamic expert skipping.

**REAP** — Lasby et al., "REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression"
(arXiv:2510.13999). Expert ``e`` of a block scores

    S_e = (1 / |X_e|) Σ_{x ∈ X_e} g_e(x) · ‖E_e(x)‖₂

over the calibration tokens ``X_e`` routed to it (``g_e``: its routing weight as the model uses
it, ``E_e(x)``: its output). The lowest-scoring experts are removed, the same number in every MoE
block (``scope=uniform``), or by a global ranking of each block's score shares
(``scope=global``, per-layer counts, at least top-k kept per block). The router rows of removed
experts are sliced away, so its softmax runs over the kept experts: the top-k weights are
renormalised over them. Shared experts are not routed experts and are never removed.

**STUN** — Lee et al., "STUN: Structured-Then-Unstructured Pruning for Scalable MoE Pruning"
(arXiv:2409.06211). Stage 1, in one calibration pass: the behavioural dissimilarity of experts
``i, j`` of a block is

    D_ij = ‖r_i − r_j‖ / mean_{a≠b} ‖r_a − r_b‖ − λ · A_ij

(``r``: router rows, ``A_ij``: co-activation, the Jaccard overlap of the token sets routed to
``i`` and to ``j``; λ = setting ``coactivation``). Greedy agglomerative clustering (average
linkage) merges the closest clusters until the target count is left. Each cluster keeps its
representative, the member nearest the cluster's weight centroid, and the cluster's traffic is
routed to it: its router row becomes the traffic-weighted mean of the members' rows.
Stage 2 runs an unstructured method (``then``, default SparseGPT) on the expert-pruned model
with per-expert statistics, at ``config.sparsity`` (default 0.5) of every remaining matrix (or, with
``total=true``, at the sparsity that makes the zeros plus the removed experts equal
``config.sparsity`` of the original block matrices).

Deviations: STUN's paper also reconstructs a cluster's expert by averaging when that is better
("selective reconstruction"); prunekit always keeps the representative unchanged, so kept
experts stay real experts of the model. The router merge is the traffic-weighted mean rather than
a sum of probabilities: ``log Σ_j exp(r_j·x)`` is not linear in ``x`` and the stock routers have
no bias that could carry ``log |C|``; for a cluster of near-identical experts (the premise of
clustering) the mean routes the cluster's tokens to its representative, and for exact duplicates
with equal rows the merge is exact.

**MC-MoE dynamic skipping** — Huang et al., "Mixture Compressor for Mixture-of-Experts LLMs Gains
More" (arXiv:2410.06270), online dynamic pruning: a token skips its second expert when
``w₂ < β·w₁`` (:func:`enable_dynamic_skipping`; with top-k > 2 every lower-ranked expert whose
weight is below ``β·w₁``). The paper's protection of important tokens (by attention) and its
mixed-precision experts are not implemented.

Saving: uniform expert counts are a stock config (``num_local_experts`` / ``num_experts``
reduced, router sliced) that plain ``from_pretrained`` loads. Per-layer counts keep the stock
count and list the kept counts in ``config.prunekit_experts``; :func:`write_remote_code` adds
``modeling_prunekit_moe.py`` (``trust_remote_code``), and :func:`load_pretrained` loads such a
folder without running its code. ``config.prunekit_dynamic_experts`` (β) makes the remote code
and :func:`load_pretrained` install dynamic skipping.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import capture_block_inputs
from ..engine.layerwise import _block_output
from ..engine.stats import _down_input
from ..errors import ConfigError, ModelLoadError
from ..models.discovery import engine_adapter
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")  # softmax-then-top-k routers (= remote code CLASSES)


class _LazyRemoteCode:
    """``modeling_prunekit_moe`` imported on first use: it imports four transformers model classes,
    which is too slow for ``import prunekit`` (signals must find their handlers installed)."""

    def __getattr__(self, name: str):
        from .remote_code import modeling_prunekit_moe

        return getattr(modeling_prunekit_moe, name)


rc = _LazyRemoteCode()
CONFIG_COUNTS = "prunekit_experts"
CONFIG_DYNAMIC = "prunekit_dynamic_experts"
REMOTE_CODE_FILE = "modeling_prunekit_moe.py"

_EXPERTS = Setting(float, 0.25, gt=0, help="experts removed per MoE block: a fraction in (0, 1) or a count >= 1")
SPEC_REAP = {
    "experts": _EXPERTS,
    "scope": Setting(str, "uniform", choices=("uniform", "global"),
                     help="uniform: the same count per block (stock config); global: per-block counts"),
}  # fmt: skip
SPEC_STUN = {
    "experts": _EXPERTS,
    "then": Setting(str, "sparsegpt", help="unstructured method run after expert pruning (none: skip it)"),
    "then_pattern": Setting(str, "unstructured", help="pattern of the unstructured stage (e.g. 2:4)"),
    "then_set": Setting(str, None, help="settings of the unstructured method, K=V[,K=V...]"),
    "coactivation": Setting(float, 1.0, ge=0, help="weight λ of co-activation in the expert dissimilarity"),
    "total": Setting(bool, False, help="sparsity counts the removed experts too (equal total sparsity)"),
}


# --- finding the MoE blocks ----------------------------------------------------------------------
@dataclass
class MoeBlock:
    index: int
    moe: nn.Module
    experts: nn.Module
    router: nn.Module

    @property
    def num_experts(self) -> int:
        return int(self.experts.gate_up_proj.shape[0])

    @property
    def top_k(self) -> int:
        return int(getattr(self.router, "top_k", None) or getattr(self.moe, "top_k"))


def moe_blocks(model: nn.Module) -> list[MoeBlock]:
    """The MoE blocks of a supported family; one ConfigError line otherwise."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    found = [MoeBlock(*t) for t in rc.moe_blocks(model, engine_adapter(model).blocks(model))]
    if not found:
        raise ConfigError(f"expert pruning needs a mixture-of-experts model; {mt or type(model).__name__} has no routed experts")
    if mt not in FAMILIES:
        raise ConfigError(f"expert pruning supports the softmax-router MoE families {', '.join(FAMILIES)}; got {mt!r}")
    return found


def _count_to_remove(value: float, num: int, top_k: int, method: str) -> int:
    if value < 1:
        n = round(value * num)
    elif float(value).is_integer():
        n = int(value)
    else:
        raise ConfigError(f"{method}: experts={value:g} must be a fraction in (0, 1) or a whole count of experts")
    if not 1 <= n <= num - top_k:
        raise ConfigError(
            f"{method}: experts={value:g} removes {n} of {num} experts per block; it must remove between 1 and "
            f"{num - top_k} (each block keeps at least top-k = {top_k})"
        )
    return n


# --- calibration statistics ------------------------------------------------------------------
def expert_output(experts: nn.Module, e: int, x: Tensor) -> Tensor:
    """``E_e(x)`` for token rows ``x [n, hidden]`` (the fused module's layout and biases)."""
    h = _down_input(experts, x, e)
    w = experts.down_proj[e]
    y = h @ w if getattr(experts, "is_transposed", False) else h @ w.T
    bias = getattr(experts, "down_proj_bias", None)
    if bias is not None and getattr(experts, "has_bias", False):
        y = y + bias[e]
    return y


@dataclass
class RoutingStats:
    """Per MoE block, over the calibration tokens: routed counts, co-activation and REAP sums."""

    num_experts: int
    tokens: int = 0
    counts: Tensor = field(init=False)  # [E] tokens routed to each expert
    coact: Tensor = field(init=False)  # [E, E] tokens routed to both
    reap_sum: Tensor = field(init=False)  # [E] Σ g_e(x) ‖E_e(x)‖

    def __post_init__(self) -> None:
        E = self.num_experts
        self.counts = torch.zeros(E, dtype=torch.float64)
        self.coact = torch.zeros(E, E, dtype=torch.float64)
        self.reap_sum = torch.zeros(E, dtype=torch.float64)

    @torch.no_grad()
    def update(self, experts: nn.Module, x: Tensor, index: Tensor, weights: Tensor, reap: bool) -> None:
        E = self.num_experts
        idx = index.reshape(x.shape[0], -1)
        w = weights.reshape(x.shape[0], -1).float()
        onehot = torch.zeros(idx.shape[0], E + 1, dtype=torch.float64)
        onehot.scatter_(1, idx.long(), 1.0)
        onehot = onehot[:, :E]  # drop the "no expert" slot
        self.tokens += idx.shape[0]
        self.counts += onehot.sum(0)
        self.coact += onehot.T @ onehot
        if reap:
            for e in range(E):
                rows, slot = torch.where(idx == e)
                if rows.numel():
                    norms = expert_output(experts, e, x[rows]).float().norm(dim=-1)
                    self.reap_sum[e] += (w[rows, slot] * norms).sum().double()

    def reap_scores(self) -> Tensor:
        return torch.where(self.counts > 0, self.reap_sum / self.counts.clamp(min=1), torch.zeros_like(self.counts))

    def jaccard(self) -> Tensor:
        n = self.counts
        union = n[:, None] + n[None, :] - self.coact
        return torch.where(union > 0, self.coact / union.clamp(min=1), torch.zeros_like(union))


@torch.no_grad()
def routing_stats(model: nn.Module, blocks: list[MoeBlock], ids: Tensor, batch_size: int = 8, *,
                  reap: bool, progress=None) -> dict[int, RoutingStats]:  # fmt: skip
    """One pass of the dense model over the calibration windows, block by block, recording the
    routing each experts module receives (and REAP's gate x output norms)."""
    adapter = engine_adapter(model)
    layers = adapter.blocks(model)
    inputs = capture_block_inputs(model, adapter, ids, batch_size)
    by_index = {b.index: b for b in blocks}
    stats = {b.index: RoutingStats(b.num_experts) for b in blocks}
    it = range(len(layers))
    for i in progress(it) if progress else it:
        handle = None
        if i in by_index:
            b, st = by_index[i], stats[i]

            def hook(mod, args, kwargs, b=b, st=st):
                x, index, weights = (list(args) + [None] * 3)[:3]
                index = kwargs.get("top_k_index", index)
                weights = kwargs.get("top_k_weights", weights)
                st.update(mod, x, index, weights, reap)

            handle = b.experts.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for inp in inputs:
                inp.hidden = _block_output(layers[i](inp.hidden, **inp.kwargs_for(i)))
        finally:
            if handle is not None:
                handle.remove()
    return stats


# --- removal and config sync ---------------------------------------------------------------------
def _count_fields(config) -> list[str]:
    return [f for f in rc.COUNT_FIELDS if isinstance(getattr(config, f, None), int)]


@torch.no_grad()
def remove_experts(model: nn.Module, keep: dict[int, list[int]], router_rows: dict[int, Tensor] | None = None) -> list[int | None]:
    """Keep experts ``keep[block]`` (sorted) in each listed MoE block and sync the config:
    uniform counts become the stock count field, per-layer counts ``config.prunekit_experts``
    (the stock field then keeps the largest count, which the stock classes build).
    ``router_rows[block]`` replaces the kept router rows (STUN's merged rows). Returns the
    per-block counts (``None`` for blocks without routed experts)."""
    blocks = {b.index: b for b in moe_blocks(model)}
    for i, kept in keep.items():
        b = blocks[i]
        if len(kept) < b.top_k:
            raise ConfigError(f"block {i}: keeping {len(kept)} experts is fewer than top-k = {b.top_k}")
        rows = None if router_rows is None else router_rows.get(i)
        rc.keep_experts(b.moe, b.experts, b.router, torch.tensor(kept), rows)
    n_layers = len(engine_adapter(model).blocks(model))
    counts = [blocks[i].num_experts if i in blocks else None for i in range(n_layers)]
    present = {c for c in counts if c is not None}
    cfg = model.config
    fields = _count_fields(cfg)
    if len(present) == 1:
        (n,) = present
        for f in fields:
            setattr(cfg, f, n)
        if hasattr(cfg, CONFIG_COUNTS):
            delattr(cfg, CONFIG_COUNTS)
    else:
        for f in fields:
            setattr(cfg, f, max(present))
        setattr(cfg, CONFIG_COUNTS, counts)
    return counts


def _expert_params(b: MoeBlock) -> int:
    return sum(t.numel() for _, t, p in rc._experts_dim_tensors(b.experts, b.num_experts) if p)


# --- REAP ----------------------------------------------------------------------------------------
def reap_keep(stats: dict[int, RoutingStats], blocks: list[MoeBlock], experts: float, scope: str) -> dict[int, list[int]]:
    """Experts kept per block by REAP scores (uniform count, or a global ranking of score shares)."""
    removes = {b.index: _count_to_remove(experts, b.num_experts, b.top_k, "reap") for b in blocks}
    scores = {b.index: stats[b.index].reap_scores() for b in blocks}
    if scope == "uniform":
        return {i: sorted(torch.argsort(s, descending=True, stable=True)[: len(s) - removes[i]].tolist())
                for i, s in scores.items()}  # fmt: skip
    total = sum(removes.values())
    cands = []
    for b in blocks:
        s = scores[b.index]
        share = s / s.sum().clamp(min=1e-30)
        cands += [(float(share[e]), b.index, e) for e in range(b.num_experts)]
    cands.sort()
    gone: dict[int, set[int]] = {b.index: set() for b in blocks}
    limit = {b.index: b.num_experts - b.top_k for b in blocks}
    for _, i, e in cands:
        if total == 0:
            break
        if len(gone[i]) < limit[i]:
            gone[i].add(e)
            total -= 1
    return {b.index: [e for e in range(b.num_experts) if e not in gone[b.index]] for b in blocks}


@STRUCTURED_METHODS.register("reap")
def reap(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
         progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("reap", config.method_args, SPEC_REAP)
    blocks = moe_blocks(model)
    for b in blocks:  # validate before the calibration pass
        _count_to_remove(args["experts"], b.num_experts, b.top_k, "reap")
    ids = C.get_calib(config, calib, tokenizer)
    before = {b.index: _expert_params(b) for b in blocks}
    t0 = time.perf_counter()
    stats = routing_stats(model, blocks, ids, config.calib.batch_size, reap=True,
                          progress=C.progress_wrap(progress, "reap scores"))  # fmt: skip
    t_stats = time.perf_counter() - t0
    keep = reap_keep(stats, blocks, args["experts"], args["scope"])
    counts = remove_experts(model, keep)
    report = _expert_report("reap", args, model, blocks, before, keep, ids, config,
                            {i: [round(float(v), 6) for v in st.reap_scores()] for i, st in stats.items()})  # fmt: skip
    report.timings = {"routing_stats": t_stats, "total": time.perf_counter() - t_start}
    report.notes.append(_count_note(counts))
    return report


reap.SPEC = SPEC_REAP
reap.families = FAMILIES  # MoE families only (for `prunekit ls` / the README family table)
reap.summary = "REAP: remove the MoE experts with the lowest mean gate x output norm"


# --- STUN ----------------------------------------------------------------------------------------
def dissimilarity(router_weight: Tensor, jaccard: Tensor, coactivation: float) -> Tensor:
    """STUN's D_ij: normalised router-row distance minus λ x co-activation (diagonal 0)."""
    R = router_weight.double()
    d = torch.cdist(R, R)
    E = d.shape[0]
    off = d[~torch.eye(E, dtype=torch.bool)]
    scale = off.mean() if off.numel() and off.mean() > 0 else torch.tensor(1.0, dtype=d.dtype)
    D = d / scale - coactivation * jaccard.double()
    return D.fill_diagonal_(0.0)


def greedy_clusters(D: Tensor, target: int) -> list[list[int]]:
    """Agglomerative clustering with average linkage: merge the two closest clusters until
    ``target`` clusters are left (ties: lowest indices first)."""
    clusters = [[e] for e in range(D.shape[0])]
    while len(clusters) > target:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                link = D[clusters[a]][:, clusters[b]].mean().item()
                if best is None or link < best[0] - 1e-12:
                    best = (link, a, b)
        _, a, b = best
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return clusters


def representative(experts: nn.Module, members: list[int]) -> int:
    """The member nearest the cluster's weight centroid (all of an expert's weights, flattened)."""
    if len(members) == 1:
        return members[0]
    W = torch.stack([torch.cat([experts.gate_up_proj[e].reshape(-1), experts.down_proj[e].reshape(-1)]).float()
                     for e in members])  # fmt: skip
    dist = (W - W.mean(0)).norm(dim=1)
    return members[int(torch.argmin(dist))]


def merged_router_row(router_weight: Tensor, members: list[int], counts: Tensor) -> Tensor:
    """The traffic-weighted mean of the members' router rows (plain mean if none was routed)."""
    n = counts[members].double()
    pi = n / n.sum() if n.sum() > 0 else torch.full_like(n, 1.0 / len(members))
    return (pi[:, None] * router_weight[members].double()).sum(0).to(router_weight.dtype)


def stun_plan(stats: dict[int, RoutingStats], blocks: list[MoeBlock], experts: float, coactivation: float):
    """``(keep, router_rows, clusters)`` per block."""
    keep, rows, clusters_of = {}, {}, {}
    for b in blocks:
        target = b.num_experts - _count_to_remove(experts, b.num_experts, b.top_k, "stun")
        st = stats[b.index]
        W = b.router.weight.data
        clusters = greedy_clusters(dissimilarity(W, st.jaccard(), coactivation), target)
        reps = [representative(b.experts, c) for c in clusters]
        order = sorted(range(len(clusters)), key=lambda c: reps[c])
        keep[b.index] = [reps[c] for c in order]
        rows[b.index] = torch.stack([merged_router_row(W, clusters[c], st.counts) for c in order])
        clusters_of[b.index] = [clusters[c] for c in order]
    return keep, rows, clusters_of


def _parse_then_set(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"stun: then_set={text} must be K=V[,K=V...] settings of the then method")
        out[k.strip()] = v.strip()
    return out


@STRUCTURED_METHODS.register("stun")
def stun(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
         progress: bool = True) -> PruneReport:  # fmt: skip
    from ..api import prune_, target_linears
    from ..engine.targets import weight_of
    from ..methods import is_structured

    t_start = time.perf_counter()
    args = C.parse_args("stun", config.method_args, SPEC_STUN)
    blocks = moe_blocks(model)
    for b in blocks:
        _count_to_remove(args["experts"], b.num_experts, b.top_k, "stun")
    then = args["then"].lower()
    then_cfg = None
    if then != "none":
        if is_structured(then):
            raise ConfigError(f"stun: then={then} is a structured method; give an unstructured one (sparsegpt, wanda, ...) or none")
        s = 0.5 if config.sparsity is None else float(config.sparsity)
        then_cfg = PruneConfig(method=then, sparsity=None if args["then_pattern"] != "unstructured" else s,
                               pattern=args["then_pattern"], method_args=_parse_then_set(args["then_set"]),
                               calib=config.calib, propagate=config.propagate).validate()  # fmt: skip
    ids = C.get_calib(config, calib, tokenizer)
    before = {b.index: _expert_params(b) for b in blocks}
    all_before = sum(weight_of(m).numel() for m in target_linears(model, PruneConfig()).values())
    t0 = time.perf_counter()
    stats = routing_stats(model, blocks, ids, config.calib.batch_size, reap=False,
                          progress=C.progress_wrap(progress, "stun routing"))  # fmt: skip
    t_stats = time.perf_counter() - t0
    keep, rows, clusters = stun_plan(stats, blocks, args["experts"], args["coactivation"])
    counts = remove_experts(model, keep, rows)
    report = _expert_report("stun", args, model, blocks, before, keep, ids, config, None)
    report.settings["clusters"] = {str(i): c for i, c in clusters.items()}
    timings = {"routing_stats": t_stats}
    if then_cfg is not None:
        removed = sum(before.values()) - sum(_expert_params(b) for b in moe_blocks(model))
        remaining = all_before - removed
        s = then_cfg.resolved_sparsity()
        if args["total"]:
            if then_cfg.pattern != "unstructured":
                raise ConfigError("stun: total=true needs then_pattern=unstructured (N:M fixes the sparsity)")
            s = (s * all_before - removed) / remaining
            if s < 0:
                raise ConfigError(f"stun: removing experts alone already exceeds sparsity {config.sparsity:g}; use fewer experts")
            then_cfg = dataclasses.replace(then_cfg, sparsity=s)
        sub = prune_(model, then_cfg, ids, progress=progress)
        report.layers = sub.layers
        report.settings["then_settings"] = sub.settings
        report.settings["then_sparsity"] = s
        report.pattern = sub.pattern
        zeros = sum(lr.sparsity * lr.shape[0] * lr.shape[1] for lr in sub.layers)
        report.settings["total_sparsity"] = (zeros + removed) / all_before
        report.notes += sub.notes
        timings.update({f"then_{k}": v for k, v in sub.timings.items()})
    report.timings = {**timings, "total": time.perf_counter() - t_start}
    report.notes.append(_count_note(counts))
    return report


stun.SPEC = SPEC_STUN
stun.families = FAMILIES
stun.summary = "STUN: cluster MoE experts by router similarity and co-activation, keep one per cluster, then prune unstructured"


def _expert_report(name: str, args: dict, model: nn.Module, blocks: list[MoeBlock], before: dict[int, int],
                   keep: dict[int, list[int]], ids: Tensor, config: PruneConfig, scores) -> PruneReport:  # fmt: skip
    after_blocks = {b.index: b for b in moe_blocks(model)}
    removed = sum(before.values()) - sum(_expert_params(b) for b in after_blocks.values())
    total = sum(before.values())
    settings = {**args, "kept": {str(i): k for i, k in keep.items()},
                "expert_params_before": total, "expert_params_removed": removed}  # fmt: skip
    if scores is not None:
        settings["scores"] = {str(i): s for i, s in scores.items()}
    return C.new_report(name, settings, removed / total if total else 0.0, ids, config)


def _count_note(counts: list[int | None]) -> str:
    present = sorted({c for c in counts if c is not None})
    if len(present) == 1:
        return f"{present[0]} routed experts kept in every MoE block (stock config); shared experts kept"
    return (f"per-block expert counts {counts} (config.{CONFIG_COUNTS}; the folder loads with "
            f"prunekit or trust_remote_code=True); shared experts kept")


# --- MC-MoE dynamic skipping ---------------------------------------------------------------------
def enable_dynamic_skipping(model: nn.Module, beta: float | None) -> nn.Module:
    """Skip a token's second (and any lower-ranked) routed expert when its weight is below
    ``beta`` x the first one's; ``beta`` None or 0 turns skipping off. Sets
    ``config.prunekit_dynamic_experts`` so a saved folder keeps it (remote code / prunekit load).
    Counters restart at zero; read them with :func:`dynamic_skipping_stats`. Returns ``model``."""
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1
                             or math.isnan(beta)):  # fmt: skip
        raise ConfigError(f"dynamic_experts={beta!r} must be a number in [0, 1] (the threshold β in w2 < β·w1)")
    blocks = moe_blocks(model)
    if any(b.top_k < 2 for b in blocks):
        raise ConfigError("dynamic expert skipping needs top-k >= 2 routing (it skips the second expert)")
    rc.set_dynamic_skipping(model, beta or None)
    if beta:
        setattr(model.config, CONFIG_DYNAMIC, float(beta))
    elif hasattr(model.config, CONFIG_DYNAMIC):
        delattr(model.config, CONFIG_DYNAMIC)
    return model


def dynamic_skipping_stats(model: nn.Module, reset: bool = False) -> dict[str, float | int]:
    """``{"skipped", "routed", "saved_fraction"}``: routed expert evaluations skipped since
    skipping was enabled (or last reset)."""
    skipped, routed = rc.skipping_counts(model)
    if reset:
        for b in moe_blocks(model):
            b.router.prunekit_skipped = [0, 0]
    return {"skipped": skipped, "routed": routed, "saved_fraction": skipped / routed if routed else 0.0}


# --- saving and loading --------------------------------------------------------------------------
def _needs_remote_code(config) -> bool:
    return bool(getattr(config, CONFIG_COUNTS, None)) or bool(getattr(config, CONFIG_DYNAMIC, None))


def write_remote_code(config, folder: str | os.PathLike) -> bool:
    """Copy ``modeling_prunekit_moe.py`` into ``folder`` and add the ``auto_map`` entry when the
    config has per-layer expert counts or dynamic skipping; otherwise do nothing (False)."""
    if config is None or not _needs_remote_code(config):
        return False
    mt = getattr(config, "model_type", None)
    if mt not in rc.CLASSES:
        raise ModelLoadError(f"no trust_remote_code class for MoE family {mt!r} (have {sorted(rc.CLASSES)})")
    folder = Path(folder)
    shutil.copyfile(Path(__file__).with_name("remote_code") / REMOTE_CODE_FILE, folder / REMOTE_CODE_FILE)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    auto_map = dict(cfg.get("auto_map") or {})
    auto_map["AutoModelForCausalLM"] = f"{REMOTE_CODE_FILE[:-3]}.{rc.CLASSES[mt]}"
    cfg["auto_map"] = auto_map
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return True


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    dynamic_experts: float | None = None) -> nn.Module:  # fmt: skip
    """Load a folder with per-layer expert counts and/or dynamic skipping (or a plain one) without
    running the folder's copy of the remote code: prunekit's own class of
    ``modeling_prunekit_moe`` shrinks the stock model per block before the weights are loaded
    (transformers converts the checkpoint layout as usual); any missing or mismatched tensor is a
    ModelLoadError. ``dynamic_experts`` (β) overrides the folder's ``prunekit_dynamic_experts``
    (0 turns skipping off)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(path)
    config = AutoConfig.from_pretrained(p)
    if not _needs_remote_code(config):
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype or "auto")
    else:
        mt = getattr(config, "model_type", None)
        if mt not in rc.CLASSES:
            raise ModelLoadError(f"{p}: per-layer expert counts for family {mt!r} are not supported (have {sorted(rc.CLASSES)})")
        try:
            model, info = getattr(rc, rc.CLASSES[mt]).from_pretrained(p, dtype=dtype or "auto", output_loading_info=True)
        except ValueError as e:
            raise ModelLoadError(f"{p}: {e}") from None
        bad = list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []]
        if bad:
            raise ModelLoadError(f"{p}: weights do not match the per-block expert counts ({', '.join(bad[:3])})")
    if dynamic_experts is not None:
        enable_dynamic_skipping(model, float(dynamic_experts) or None)
    return model.eval()


__all__ = [
    "MoeBlock", "RoutingStats", "dissimilarity", "dynamic_skipping_stats", "enable_dynamic_skipping",
    "expert_output", "greedy_clusters", "load_pretrained", "merged_router_row", "moe_blocks", "reap",
    "reap_keep", "remove_experts", "representative", "routing_stats", "stun", "stun_plan", "write_remote_code",
]  # fmt: skip
