"""What a pruning method is: math on one Linear.

A method receives ``(weight, stats, pattern, sparsity)`` and returns a new weight whose zeros
satisfy ``pattern`` at ``sparsity``. It never sees the model, hooks, data or devices. Its
hyperparameters are the fields of a frozen dataclass, so the method *is* its config.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from ..engine.stats import LayerStats, Stat
from ..patterns import NM, Unstructured, parse_pattern
from ..registry import Registry

METHODS: Registry[type[PruningMethod]] = Registry("method")
register_method = METHODS.register


class PruningMethod(ABC):
    name: ClassVar[str]
    needs: ClassVar[frozenset[Stat]] = frozenset()
    default_scope: ClassVar[str] = "row"  # comparison group for "unstructured"
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        """Every ``prune`` also takes the pattern as text (``"2:4"``, ``"unstructured"``), as the CLI does."""
        super().__init_subclass__(**kw)
        fn = cls.__dict__.get("prune")
        if fn is None or getattr(fn, "_parses_pattern", False) or getattr(fn, "__isabstractmethod__", False):
            return

        @functools.wraps(fn)
        def prune(self, weight, stats, pattern, sparsity=0.5, *args, **kwargs):
            if isinstance(pattern, str):
                pattern = parse_pattern(pattern)
            return fn(self, weight, stats, pattern, sparsity, *args, **kwargs)

        prune._parses_pattern = True  # type: ignore[attr-defined]
        cls.prune = prune  # type: ignore[method-assign]

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
