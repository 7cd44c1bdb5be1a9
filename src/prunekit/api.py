"""The public surface: prune_() orchestrates targets → allocation → engine → report."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .allocation import AllocationContext, get_allocator
from .config import PruneConfig
from .data import calibration_windows
from .engine import LayerStats, Stat, run_layerwise
from .engine.gradients import PREPASS_STATS, PrepassInputs, prepass_statistics
from .engine.targets import ExpertSlice, prunable_in, unsupported_experts, weight_of, write_weight
from .errors import ConfigError
from .methods import get_method, is_structured
from .models.discovery import engine_adapter
from .models.limits import vocab_size
from .report import LayerReport, PruneReport

log = logging.getLogger(__name__)

REPORT_TOKENS = 4096  # calibration tokens per Linear used for the reconstruction-error report


def _progress(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="block", dynamic_ncols=True)


IDLE_EXPERTS = ("dense", "magnitude")


def target_linears(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module | ExpertSlice]:
    """Every prunable matrix inside the decoder blocks that the target spec selects.

    Linears, GPT-2 Conv1Ds and experts of fused MoE modules (``name`` ``...experts.{e}.{proj}``,
    an :class:`~prunekit.engine.targets.ExpertSlice`); blocks come from the family's adapter or,
    for any other causal LM, from :func:`~prunekit.models.discovery.discover_blocks`. Routers
    and shared-expert gates are never targets. Quantized layers raise a ConfigError.
    """
    adapter = engine_adapter(model)
    out: dict[str, nn.Module | ExpertSlice] = {}
    for i, block in enumerate(adapter.blocks(model)):
        for n, m in prunable_in(block, adapter.block_prefix(i)).items():
            if config.targets.matches(n):
                out[n] = m
    return out


def _is_expert(name: str, target: object) -> bool:
    """A fused expert slice, or a Linear inside a ModuleList of experts (older MoE layouts)."""
    return isinstance(target, ExpertSlice) or ".experts." in name


def prune_target(name: str, lin: nn.Module | ExpertSlice, stats, method, pattern, sparsity: float,
                 needs: frozenset[Stat], idle: str = "dense") -> LayerReport:  # fmt: skip
    """Prune one target in place with ``method`` and return its :class:`LayerReport` (shared by the
    in-memory and the streaming engine). A target no calibration token reached (an idle expert)
    is left dense or pruned by magnitude (``idle``) and marked ``info["idle"]``."""
    t0 = time.perf_counter()
    W = weight_of(lin)  # [out, in] (a transposed view for Conv1D)
    err = None
    if stats.num_tokens == 0 and needs:  # an expert (or any layer) no token reached
        info: dict[str, Any] = {"tokens": 0, "idle": idle}
        if idle == "magnitude":
            W_new, _ = get_method("magnitude", per_row=True).prune(W, stats, pattern, sparsity)
            write_weight(lin, W_new)
    else:
        W_new, info = method.prune(W, stats, pattern, sparsity)
        if _is_expert(name, lin):
            info = {**info, "tokens": stats.num_tokens}
        install = getattr(method, "install", None)  # a method whose result is more than a weight
        if Stat.SAMPLE in stats and install is None:
            err = relative_error(W, W_new, stats[Stat.SAMPLE].to(W.device))
        write_weight(lin, W_new)
        if install is not None:  # e.g. ARMOR: wrappers around the pruned core; may rewrite info
            info = install(name, lin, info) or info
    zeros = (W == 0).sum().item()
    return LayerReport(name, tuple(W.shape), sparsity, zeros / W.numel(), err, time.perf_counter() - t0, info)


def relative_error(W: Tensor, W_new: Tensor, X: Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖² for token rows X [n, in]."""
    Wf = W.float()
    ref = X @ Wf.T
    diff = X @ (Wf - W_new.float()).T
    den = ref.pow(2).sum().item()
    return diff.pow(2).sum().item() / den if den > 0 else 0.0


