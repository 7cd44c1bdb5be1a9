"""Helpers shared by the peer runners in this folder.

The runners are executed by a peer tool's own virtual environment (see ``benchmarks/venvs.py``),
so this module may import only what every peer venv has: the standard library, torch,
transformers and safetensors.  It must never import prunekit.  The runners find it because
Python puts a script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

# Keys that a compressor may leave in config.json; a plain dense checkpoint has none of them.
COMPRESSION_CONFIG_KEYS = ("quantization_config", "compression_config", "sparsity_config")
# Tensor-name suffixes that mark a compressed (not dense) safetensors checkpoint.
COMPRESSED_TENSOR_SUFFIXES = ("bitmask", "compressed", "row_offsets", ".shape", "weight_packed",
                              "weight_scale", "weight_zero_point", "meta")


def log(msg: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_parser(description: str, methods: list[str]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True, type=Path,
                    help="float32 Hugging Face model folder (no quantization_config)")
    ap.add_argument("--calib", required=True, type=Path,
                    help="torch.save'd LongTensor [nsamples, seqlen] of calibration token ids")
    ap.add_argument("--method", required=True, choices=methods)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--out", required=True, type=Path, help="folder for the pruned HF model")
    ap.add_argument("--result", required=True, type=Path, help="result JSON file to write")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--max-layers", type=int, default=0,
                    help="prune only the first N decoder blocks (0: all); for smoke tests")
    return ap


def setup_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def load_calib(path: Path) -> torch.Tensor:
    ids = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise SystemExit(f"--calib must hold a 2-D LongTensor [nsamples, seqlen], got "
                         f"{type(ids).__name__} {getattr(ids, 'shape', '')}")
    if ids.dtype != torch.long:
        ids = ids.long()
    return ids


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (ru_maxrss is KiB on Linux, B on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return round(rss / 2**20, 1)
    return round(rss / 1024, 1)


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Name and ModuleList of the model's decoder blocks.

    Prefers a ModuleList whose children are of a class named in ``model._no_split_modules``
    (how transformers marks a decoder layer); falls back to the longest ModuleList.
    """
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    best: tuple[str, nn.ModuleList] | None = None
    fallback: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if type(mod[0]).__name__ in no_split and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
        if fallback is None or len(mod) > len(fallback[1]):
            fallback = (name, mod)
    found = best or fallback
    if found is None:
        raise SystemExit("could not find the decoder blocks (no nn.ModuleList in the model)")
    return found


def decoder_linears(model: nn.Module, max_layers: int = 0) -> dict[str, nn.Linear]:
    """Full names -> modules of every nn.Linear inside the decoder blocks (never lm_head)."""
    prefix, blocks = decoder_blocks(model)
    n = len(blocks) if max_layers <= 0 else min(max_layers, len(blocks))
    out: dict[str, nn.Linear] = {}
    for i in range(n):
        for sub, mod in blocks[i].named_modules():
            if isinstance(mod, nn.Linear):
                out[f"{prefix}.{i}.{sub}"] = mod
    if not out:
        raise SystemExit("no nn.Linear found inside the decoder blocks")
    return out


def zero_fraction(linears: dict[str, nn.Linear]) -> float:
    zeros = total = 0
    with torch.no_grad():
        for mod in linears.values():
            w = mod.weight
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M)."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise SystemExit(f"--pattern must be 'unstructured' or N:M, got {pattern!r}") from None
    if not (0 < n < m):
        raise SystemExit(f"--pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def strip_compression_config(out_dir: Path) -> list[str]:
    """Remove compressor configs from ``out_dir/config.json``; returns the keys removed."""
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    removed = [k for k in COMPRESSION_CONFIG_KEYS if k in cfg]
    for k in removed:
        del cfg[k]
    if removed:
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return removed


def check_dense_checkpoint(out_dir: Path, expect_weights: list[str]) -> None:
    """Fail loudly unless ``out_dir`` is a plain dense safetensors checkpoint."""
    from safetensors import safe_open

    files = sorted(out_dir.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no safetensors written in {out_dir}")
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    bad = sorted(k for k in keys if k.endswith(COMPRESSED_TENSOR_SUFFIXES))
    if bad:
        raise SystemExit(f"checkpoint in {out_dir} is not dense: {bad[:5]}")
    missing = [k for k in expect_weights if k not in keys]
    if missing:
        raise SystemExit(f"checkpoint in {out_dir} lacks weights: {missing[:5]}")
    cfg = json.loads((out_dir / "config.json").read_text())
    left = [k for k in COMPRESSION_CONFIG_KEYS if k in cfg]
    if left:
        raise SystemExit(f"config.json in {out_dir} still has {left}")


def save_tokenizer(model_dir: Path, out_dir: Path) -> bool:
    """Copy the tokenizer along, so the output folder is self-contained (best effort)."""
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))
        return True
    except Exception as exc:  # noqa: BLE001 - the tokenizer is optional here
        log(f"tokenizer not copied: {exc}")
        return False


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    log(f"result written to {path}")
