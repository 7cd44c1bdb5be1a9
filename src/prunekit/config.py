"""Prune configuration as a dataclass that round-trips to YAML/JSON recipes."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .patterns import NM, Unstructured, check_sparsity, parse_pattern
from .settings import Setting, did_you_mean, schema_of, setting

RECIPE_VERSION = 1
MAX_NSAMPLES = 1 << 20  # far beyond any calibration set; guards against typos like 1e9
MAX_SEQLEN = 1 << 20  # longer than any model's context


@dataclass(frozen=True)
class TargetSpec:
    """Which Linears are pruned. Default: every Linear inside decoder blocks.

    Patterns match the full module name; a ``re:`` prefix makes a regular expression (searched),
    otherwise the pattern is a substring. ``lm_head`` and embeddings are never targets because
    they are not inside decoder blocks.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def validate(self) -> TargetSpec:
        """Every pattern is a non-empty string; every ``re:`` pattern compiles."""
        for flag, pats in (("include", self.include), ("exclude", self.exclude)):
            if isinstance(pats, str) or not isinstance(pats, (tuple, list)):
                raise ConfigError(f"targets.{flag} must be a list of patterns, got {pats!r}")
            for p in pats:
                if not isinstance(p, str) or not p.strip() or (p.startswith("re:") and not p[3:]):
                    raise ConfigError(
                        f"--{flag} {p!r} is empty: give a substring of the Linear names "
                        f"(e.g. mlp) or re:REGEX"
                    )
                if p.startswith("re:"):
                    try:
                        re.compile(p[3:])
                    except re.error as e:
                        raise ConfigError(f"--{flag} {p!r} is not a valid regular expression ({e})") from None
        return self

    def matches(self, name: str) -> bool:
        def hit(p: str) -> bool:
            return bool(re.search(p[3:], name)) if p.startswith("re:") else p in name

        if self.include and not any(hit(p) for p in self.include):
            return False
        return not any(hit(p) for p in self.exclude)


@dataclass(frozen=True)
class CalibConfig:
    source: str = setting("builtin", help="calibration SOURCE")
    nsamples: int = setting(128, ge=1, le=MAX_NSAMPLES, help="calibration windows")
    seqlen: int = setting(2048, ge=2, le=MAX_SEQLEN, help="tokens per calibration window")
    seed: int = setting(0, ge=0, help="calibration sampling seed")
    batch_size: int = setting(8, ge=1, help="calibration windows per forward")

    def validate(self) -> CalibConfig:
        _check_fields(self, "calib")
        return self


ENGINES = ("two-pass", "one-pass")


