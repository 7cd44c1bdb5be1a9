"""Shared pieces of the width-pruning methods: argument parsing, parameter budgets, plans.

A *plan* for one block is ``(kk, qq, channels)``: keep ``kk`` KV heads with ``qq`` query heads
each and ``channels`` MLP channels. With uniform widths (the default) every block gets the same
plan, so the result is a stock config. The budget is in parameters: S x (decoder-block
parameters), spread evenly over blocks.

Choosing the uniform plan:

* ``ratio``: remove ~S of the attention parameters (the nearest GQA-valid head count) and fill
  the rest of the budget with MLP channels (the papers' per-layer uniform setting).
* ``cost``: among all GQA-valid head counts, pick the one whose removed units have the smallest
  total ``score x parameters`` over all blocks, MLP channels filling the rest. With standardised
  scores (FLAP) this is the uniform-width counterpart of FLAP's global threshold, which removes
  the lowest-scoring units first until the parameter budget is met.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..errors import ConfigError
from ..models.adapters import ModelAdapter, get_adapter
from ..report import LayerReport, PruneReport
from ..settings import Setting
from . import surgery

DEFAULT_SPARSITY = 0.2
DEFAULT_ALIGN = 64  # kept MLP channels a multiple of this on models large enough
ALIGN_MIN_INTERMEDIATE = 1024  # "large enough": at least this many MLP channels


# --- arguments ---------------------------------------------------------------------------------
def parse_args(method: str, args: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config.method_args`` against the method's ``SPEC`` (name -> Setting)."""
    from ..settings import schema_of, validate_settings

    return validate_settings(method, schema_of(spec), args)


def resolve_sparsity(config: PruneConfig) -> float:
    s = DEFAULT_SPARSITY if config.sparsity is None else float(config.sparsity)
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {s:g}")
    return s


def get_calib(config: PruneConfig, calib: Tensor | None, tokenizer: Any) -> Tensor:
    if calib is not None:
        return calib
    if tokenizer is None:
        raise ConfigError(f"method {config.method!r} needs calibration data: pass calib ids or a tokenizer")
    from ..data import calibration_windows

    c = config.calib
    return calibration_windows(c.source, tokenizer, c.nsamples, c.seqlen, c.seed)


def progress_wrap(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="block", dynamic_ncols=True)


# --- hardware-aligned widths ---------------------------------------------------------------
ALIGN_SETTING = Setting(int, None, ge=1, le=1 << 20, help=(
    f"kept MLP channels a multiple of N (default {DEFAULT_ALIGN} when the MLP has >= "
    f"{ALIGN_MIN_INTERMEDIATE} channels, else 1 = off)"))


def resolve_align(args: Mapping[str, Any], total: int, method: str = "") -> int:
    """The channel alignment for an MLP of ``total`` channels: ``args["align"]`` or the default.

    An explicit ``align`` larger than the MLP is a one-line ConfigError."""
    a = args.get("align")
    if a is None:
        return DEFAULT_ALIGN if total >= ALIGN_MIN_INTERMEDIATE else 1
    a = int(a)
    if a > total:
        who = f"{method}: " if method else ""
        raise ConfigError(f"{who}align={a} exceeds the MLP width ({total} channels): use align <= {total} or align=1 (off)")
    return a


