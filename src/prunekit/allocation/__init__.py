"""Per-layer sparsity allocation, kept separate from scoring.

An allocator turns the overall target sparsity ``S`` into one sparsity per target matrix. Its
settings are the fields of a frozen dataclass (declared once, validated like a method's:
``--allocation owl --alloc-set M=5``). Allocators that only need the matrix sizes implement
:meth:`Allocator.allocate`; allocators that need calibration statistics (OWL) set
``needs_calibration`` and receive an :class:`AllocationContext` with the model, its blocks and
the calibration ids. Every allocator keeps the parameter-weighted mean at ``S`` (tested).

Per-block hook: :func:`per_block` spreads a list of block sparsities over the targets of each
block; searches over block levels (OWL, Týr-style) reuse it, and the ``blocks`` allocator exposes
it (``--allocation blocks --alloc-set levels=0.4,0.5,0.6``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registry import Registry
from ..settings import schema_of, setting, validate_settings

ALLOCATORS: Registry = Registry("allocation")


@dataclass
class AllocationContext:
    """What a data-driven allocator may use: the model, its blocks, the targets, the calibration."""

    model: Any
    locator: Any  # ModelAdapter or discovered blocks: .blocks(model), .block_prefix(i)
    targets: Mapping[str, Any]  # full name -> Linear / Conv1D / ExpertSlice
    calib: Any  # LongTensor [nsamples, seqlen]
    batch_size: int = 8
    progress: Callable | None = None
    info: dict[str, Any] | None = None  # the allocator's findings, for the report

    def block_index(self, name: str) -> int:
        for i in range(len(self.locator.blocks(self.model))):
            if name.startswith(self.locator.block_prefix(i) + "."):
                return i
        raise KeyError(name)


class Allocator:
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def allocate(self, sizes: Mapping[str, int], sparsity: float, ctx: AllocationContext | None = None) -> dict[str, float]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


@ALLOCATORS.register("uniform")
@dataclass(frozen=True)
class Uniform(Allocator):
    """The same sparsity for every target (the parameter-weighted mean is then ``S``)."""

    summary: ClassVar[str] = "the same sparsity for every target"

    def allocate(self, sizes, sparsity, ctx=None):
        return {name: sparsity for name in sizes}


def per_block(block_sparsity: Sequence[float], sizes: Mapping[str, int], block_of: Callable[[str], int]) -> dict[str, float]:
    """Every target of block ``b`` gets ``block_sparsity[b]``."""
    out = {}
    for name in sizes:
        b = block_of(name)
        if not 0 <= b < len(block_sparsity):
            raise ConfigError(f"block sparsities cover {len(block_sparsity)} blocks; {name} is in block {b}")
        out[name] = float(block_sparsity[b])
    return out


def rebalance(block_sparsity: Sequence[float], block_sizes: Sequence[int], sparsity: float, cap: float = 0.99) -> list[float]:
    """Shift block sparsities by one constant so the parameter-weighted mean is ``sparsity``,
    clipping to ``[0, cap]`` (and re-shifting the unclipped blocks until the mean holds)."""
    s = [float(x) for x in block_sparsity]
    total = float(sum(block_sizes))
    for _ in range(100):
        mean = sum(x * n for x, n in zip(s, block_sizes)) / total
        if abs(mean - sparsity) < 1e-12:
            break
        up = mean < sparsity
        movable = [i for i, x in enumerate(s) if (x < cap if up else x > 0.0)]
        if not movable:
            break
        shift = (sparsity - mean) * total / sum(block_sizes[i] for i in movable)
        for i in movable:
            s[i] = min(max(s[i] + shift, 0.0), cap)
    return s


@ALLOCATORS.register("blocks")
@dataclass(frozen=True)
class Blocks(Allocator):
    """Explicit block sparsities ``levels=s0,s1,...`` (one per decoder block), rebalanced so the
    parameter-weighted mean is the target ``S`` when ``rebalance`` is true."""

    levels: str = setting("", help="comma-separated sparsity per block, e.g. 0.4,0.5,0.6")
    rebalance: bool = setting(True, help="shift the levels so the mean is --sparsity")
    needs_calibration: ClassVar[bool] = True  # needs the blocks (no forward pass)
    summary: ClassVar[str] = "explicit per-block sparsities (levels=...)"

    def parsed(self) -> list[float]:
        try:
            vals = [float(x) for x in self.levels.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"allocation blocks: levels={self.levels} must be comma-separated numbers") from None
        if not vals or not all(0.0 <= v < 1.0 for v in vals):
            raise ConfigError(f"allocation blocks: levels={self.levels} must be fractions in [0, 1), one per block")
        return vals

    def allocate(self, sizes, sparsity, ctx=None):
        assert ctx is not None
        vals = self.parsed()
        n_blocks = len(ctx.locator.blocks(ctx.model))
        if len(vals) != n_blocks:
            raise ConfigError(f"allocation blocks: levels has {len(vals)} values; the model has {n_blocks} blocks")
        if self.rebalance:
            bs = [0] * n_blocks
            for name, n in sizes.items():
                bs[ctx.block_index(name)] += n
            vals = rebalance(vals, [max(b, 1) for b in bs], sparsity)
        return per_block(vals, sizes, ctx.block_index)


def get_allocator(name: str, args: Mapping[str, Any] | None = None) -> Allocator:
    cls = ALLOCATORS.get(name)
    return cls(**validate_settings(f"allocation {name.lower()}", schema_of(cls), args or {}))


def allocate(name: str, sizes: Mapping[str, int], sparsity: float, ctx: AllocationContext | None = None,
             args: Mapping[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Per-target sparsities from allocator ``name`` (``ctx`` for data-driven allocators)."""
    alloc = get_allocator(name, args)
    if alloc.needs_calibration and ctx is None:
        raise ConfigError(f"allocation {name!r} needs the model and calibration data (pass ctx)")
    return alloc.allocate(sizes, sparsity, ctx)


from .owl import OWL  # noqa: E402  (registers "owl")

__all__ = ["ALLOCATORS", "OWL", "AllocationContext", "Allocator", "Blocks", "Uniform", "allocate",
           "get_allocator", "per_block", "rebalance"]  # fmt: skip
