"""Per-block widths for stock decoder models (written by prunekit; needs only torch + transformers).

A folder pruned with per-block widths (e.g. FLAP ``structure=adaptive``) keeps the *original*
widths in the stock ``config.json`` fields and lists the kept widths of every decoder block in::

    "prunekit_block_widths": [{"heads": 6, "kv_heads": 3, "intermediate": 1203}, ...]

The classes below build the stock model of the installed ``transformers`` and then shrink each
block's projections to the listed widths, so that ``from_pretrained`` loads the shrunk weights
exactly (its usual strict shape checks still apply). Load with::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

Kept query heads are laid out group after group (``heads // kv_heads`` per KV head), so the stock
grouped-query mapping holds inside each block. Biases follow the stock flags
(``attention_bias`` / ``mlp_bias``): a shrunk Linear has a bias exactly when the stock one had.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    LlamaForCausalLM,
    MistralForCausalLM,
    OPTForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)

# family layout: (blocks path, attention attr, q, k, v, o, mlp attr ("" = on the block), mlp inputs, mlp output)
_LLAMA_LAYOUT = ("model.layers", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "mlp",
                 ("gate_proj", "up_proj"), "down_proj")  # fmt: skip
_OPT_LAYOUT = ("model.decoder.layers", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "",
               ("fc1",), "fc2")  # fmt: skip


def _resized(lin: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    if (lin.in_features, lin.out_features) == (in_features, out_features):
        return lin
    w = lin.weight
    return nn.Linear(in_features, out_features, bias=lin.bias is not None, device=w.device, dtype=w.dtype)


def _geometry(config) -> tuple[int, int, int, int]:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    inter = int(getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None))
    return heads, kv, head_dim, inter


def shrink_to_block_widths(model: nn.Module, config, layout: tuple) -> None:
    """Replace each block's projections by Linears of the widths in ``config.prunekit_block_widths``."""
    widths = getattr(config, "prunekit_block_widths", None)
    if not widths:
        return
    blocks_path, attn_name, q, k, v, o, mlp_name, mlp_in, mlp_out = layout
    blocks = model.get_submodule(blocks_path)
    if len(widths) != len(blocks):
        raise ValueError(f"prunekit_block_widths lists {len(widths)} blocks, the model has {len(blocks)}")
    heads0, kv0, head_dim, inter0 = _geometry(config)
    for i, (block, w) in enumerate(zip(blocks, widths)):
        heads, kv, inter = int(w["heads"]), int(w["kv_heads"]), int(w["intermediate"])
        if not (0 < kv <= kv0 and 0 < heads <= heads0 and heads % kv == 0 and 0 < inter <= inter0):
            raise ValueError(f"block {i}: invalid prunekit_block_widths entry {w}")
        attn = block.get_submodule(attn_name)
        if (heads, kv) != (heads0, kv0):
            for name, out_width in ((q, heads), (k, kv), (v, kv)):
                lin = attn.get_submodule(name)
                setattr(attn, name, _resized(lin, lin.in_features, out_width * head_dim))
            lin = attn.get_submodule(o)
            setattr(attn, o, _resized(lin, heads * head_dim, lin.out_features))
            # attributes stock attention implementations read (set only where they exist)
            for name, val in (("num_heads", heads), ("num_attention_heads", heads),
                              ("num_key_value_heads", kv), ("num_key_value_groups", heads // kv)):  # fmt: skip
                if hasattr(attn, name):
                    setattr(attn, name, val)
        if inter != inter0:
            mlp = block.get_submodule(mlp_name) if mlp_name else block
            for name in mlp_in:
                lin = mlp.get_submodule(name)
                setattr(mlp, name, _resized(lin, lin.in_features, inter))
            lin = mlp.get_submodule(mlp_out)
            setattr(mlp, mlp_out, _resized(lin, inter, lin.out_features))
            if mlp_name and hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = inter


class PrunekitLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        shrink_to_block_widths(self, config, _LLAMA_LAYOUT)


class PrunekitMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        shrink_to_block_widths(self, config, _LLAMA_LAYOUT)


class PrunekitQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        shrink_to_block_widths(self, config, _LLAMA_LAYOUT)


class PrunekitQwen3ForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        shrink_to_block_widths(self, config, _LLAMA_LAYOUT)


class PrunekitOPTForCausalLM(OPTForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        shrink_to_block_widths(self, config, _OPT_LAYOUT)


# model_type -> class name (prunekit writes the matching ``auto_map`` entry into config.json)
CLASSES = {
    "llama": "PrunekitLlamaForCausalLM",
    "mistral": "PrunekitMistralForCausalLM",
    "qwen2": "PrunekitQwen2ForCausalLM",
    "qwen3": "PrunekitQwen3ForCausalLM",
    "opt": "PrunekitOPTForCausalLM",
}
