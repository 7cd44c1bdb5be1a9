"""Safetensors checkpoints read and written tensor by tensor, and models with no weights in memory.

The streaming engine (:mod:`prunekit.engine.streaming`) never holds a whole model: it builds the
module tree with every parameter on the ``meta`` device (:func:`empty_model`), loads one decoder
block's tensors from the input shards when it is that block's turn (:func:`materialize`), and
puts them back on ``meta`` once the block is written (:func:`release`). Buffers that the model
computes in ``__init__`` (rotary ``inv_freq``) are created normally, on the CPU, so they are real
numbers rather than meta placeholders.

Shards are opened only for the keys a step needs and closed again right after, so no memory map
of the input stays resident between blocks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelLoadError, OutputError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
    "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
    "float32": torch.float32, "float": torch.float32,
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` → ``torch.bfloat16`` (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in _DTYPES.values():
            raise ConfigError(f"dtype={dtype} is not a float dtype prunekit writes: pass bf16, fp16 or fp32")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of bf16, fp16, fp32 (or bfloat16, float16, float32)")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (as config.json spells it)."""
    return str(dtype).removeprefix("torch.")


class Checkpoint:
    """A safetensors Hugging Face folder: which file holds each tensor, read on demand.

    ``model.safetensors.index.json`` (sharded) or a single ``model.safetensors``. Every shard is
    opened once here to read its header, so a missing or truncated file fails before any work,
    with one line naming it.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.files = self._file_map()
        self.meta: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> (safetensors dtype, shape)
        for fname in sorted(set(self.files.values())):
            self._read_header(fname)
        missing = [k for k, f in self.files.items() if k not in self.meta]
        if missing:
            raise ModelLoadError(
                f"{self.folder / self.files[missing[0]]} lacks {missing[0]!r} (and {len(missing) - 1} more "
                "tensors) listed in the index: the shard is from another checkpoint; re-download it"
            )

    def _file_map(self) -> dict[str, str]:
        index = self.folder / INDEX_NAME
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelLoadError(f"{index} is not a safetensors index ({type(e).__name__}): re-download it") from None
            if not isinstance(wm, dict) or not wm:
                raise ModelLoadError(f"{index} has an empty weight_map: re-download it")
            return {str(k): str(v) for k, v in wm.items()}
        single = self.folder / SINGLE_NAME
        if single.is_file():
            return {k: SINGLE_NAME for k in self._keys_of(single)}
        raise ModelLoadError(
            f"{self.folder} has neither {INDEX_NAME} nor {SINGLE_NAME}: streaming needs a safetensors "
            "checkpoint (convert .bin/.gguf with save_pretrained first, or prune it in memory)"
        )

    def _keys_of(self, path: Path) -> list[str]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except FileNotFoundError:
            raise ModelLoadError(f"shard {path} is missing: re-download the checkpoint") from None
        except Exception as e:  # SafetensorError: truncated, not safetensors
            reason = " ".join(str(e).split())[:200]
            raise ModelLoadError(f"shard {path} is unreadable ({reason}): it is truncated or corrupt; re-download it") from None

    def _read_header(self, fname: str) -> None:
        path = self.folder / fname
        if not path.is_file():
            raise ModelLoadError(f"shard {path} is missing (listed in {INDEX_NAME}): re-download the checkpoint")
        try:
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n)) if 0 < n < 1 << 30 else None
            size = path.stat().st_size
        except (OSError, ValueError):
            header, size = None, 0
        if not isinstance(header, dict):
            self._keys_of(path)  # raises with the library's reason
            raise ModelLoadError(f"shard {path} has no safetensors header: it is corrupt; re-download it")
        end = 0
        for k, v in header.items():
            if k == "__metadata__":
                continue
            self.meta[k] = (v["dtype"], tuple(v["shape"]))
            end = max(end, v["data_offsets"][1])
        if size < 8 + n + end:
            raise ModelLoadError(
                f"shard {path} is truncated ({size:,} bytes, its header needs {8 + n + end:,}): re-download it"
            )

    def keys(self) -> list[str]:
        return list(self.files)

    def tensor_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of all tensors, as stored or cast to ``dtype`` (floating tensors only)."""
        total = 0
        for key, (st, shape) in self.meta.items():
            n = 1
            for s in shape:
                n *= s
            size = _ST_SIZES.get(st, 4)
            if dtype is not None and st in _ST_FLOATS:
                size = torch.empty((), dtype=dtype).element_size()
            total += n * size
        return total

    def stored_float_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating tensor (what ``dtype="auto"`` would load)."""
        for st, _ in self.meta.values():
            if st in _ST_FLOATS:
                return _ST_FLOATS[st]
        return None

    def load(self, keys: Iterable[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Read ``keys`` (each shard opened once, closed after); tensors on ``device``."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for k in keys:
            if k not in self.files:
                raise ModelLoadError(f"{self.folder} has no tensor {k!r}: the checkpoint does not match its config.json")
            by_file.setdefault(self.files[k], []).append(k)
        out: dict[str, Tensor] = {}
        for fname, ks in by_file.items():
            path = self.folder / fname
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for k in ks:
                        out[k] = f.get_tensor(k).to(device)
            except FileNotFoundError:
                raise ModelLoadError(f"shard {path} vanished while reading it: re-download the checkpoint") from None
            except Exception as e:
                if isinstance(e, (ModelLoadError, KeyboardInterrupt)):
                    raise
                reason = " ".join(str(e).split())[:200]
                raise ModelLoadError(f"shard {path} could not be read ({reason}): re-download it") from None
        return out


_ST_FLOATS = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_ST_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Every ``nn.Parameter`` registered inside the block is created on ``meta``; buffers are not
    (so rotary tables computed in ``__init__`` hold real values)."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            kw = {"requires_grad": param.requires_grad}
            self._parameters[name] = type(param)(param.to("meta"), **kw)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def empty_model(config: Any, dtype: torch.dtype) -> nn.Module:
    """A causal LM built from ``config`` with every parameter on ``meta`` (no memory, no init),
    in eval mode."""
    from transformers import AutoModelForCausalLM

    with _params_on_meta():
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except Exception as e:
            reason = " ".join(str(e).split())[:300]
            raise ModelLoadError(f"cannot build a {getattr(config, 'model_type', '?')!r} model from its config.json: {reason}") from None
    return model.eval()


def _slots(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, bool]]:
    """``(full name, owner, attribute, is_parameter)`` for every parameter and persistent buffer
    of ``module``, each tensor once."""
    for mname, mod in module.named_modules(remove_duplicate=True):
        for pname in list(mod._parameters):
            if mod._parameters[pname] is not None:
                yield (f"{mname}.{pname}" if mname else pname), mod, pname, True
        for bname in list(mod._buffers):
            if mod._buffers[bname] is not None and bname not in mod._non_persistent_buffers_set:
                yield (f"{mname}.{bname}" if mname else bname), mod, bname, False


def tensor_names(module: nn.Module, prefix: str) -> list[str]:
    """Checkpoint keys of ``module``'s parameters and persistent buffers (``prefix.name``)."""
    p = f"{prefix}." if prefix else ""
    return [p + n for n, *_ in _slots(module)]


