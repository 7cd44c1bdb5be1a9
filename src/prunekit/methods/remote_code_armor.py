"""ARMOR-wrapped Linears for stock decoder models (written by prunekit; needs only torch + transformers).

A folder pruned with ARMOR (Liu et al., arXiv:2510.05528) stores, for every wrapped Linear, the
N:M sparse core as the stock ``weight`` and two block-diagonal wrappers beside it::

    <module>.weight   [out, in]      the sparse core W' ⊙ M (valid N:M)
    <module>.armor_A  [out/b, b, b]  diagonal blocks of A (output side)
    <module>.armor_B  [in/b, b, b]   diagonal blocks of B (input side)

so that the layer computes ``y = A (W' ⊙ M) B x + bias``. ``config.json`` lists them::

    "prunekit_armor": {"block_size": 32, "modules": ["model.layers.0.self_attn.q_proj", ...]}

The classes below build the stock model of the installed ``transformers`` and then turn the
listed Linears into :class:`ArmorLinear` (identity wrappers until the weights are loaded), so
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` loads the folder exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)


class ArmorLinear(nn.Linear):
    """``y = A · W · B · x + bias`` with block-diagonal ``A`` (``armor_A``) and ``B`` (``armor_B``)."""

    armor_A: nn.Parameter  # [out // b, b, b]
    armor_B: nn.Parameter  # [in // b, b, b]

    def forward(self, x: Tensor) -> Tensor:
        A, B = self.armor_A, self.armor_B
        lead = x.shape[:-1]
        xb = x.reshape(-1, B.shape[0], B.shape[1])  # [tokens, in/b, b]
        xb = torch.einsum("tqj,qkj->tqk", xb, B.to(x.dtype)).reshape(*lead, self.in_features)
        y = nn.functional.linear(xb, self.weight)
        yb = y.reshape(-1, A.shape[0], A.shape[1])
        y = torch.einsum("tpj,pkj->tpk", yb, A.to(y.dtype)).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


def make_armor(lin: nn.Linear, block_size: int, A: Tensor | None = None, B: Tensor | None = None) -> ArmorLinear:
    """Turn ``lin`` into an :class:`ArmorLinear` in place (same object; weight and bias kept).

    ``A``/``B`` default to identity blocks."""
    b = int(block_size)
    out_f, in_f = lin.out_features, lin.in_features
    if out_f % b or in_f % b:
        raise ValueError(f"ARMOR block size {b} does not divide the Linear's shape [{out_f}, {in_f}]")
    w = lin.weight
    eye = torch.eye(b, device=w.device, dtype=w.dtype) if w.device.type != "meta" else None

    def param(given: Tensor | None, n: int) -> nn.Parameter:
        if given is not None:
            t = given.detach().to(device=w.device, dtype=w.dtype)
        elif eye is not None:
            t = eye.expand(n, b, b).clone()
        else:
            t = torch.empty(n, b, b, device=w.device, dtype=w.dtype)
        return nn.Parameter(t.contiguous(), requires_grad=w.requires_grad)

    lin.__class__ = ArmorLinear
    lin.register_parameter("armor_A", param(A, out_f // b))
    lin.register_parameter("armor_B", param(B, in_f // b))
    return lin  # type: ignore[return-value]


def wrap_from_config(model: nn.Module, config) -> None:
    """Wrap every Linear listed in ``config.prunekit_armor`` (identity wrappers until loaded)."""
    spec = getattr(config, "prunekit_armor", None)
    if not spec:
        return
    b = int(spec["block_size"])
    for name in spec["modules"]:
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"prunekit_armor lists {name}, which is not a Linear")
        if not isinstance(lin, ArmorLinear):
            make_armor(lin, b)


class PrunekitArmorLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        wrap_from_config(self, config)


class PrunekitArmorMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        wrap_from_config(self, config)


class PrunekitArmorQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        wrap_from_config(self, config)


class PrunekitArmorQwen3ForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        wrap_from_config(self, config)


# model_type -> class name (prunekit writes the matching ``auto_map`` entry into config.json)
CLASSES = {
    "llama": "PrunekitArmorLlamaForCausalLM",
    "mistral": "PrunekitArmorMistralForCausalLM",
    "qwen2": "PrunekitArmorQwen2ForCausalLM",
    "qwen3": "PrunekitArmorQwen3ForCausalLM",
}
