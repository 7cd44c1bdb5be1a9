"""Sparsity patterns: which zero layouts are allowed.

Convention (stated once): ``NM(n, m)`` keeps **at most n non-zeros in every m consecutive input
columns** of each output row, so 2:4 keeps 2 of 4 and has sparsity 1 - n/m = 50%. (The SparseGPT
and Wanda reference code call the number *pruned* per group ``prune_n``; that equals our n only
when n = m/2.)

Ties: among equal scores the lower index is pruned first (:func:`lowest_k`), so a mask is the
same on every platform and thread count.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from .errors import ConfigError

log = logging.getLogger(__name__)


class Pattern(Protocol):
    def select(self, scores: Tensor, sparsity: float) -> Tensor: ...  # bool keep-mask [out, in]
    def is_satisfied(self, weight: Tensor) -> bool: ...
    def __str__(self) -> str: ...


def lowest_k(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` lowest scores along the last dim; ties go to the lower index.

    Exactly ``k`` per row even when many scores are equal (dequantized weights have few distinct
    values), and the same answer on every platform: ``torch.topk`` leaves the order of ties
    unspecified. Uses ``kthvalue`` (a selection, 3-4x faster than ``topk`` with a large k on CPU).
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    thr = scores.kthvalue(k, dim=-1, keepdim=True).values
    below = scores < thr
    tied = scores == thr
    need = k - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= need))


def _prune_count(total: int, sparsity: float) -> int:
    """Weights to prune of ``total``: ``round(total·s)``, but never all of them while ``s < 1``.

    round() rather than int() so that e.g. 0.3 * 10 = 2.9999... still prunes 3; a sparsity just
    below 1 (0.9999 of a 576-wide row rounds to 576) keeps one weight per row/matrix, with a warning,
    instead of silently zeroing the whole matrix.
    """
    k = min(total, max(0, int(round(total * sparsity))))
    if k >= total > 0 and sparsity < 1.0:
        _warn_kept_one(total, sparsity)
        k = total - 1
    return k


@functools.lru_cache(maxsize=None)
def _warn_kept_one(total: int, sparsity: float) -> None:
    log.warning("sparsity %g of %d weights rounds to all of them: keeping the largest-scoring one (a pattern never "
                "prunes a whole row or matrix below sparsity 1)", sparsity, total)  # fmt: skip


@dataclass(frozen=True)
class Unstructured:
    """Any layout. ``scope="row"`` ranks within each output row (Wanda); ``"layer"`` over the matrix."""

    scope: Literal["row", "layer"] = "row"

    def select(self, scores: Tensor, sparsity: float) -> Tensor:
        if self.scope == "row":
            return ~lowest_k(scores, _prune_count(scores.shape[1], sparsity))
        flat = scores.reshape(1, -1)
        return ~lowest_k(flat, _prune_count(flat.shape[1], sparsity)).view_as(scores)

    def is_satisfied(self, weight: Tensor) -> bool:
        return True

    def sparsity(self, requested: float) -> float:
        return requested

    def __str__(self) -> str:
        return "unstructured" if self.scope == "row" else "unstructured:layer"


@dataclass(frozen=True)
class NM:
    """Semi-structured N:M: keep at most ``n`` of every ``m`` consecutive inputs of a row."""

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (1 <= self.n < self.m):
            raise ConfigError(
                f"invalid N:M pattern {self.n}:{self.m}: need 1 <= N < M (N weights kept in every "
                f"group of M), e.g. 2:4 or 4:8"
            )

    def _check(self, cols: int) -> None:
        if cols % self.m:
            raise ConfigError(
                f"pattern {self} needs input width divisible by {self.m}, got {cols}: exclude this "
                f"layer or choose another M"
            )

    def select(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        rows, cols = scores.shape
        self._check(cols)
        groups = scores.reshape(rows, cols // self.m, self.m)
        return ~lowest_k(groups, self.m - self.n).reshape(rows, cols)

    def is_satisfied(self, weight: Tensor) -> bool:
        rows, cols = weight.shape
        if cols % self.m:
            return False
        nonzero = (weight.reshape(rows, cols // self.m, self.m) != 0).sum(dim=2)
        return bool((nonzero <= self.n).all())

    def sparsity(self, requested: float | None = None) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


_NM_RE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


def parse_pattern(text: str | Pattern) -> Unstructured | NM:
    """Parse ``"unstructured"``, ``"unstructured:layer"``, ``"unstructured:row"`` or ``"N:M"``."""
    if isinstance(text, (Unstructured, NM)):
        return text
    t = str(text).strip().lower()
    if t in ("unstructured", "unstructured:row", "row"):
        return Unstructured("row")
    if t in ("unstructured:layer", "layer"):
        return Unstructured("layer")
    mt = _NM_RE.match(t)
    if mt:
        return NM(int(mt.group(1)), int(mt.group(2)))
    raise ConfigError(
        f"invalid pattern {text!r}: use 'unstructured', 'unstructured:layer' or N:M such as '2:4'"
    )


def check_sparsity(sparsity: float) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):
        raise ConfigError(f"sparsity must be in [0, 1) (a fraction, e.g. 0.5 for 50%), got {s:g}")
    return s
