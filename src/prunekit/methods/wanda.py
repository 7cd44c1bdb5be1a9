"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, ICLR 2024, arXiv:2306.11695).

Score of weight W_ij [out, in]:  S_ij = |W_ij| · ‖X_j‖₂, where ‖X_j‖₂ is the L2 norm of input
feature j over all calibration tokens. Weights are compared **within each output row** (the
paper's comparison group; per-layer ranking is worse for LLMs). For N:M the n largest scores of
every m consecutive inputs are kept. No weight update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..engine.stats import LayerStats, Stat
from .base import ScoreMethod, register_method


@register_method("wanda")
@dataclass(frozen=True)
class Wanda(ScoreMethod):
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.INPUT_SQNORM})
    summary: ClassVar[str] = "|W|·‖X_j‖₂ ranked per output row (Sun et al. 2024)"

    def score(self, weight: Tensor, stats: LayerStats) -> Tensor:
        x_norm = stats[Stat.INPUT_SQNORM].sqrt()  # [in]
        return weight.float().abs() * x_norm.to(weight.device)[None, :]
