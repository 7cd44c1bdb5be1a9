"""Pruning methods, registered explicitly by name."""

import time
from collections.abc import Mapping

from .alps import ALPS
from .base import METHODS, PruningMethod, ScoreMethod, register_method
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda


def _load_builtin() -> None:
    """Import the further built-in methods (explicit list; each registers itself)."""
    from ..registry import import_builtin

    import_builtin(__name__, ("armor", "gblm", "dpruner", "dsnot"))


_load_builtin()

from .dsnot import REFINERS, DSnoT  # noqa: E402  (the mask refiners every method can use)


def get_method(name: str, **kwargs) -> PruningMethod:
    """Instantiate a registered method with its hyperparameters.

    Every unstructured/N:M method also takes ``refine`` (``none`` or ``dsnot``) and the
    refiner's ``refine_*`` settings; with a refiner the method comes back wrapped in
    :class:`Refined` (the base prunes, then the refiner swaps weights of its mask).
    """
    from ..structured import STRUCTURED_METHODS

    if name.lower() in STRUCTURED_METHODS and name.lower() not in METHODS:
        if any(_is_refine_key(k) for k in kwargs):
            check_settings(name, kwargs)  # a structured method refuses refine=... in one line
        return STRUCTURED_METHODS.get(name)
    typed = check_settings(name, kwargs)
    base = METHODS.get(name)(**{k: v for k, v in typed.items() if k not in REFINE_SETTINGS})
    if typed.get("refine", "none") == "none":
        return base
    refiner = REFINERS[typed["refine"]](**{k[len("refine_"):]: typed[k] for k in REFINE_SETTINGS if k != "refine"})
    return Refined(base, refiner, typed["refine"], name.lower())


def _is_refine_key(key) -> bool:
    return str(key) == "refine" or str(key).startswith("refine_")


def _refine_settings() -> dict:
    from ..settings import Setting, schema_of

    out = {"refine": Setting(str, "none", choices=("none", *REFINERS),
                             help="refine the method's mask afterwards: dsnot (prune-and-grow, Zhang et al. 2024)")}  # fmt: skip
    out.update({f"refine_{n}": s for n, s in schema_of(DSnoT).items()})
    return out


def settings_schema(name: str) -> dict:
    """The declared settings of a registered method: name -> :class:`prunekit.settings.Setting`
    (an unstructured/N:M method's own, then ``refine`` and the ``refine_*`` settings)."""
    from ..settings import schema_of
    from ..structured import STRUCTURED_METHODS

    if is_structured(name):
        return schema_of(STRUCTURED_METHODS.get(name))
    if name.lower() not in METHODS:
        _unknown(name)
    cls = METHODS.get(name)
    if getattr(cls, "install", None) is not None:  # its result is more than a weight: nothing to refine
        return schema_of(cls)
    return {**schema_of(cls), **REFINE_SETTINGS}


def check_settings(name: str, args) -> dict:
    """Validate ``args`` for method ``name`` (structured or not); returns all settings."""
    from ..errors import ConfigError
    from ..settings import did_you_mean, validate_settings

    if isinstance(args, Mapping) and any(_is_refine_key(k) for k in args):
        if is_structured(name):
            raise ConfigError(
                f"{name.lower()} is a structured method (it removes whole heads, channels or blocks); "
                f"refine=... refines the mask of an unstructured/N:M method such as wanda or sparsegpt: drop it"
            )
        if name.lower() in METHODS and "refine" not in settings_schema(name):
            raise ConfigError(
                f"{name.lower()}'s result is more than a sparse weight, so refine=... cannot refine its mask: drop it"
            )
        r = args.get("refine")
        if isinstance(r, str) and r.strip() and r.strip() not in REFINE_SETTINGS["refine"].choices:
            raise ConfigError(
                f"{name.lower()}: setting refine={r.strip()} is not a refinement"
                f"{did_you_mean(r.strip(), REFINERS)}; it must be one of "
                f"{', '.join(REFINE_SETTINGS['refine'].choices)}"
            )
    return validate_settings(name.lower(), settings_schema(name), args)


class Refined(PruningMethod):
    """A method whose mask a refiner improves afterwards: ``prune`` = base's prune, then
    ``refiner.refine(W, Ŵ, stats, pattern)``; it needs the statistics of both."""

    def __init__(self, base: PruningMethod, refiner, refine: str, name: str) -> None:
        self.base, self.refiner, self.refine = base, refiner, refine
        self.name = name
        self.needs = frozenset(base.needs) | frozenset(refiner.needs)
        self.default_scope = base.default_scope
        self.summary = f"{base.summary} + {refine} mask refinement"
        if getattr(base, "prepass", None) is not None:  # statistics gathered before the layer loop
            self.prepass = base.prepass

    def effective_pattern(self, pattern):
        return self.base.effective_pattern(pattern)

    def prune(self, weight, stats, pattern, sparsity):
        W_hat, info = self.base.prune(weight, stats, pattern, sparsity)
        t0 = time.perf_counter()
        W_hat, more = self.refiner.refine(weight, W_hat, stats, self.effective_pattern(pattern))
        return W_hat, {**info, **more, "refine_s": round(time.perf_counter() - t0, 4)}

    def settings(self) -> dict:
        import dataclasses

        own = {f"refine_{k}": v for k, v in dataclasses.asdict(self.refiner).items()}
        return {**self.base.settings(), "refine": self.refine, **own}

    def __repr__(self) -> str:
        return f"Refined({self.base!r}, {self.refiner!r})"


def _unknown(name: str) -> None:
    from ..registry import Registry
    from ..structured import STRUCTURED_METHODS

    both: Registry = Registry("method")
    for n in METHODS.names() + STRUCTURED_METHODS.names():
        both.register(n)(n)
    both.get(name)  # raises with did-you-mean over all methods


def is_structured(name: str) -> bool:
    from ..structured import STRUCTURED_METHODS

    return name.lower() in STRUCTURED_METHODS and name.lower() not in METHODS


REFINE_SETTINGS: dict = {}


def list_methods() -> list[str]:
    from ..structured import STRUCTURED_METHODS

    return sorted(METHODS.names() + STRUCTURED_METHODS.names())


REFINE_SETTINGS.update(_refine_settings())

__all__ = [
    "ALPS",
    "DSnoT",
    "Refined",
    "METHODS",
    "Magnitude",
    "PruningMethod",
    "ScoreMethod",
    "SparseGPT",
    "Wanda",
    "get_method",
    "is_structured",
    "check_settings",
    "list_methods",
    "register_method",
    "settings_schema",
]