@dataclass(frozen=True)
class Source:
    """Where one model tensor comes from in the checkpoint.

    ``kind="plain"``: the key itself. Fused experts that transformers 5 builds on load from
    per-expert checkpoint keys (Mixtral's ``experts.{e}.w1/w3/w2``, Qwen-MoE/OLMoE/DeepSeek's
    ``experts.{e}.gate_proj/up_proj/down_proj``): ``"gate_up"`` stacks ``cat(gate_e, up_e)``
    into ``[E, 2I, H]`` (``keys`` = the E gate keys then the E up keys), ``"down"`` stacks
    ``down_e`` into ``[E, H, I]``. Writing splits them back, so the output keeps the input's keys.
    """

    kind: str
    keys: tuple[str, ...]


_GATE_UP = (("gate_proj", "up_proj"), ("w1", "w3"))
_DOWN = ("down_proj", "w2")
_RENAMES = ((".mlp.", ".block_sparse_moe."),)  # transformers' Mixtral renaming, reversed


def _expert_bases(key: str, suffix: str) -> list[str]:
    base = key[: -len(suffix)]
    return [base] + [base.replace(new, old) for new, old in _RENAMES if new in base]


def _expert_source(key: str, num_experts: int, have: set[str]) -> Source | None:
    if key.endswith(".experts.gate_up_proj"):
        for base in _expert_bases(key, "gate_up_proj"):
            for g, u in _GATE_UP:
                keys = [f"{base}{e}.{g}.weight" for e in range(num_experts)] + [
                    f"{base}{e}.{u}.weight" for e in range(num_experts)
                ]
                if all(k in have for k in keys):
                    return Source("gate_up", tuple(keys))
    if key.endswith(".experts.down_proj"):
        for base in _expert_bases(key, "down_proj"):
            for d in _DOWN:
                keys = [f"{base}{e}.{d}.weight" for e in range(num_experts)]
                if all(k in have for k in keys):
                    return Source("down", tuple(keys))
    return None


