"""``patch`` / ``unpatch`` / ``stats``: the Python API of the tokens room."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import ConfigError
from .hook import TokenPatch, decoder_layers, get_patch
from .methods import METHODS, TokenPruneConfig
from .names import ROUTE

ROUTE_METHODS = ROUTE


def patch(model: nn.Module, method: str = "fastv", keep: float = 0.25, layer: int | None = None,
          config: TokenPruneConfig | None = None, **options: Any) -> TokenPatch:  # fmt: skip
    """Attach a token hook to ``model`` (in place) and return it; ``unpatch(model)`` removes it.

    Shortening methods (``fastv``, ``recoverable``, ``random``) take the fields of
    :class:`TokenPruneConfig` as keywords. Routing methods (``ftp`` with ``routers=``,
    ``random-route``, ``block-skip`` with ``blocks=``) take the options of
    :func:`prunekit.tokens.ftp.route_method`.
    """
    if method in ROUTE_METHODS:
        from .ftp import route_method

        _, layers = decoder_layers(model)
        if method == "attn-drop":
            options = {"keep": keep, "layer": 2 if layer is None else layer, **options}
        import inspect

        allowed = set(inspect.signature(route_method).parameters) - {"model", "method", "n_layers"}
        bad = sorted(set(options) - allowed)
        if bad:
            raise ConfigError(f"unknown option {bad[0]!r} for method {method!r}: use one of {', '.join(sorted(allowed))}")
        return TokenPatch(model, route_method(model, method, len(layers), **options)).attach()
    if config is None:
        names = {f.name for f in dataclasses.fields(TokenPruneConfig)}
        bad = sorted(set(options) - names)
        if bad:
            raise ConfigError(f"unknown option {bad[0]!r} for method {method!r}: use one of {', '.join(sorted(names - {'method', 'keep', 'layer'}))}")
        config = TokenPruneConfig(method=method, keep=keep, layer=layer, **options)
    if config.method not in METHODS:
        raise ConfigError(f"unknown token method {config.method!r}: use one of {', '.join([*METHODS, *ROUTE_METHODS])}")
    _, layers = decoder_layers(model)
    return TokenPatch(model, METHODS[config.method](model, config, len(layers))).attach()


def unpatch(model: nn.Module) -> dict[str, Any]:
    """Remove the token hook; returns its final :func:`stats` (``{}`` if the model had none)."""
    p = get_patch(model)
    if p is None:
        return {}
    s = p.stats()
    p.detach()
    return s


def stats(model: nn.Module) -> dict[str, Any]:
    """What the model's token hook has done so far: tokens removed per layer, token-blocks computed."""
    p = get_patch(model)
    if p is None:
        raise ConfigError("the model has no token patch: call prunekit.tokens.patch(model, ...) first")
    return p.stats()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ftp:routers=FILE,kv=keep"`` / ``"random-route:sparsity=0.3"`` / ``"block-skip:blocks=3;5;7"`` →
    ``(method, options)`` for :func:`patch` (numbers become int/float; ``;`` separates list items).

    Raises:
        ConfigError: an empty method or an item that is not KEY=VALUE.
    """
    name, _, rest = str(spec).strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise ConfigError(f"token-prune spec {spec!r} names no method: use METHOD[:KEY=VALUE,...], e.g. random-route:sparsity=0.3")
    opts: dict[str, Any] = {}
    for item in filter(str.strip, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"token-prune spec {spec!r}: {item!r} is not KEY=VALUE")

        def num(v: str) -> Any:
            v = v.strip()
            for cast in (int, float):
                try:
                    return cast(v)
                except ValueError:
                    pass
            return v

        opts[key.strip()] = [num(v) for v in val.split(";")] if ";" in val or key.strip() == "blocks" else num(val)
    return name, opts
