"""The gradient pre-pass: statistics of the LM loss's gradient at every target weight.

Some methods score a weight by the gradient of the language-modelling loss of the *dense* model
(GBLM-Pruner: ``Σ_n g_n²``; D-Pruner: a Taylor estimate of the loss change). Those statistics
cannot come from the layer loop's forward hooks, so they are gathered before it, in one
full-model forward + backward per calibration window:

    for each window n:   ℓ_n = mean next-token cross-entropy of window n
                         g_n = ∂ℓ_n/∂W for every target W  [out, in], fp32
                         acc[W] ← fold(acc[W], g_n)

Memory stays bounded: only the target weights require a gradient (embeddings, norms and the
output head do not), and each weight's gradient is folded into its fp32 accumulator the moment
backward has produced it (a post-accumulate-grad hook) and then dropped, so at most one
gradient of one matrix exists besides the accumulators (one tensor the size of the targets).

A method declares the pre-pass statistics in ``needs`` (:data:`PREPASS_STATS`); the engine
(``api.prune_``) calls :func:`prepass_statistics` before the layer loop and merges the result
into each target's :class:`~prunekit.engine.stats.LayerStats`. ``Stat.GRAD_SQ`` is gathered
here for any method; a method with further pre-pass statistics (D-Pruner) provides
``prepass(inputs) -> {target: {Stat: Tensor}}`` and may use :func:`per_window_gradients`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .stats import STATS_DTYPE, Stat
from .targets import ExpertSlice, _is_conv1d

log = logging.getLogger(__name__)

PREPASS_STATS = frozenset({Stat.GRAD_SQ, Stat.GRAD_WINDOWS, Stat.DUAL_IMPORTANCE})

# (target name, accumulator so far or None, g_n [out, in] fp32) -> new accumulator
Fold = Callable[[str, "Tensor | None", Tensor], Tensor]


@dataclass
class PrepassInputs:
    """What a pre-pass may use: the dense model, its targets, the calibration windows."""

    model: nn.Module
    adapter: Any  # BlockLocator
    targets: Mapping[str, nn.Module | ExpertSlice]
    calib: Tensor  # [nsamples, seqlen]
    tokenizer: Any = None
    config: Any = None  # PruneConfig
    batch_size: int = 8
    progress: Callable | None = None  # wraps an iterable (tqdm) or None
    timings: dict[str, float] | None = None


def _param_of(target: nn.Module | ExpertSlice) -> nn.Parameter:
    return getattr(target.module, target.param) if isinstance(target, ExpertSlice) else target.weight


def _grad_view(target: nn.Module | ExpertSlice, grad: Tensor) -> Tensor:
    """The ``[out, in]`` part of a stored parameter's gradient that belongs to ``target``."""
    if isinstance(target, ExpertSlice):
        g = grad[target.expert]
        return g.T if getattr(target.module, "is_transposed", False) else g
    return grad.T if _is_conv1d(target) else grad


def window_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of the windows ``ids [b, seqlen]`` (the model's own loss)."""
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def per_window_gradients(
    model: nn.Module,
    targets: Mapping[str, nn.Module | ExpertSlice],
    ids: Tensor,
    fold: Fold,
    *,
    progress: Callable | None = None,
) -> dict[str, Tensor]:
    """``acc[name] = fold(name, acc[name], g_n)`` over the windows ``ids [N, seqlen]``, one backward
    per window; ``g_n`` is the fp32 gradient of window n's mean loss at target ``name``.

    The model is run in eval mode (no dropout); its ``requires_grad`` flags and ``.grad`` fields
    are restored afterwards. A target that no gradient reached gets ``fold`` of a zero gradient.
    """
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ConfigError(f"the gradient pre-pass needs token windows [nsamples, seqlen], got shape {tuple(ids.shape)}")
    by_param: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, t in targets.items():
        p = _param_of(t)
        by_param.setdefault(id(p), (p, []))[1].append(name)
    acc: dict[str, Tensor] = {}

    def on_grad(names: list[str]) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            g = p.grad.detach().to(STATS_DTYPE)
            p.grad = None  # drop it now: only the accumulators outlive the backward
            with torch.no_grad():
                for n in names:
                    acc[n] = fold(n, acc.get(n), _grad_view(targets[n], g))

        return hook

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    was_training = model.training
    handles = []
    device = params[0].device
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for p, names in by_param.values():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(on_grad(names)))
        model.eval()
        rows = range(ids.shape[0])
        with torch.enable_grad():
            for n in progress(rows) if progress else rows:
                window_loss(model, ids[n : n + 1].to(device)).backward()
    finally:
        for h in handles:
            h.remove()
        for p, f, g in zip(params, flags, grads):
            p.requires_grad_(f)
            p.grad = g
        model.train(was_training)
    for name, t in targets.items():
        if name not in acc:  # never reached by the loss (e.g. an expert no token was routed to)
            W = t.weight if isinstance(t, ExpertSlice) else (t.weight.T if _is_conv1d(t) else t.weight)
            acc[name] = fold(name, None, torch.zeros(W.shape, dtype=STATS_DTYPE, device=W.device))
    return {name: acc[name] for name in targets}


def _fold_sq(_name: str, acc: Tensor | None, g: Tensor) -> Tensor:
    return g.pow(2) if acc is None else acc.addcmul_(g, g)


def gradient_sq(model: nn.Module, targets: Mapping[str, nn.Module | ExpertSlice], ids: Tensor,
                *, progress: Callable | None = None) -> dict[str, Tensor]:  # fmt: skip
    """``Σ_n g_n²`` [out, in] fp32 per target: the squared per-window gradients of the LM loss."""
    return per_window_gradients(model, targets, ids, _fold_sq, progress=progress)


def prepass_statistics(method: Any, inputs: PrepassInputs) -> dict[str, dict[Stat, Tensor]]:
    """The pre-pass statistics ``method.needs`` asks for, per target (empty dicts if none)."""
    import time

    need = frozenset(method.needs) & PREPASS_STATS
    out: dict[str, dict[Stat, Tensor]] = {n: {} for n in inputs.targets}
    if not need:
        return out
    t0 = time.perf_counter()
    if Stat.GRAD_SQ in need or Stat.GRAD_WINDOWS in need:
        sq = gradient_sq(inputs.model, inputs.targets, inputs.calib, progress=inputs.progress)
        windows = torch.tensor(float(inputs.calib.shape[0]))
        for n in out:
            out[n][Stat.GRAD_SQ] = sq.pop(n)
            out[n][Stat.GRAD_WINDOWS] = windows
    extra = getattr(method, "prepass", None)
    if extra is not None:
        for n, d in extra(inputs).items():
            out[n].update(d)
    missing = need - {s for d in out.values() for s in d}
    if missing:
        raise ConfigError(
            f"method {getattr(method, 'name', method)!r} needs {', '.join(sorted(s.value for s in missing))} "
            "but defines no prepass that gathers it"
        )
    if inputs.timings is not None:
        inputs.timings["gradient_prepass"] = inputs.timings.get("gradient_prepass", 0.0) + time.perf_counter() - t0
    return out


__all__ = ["PREPASS_STATS", "PrepassInputs", "gradient_sq", "per_window_gradients", "prepass_statistics", "window_loss"]
