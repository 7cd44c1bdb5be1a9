"""Helpers shared by the benchmark cells (each cell is one subprocess of ``benchmarks/run.py``).

The cells in this folder run with the project's own python (they import prunekit); the peer
runners in ``benchmarks/peers/`` run with the peers' venvs and never import this module.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path


def quiet() -> None:
    """Keep a cell's log readable: no library chatter that is not an error."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers is optional for some cells
        pass


def log(msg: str) -> None:
    print(f"[cell {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup_threads(n: int) -> int:
    import torch

    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 1024), 1)


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_ids(path: Path):
    import torch

    ids = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise SystemExit(f"{path}: expected a 2-D LongTensor, got {type(ids).__name__}")
    return ids.long()


def load_hf_folder(folder: Path, attn: str = "sdpa"):
    """Load a saved float32 Hugging Face folder the same way for every tool."""
    import torch
    from transformers import AutoModelForCausalLM

    # A prunekit folder whose config maps AutoModelForCausalLM to its own modeling_prunekit*.py
    # (ARMOR wrappers, per-layer expert counts, per-block widths) is loaded the way its README
    # tells a user without prunekit to: plain transformers with trust_remote_code=True.
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    remote = str((cfg.get("auto_map") or {}).get("AutoModelForCausalLM", "")).startswith("modeling_prunekit")
    model, info = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation=attn, output_loading_info=True,
        trust_remote_code=remote)
    # A tensor the config does not describe would be dropped (or re-initialised) silently and
    # the perplexity would measure another model: refuse instead.
    bad = {k: sorted(v)[:5] for k, v in info.items()
           if k in ("unexpected_keys", "mismatched_keys") and v}
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k]
    if missing:
        bad["missing_keys"] = sorted(missing)[:5]
    if bad:
        raise SystemExit(f"{folder} does not load cleanly with plain transformers: {bad}")
    model.eval()
    return model
