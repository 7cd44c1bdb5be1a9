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

from .api import prune_, target_linears
from .config import CalibConfig, PruneConfig, TargetSpec
from .data import calibration_windows, eval_token_ids, load_source
from .errors import PrunekitError
from .eval import model_size_bytes, parameter_count, perplexity, sparsity_summary
from .export import save_pretrained_atomic
from .methods import get_method, list_methods
from .models import load_model, resolve_model


def load(path):
    """Load a prunekit output folder (uniform or per-block widths) as ``(model, tokenizer)``."""
    return load_model(path)

from .patterns import NM, Unstructured, parse_pattern
from .report import PruneReport

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
    "prune_",
    "resolve_model",
    "save_pretrained_atomic",
    "sparsity_summary",
    "target_linears",
]
