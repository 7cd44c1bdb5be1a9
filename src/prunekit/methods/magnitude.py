"""Magnitude pruning: remove the weights with the smallest |W|.

The baseline of the SparseGPT and Wanda papers (Han et al., 2015, *Learning both Weights and
Connections*; as used by Frantar & Alistarh, 2023 and Sun et al., 2024). Score ``S = |W|``
[out, in]. The papers rank over the whole matrix (``per_row=False``, the default);
``per_row=True`` ranks within each output row, Wanda's comparison group. For N:M, the n largest
|W| of every m consecutive inputs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..engine.stats import LayerStats
from ..patterns import Unstructured
from ..settings import setting
from .base import ScoreMethod, register_method


@register_method("magnitude")
@dataclass(frozen=True)
class Magnitude(ScoreMethod):
    per_row: bool = setting(False, help="rank within each output row instead of the whole matrix")
    summary: ClassVar[str] = "|W| (Han et al. 2015), per matrix; per_row=True ranks per output row"

    def score(self, weight: Tensor, stats: LayerStats) -> Tensor:
        return weight.float().abs()

    def effective_pattern(self, pattern):
        if isinstance(pattern, Unstructured) and not self.per_row:
            return Unstructured("layer")  # "unstructured" means the paper's group: the matrix
        return pattern
