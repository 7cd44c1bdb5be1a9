"""Per-family adapters: where the decoder blocks are and what their parts are called.

An adapter is deliberately small: the engine only needs the list of decoder blocks; structured
pruning additionally needs the attention/MLP projection names and the head geometry, which are
always read from the config (``head_dim`` is never assumed to be hidden/heads when the config
states it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    blocks_path: str  # dotted path from the *ForCausalLM model to the ModuleList of blocks
    attn: str  # attribute of a block holding the attention module
    q: str
    k: str
    v: str
    o: str
    mlp: str  # attribute of a block holding the MLP (or "" if the MLP Linears sit on the block)
    mlp_in: tuple[str, ...]  # Linears reading the block's MLP input (gate, up) / (fc1,)
    mlp_out: str  # Linear writing the MLP output (down_proj / fc2)
    gated: bool  # True for SwiGLU MLPs (gate * up)
    norm_path: str = ""  # final norm (for block-influence style methods)
    # Fused projections. "separate": q, k, v are three Linears. "concat": q == k == v names one
    # Linear whose rows are [q | k | v] (Phi-3 ``qkv_proj``). "interleaved": one Linear whose rows
    # are [q_0 | k_0 | v_0 | q_1 | ...], head after head (GPT-NeoX ``query_key_value``, MHA).
    qkv_layout: str = "separate"
    mlp_in_fused: bool = False  # mlp_in is one Linear with rows [gate | up] (Phi-3 ``gate_up_proj``)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks_path)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks_path}.{i}"

    def attention(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.attn)

    def mlp_module(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.mlp) if self.mlp else block

    def geometry(self, config) -> dict[str, int]:
        """Head geometry from the config: heads, kv heads, head_dim, hidden, intermediate."""
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        hidden = int(config.hidden_size)
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inter = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
        return {
            "heads": heads,
            "kv_heads": kv,
            "head_dim": int(head_dim),
            "hidden": hidden,
            "intermediate": int(inter) if inter else 0,
        }


_LLAMA = dict(
    blocks_path="model.layers", attn="self_attn", q="q_proj", k="k_proj", v="v_proj",
    o="o_proj", mlp="mlp", mlp_in=("gate_proj", "up_proj"), mlp_out="down_proj", gated=True,
    norm_path="model.norm",
)  # fmt: skip

ADAPTERS: dict[str, ModelAdapter] = {
    # Llama family: grouped-query attention, SwiGLU MLP.
    **{t: ModelAdapter(family=t, **_LLAMA) for t in ("llama", "mistral", "qwen2", "qwen3")},
    # Gemma 1/2/3 (text): the same projection names; explicit head_dim, sandwich norms and
    # per-layer-type attention do not change what structured pruning removes.
    **{t: ModelAdapter(family=t, **_LLAMA) for t in ("gemma", "gemma2", "gemma3_text")},
    # OPT: MHA with biases, ReLU MLP whose Linears sit directly on the block.
    "opt": ModelAdapter(
        family="opt", blocks_path="model.decoder.layers", attn="self_attn", q="q_proj",
        k="k_proj", v="v_proj", o="out_proj", mlp="", mlp_in=("fc1",), mlp_out="fc2",
        gated=False, norm_path="model.decoder.final_layer_norm",
    ),  # fmt: skip
    # Phi-3: Llama-like GQA and SwiGLU, with q/k/v fused in qkv_proj and gate/up in gate_up_proj.
    "phi3": ModelAdapter(
        family="phi3", blocks_path="model.layers", attn="self_attn", q="qkv_proj", k="qkv_proj",
        v="qkv_proj", o="o_proj", mlp="mlp", mlp_in=("gate_up_proj",), mlp_out="down_proj",
        gated=True, norm_path="model.norm", qkv_layout="concat", mlp_in_fused=True,
    ),  # fmt: skip
    # GPT-NeoX (Pythia): MHA with q/k/v interleaved per head in query_key_value, GELU MLP with
    # biases, parallel residual (attention and MLP read the same block input).
    "gpt_neox": ModelAdapter(
        family="gpt_neox", blocks_path="gpt_neox.layers", attn="attention", q="query_key_value",
        k="query_key_value", v="query_key_value", o="dense", mlp="mlp", mlp_in=("dense_h_to_4h",),
        mlp_out="dense_4h_to_h", gated=False, norm_path="gpt_neox.final_layer_norm",
        qkv_layout="interleaved",
    ),  # fmt: skip
}


def list_families() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module) -> ModelAdapter:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in ADAPTERS:
        raise ConfigError(
            f"model family {mt!r} has no prunekit adapter yet, so heads/channels cannot be pruned "
            f"(supported: {', '.join(list_families())}); shortgpt removes whole blocks on any "
            "family, or add an adapter in prunekit/models/adapters.py"
        )
    return ADAPTERS[mt]
