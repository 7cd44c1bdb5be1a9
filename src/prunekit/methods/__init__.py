"""Pruning methods, registered explicitly by name."""

from .alps import ALPS
from .base import METHODS, PruningMethod, ScoreMethod, register_method
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda


def _load_builtin() -> None:
    """Import the further built-in methods (explicit list; each registers itself)."""
    import importlib

    for mod in ("armor", "gblm", "dpruner", "dsnot"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


_load_builtin()


def get_method(name: str, **kwargs) -> PruningMethod:
    """Instantiate a registered method with its hyperparameters."""
    from ..structured import STRUCTURED_METHODS

    if name.lower() in STRUCTURED_METHODS and name.lower() not in METHODS:
        return STRUCTURED_METHODS.get(name)
    if name.lower() not in METHODS:
        _unknown(name)
    cls = METHODS.get(name)
    from ..settings import schema_of, validate_settings

    kwargs = validate_settings(name.lower(), schema_of(cls), kwargs)
    return cls(**kwargs)


def settings_schema(name: str) -> dict:
    """The declared settings of a registered method: name -> :class:`prunekit.settings.Setting`."""
    from ..settings import schema_of
    from ..structured import STRUCTURED_METHODS

    if is_structured(name):
        return schema_of(STRUCTURED_METHODS.get(name))
    if name.lower() not in METHODS:
        _unknown(name)
    return schema_of(METHODS.get(name))


def check_settings(name: str, args) -> dict:
    """Validate ``args`` for method ``name`` (structured or not); returns all settings."""
    from ..settings import validate_settings

    return validate_settings(name.lower(), settings_schema(name), args)


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
    "ALPS",
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