@dataclass(frozen=True)
class PruneConfig:
    """Everything that defines a prune.

    Example:
        >>> PruneConfig(method="sparsegpt", pattern="2:4", method_args={"block_size": 64})
    """

    method: str = "wanda"
    sparsity: float | None = None  # None: 0.5 for unstructured, 0.2 for structured, implied by N:M
    pattern: str = "unstructured"
    method_args: dict[str, Any] = field(default_factory=dict)
    allocation: str = "uniform"
    allocation_args: dict[str, Any] = field(default_factory=dict)
    targets: TargetSpec = TargetSpec()
    calib: CalibConfig = CalibConfig()
    propagate: str = "pruned"  # feed the next block pruned (default) or dense outputs
    engine: str = "two-pass"  # two-pass (statistics, then pruned outputs) | one-pass (prunekit.engine.onepass)
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
        """Check every field (types, ranges, method settings, combinations); returns ``self``.

        Raises:
            ConfigError: one line naming the field, the bad value and what is allowed.
        """
        self.resolve()
        return self

    def resolve(self) -> ResolvedConfig:
        """Look up what the config names, once (method kind and settings, pattern, sparsity,
        allocator), then check the combinations on those objects, top to bottom.

        Raises:
            ConfigError: one line naming the field, the bad value and what is allowed.
        """
        from .allocation import get_allocator
        from .methods import check_settings, is_structured

        self._check_types()
        structured = is_structured(self.method)  # unknown method: check_settings names it below
        settings = check_settings(self.method, self.method_args)  # unknown method / setting, type, range
        pattern = parse_pattern(self.pattern)
        nm = isinstance(pattern, NM)
        if structured:
            if str(pattern) != "unstructured":
                raise ConfigError(
                    f"{self.method} is a structured method (it removes whole heads, channels or "
                    f"blocks); --pattern {self.pattern} applies to unstructured methods only: drop it"
                )
            if self.targets.include or self.targets.exclude:
                raise ConfigError(
                    f"{self.method} is a structured method and prunes every decoder block; "
                    f"--include/--exclude apply to unstructured methods only: drop them"
                )
            if self.engine != "two-pass":
                raise ConfigError(f"{self.method} is a structured method with its own calibration passes: "
                                  f"--engine {self.engine} applies to unstructured/N:M methods only: drop it")  # fmt: skip
            sparsity = check_sparsity(0.2 if self.sparsity is None else self.sparsity)
        else:
            sparsity = self.resolved_sparsity()
        allocator = get_allocator(self.allocation, self.allocation_args)  # unknown allocator / setting
        if self.allocation.lower() != "uniform":
            if structured:
                raise ConfigError(
                    f"--allocation {self.allocation} spreads unstructured sparsity over layers; "
                    f"{self.method} is a structured method: drop --allocation"
                )
            if nm:
                raise ConfigError(
                    f"--allocation {self.allocation} varies sparsity per layer, but pattern "
                    f"{self.pattern} fixes it at {pattern.sparsity():g} everywhere: "
                    f"use --pattern unstructured or drop --allocation"
                )
        if self.propagate not in ("pruned", "dense"):
            raise ConfigError(f"propagate must be 'pruned' or 'dense', got {self.propagate!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "one-pass" and self.propagate == "dense":
            raise ConfigError("engine one-pass feeds every target the pruned outputs before it: propagate dense needs "
                              "engine two-pass")  # fmt: skip
        self.targets.validate()
        self.calib.validate()
        return ResolvedConfig(self, self.method.lower(), structured, settings, pattern, sparsity, allocator)

    def _check_types(self) -> None:
        for name in ("method", "pattern", "allocation", "propagate", "engine"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
        if self.sparsity is not None and (isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float))):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not isinstance(self.targets, TargetSpec) or not isinstance(self.calib, CalibConfig):
            raise ConfigError("targets must be a TargetSpec and calib a CalibConfig")
        if not isinstance(self.method_args, Mapping):
            raise ConfigError(f"method_args must be a mapping of setting: value, got {self.method_args!r}")
        if not isinstance(self.allocation_args, Mapping):
            raise ConfigError(f"allocation_args must be a mapping of setting: value, got {self.allocation_args!r}")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = {k: list(v) for k, v in d["targets"].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "recipe") -> PruneConfig:
        """Build a config from a mapping (a parsed recipe), checking every key and type.

        Unknown keys at any depth and wrong types raise one ConfigError naming the YAML path
        (``calib.nsamples``).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a YAML mapping of PruneConfig fields, got {type(d).__name__}")
        version = d.get("version", RECIPE_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"{where}: version must be an integer, got {version!r}")
        if version > RECIPE_VERSION:
            raise ConfigError(f"{where}: recipe version {version} is newer than this prunekit understands ({RECIPE_VERSION})")
        return _build(cls, d, where, "")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> PruneConfig:
        """Parse a recipe: YAML text, or the path of a ``.yaml``/``.yml`` file."""
        s = str(text_or_path)
        if isinstance(text_or_path, Path) or ("\n" not in s and (s.endswith((".yaml", ".yml")) or Path(s).exists())):
            return cls.from_file(s)
        return cls._parse(s, "recipe")

    @classmethod
    def from_file(cls, path: str | Path) -> PruneConfig:
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"recipe {path} does not exist: pass the path of a YAML file")
        if p.is_dir():
            raise ConfigError(f"recipe {path} is a folder: pass the path of a YAML file")
        if not p.is_file():
            raise ConfigError(f"recipe {path} is not a regular file (a pipe, socket or device): pass the path of a YAML file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {path} is not UTF-8 text: pass a YAML file") from None
        except OSError as e:
            raise ConfigError(f"could not read recipe {path}: {e.strerror or e}") from None
        return cls._parse(text, f"recipe {path}")

    @classmethod
    def _parse(cls, text: str, where: str) -> PruneConfig:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a YAML mapping of PruneConfig fields (method:, sparsity:, ...), got {type(data).__name__}")
        return cls.from_dict(data, where)


def _check_fields(obj: Any, path: str) -> None:
    """Type/range-check the declared settings of a config dataclass."""
    for name, s in schema_of(type(obj)).items():
        s.coerce(f"{path}.{name}", getattr(obj, name), optional=False)


def _build(cls: type, d: Mapping[str, Any], where: str, path: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``d`` with the types its fields declare."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in d if k not in fields)
    if unknown:
        hint = did_you_mean(unknown[0], fields, path)
        raise ConfigError(
            f"{where}: unknown key {path}{unknown[0]}{hint}; known keys{' under ' + path[:-1] if path else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, v in d.items():
        key = f"{path}{name}"
        t = hints[name]
        origin = typing.get_origin(t)
        if dataclasses.is_dataclass(t):
            if v is None:
                continue
            if not isinstance(v, Mapping):
                raise ConfigError(f"{where}: {key} must be a mapping ({', '.join(f.name for f in dataclasses.fields(t))}), got {_kind(v)}")
            kwargs[name] = _build(t, v, where, key + ".")
        elif origin is tuple:
            if v is None:
                v = []
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{where}: {key} must be a list of strings, got {v!r}")
            kwargs[name] = tuple(v)
        elif origin is dict:
            if v is None:
                v = {}
            if not isinstance(v, Mapping):
                raise ConfigError(f"{where}: {key} must be a mapping of NAME: VALUE, got {_kind(v)}")
            kwargs[name] = dict(v)
        else:
            base = [a for a in typing.get_args(t) if a is not type(None)] or [t]
            s = schema_of(cls).get(name) or Setting(base[0], fields[name].default)
            optional = type(None) in typing.get_args(t)
            kwargs[name] = s.coerce(f"{where}: {key}", v, optional=optional)
    return cls(**kwargs)


def _kind(v: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(v), type(v).__name__)


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated :class:`PruneConfig` with what it names looked up once (``PruneConfig.resolve``)."""

    config: PruneConfig
    method: str  # the registered name, lower-case
    structured: bool  # removes heads/channels/blocks (prunekit.structured) rather than weights
    settings: dict[str, Any]  # every method setting, typed, defaults filled in
    pattern: Unstructured | NM
    sparsity: float  # the target: implied by N:M, else the config's or the kind's default
    allocator: Any  # the per-layer sparsity allocator object