def layout_of(module: nn.Module, prefix: str, have: set[str]) -> tuple[dict[str, Source], list[str]]:
    """``(source of every tensor of module, names with none)`` against checkpoint keys ``have``."""
    p = f"{prefix}." if prefix else ""
    out: dict[str, Source] = {}
    lacking: list[str] = []
    for n, mod, attr, is_param in _slots(module):
        key = p + n
        t = mod._parameters[attr] if is_param else mod._buffers[attr]
        src = Source("plain", (key,)) if key in have else None
        for new, old in _RENAMES if src is None else ():
            if new in key and key.replace(new, old) in have:
                src = Source("plain", (key.replace(new, old),))
        if src is None and t.dim() == 3:
            src = _expert_source(key, int(t.shape[0]), have)
        if src is None:
            lacking.append(key)
        else:
            out[key] = src
    return out, lacking


def _assemble(src: Source, loaded: dict[str, Tensor]) -> Tensor:
    ts = [loaded.pop(k) for k in src.keys]
    if src.kind == "plain":
        return ts[0]
    if src.kind == "down":
        return torch.stack(ts)
    e = len(ts) // 2
    return torch.stack([torch.cat((ts[i], ts[e + i]), dim=0) for i in range(e)])


def _split(src: Source, t: Tensor) -> dict[str, Tensor]:
    if src.kind == "plain":
        return {src.keys[0]: t}
    if src.kind == "down":
        return {k: t[e].contiguous() for e, k in enumerate(src.keys)}
    e = len(src.keys) // 2
    inter = t.shape[1] // 2
    out = {src.keys[i]: t[i, :inter].contiguous() for i in range(e)}
    out.update({src.keys[e + i]: t[i, inter:].contiguous() for i in range(e)})
    return out


