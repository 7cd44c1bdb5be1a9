"""Pruning methods, registered explicitly by name."""

from .base import METHODS, PruningMethod, ScoreMethod, register_method
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda


def get_method(name: str, **kwargs) -> PruningMethod:
    """Instantiate a registered method with its hyperparameters."""
    import dataclasses

    from ..errors import ConfigError

    from ..structured import STRUCTURED_METHODS

    if name.lower() in STRUCTURED_METHODS and name.lower() not in METHODS:
        return STRUCTURED_METHODS.get(name)
    if name.lower() not in METHODS:
        _unknown(name)
    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    bad = sorted(set(kwargs) - fields)
    if bad:
        raise ConfigError(
            f"method {name!r} has no setting {', '.join(bad)}; its settings are "
            f"{', '.join(sorted(fields)) or '(none)'}"
        )
    return cls(**kwargs)


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


def list_methods() -> list[str]:
    from ..structured import STRUCTURED_METHODS

    return sorted(METHODS.names() + STRUCTURED_METHODS.names())


__all__ = [
    "METHODS",
    "Magnitude",
    "PruningMethod",
    "ScoreMethod",
    "SparseGPT",
    "Wanda",
    "get_method",
    "is_structured",
    "list_methods",
    "register_method",
]