def align_width(n: float, align: int, total: int) -> int:
    """Round a kept width ``n`` to the nearest multiple of ``align`` within ``[align, total]``.

    ``n >= total`` keeps everything (``total``, aligned or not: nothing is pruned); ``align <= 1``
    just rounds. Raises ConfigError when ``align > total`` (no multiple fits)."""
    if n >= total:
        return total
    if align <= 1:
        return max(1, int(round(n)))
    if align > total:
        raise ConfigError(f"align={align} exceeds the width ({total}): use align <= {total} or align=1 (off)")
    k = int(round(n / align))
    return min(max(k, 1), total // align) * align


def align_widths(targets: list[float], align: int, totals: list[int], keep_total: float) -> list[int]:
    """Per-block kept widths with a sum as close as alignment allows to ``keep_total``.

    A block whose target reaches its full width keeps it (nothing pruned there, aligned or not);
    every other block keeps a multiple of ``align`` in ``[align, total]``. Largest-remainder
    rounding in units of ``align``: each block starts at the floor of its (clipped) target and the
    units still missing go to the largest remainders, so the sum is within ``align / 2`` of
    ``keep_total`` whenever the bounds allow."""
    a = max(1, int(align))
    if any(a > t for t in totals):
        raise ConfigError(f"align={a} exceeds a block's width ({min(totals)}): use align <= {min(totals)} or align=1 (off)")
    full = [x >= t for x, t in zip(targets, totals)]
    hi = [(t // a) * a for t in totals]
    tgt = [min(max(float(x), a), h) for x, h in zip(targets, hi)]
    out = [t if f else int(x // a) * a for x, t, f in zip(tgt, totals, full)]
    free = sorted((i for i in range(len(out)) if not full[i]), key=lambda i: out[i] - tgt[i])  # largest remainder first
    missing = int(round((keep_total - sum(out)) / a))
    while missing and free:
        step = 1 if missing > 0 else -1
        moved = False
        for i in free if step > 0 else reversed(free):
            if missing and a <= out[i] + step * a <= hi[i]:
                out[i] += step * a
                missing -= step
                moved = True
        if not moved:
            break
    return out


def check_per_block_loadable(method: str, family: str, what: str = "writes per-block widths",
                             fix: str = "use flap, wanda-sp or llm-pruner for a stock config") -> None:  # fmt: skip
    """Per-block widths load only through prunekit's remote modeling code: refuse up front (not
    after the calibration pass) for a family it does not cover."""
    from .remote_code.modeling_prunekit import CLASSES

    if family not in CLASSES:
        raise ConfigError(
            f"{method}: {what}, which load only with prunekit's modeling code, available for "
            f"{', '.join(sorted(CLASSES))}, not {family!r}: {fix}"
        )


# --- geometry and parameter counts -------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    attn_prunable: bool  # False where the stock config cannot express fewer heads (OPT, GPT-NeoX)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def geometry(model: nn.Module, adapter: ModelAdapter) -> Geometry:
    g = adapter.geometry(model.config)
    block = adapter.blocks(model)[0]
    heads, kv = surgery.attention_widths(block, adapter, g["head_dim"])
    inter = surgery.mlp_width(block, adapter)
    if (heads, kv, inter) != (g["heads"], g["kv_heads"], g["intermediate"]):
        raise ConfigError("the model's blocks do not match its config (already pruned per block?)")
    if heads % kv:
        raise ConfigError(f"{heads} query heads are not a multiple of {kv} KV heads")
    return Geometry(heads, kv, g["head_dim"], g["hidden"], inter,
                    surgery.heads_fixed(model, adapter) is None)  # fmt: skip


def _rowsize(lin: nn.Linear) -> int:
    return lin.in_features + (1 if lin.bias is not None else 0)


@dataclass(frozen=True)
class Costs:
    """Parameters removed per unit in one block."""

    q_head: int  # one query head: q rows (+bias) and o columns
    kv_head: int  # one KV head: k and v rows (+bias)
    channel: int  # one MLP channel: mlp_in rows (+bias) and the mlp_out column
    block: int  # all parameters of a block


def costs(model: nn.Module, adapter: ModelAdapter, geo: Geometry) -> Costs:
    block = adapter.blocks(model)[0]
    attn = adapter.attention(block)
    mlp = adapter.mlp_module(block)
    hd = geo.head_dim
    q = hd * (_rowsize(attn.get_submodule(adapter.q)) + attn.get_submodule(adapter.o).out_features)
    kv = hd * (_rowsize(attn.get_submodule(adapter.k)) + _rowsize(attn.get_submodule(adapter.v)))
    ch = (sum(_rowsize(lin) for lin, _ in surgery.mlp_in_parts(mlp, adapter))  # gate and up rows (fused or not)
          + mlp.get_submodule(adapter.mlp_out).out_features)  # fmt: skip
    return Costs(q, kv, ch, sum(p.numel() for p in block.parameters()))


def attention_options(geo: Geometry) -> list[tuple[int, int]]:
    """GQA-valid (kept KV heads, kept query heads per KV head) pairs."""
    if not geo.attn_prunable:
        return [(geo.kv_heads, geo.group)]
    return [(kk, qq) for kk in range(1, geo.kv_heads + 1) for qq in range(1, geo.group + 1)]


def attn_removed(geo: Geometry, c: Costs, kk: int, qq: int) -> int:
    return (geo.heads - kk * qq) * c.q_head + (geo.kv_heads - kk) * c.kv_head


# --- choosing what to keep inside one block ----------------------------------------------------
def select_heads(head_scores: Tensor, geo: Geometry, kk: int, qq: int,
                 kv_scores: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Best ``qq`` query heads in every KV group, then the best ``kk`` groups (higher = keep)."""
    s = head_scores.float().reshape(geo.kv_heads, geo.group)  # [kv, group]
    top = s.topk(qq, dim=1)
    value = top.values.sum(1)
    if kv_scores is not None:
        value = value + kv_scores.float()
    keep_kv = value.topk(kk).indices.sort().values
    keep_q = []
    for g in keep_kv.tolist():
        local = top.indices[g].sort().values
        keep_q.append(local + g * geo.group)
    return torch.cat(keep_q), keep_kv


def select_channels(scores: Tensor, n_keep: int) -> Tensor:
    return scores.float().topk(n_keep).indices.sort().values


# --- plans -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    kk: int
    qq: int
    channels: int

    @property
    def heads(self) -> int:
        return self.kk * self.qq


def _channels_for(geo: Geometry, c: Costs, budget: float, removed_attn: int, align: int = 1) -> int | None:
    n_rm = round((budget - removed_attn) / c.channel)
    if n_rm < 0 or n_rm >= geo.intermediate:
        return None
    return align_width(geo.intermediate - n_rm, align, geo.intermediate)


def check_feasible(geo: Geometry, c: Costs, sparsity: float) -> None:
    """Refuse budgets that would remove every head or every channel of a block."""
    budget = sparsity * c.block
    most = attn_removed(geo, c, 1, 1) + (geo.intermediate - 1) * c.channel
    if budget > most + c.channel / 2:
        raise ConfigError(
            f"sparsity {sparsity:g} would remove every attention head or every MLP channel of a "
            f"block (at most {most / c.block:.3f} of block parameters can go); lower --sparsity "
            f"or use shortgpt to drop whole blocks"
        )


def plan_ratio(geo: Geometry, c: Costs, sparsity: float, fixed: tuple[int, int] | None = None,
               align: int = 1) -> Plan:  # fmt: skip
    check_feasible(geo, c, sparsity)
    budget = sparsity * c.block
    attn_total = geo.heads * c.q_head + geo.kv_heads * c.kv_head
    opts = [fixed] if fixed else attention_options(geo)
    best = None
    for kk, qq in opts:
        rm = attn_removed(geo, c, kk, qq)
        ch = _channels_for(geo, c, budget, rm, align)
        if ch is None:
            continue
        key = (abs(rm / attn_total - sparsity), rm)
        if best is None or key < best[0]:
            best = (key, Plan(kk, qq, ch))
    if best is None:
        raise ConfigError(f"no head count fits sparsity {sparsity:g} with at least one MLP channel left")
    return best[1]


def plan_cost(
    geo: Geometry, c: Costs, sparsity: float, head_scores: list[Tensor], chan_scores: list[Tensor],
    fixed: tuple[int, int] | None = None, align: int = 1,
) -> Plan:  # fmt: skip
    """Uniform plan minimising total (score x parameters) of the removed units over all blocks."""
    check_feasible(geo, c, sparsity)
    budget = sparsity * c.block
    sorted_ch = [s.float().sort().values for s in chan_scores]  # ascending
    cum_ch = [torch.cat([torch.zeros(1), s.cumsum(0)]) for s in sorted_ch]
    best = None
    for kk, qq in [fixed] if fixed else attention_options(geo):
        rm = attn_removed(geo, c, kk, qq)
        ch = _channels_for(geo, c, budget, rm, align)
        if ch is None:
            continue
        total = 0.0
        for hs, cc in zip(head_scores, cum_ch):
            keep_q, keep_kv = select_heads(hs, geo, kk, qq)
            gone = torch.ones(geo.heads, dtype=torch.bool)
            gone[keep_q] = False
            total += hs.float()[gone].sum().item() * c.q_head
            grp = hs.float().reshape(geo.kv_heads, geo.group).mean(1)
            gone_kv = torch.ones(geo.kv_heads, dtype=torch.bool)
            gone_kv[keep_kv] = False
            total += grp[gone_kv].sum().item() * c.kv_head
            total += cc[geo.intermediate - ch].item() * c.channel
        if best is None or total < best[0]:
            best = (total, Plan(kk, qq, ch))
    if best is None:
        raise ConfigError(f"no head count fits sparsity {sparsity:g} with at least one MLP channel left")
    return best[1]


def plan_adaptive(
    geo: Geometry, c: Costs, sparsity: float, head_scores: list[Tensor], chan_scores: list[Tensor],
    align: int = 1,
) -> list[Plan]:  # fmt: skip
    """Per-block plans from one global threshold ``t`` on comparable (standardised) scores.

    For a given ``t``, every block removes its MLP channels scoring below ``t`` and takes the
    GQA-valid head option minimising ``sum over removed units of (score - t) x parameters``;
    ``t`` is found by bisection so that the removed parameters meet the global budget. This is
    FLAP's adaptive structure (AL-AM) restricted to GQA-valid head sets. With ``align > 1``
    each block's kept channels are rounded to a multiple of ``align`` inside the search, so the
    bisection meets the budget with aligned widths.
    """
    check_feasible(geo, c, sparsity)
    n = len(head_scores)
    budget = sparsity * c.block * n
    opts = attention_options(geo)
    pre = []  # per block: [(A = sum score x params removed, N = params removed, kk, qq)]
    for hs in head_scores:
        rows = []
        for kk, qq in opts:
            keep_q, keep_kv = select_heads(hs, geo, kk, qq)
            gone = torch.ones(geo.heads, dtype=torch.bool)
            gone[keep_q] = False
            gone_kv = torch.ones(geo.kv_heads, dtype=torch.bool)
            gone_kv[keep_kv] = False
            grp = hs.float().reshape(geo.kv_heads, geo.group).mean(1)
            a = hs.float()[gone].sum().item() * c.q_head + grp[gone_kv].sum().item() * c.kv_head
            rows.append((a, attn_removed(geo, c, kk, qq), kk, qq))
        pre.append(rows)
    sorted_ch = [s.float().sort().values for s in chan_scores]

    def plans_at(t: float) -> tuple[list[Plan], int]:
        out, total = [], 0
        for rows, sc in zip(pre, sorted_ch):
            a, rm, kk, qq = min(rows, key=lambda r: (r[0] - t * r[1], r[1]))
            n_rm = min(int(torch.searchsorted(sc, torch.tensor(t)).item()), geo.intermediate - 1)
            ch = align_width(geo.intermediate - n_rm, align, geo.intermediate)
            out.append(Plan(kk, qq, ch))
            total += rm + (geo.intermediate - ch) * c.channel
        return out, total

    allv = torch.cat([torch.cat([h.float() for h in head_scores]), torch.cat(sorted_ch)])
    lo, hi = allv.min().item() - 1.0, allv.max().item() + 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if plans_at(mid)[1] < budget:
            lo = mid
        else:
            hi = mid
    lo_p, lo_r = plans_at(lo)
    hi_p, hi_r = plans_at(hi)
    return lo_p if abs(lo_r - budget) <= abs(hi_r - budget) else hi_p


def fixed_heads(args: Mapping[str, Any], geo: Geometry) -> tuple[int, int] | None:
    """``heads=N`` (query heads kept) and optional ``kv_heads=K`` from the method settings."""
    h, kv = args.get("heads"), args.get("kv_heads")
    if h is None and kv is None:
        return None
    if not geo.attn_prunable and (h not in (None, geo.heads) or kv not in (None, geo.kv_heads)):
        raise ConfigError("this model family's stock config cannot express fewer attention heads")
    kv = geo.kv_heads if kv is None else kv
    h = kv * geo.group if h is None else h
    if not 1 <= kv <= geo.kv_heads:
        raise ConfigError(f"kv_heads must be in 1..{geo.kv_heads}, got {kv}")
    if h < 1 or h % kv or h // kv > geo.group:
        raise ConfigError(
            f"heads={h} with kv_heads={kv} is not GQA-valid: it must be kv_heads x q, q in 1..{geo.group}"
        )
    return kv, h // kv


# --- applying and reporting --------------------------------------------------------------------
@torch.no_grad()
def apply_block(
    block: nn.Module, adapter: ModelAdapter, geo: Geometry, plan: Plan, head_scores: Tensor,
    chan_scores: Tensor, *, attn_mean: Tensor | None = None, mlp_mean: Tensor | None = None,
    kv_scores: Tensor | None = None,
) -> dict[str, Any]:  # fmt: skip
    info: dict[str, Any] = {}
    if (plan.kk, plan.qq) != (geo.kv_heads, geo.group):
        keep_q, keep_kv = select_heads(head_scores, geo, plan.kk, plan.qq, kv_scores)
        surgery.shrink_attention(block, adapter, geo.head_dim, keep_q, keep_kv, input_mean=attn_mean)
        info["kept_heads"] = keep_q.tolist()
        info["kept_kv_heads"] = keep_kv.tolist()
    if plan.channels != geo.intermediate:
        keep = select_channels(chan_scores, plan.channels)
        surgery.shrink_mlp(block, adapter, keep, input_mean=mlp_mean)
    return info


def new_report(method: str, settings: dict[str, Any], sparsity: float, calib_ids: Tensor | None,
               config: PruneConfig) -> PruneReport:  # fmt: skip
    c = config.calib
    calib = {"source": c.source, "nsamples": c.nsamples, "seqlen": c.seqlen, "seed": c.seed}
    if calib_ids is not None:
        calib.update(nsamples=int(calib_ids.shape[0]), seqlen=int(calib_ids.shape[1]))
    return PruneReport(method=method, settings=settings, pattern="structured",
                       target_sparsity=sparsity, calib=calib)  # fmt: skip


def finish(
    model: nn.Module, adapter: ModelAdapter, geo: Geometry, report: PruneReport,
    orig_shapes: dict[str, tuple[int, int]], block_params: int, t_start: float,
    block_info: dict[int, dict[str, Any]] | None = None, per_block: bool = False,
) -> PruneReport:  # fmt: skip
    """Sync the config, fill per-Linear rows, per-block widths and the achieved sparsity."""
    widths = surgery.sync_config(model, adapter, geo.head_dim, allow_per_block=per_block)
    now = {}
    for i, block in enumerate(adapter.blocks(model)):
        for n, m in block.named_modules():
            if isinstance(m, nn.Linear):
                now[f"{adapter.block_prefix(i)}.{n}"] = m
    for name, shape in orig_shapes.items():
        lin = now[name]
        kept = lin.weight.numel()
        report.layers.append(LayerReport(name, shape, report.target_sparsity, 1 - kept / (shape[0] * shape[1]),
                                         None, 0.0, {"kept_shape": list(lin.weight.shape)}))  # fmt: skip
    after = sum(p.numel() for b in adapter.blocks(model) for p in b.parameters())
    blocks = surgery.block_widths(model, adapter, geo.head_dim)
    for b in blocks:
        b.update((block_info or {}).get(b["index"], {}))
    report.settings["widths"] = widths
    report.settings["blocks"] = blocks
    report.settings["block_params_before"] = block_params
    report.settings["block_params_after"] = after
    report.settings["block_sparsity"] = 1 - after / block_params
    if widths.get("per_block"):
        report.notes.append(
            f"per-block widths (adaptive): heads {[b['heads'] for b in blocks]}, MLP channels "
            f"{[b['intermediate'] for b in blocks]}; {1 - after / block_params:.2%} of decoder-block "
            f"parameters removed; load with prunekit.load(DIR) or from_pretrained(DIR, trust_remote_code=True)"
        )
    else:
        report.notes.append(
            f"kept {widths['heads']}/{geo.heads} query heads, {widths['kv_heads']}/{geo.kv_heads} KV heads, "
            f"{widths['intermediate']}/{geo.intermediate} MLP channels per block; "
            f"{1 - after / block_params:.2%} of decoder-block parameters removed (biases included)"
        )
    report.timings["total"] = time.perf_counter() - t_start
    return report


def linear_shapes(model: nn.Module, adapter: ModelAdapter) -> dict[str, tuple[int, int]]:
    out = {}
    for i, block in enumerate(adapter.blocks(model)):
        for n, m in block.named_modules():
            if isinstance(m, nn.Linear):
                out[f"{adapter.block_prefix(i)}.{n}"] = tuple(m.weight.shape)
    return out


def block_param_total(model: nn.Module, adapter: ModelAdapter) -> int:
    return sum(p.numel() for b in adapter.blocks(model) for p in b.parameters())


def start(model: nn.Module, config: PruneConfig):
    """Common prologue: adapter (ConfigError for unknown families), geometry, costs, sparsity."""
    adapter = get_adapter(model)
    geo = geometry(model, adapter)
    c = costs(model, adapter, geo)
    return adapter, geo, c, resolve_sparsity(config)
