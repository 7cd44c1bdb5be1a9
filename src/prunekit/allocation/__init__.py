"""Per-layer sparsity allocation, kept separate from scoring."""

from __future__ import annotations

from collections.abc import Mapping

from ..registry import Registry

ALLOCATORS: Registry = Registry("allocation")


@ALLOCATORS.register("uniform")
def uniform(sizes: Mapping[str, int], sparsity: float) -> dict[str, float]:
    """The same sparsity for every target (the parameter-weighted mean is then ``sparsity``)."""
    return {name: sparsity for name in sizes}


def allocate(name: str, sizes: Mapping[str, int], sparsity: float) -> dict[str, float]:
    return ALLOCATORS.get(name)(sizes, sparsity)


__all__ = ["ALLOCATORS", "allocate", "uniform"]
