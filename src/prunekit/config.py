"""Prune configuration as a dataclass that round-trips to YAML/JSON recipes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .patterns import NM, check_sparsity, parse_pattern

RECIPE_VERSION = 1


@dataclass(frozen=True)
class TargetSpec:
    """Which Linears are pruned. Default: every Linear inside decoder blocks.

    Patterns match the full module name; a ``re:`` prefix makes a regular expression (searched),
    otherwise the pattern is a substring. ``lm_head`` and embeddings are never targets because
    they are not inside decoder blocks.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        import re

        def hit(p: str) -> bool:
            return bool(re.search(p[3:], name)) if p.startswith("re:") else p in name

        if self.include and not any(hit(p) for p in self.include):
            return False
        return not any(hit(p) for p in self.exclude)


@dataclass(frozen=True)
class CalibConfig:
    source: str = "builtin"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8


@dataclass(frozen=True)
class PruneConfig:
    """Everything that defines a prune.

    Example:
        >>> PruneConfig(method="sparsegpt", pattern="2:4", method_args={"block_size": 64})
    """

    method: str = "wanda"
    sparsity: float | None = None  # None: 0.5 for unstructured, implied by N:M
    pattern: str = "unstructured"
    method_args: dict[str, Any] = field(default_factory=dict)
    allocation: str = "uniform"
    targets: TargetSpec = TargetSpec()
    calib: CalibConfig = CalibConfig()
    propagate: str = "pruned"  # feed the next block pruned (default) or dense outputs
    version: int = RECIPE_VERSION

    def resolved_sparsity(self) -> float:
        pat = parse_pattern(self.pattern)
        if isinstance(pat, NM):
            implied = pat.sparsity()
            if self.sparsity is not None and abs(float(self.sparsity) - implied) > 1e-9:
                raise ConfigError(
                    f"pattern {pat} fixes sparsity at {implied:g}; drop --sparsity "
                    f"{self.sparsity:g} or use --pattern unstructured"
                )
            return implied
        return check_sparsity(0.5 if self.sparsity is None else self.sparsity)

    def validate(self) -> PruneConfig:
        from .methods import get_method, is_structured

        if is_structured(self.method):
            get_method(self.method)  # the structured module validates its own arguments
            check_sparsity(0.2 if self.sparsity is None else self.sparsity)
        else:
            get_method(self.method, **self.method_args)
            self.resolved_sparsity()
        if self.propagate not in ("pruned", "dense"):
            raise ConfigError(f"propagate must be 'pruned' or 'dense', got {self.propagate!r}")
        if self.calib.nsamples < 1 or self.calib.seqlen < 2:
            raise ConfigError("--nsamples must be >= 1 and --seqlen >= 2")
        return self

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = {k: list(v) for k, v in d["targets"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown recipe keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if int(d.get("version", RECIPE_VERSION)) > RECIPE_VERSION:
            raise ConfigError(f"recipe version {d['version']} is newer than this prunekit understands")
        t = d.get("targets") or {}
        d["targets"] = TargetSpec(tuple(t.get("include", ())), tuple(t.get("exclude", ())))
        d["calib"] = CalibConfig(**(d.get("calib") or {}))
        d["method_args"] = dict(d.get("method_args") or {})
        return cls(**d)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> PruneConfig:
        import yaml

        p = Path(str(text_or_path))
        text = p.read_text() if "\n" not in str(text_or_path) and p.is_file() else str(text_or_path)
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ConfigError("a recipe must be a YAML mapping")
        return cls.from_dict(data)
