"""Write a Hugging Face folder atomically: a temp folder beside the target, renamed into place.

Without ``overwrite`` an existing non-empty target is refused and never touched. With it, the
old folder is replaced only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import OutputError


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("prunekit", "torch", "transformers", "safetensors", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, protect: list[str] | None = None) -> Path:
    """Validate ``--out`` before any work is done; returns the resolved path."""
    p = Path(out).expanduser().resolve()
    for q in protect or []:
        qp = Path(q).expanduser().resolve()
        if p == qp or qp.is_relative_to(p) or (qp.is_dir() and p.is_relative_to(qp)):
            raise OutputError(f"--out {out} would overwrite the input {q}: choose another folder")
    if p.exists() and not p.is_dir():
        raise OutputError(f"--out {out} is a file: give a folder path")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OutputError(f"--out {out} exists and is not empty: choose a new folder or pass --overwrite")
    if not p.parent.exists():
        raise OutputError(f"the parent folder of --out ({p.parent}) does not exist: create it first")
    return p


def save_pretrained_atomic(
    model, tokenizer, out: str | os.PathLike, meta: dict[str, Any] | None = None,
    *, overwrite: bool = False, extra_files: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """Save ``model`` (safetensors) and ``tokenizer`` plus ``prunekit.json`` into ``out``."""
    target = check_output_dir(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        from ..structured.per_block import write_remote_code

        write_remote_code(getattr(model, "config", None), tmp)  # per-block widths: add the trust_remote_code loader
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_into_place(tmp, target)
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an old non-empty target is kept aside until then
    and put back if the final rename fails (so a failed overwrite loses nothing)."""
    old = None
    try:
        if target.exists():
            if any(target.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rename(target, old / "x")
            else:
                target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old / "x", target)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
