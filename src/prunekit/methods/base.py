"""What a pruning method is: math on one Linear.

A method receives ``(weight, stats, pattern, sparsity)`` and returns a new weight whose zeros
satisfy ``pattern`` at ``sparsity``. It never sees the model, hooks, data or devices. Its
hyperparameters are the fields of a frozen dataclass, so the method *is* its config.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..patterns import NM, Unstructured
from ..registry import Registry

METHODS: Registry[type[PruningMethod]] = Registry("method")
register_method = METHODS.register


class PruningMethod(ABC):
    name: ClassVar[str]
    needs: ClassVar[frozenset[Stat]] = frozenset()
    default_scope: ClassVar[str] = "row"  # comparison group for "unstructured"
    summary: ClassVar[str] = ""

    @abstractmethod
    def prune(
        self, weight: Tensor, stats: LayerStats, pattern: Unstructured | NM, sparsity: float
    ) -> tuple[Tensor, dict[str, Any]]:
        """Return ``(new_weight [out, in] in weight's dtype, info)``."""

    def effective_pattern(self, pattern: Unstructured | NM) -> Unstructured | NM:
        """The pattern this method actually applies for the requested one (its comparison group)."""
        return pattern

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


class ScoreMethod(PruningMethod):
    """Score every weight (higher = keep), then let the pattern choose the mask."""

    @abstractmethod
    def score(self, weight: Tensor, stats: LayerStats) -> Tensor: ...  # [out, in] fp32

    def prune(self, weight, stats, pattern, sparsity):
        pattern = self.effective_pattern(pattern)
        keep = pattern.select(self.score(weight, stats), sparsity)
        return weight * keep.to(weight.dtype), {}
