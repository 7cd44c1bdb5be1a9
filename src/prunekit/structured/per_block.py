"""Per-block widths (FLAP's adaptive structure): the saved format and its loader.

Format: an ordinary ``save_pretrained`` folder whose ``config.json`` keeps the *original*
widths in the stock fields and adds::

    "prunekit_block_widths": [{"heads": 6, "kv_heads": 3, "intermediate": 1203}, ...]

one entry per decoder block (query heads, KV heads, MLP channels kept). Kept query heads are laid
out group after group (``heads / kv_heads`` per KV head), so the stock GQA mapping holds inside
each block. Bias flags (``attention_bias`` / ``mlp_bias``) are stock. The weight shapes in the
safetensors file are the shrunk ones, so a plain ``from_pretrained`` refuses the folder (shape
mismatch) instead of loading garbage; load it with :func:`load_pretrained`, which builds the
stock model, shrinks each block to its listed widths and then loads the weights strictly.

:func:`write_remote_code` (called by ``save_pretrained_atomic``) also copies
``modeling_prunekit.py`` (torch + transformers only, no prunekit) into the folder and adds
``"auto_map": {"AutoModelForCausalLM": "modeling_prunekit.Prunekit<Family>ForCausalLM"}`` to
``config.json``; ``model_type`` and the config class stay stock. Then
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` loads the folder where
prunekit is not installed; without ``trust_remote_code`` transformers falls back to the stock
class and still refuses the shrunk shapes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from ..models.adapters import get_adapter
from . import surgery


def is_per_block(config) -> bool:
    return bool(getattr(config, "prunekit_block_widths", None))


@torch.no_grad()
def shrink_to_widths(model: nn.Module, widths: list[dict[str, int]]) -> None:
    """Shrink a freshly built stock model so block ``i`` has ``widths[i]`` (weights arbitrary)."""
    adapter = get_adapter(model)
    g = adapter.geometry(model.config)
    group = g["heads"] // g["kv_heads"]
    blocks = adapter.blocks(model)
    if len(widths) != len(blocks):
        raise ModelLoadError(f"prunekit_block_widths lists {len(widths)} blocks, the config has {len(blocks)}")
    for block, w in zip(blocks, widths):
        kk, heads = int(w["kv_heads"]), int(w["heads"])
        if (kk, heads) != (g["kv_heads"], g["heads"]):
            qq = heads // kk
            keep_q = torch.cat([torch.arange(qq) + j * group for j in range(kk)])
            surgery.shrink_attention(block, adapter, g["head_dim"], keep_q, torch.arange(kk))
        if int(w["intermediate"]) != g["intermediate"]:
            surgery.shrink_mlp(block, adapter, torch.arange(int(w["intermediate"])))


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder saved with per-block widths (or a plain one) as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(path)
    config = AutoConfig.from_pretrained(p)
    if not is_per_block(config):
        return AutoModelForCausalLM.from_pretrained(p, dtype=dtype or "auto")
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    # the folder's auto_map names modeling_prunekit.py: build the stock class here, never that code
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    shrink_to_widths(model, config.prunekit_block_widths)
    return load_folder_weights(model, p, config, "the per-block widths")


def load_folder_weights(model: nn.Module, folder: Path, config, what: str) -> nn.Module:
    """Load a folder's safetensors into ``model`` (the stock class already reshaped by an
    extension: per-block widths, ARMOR wrappers); a missing or unexpected tensor (other than a
    tied ``lm_head``) is a ModelLoadError naming ``what`` did not match."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"{folder}: weights do not match {what} (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]})")  # fmt: skip
    if tied:
        model.tie_weights()
    return model.eval()


REMOTE_CODE_FILE = "modeling_prunekit.py"


def write_remote_code(config, folder: str | os.PathLike) -> bool:
    """Make a saved per-block folder loadable with ``trust_remote_code=True``.

    Copies ``modeling_prunekit.py`` into ``folder`` and adds the ``auto_map`` entry to its
    ``config.json``. Does nothing (returns False) when ``config`` has uniform widths.
    """
    if not is_per_block(config):
        return False
    from .remote_code.modeling_prunekit import CLASSES

    mt = getattr(config, "model_type", None)
    if mt not in CLASSES:
        raise ModelLoadError(f"no trust_remote_code class for model family {mt!r} (have {sorted(CLASSES)})")
    folder = Path(folder)
    shutil.copyfile(Path(__file__).with_name("remote_code") / REMOTE_CODE_FILE, folder / REMOTE_CODE_FILE)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    auto_map = dict(cfg.get("auto_map") or {})
    auto_map["AutoModelForCausalLM"] = f"{REMOTE_CODE_FILE[:-3]}.{CLASSES[mt]}"
    cfg["auto_map"] = auto_map
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return True


__all__ = ["is_per_block", "load_pretrained", "shrink_to_widths", "write_remote_code"]
