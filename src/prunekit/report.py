"""What a prune did, per layer and overall: stored in prunekit.json and printed as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    target_sparsity: float
    sparsity: float
    rel_error: float | None  # ‖WX − ŴX‖² / ‖WX‖² on calibration activations (a token sample)
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneReport:
    method: str
    settings: dict[str, Any]
    pattern: str
    target_sparsity: float
    calib: dict[str, Any]
    layers: list[LayerReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    allocation: dict[str, Any] = field(default_factory=dict)  # what a data-driven allocator found

    @property
    def sparsity(self) -> float:
        total = sum(lr.shape[0] * lr.shape[1] for lr in self.layers)
        zeros = sum(lr.sparsity * lr.shape[0] * lr.shape[1] for lr in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sparsity"] = self.sparsity
        return d

    def table(self, max_rows: int | None = None) -> str:
        head = f"{'layer':<44} {'shape':>11} {'sparsity':>8} {'rel.err':>9} {'s':>6}"
        lines = [head, "-" * len(head)]
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for lr in rows:
            err = f"{lr.rel_error:.2e}" if lr.rel_error is not None else "-"
            shape = f"{lr.shape[0]}x{lr.shape[1]}"
            lines.append(f"{lr.name[-44:]:<44} {shape:>11} {lr.sparsity:>8.2%} {err:>9} {lr.seconds:>6.2f}")
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more layers (all in prunekit.json)")
        lines.append(f"overall sparsity of targets: {self.sparsity:.2%} ({len(self.layers)} Linears)")
        return "\n".join(lines)