@torch.no_grad()
def prune_(
    model: nn.Module,
    config: PruneConfig,
    calib: Tensor | None = None,
    tokenizer: Any = None,
    *,
    progress: bool = True,
    report_tokens: int = REPORT_TOKENS,
    idle_experts: str = "dense",
) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    Args:
        model: a causal LM: a family with an adapter, or any model whose repeated decoder
            blocks discovery finds (``prunekit.models.discovery``).
        config: what to do.
        calib: calibration token ids ``[nsamples, seqlen]``; drawn from ``config.calib`` with
            ``tokenizer`` when omitted (methods that need no statistics ignore it).
        tokenizer: needed only to draw calibration windows.
        progress: show a progress bar per block.
        report_tokens: calibration tokens per Linear for the reconstruction-error report
            (0 disables it).
        idle_experts: what happens to a MoE expert that no calibration token was routed to:
            ``"dense"`` (default: left untouched) or ``"magnitude"`` (pruned by |W| with the
            same pattern and sparsity, per output row). Either way each one is listed in
            ``report.notes`` and its ``LayerReport.info`` says ``{"tokens": 0, "idle": ...}``.

    Example:
        >>> report = prune_(model, PruneConfig(method="wanda", pattern="2:4"), tokenizer=tok)
    """
    resolved = config.resolve()  # what the config names, looked up and checked once
    if resolved.structured:
        from .structured import STRUCTURED_METHODS

        if calib is not None:
            calib = check_calibration_ids(calib, model)
        return STRUCTURED_METHODS.get(config.method)(model, config, calib, tokenizer, progress)
    idle = idle_experts
    if idle not in IDLE_EXPERTS:
        raise ConfigError(f"idle_experts={idle!r} is not one of {', '.join(IDLE_EXPERTS)}: pass idle_experts='dense' or 'magnitude'")
    method = get_method(config.method, **config.method_args)
    check_model = getattr(method, "check_model", None)  # a method that cannot take every model says so now
    if check_model is not None:
        check_model(model)
    pattern, sparsity = resolved.pattern, resolved.sparsity
    adapter = engine_adapter(model)
    targets = target_linears(model, config)
    if not targets:
        if config.targets.include or config.targets.exclude:
            raise ConfigError("no Linear matches the include/exclude patterns: nothing to prune")
        n_blocks = len(adapter.blocks(model))
        raise ConfigError(f"the model has no Linear inside its decoder blocks ({n_blocks} blocks found): nothing to prune")
    allocator = resolved.allocator
    has_experts = any(_is_expert(n, m) for n, m in targets.items())
    needs = frozenset(method.needs)
    calib_desc: dict[str, Any] = {
        "source": config.calib.source, "nsamples": config.calib.nsamples,
        "seqlen": config.calib.seqlen, "seed": config.calib.seed,
    }  # fmt: skip
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    if not needs and not allocator.needs_calibration:  # data-free (magnitude): no calibration at all
        calib, report_tokens = None, 0
        calib_desc = {"source": None, "note": f"{config.method} needs no statistics: no calibration data was read"}
    elif calib is not None:
        calib = check_calibration_ids(calib, model)
    if calib is None and (needs or report_tokens or allocator.needs_calibration):
        if tokenizer is None:
            raise ConfigError(f"method {config.method!r} needs calibration data: pass calib ids or a tokenizer")
        t0 = time.perf_counter()
        calib = calibration_windows(
            config.calib.source, tokenizer, config.calib.nsamples, config.calib.seqlen, config.calib.seed
        )
        timings["calib_tokenize"] = time.perf_counter() - t0
        calib = check_calibration_ids(calib, model)  # a tokenizer larger than the model's vocabulary
    if calib is not None:
        calib_desc.update(nsamples=int(calib.shape[0]), seqlen=int(calib.shape[1]))
    t0 = time.perf_counter()
    alloc_info: dict[str, Any] = {}
    ctx = AllocationContext(
        model, adapter, targets, calib, config.calib.batch_size,
        _progress(progress, f"{config.allocation} allocation"), alloc_info,
    ) if allocator.needs_calibration else None  # fmt: skip
    per_layer = allocator.allocate({n: weight_of(m).numel() for n, m in targets.items()}, sparsity, ctx)
    timings["allocation"] = time.perf_counter() - t0
    settings = method.settings()
    if has_experts:
        settings["idle_experts"] = idle
    report = PruneReport(
        method=config.method, settings=settings,
        pattern=str(method.effective_pattern(pattern)), target_sparsity=sparsity, calib=calib_desc,
        allocation={"name": config.allocation, **allocator.settings(), **alloc_info},
    )  # fmt: skip

    # statistics of the dense model that the layer loop cannot gather (gradients of the LM loss)
    pre = prepass_statistics(method, PrepassInputs(
        model, adapter, targets, calib, tokenizer, config, config.calib.batch_size,
        _window_progress if progress else None, timings,
    )) if needs & PREPASS_STATS else {}  # fmt: skip
    layer_needs = needs - PREPASS_STATS
    idle_names: list[str] = []

    def prune_linear(name: str, lin: nn.Module | ExpertSlice, stats) -> None:
        if pre.get(name):
            # a method whose every statistic comes from the pre-pass saw all calibration tokens
            n_tok = stats.num_tokens if layer_needs else max(stats.num_tokens, int(calib.numel()))
            stats = LayerStats(name, n_tok, {**stats.tensors, **pre.pop(name)})
        lr = prune_target(name, lin, stats, method, pattern, per_layer[name], needs, idle)
        if lr.info.get("idle"):
            idle_names.append(name)
        report.layers.append(lr)

    def on_block(i: int, block_targets: Mapping[str, nn.Linear], stats) -> None:
        for name, lin in block_targets.items():
            prune_linear(name, lin, stats[name])

    if not layer_needs and not report_tokens:
        # data-free: no forward passes needed
        for name, lin in targets.items():
            prune_linear(name, lin, _EMPTY)
    elif config.engine == "one-pass":
        from .engine.onepass import run_onepass

        counts = run_onepass(
            model, adapter, calib, needs=layer_needs, select=lambda n, m: n in targets,
            on_target=prune_linear, on_block=on_block, batch_size=config.calib.batch_size,
            sample_tokens=report_tokens, progress=_progress(progress, f"{config.method} {pattern} (one pass)"),
            timings=timings,
        )  # fmt: skip
        if counts["fallback_blocks"]:
            report.notes.append(f"engine one-pass: {counts['fallback_blocks']} blocks whose targets do not run once per "
                                f"batch (experts, conditional paths) used two passes")  # fmt: skip
    else:
        run_layerwise(
            model, adapter, calib, needs=layer_needs, select=lambda n, m: n in targets,
            on_block=on_block, batch_size=config.calib.batch_size, propagate=config.propagate,
            sample_tokens=report_tokens,
            progress=_progress(progress, f"{config.method} {pattern}"), timings=timings,
        )  # fmt: skip
    timings["total"] = time.perf_counter() - t_start
    timings["total_cpu"] = time.process_time() - cpu_start  # every thread of the process (one-pass runs several)
    report.timings = timings
    if idle_names:
        what = "pruned by magnitude" if idle == "magnitude" else "left dense"
        report.notes.append(
            f"{len(idle_names)} layers received no calibration token (idle experts) and were {what} "
            f"(idle_experts={idle}): {', '.join(idle_names)}"
        )
    if has_experts:
        report.notes.append("MoE routers and shared-expert gates are never pruned")
    odd = [u for i, b in enumerate(adapter.blocks(model)) for u in unsupported_experts(b, adapter.block_prefix(i))]
    if odd:
        report.notes.append(f"experts in a layout prunekit cannot slice were left dense: {', '.join(odd)}")
    retries = [lr.name for lr in report.layers if lr.info.get("cholesky_retries")]
    if retries:
        report.notes.append(f"Cholesky needed extra dampening on {len(retries)} layers: {', '.join(retries)}")
    return report


def needs_calibration(config: PruneConfig) -> bool:
    """Whether pruning with ``config`` reads calibration data (data-free methods such as magnitude do not)."""
    if is_structured(config.method):
        return True
    method = get_method(config.method, **config.method_args)
    return bool(method.needs) or get_allocator(config.allocation, config.allocation_args).needs_calibration


def check_calibration_ids(calib: Any, model: nn.Module | None = None) -> Tensor:
    """Calibration token ids as the engine needs them: an integer tensor ``[nsamples >= 1, seqlen >= 2]``
    whose ids are inside the model's vocabulary; anything else is one :class:`ConfigError` line."""
    if not isinstance(calib, Tensor):
        raise ConfigError(f"calibration ids must be a torch.Tensor [nsamples, seqlen] of token ids, got {type(calib).__name__}")
    if calib.is_floating_point() or calib.is_complex() or calib.dtype == torch.bool:
        raise ConfigError(f"calibration ids must be integer token ids (torch.long), got dtype {calib.dtype}: "
                          f"tokenize the text (prunekit.data.calibration_windows)")  # fmt: skip
    if calib.dim() != 2:
        raise ConfigError(f"calibration ids must be 2-D [nsamples, seqlen], got shape {tuple(calib.shape)}"
                          + (": add a batch dimension with ids.unsqueeze(0)" if calib.dim() == 1 else ""))
    if calib.shape[0] < 1 or calib.shape[1] < 2:
        raise ConfigError(f"calibration ids have shape {tuple(calib.shape)}: need at least 1 window of at least 2 tokens "
                          f"(zero windows would prune nothing)")  # fmt: skip
    vocab = vocab_size(model)
    lo, hi = int(calib.min()), int(calib.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise ConfigError(f"calibration ids run from {lo} to {hi}, outside the model's vocabulary [0, {vocab}): "
                          f"tokenize with the model's own tokenizer")  # fmt: skip
    return calib.long()


def _window_progress(it):
    from tqdm.auto import tqdm

    return tqdm(it, desc="gradient pre-pass", unit="window", dynamic_ncols=True)


class _NoStats:
    name = ""
    num_tokens = 0
    tensors: dict = {}

    def __contains__(self, stat) -> bool:
        return False

    def __getitem__(self, stat):
        raise KeyError(stat)


_EMPTY = _NoStats()
