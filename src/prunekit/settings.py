"""Method settings declare their own type and range once; one validator checks them everywhere.

A setting is declared where the method defines it — a field of the method's dataclass
(``block_size: int = setting(128, ge=1)``) or an entry of a structured method's ``SPEC`` — and
:func:`validate_settings` checks ``--set KEY=VALUE``, recipes (``method_args:``) and the Python
API alike: unknown name, wrong type, out of range or not one of the choices each end in one
:class:`~prunekit.errors.ConfigError` line naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Setting:
    """One method setting: its type, default and the values it allows."""

    type: type  # bool | int | float | str
    default: Any = None  # None: optional (the method decides), unless ``required``
    choices: tuple[Any, ...] | None = None
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    lt: float | None = None  # exclusive upper bound
    help: str = ""

    def allowed(self) -> str:
        """What the setting accepts, in words (used in messages and `prunekit ls`)."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.type]
        lo = f">= {_n(self.ge)}" if self.ge is not None else f"> {_n(self.gt)}" if self.gt is not None else ""
        hi = f"<= {_n(self.le)}" if self.le is not None else f"< {_n(self.lt)}" if self.lt is not None else ""
        bounds = " and ".join(b for b in (lo, hi) if b)
        opt = " (or null for the default)" if self.default is None else ""
        return f"{kind}{' ' + bounds if bounds else ''}{opt}"

    def coerce(self, label: str, value: Any, *, optional: bool | None = None) -> Any:
        """Return ``value`` as the setting's type, or raise one ConfigError line.

        ``label`` names the setting in the message (``"sparsegpt: setting block_size"``,
        ``"recipe calib.nsamples"``); ``None`` is accepted when the default is ``None``.
        """
        if value is None:
            if (self.default is None) if optional is None else optional:
                return None
            raise ConfigError(f"{label} must not be empty; it must be {self.allowed()}")

        def bad(why: str = "") -> ConfigError:
            shown = value if isinstance(value, str) and value.strip() and value == value.strip() else repr(value)
            return ConfigError(f"{label}={shown} is {why or 'invalid'}; it must be {self.allowed()}")

        v: Any
        if self.type is bool:
            if isinstance(value, bool):
                v = value
            elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                v = value.strip().lower() in _TRUE
            else:
                raise bad()
        elif self.type is int:
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, int):
                v = value
            elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
                v = int(value)
            elif isinstance(value, str):
                try:
                    v = int(value.strip())
                except ValueError:
                    raise bad() from None
            else:
                raise bad()
        elif self.type is float:
            if isinstance(value, bool):
                raise bad()
            try:
                v = float(value) if isinstance(value, (int, float, str)) else None
            except ValueError:
                v = None
            if v is None:
                raise bad()
            if not math.isfinite(v):
                raise bad("not a finite number")
        elif self.type is str:
            if not isinstance(value, str):
                raise bad()
            v = value.strip()
            if not v:
                raise bad("empty")
        else:  # pragma: no cover - a declaration error, not user input
            raise TypeError(f"unsupported setting type {self.type!r}")
        if self.choices is not None and v not in self.choices:
            raise bad("not allowed")
        if self.type in (int, float):
            if (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt) \
                    or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt):  # fmt: skip
                raise bad("out of range")
        return v


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def setting(default: Any = None, **kw: Any) -> Any:
    """A dataclass field that declares its range: ``block_size: int = setting(128, ge=1)``."""
    return dataclasses.field(default=default, metadata={"prunekit_setting": kw})


def schema_of(obj: Any) -> dict[str, Setting]:
    """The settings a method declares: its dataclass fields, or a structured method's ``SPEC``."""
    if isinstance(obj, Mapping):
        return {n: _as_setting(s) for n, s in obj.items()}
    cls = obj if isinstance(obj, type) else type(obj)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            typ = _base_type(hints.get(f.name, type(f.default)))
            out[f.name] = Setting(typ, f.default, **f.metadata.get("prunekit_setting", {}))
        return out
    spec = getattr(obj, "SPEC", None)
    if spec is None:
        import sys

        spec = getattr(sys.modules.get(getattr(obj, "__module__", ""), None), "SPEC", None)
    return schema_of(spec) if isinstance(spec, Mapping) else {}


def _base_type(t: Any) -> type:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def _as_setting(s: Any) -> Setting:
    if isinstance(s, Setting):
        return s
    typ, default, allowed = s  # legacy (type, default, choices | predicate | None)
    if isinstance(allowed, (tuple, list, set, frozenset)):
        return Setting(typ, default, choices=tuple(allowed))
    return Setting(typ, default)


def did_you_mean(name: str, known, prefix: str = "") -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def validate_settings(owner: str, schema: Mapping[str, Setting], args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` against ``schema``; return every setting (defaults filled in)."""
    if not isinstance(args, Mapping):
        raise ConfigError(f"{owner}: settings must be a mapping of NAME: VALUE, got {type(args).__name__}")
    bad = sorted(str(k) for k in set(args) - set(schema))
    if bad:
        hint = did_you_mean(bad[0], schema)
        raise ConfigError(
            f"method {owner!r} has no setting {', '.join(bad)}{hint}; its settings are "
            f"{', '.join(sorted(schema)) or '(none)'}"
        )
    return {
        n: s.coerce(f"{owner}: setting {n}", args[n]) if n in args else s.default for n, s in schema.items()
    }


def parse_key_values(items: list[str] | None, flag: str = "--set/--alloc-set") -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set``, ``--alloc-set``, ``--recover-set``) to a mapping; values stay
    strings (``null``/``none``/``~`` → None) and are typed later by the owner's settings. A malformed
    item or a key given twice is one :class:`ConfigError` line."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise ConfigError(f"{flag} expects KEY=VALUE (e.g. --set block_size=64), got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        if k in out:
            raise ConfigError(f"{flag} {k} is given twice ({k}={out[k]} and {it}): give each setting once")
        out[k] = None if v.strip().lower() in ("null", "none", "~") else v
    return out
