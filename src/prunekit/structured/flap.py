"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024, arXiv:2312.11983).

Metric (per input channel ``j`` of ``o_proj`` / ``down_proj``, "WIFV")::

    F_j = Var_t[x_tj] * ||W[:, j]||²          x: [tokens, in] calibration inputs, W: [out, in]

A channel whose input barely fluctuates can be replaced by its mean, and the mean's contribution
is folded into the output bias (bias compensation): ``b += W[:, removed] @ mean[removed]``.
Attention scores are squared and standardised per block over the ``heads * head_dim`` channels,
then averaged per head; MLP scores are standardised per block (as in the reference code). The
statistics come from the *dense* model (each block sees the dense outputs of the previous one),
and all blocks are compressed at the end.

Structure:
    ``uniform`` (default): every block keeps the same widths (a stock config); the head/channel
    split is the GQA-valid one minimising the total removed ``standardised score x parameters``
    (see ``common.plan_cost``). ``ratio``: the same fraction of attention and MLP parameters
    per block (FLAP's UL-UM). Fix the head count with ``heads=N`` (and ``kv_heads=K``).
    ``adaptive``: the paper's AL-AM — standardised scores ranked globally across blocks, so
    each block keeps its own widths; the output has per-block widths (``prunekit.load`` or
    ``from_pretrained(..., trust_remote_code=True)``; see ``structured/per_block.py``).

Hardware-aligned widths: ``align=N`` keeps a multiple of N MLP channels per block (default 64
from 1024 channels up, see ``common.resolve_align``); head counts are GQA-valid as before.

Deviations from the reference: query heads are removed only in GQA-valid patterns (``qq`` per
kept KV head), KV heads only with their whole group.
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor, nn

from ..config import PruneConfig
from ..engine import Stat, run_layerwise
from ..errors import ConfigError
from ..report import PruneReport
from ..settings import Setting
from . import STRUCTURED_METHODS
from . import common as C

SPEC = {
    "structure": Setting(str, "uniform", choices=("uniform", "ratio", "adaptive")),
    "metric": Setting(str, "wifv", choices=("wifv", "ifv", "wifn")),
    "compensate": Setting(bool, True),
    "heads": Setting(int, None, ge=1, help="query heads kept per block"),
    "kv_heads": Setting(int, None, ge=1, help="KV heads kept per block"),
    "align": C.ALIGN_SETTING,
}


def _standardise(x: Tensor) -> Tensor:
    x = x.float()
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def channel_metric(metric: str, W: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Per input channel importance [in] of a Linear with weight ``W`` [out, in]."""
    W = W.float()
    if metric == "ifv":
        return var
    if metric == "wifv":
        return var * W.pow(2).sum(0)
    # wifn: mean over rows of |W| * sqrt(E[x²]) (Wanda-style input norm)
    return (W.abs() * (var + mean.pow(2)).sqrt()[None, :]).mean(0)


def _compensation(model: nn.Module, adapter, requested: bool, explicit: bool) -> tuple[bool, bool, str]:
    """Where bias compensation is applied: ``(attention, mlp, note)``.

    A stock config that cannot carry an o_proj / down_proj bias (Qwen2, Mistral; the MLP of
    Qwen3 and Gemma) gets compensation only where it can, with a one-line note, when
    compensation was left at its default; asking for it explicitly (``compensate=true``) on such
    a config is an error."""
    if not requested:
        return False, False, ""
    ok_attn, ok_mlp = C.surgery.can_compensate(model, adapter)
    if ok_attn and ok_mlp:
        return True, True, ""
    missing = " and ".join(p for p, ok in (("attention (o_proj)", ok_attn), ("MLP (down_proj)", ok_mlp)) if not ok)
    if explicit:
        raise ConfigError(
            f"flap: compensate=true, but a stock {adapter.family} config cannot carry the {missing} "
            "compensation biases; drop the setting (FLAP then compensates where it can) or pass "
            "--set compensate=false"
        )
    return ok_attn, ok_mlp, (
        f"flap: no bias compensation in {missing}: a stock {adapter.family} config cannot carry "
        "those biases (the output loads with plain transformers)"
    )


def _check_per_block_loadable(family: str) -> None:
    C.check_per_block_loadable("flap", family, "structure=adaptive writes per-block widths",
                               "--set structure=uniform (or ratio) for a stock config")


@STRUCTURED_METHODS.register("flap")
def flap(model: nn.Module, config: PruneConfig, calib: Tensor | None, tokenizer: Any = None,
         progress: bool = True) -> PruneReport:  # fmt: skip
    t_start = time.perf_counter()
    args = C.parse_args("flap", config.method_args, SPEC)
    adapter, geo, costs, sparsity = C.start(model, config)
    fixed = C.fixed_heads(args, geo)
    align = C.resolve_align(args, geo.intermediate, "flap")
    C.check_feasible(geo, costs, sparsity)
    if args["structure"] == "adaptive":
        _check_per_block_loadable(adapter.family)
    comp_attn, comp_mlp, comp_note = _compensation(model, adapter, args["compensate"],
                                                   explicit="compensate" in config.method_args)  # fmt: skip
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ids = C.get_calib(config, calib, tokenizer)
    timings["calib_tokenize"] = time.perf_counter() - t0
    shapes = C.linear_shapes(model, adapter)
    before = C.block_param_total(model, adapter)
    o_suffix, d_suffix = f".{adapter.attn}.{adapter.o}", f".{adapter.mlp_out}"
    head_scores: list[Tensor] = []
    chan_scores: list[Tensor] = []
    attn_means: list[Tensor] = []
    mlp_means: list[Tensor] = []

    def on_block(i: int, targets, stats) -> None:
        for name, lin in targets.items():
            st = stats[name]
            m = channel_metric(args["metric"], lin.weight.data, st[Stat.INPUT_MEAN], st[Stat.INPUT_VAR])
            if name.endswith(o_suffix):
                s = _standardise(m.pow(2)).reshape(geo.heads, geo.head_dim).mean(1)
                head_scores.append(s.cpu())
                attn_means.append(st[Stat.INPUT_MEAN].cpu())
            else:
                chan_scores.append(_standardise(m).cpu())
                mlp_means.append(st[Stat.INPUT_MEAN].cpu())

    def select(name: str, _lin) -> bool:
        return name.endswith(o_suffix) or (name.endswith(d_suffix) and o_suffix not in name)

    run_layerwise(
        model, adapter, ids, needs={Stat.INPUT_MEAN, Stat.INPUT_VAR}, select=select,
        on_block=on_block, batch_size=config.calib.batch_size, propagate="dense",
        progress=C.progress_wrap(progress, "flap stats"), timings=timings,
    )  # fmt: skip
    t0 = time.perf_counter()
    adaptive = args["structure"] == "adaptive"
    if adaptive:
        if fixed:
            raise ConfigError("flap: heads/kv_heads fix a uniform head count; drop them or use structure=uniform")
        plans = C.plan_adaptive(geo, costs, sparsity, head_scores, chan_scores, align=align)
    elif args["structure"] == "ratio":
        plans = [C.plan_ratio(geo, costs, sparsity, fixed, align=align)] * len(head_scores)
    else:
        plans = [C.plan_cost(geo, costs, sparsity, head_scores, chan_scores, fixed, align=align)] * len(head_scores)
    info = {}
    for i, block in enumerate(adapter.blocks(model)):
        info[i] = C.apply_block(
            block, adapter, geo, plans[i], head_scores[i], chan_scores[i],
            attn_mean=attn_means[i] if comp_attn else None, mlp_mean=mlp_means[i] if comp_mlp else None,
        )  # fmt: skip
    timings["prune"] = time.perf_counter() - t0
    settings = {k: v for k, v in args.items() if v is not None}
    settings["align"] = align
    settings["compensated"] = {"attention": comp_attn, "mlp": comp_mlp}
    if not adaptive:
        plan = plans[0]
        settings["plan"] = {"kv_heads": plan.kk, "heads": plan.heads, "intermediate": plan.channels}
    report = C.new_report("flap", settings, sparsity, ids, config)
    report.timings.update(timings)
    if comp_note:
        report.notes.append(comp_note)
    if not geo.attn_prunable:
        report.notes.append(f"{adapter.family}: attention heads kept ({C.surgery.heads_fixed(model, adapter)})")
    return C.finish(model, adapter, geo, report, shapes, before, t_start, info, per_block=adaptive)


flap.summary = "FLAP: fluctuation metric + bias compensation, uniform GQA-valid widths (stock config)"
