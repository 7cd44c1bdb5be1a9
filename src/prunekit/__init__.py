"""prunekit: prune transformer models on one engine and prove what the pruning bought.

Python API::

    import prunekit as pk
    model, tok = pk.load_model("smollm2-135m")
    report = pk.prune_(model, pk.PruneConfig(method="sparsegpt", pattern="2:4"), tokenizer=tok)
    ppl = pk.perplexity(model, pk.eval_token_ids("builtin", tok), seqlen=2048)
    pk.save_pretrained_atomic(model, tok, "out/smollm2-sparsegpt-2of4", report.to_dict())
"""

from __future__ import annotations

__version__ = "0.1.0"

# Lazy attributes (PEP 562): `import prunekit` stays cheap (no torch/transformers import), so the
# CLI starts fast and installs its signal handlers before any heavy import.
_LAZY = {
    "prune_": "api", "target_linears": "api",
    "CalibConfig": "config", "PruneConfig": "config", "TargetSpec": "config",
    "calibration_windows": "data", "eval_token_ids": "data", "load_source": "data",
    "PrunekitError": "errors",
    "model_size_bytes": "eval", "parameter_count": "eval", "perplexity": "eval", "sparsity_summary": "eval",
    "save_pretrained_atomic": "export",
    "get_method": "methods", "list_methods": "methods",
    "load_model": "models", "resolve_model": "models",
    "NM": "patterns", "Unstructured": "patterns", "parse_pattern": "patterns",
    "PruneReport": "report",
    "prune_streaming": "engine.streaming",
    "evaluate_tasks": "eval",
    "generate": "decoding",
    "compress_prompt": "context",
    "reason": "decoding.reason",
}  # fmt: skip


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)  # subpackages: pk.export, pk.engine, ...
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load(path, *, dtype: str = "auto", device: str | None = None, dynamic_experts: float | None = None):
    """Load a prunekit output folder (uniform or per-block widths, ARMOR wrappers, per-layer
    expert counts) as ``(model, tokenizer)``.

    ``dynamic_experts=β`` (MoE models) turns on MC-MoE dynamic expert skipping: a token skips
    its second expert when ``w₂ < β·w₁`` (``prunekit.structured.experts.dynamic_skipping_stats``
    counts the expert evaluations saved); ``0`` turns off a β saved in the folder.

    A folder written by ``prunekit.tokens.ftp.save_routed`` (``prunekit ftp-train --out DIR``)
    comes back with its FTP token routing attached (``prunekit.tokens.unpatch(model)`` removes it)."""
    from pathlib import Path

    from .models import load_model

    model, tok = load_model(path, dtype=dtype, device=device, dynamic_experts=dynamic_experts)
    if isinstance(path, (str, Path)) and (Path(path) / "prunekit.json").is_file():
        from .tokens.ftp import attach_saved

        attach_saved(model, path)
    return model, tok


__all__ = [
    "NM",
    "CalibConfig",
    "PruneConfig",
    "PruneReport",
    "PrunekitError",
    "TargetSpec",
    "Unstructured",
    "__version__",
    "calibration_windows",
    "eval_token_ids",
    "get_method",
    "list_methods",
    "load",
    "load_model",
    "load_source",
    "model_size_bytes",
    "parameter_count",
    "parse_pattern",
    "perplexity",
    "evaluate_tasks",
    "prune_",
    "prune_streaming",
    "resolve_model",
    "save_pretrained_atomic",
    "sparsity_summary",
    "target_linears",
]