def materialize(module: nn.Module, prefix: str, ckpt: Checkpoint, device: str | torch.device,
                only_present: bool = False, skip: tuple[str, ...] = (),
                layout: Mapping[str, Source] | None = None) -> list[str]:  # fmt: skip
    """Load ``module``'s tensors from ``ckpt`` (keys ``prefix.name``, or as ``layout`` says) onto
    ``device``, each cast to the dtype the model declares for it; returns the keys loaded. With
    ``only_present`` tensors the checkpoint lacks (tied weights) stay on ``meta``; names under a
    ``skip`` prefix (relative to ``module``) are left alone."""
    p = f"{prefix}." if prefix else ""
    slots = [(p + n, mod, a, isp) for n, mod, a, isp in _slots(module)
             if not any(n == s or n.startswith(s + ".") for s in skip)]  # fmt: skip
    if only_present:
        slots = [s for s in slots if s[0] in ckpt.files or (layout and s[0] in layout)]
    sources = {k: (layout or {}).get(k) or Source("plain", (k,)) for k, *_ in slots}
    loaded = ckpt.load([k for src in sources.values() for k in src.keys], device)
    for key, mod, attr, is_param in slots:
        old = mod._parameters[attr] if is_param else mod._buffers[attr]
        t = _assemble(sources[key], loaded)
        if tuple(t.shape) != tuple(old.shape):
            raise ModelLoadError(
                f"{ckpt.folder}: tensor {key!r} has shape {tuple(t.shape)}, config.json implies "
                f"{tuple(old.shape)}: the checkpoint does not match its config"
            )
        t = t.to(old.dtype) if t.is_floating_point() else t
        if is_param:
            mod._parameters[attr] = nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[attr] = t
    return [s[0] for s in slots]


def release(module: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Put ``module``'s parameters and persistent buffers back on ``meta`` (frees their memory);
    names under a ``skip`` prefix are left alone."""
    for n, mod, attr, is_param in list(_slots(module)):
        if any(n == s or n.startswith(s + ".") for s in skip):
            continue
        if is_param:
            old = mod._parameters[attr]
            mod._parameters[attr] = nn.Parameter(torch.empty_like(old, device="meta"), requires_grad=False)
        else:
            mod._buffers[attr] = torch.empty_like(mod._buffers[attr], device="meta")


def state_of(module: nn.Module, prefix: str, layout: Mapping[str, Source] | None = None) -> dict[str, Tensor]:
    """``module``'s parameters and persistent buffers by checkpoint key (split back into the
    checkpoint's per-expert keys where ``layout`` says so), on the CPU, contiguous."""
    p = f"{prefix}." if prefix else ""
    out: dict[str, Tensor] = {}
    for n, mod, attr, is_param in _slots(module):
        t = (mod._parameters[attr] if is_param else mod._buffers[attr]).detach().to("cpu").contiguous()
        src = (layout or {}).get(p + n) or Source("plain", (p + n,))
        out.update(_split(src, t))
    return out


def write_shard(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Write one safetensors file atomically (``path.partial`` renamed into place, fsynced)."""
    from safetensors.torch import save_file

    part = path.with_name(path.name + ".partial")
    with disk_full_is_resumable(part):
        save_file(dict(tensors), str(part), metadata={"format": "pt"})
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(part, path)


@contextlib.contextmanager
def disk_full_is_resumable(part: Path) -> Iterator[None]:
    """A full disk while a streamed block is written (safetensors raises its own ``SafetensorError``,
    torch.save a ``RuntimeError``) is one :class:`OutputError` line that says ``--resume`` continues;
    the half-written ``part`` is removed, finished blocks stay."""
    try:
        yield
    except Exception as e:
        reason = " ".join(str(e).split())
        if not (isinstance(e, OSError) and e.errno == errno.ENOSPC) and "No space left" not in reason \
                and "os error 28" not in reason and "file write failed" not in reason:  # fmt: skip
            raise
        with contextlib.suppress(OSError):
            part.unlink()
        raise OutputError(f"disk full while writing {part.parent}: free some space, then rerun the same command "
                          f"with --resume to continue from the last finished block") from None  # fmt: skip


def shard_name(i: int, n: int) -> str:
    """``model-00001-of-00034.safetensors`` (1-based, as transformers names shards)."""
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(folder: Path, weight_map: Mapping[str, str], total_bytes: int) -> None:
    """``model.safetensors.index.json`` for the shards in ``folder``."""
    body = {"metadata": {"total_size": int(total_bytes)}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(body, indent=2) + "\n")


__all__ = [
    "INDEX_NAME", "Checkpoint", "Source", "dtype_name", "empty_model", "layout_of", "materialize",
    "parse_dtype", "release", "shard_name", "state_of", "tensor_names", "write_index", "write_shard",
]  # fmt: skip
