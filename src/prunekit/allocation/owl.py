"""OWL: outlier-weighed layerwise sparsity (Yin et al., ICML 2024, arXiv:2310.05175).

Layers with more *outliers* keep more weights. With the Wanda score ``A_ij = |W_ij|·‖X_j‖₂`` of
every target matrix in decoder block ``l`` (statistics from the dense model), the block's
outlier ratio is

    D_l = #{A_ij > M · mean(A)} / #A            (over all of block l's targets together)

and its sparsity is

    S_l = 1 − (1 − S) − (D̂_l − mean(D̂)),   D̂_l = 2λ · (D_l − min D) / (max D − min D)

so the block sparsities span ``[S − λ, S + λ]`` around the target ``S`` with the most
outlier-rich block pruned least. Defaults ``M = 5``, ``λ = 0.08`` are the official code's for
LLaMA (``Hyper_m``, ``Lamda``). Every target of a block gets the block's sparsity, then the
levels are shifted by one constant so the parameter-weighted mean is exactly ``S`` (identical
to the paper when every block has the same number of target weights, as in a plain decoder).

The statistics pass propagates the *dense* outputs (as the reference code does) and costs one
forward of every block over the calibration set, before the prune itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..settings import setting
from . import ALLOCATORS, AllocationContext, Allocator, per_block, rebalance


def outlier_ratio(scores: list[torch.Tensor], M: float) -> float:
    """Fraction of entries above ``M`` times the mean, over all ``scores`` together."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / total
    return sum(int((s > M * mean).sum()) for s in scores) / total


def owl_levels(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from block outlier ratios (the paper's equation, unweighted mean)."""
    lo, hi = min(ratios), max(ratios)
    if hi - lo <= 0:
        return [sparsity] * len(ratios)
    d = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    mean = sum(d) / len(d)
    return [1.0 - (x - mean + (1.0 - sparsity)) for x in d]


@ALLOCATORS.register("owl")
@dataclass(frozen=True)
class OWL(Allocator):
    M: float = setting(5.0, gt=0, le=1000, help="outlier threshold: a score above M x the mean is an outlier")
    lam: float = setting(0.08, ge=0, lt=0.5, help="λ: block sparsities span [S - λ, S + λ]")
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "outlier-weighed layerwise sparsity (Yin et al. 2024): M=5, lam=0.08"

    @torch.no_grad()
    def allocate(self, sizes, sparsity, ctx: AllocationContext | None = None):
        from ..engine import Stat, run_layerwise
        from ..engine.targets import weight_of

        assert ctx is not None
        ratios: dict[int, float] = {}

        def on_block(i, block_targets, stats) -> None:
            scores = [
                weight_of(m).float().abs() * stats[n][Stat.INPUT_SQNORM].sqrt().to(weight_of(m).device)[None, :]
                for n, m in block_targets.items()
            ]
            ratios[i] = outlier_ratio(scores, self.M)

        run_layerwise(
            ctx.model, ctx.locator, ctx.calib, needs=frozenset({Stat.INPUT_SQNORM}),
            select=lambda n, m: n in sizes, on_block=on_block, batch_size=ctx.batch_size,
            propagate="dense", progress=ctx.progress,
        )  # fmt: skip
        blocks = sorted(ratios)
        levels = owl_levels([ratios[b] for b in blocks], sparsity, self.lam)
        block_sizes = {b: 0 for b in blocks}
        for name, n in sizes.items():
            block_sizes[ctx.block_index(name)] += n
        levels = rebalance(levels, [block_sizes[b] for b in blocks], sparsity)
        by_block = dict(zip(blocks, levels))
        if ctx.info is not None:
            ctx.info.update(outlier_ratio={str(b): ratios[b] for b in blocks},
                            block_sparsity={str(b): by_block[b] for b in blocks})  # fmt: skip
        n_all = max(blocks) + 1 if blocks else 0
        return per_block([by_block.get(b, sparsity) for b in range(n_all)], sizes, ctx.block_index)
