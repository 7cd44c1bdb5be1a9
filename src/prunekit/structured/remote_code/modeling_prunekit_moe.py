"""Mixture-of-experts folders written by prunekit (needs only torch + transformers).

Two ``config.json`` fields, each optional:

``"prunekit_experts": [6, 8, null, ...]``
    routed experts kept in each decoder block (``null``: a dense block). The stock count field
    (``num_local_experts`` / ``num_experts``) keeps the *original* count, which the stock classes
    build; each MoE block is then shrunk to its listed count, so ``from_pretrained`` loads the
    shrunk weights with its usual strict shape checks. Uniform counts need no such field: they
    are saved as a stock config with the count reduced.

``"prunekit_dynamic_experts": 0.3``
    MC-MoE dynamic expert skipping with threshold β: a token skips every routed expert ranked
    below the first whose routing weight is < β x the first one's (with top-2 routing: the second
    expert when w2 < β w1). A skipped expert is routed to the "no expert" slot (index
    ``num_experts``) that the stock fused-experts kernels skip; its weight is set to 0 and the
    kept weights are not renormalised (the skipped term is dropped from the weighted sum).

Load with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MixtralForCausalLM, OlmoeForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM

COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")


def moe_blocks(model: nn.Module, layers=None) -> list[tuple[int, nn.Module, nn.Module, nn.Module]]:
    """``(block index, moe module, experts, router)`` for every block with fused routed experts
    (``layers``: the decoder blocks, default ``model.model.layers``)."""
    out = []
    for i, block in enumerate(model.model.layers if layers is None else layers):
        for _, m in block.named_modules():
            experts = getattr(m, "experts", None)
            router = getattr(m, "gate", None) or getattr(m, "router", None)
            if isinstance(getattr(experts, "gate_up_proj", None), nn.Parameter) and isinstance(router, nn.Module):
                out.append((i, m, experts, router))
                break
    return out


def _experts_dim_tensors(mod: nn.Module, num: int) -> list[tuple[str, torch.Tensor, bool]]:
    """Parameters and buffers of ``mod`` (not recursive) whose first dimension indexes experts."""
    items = [(n, p, True) for n, p in mod.named_parameters(recurse=False)]
    items += [(n, b, False) for n, b in mod.named_buffers(recurse=False)]
    return [(n, t, is_p) for n, t, is_p in items if t is not None and t.dim() >= 1 and t.shape[0] == num]


@torch.no_grad()
def keep_experts(moe: nn.Module, experts: nn.Module, router: nn.Module, keep: torch.Tensor,
                 router_rows: torch.Tensor | None = None) -> None:  # fmt: skip
    """Keep experts ``keep`` (in that order) of one MoE block: every expert-indexed parameter of
    the experts module and of the router is sliced; ``router_rows`` replaces the router's rows."""
    num = int(experts.gate_up_proj.shape[0])
    keep = torch.as_tensor(keep, dtype=torch.long)
    for mod in (experts, router):
        for name, t, is_param in _experts_dim_tensors(mod, num):
            new = t.data[keep.to(t.device)].clone() if t.device.type != "meta" else torch.empty(
                (len(keep), *t.shape[1:]), dtype=t.dtype, device=t.device)  # fmt: skip
            if mod is router and name == "weight" and router_rows is not None:
                new = router_rows.to(dtype=t.dtype, device=t.device).clone()
            if is_param:
                setattr(mod, name, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                mod._buffers[name] = new
    for mod in (moe, experts, router):
        for attr in ("num_experts", "num_local_experts"):
            if isinstance(getattr(mod, attr, None), int):
                setattr(mod, attr, len(keep))


def shrink_to_expert_counts(model: nn.Module, counts: list[int | None]) -> None:
    """Shrink each MoE block of a freshly built model to ``counts[i]`` experts (weights arbitrary)."""
    blocks = {i: (moe, ex, r) for i, moe, ex, r in moe_blocks(model)}
    if len(counts) != len(model.model.layers):
        raise ValueError(f"prunekit_experts lists {len(counts)} blocks, the model has {len(model.model.layers)}")
    for i, n in enumerate(counts):
        if n is None:
            continue
        if i not in blocks:
            raise ValueError(f"prunekit_experts gives block {i} {n} experts, but it has no routed experts")
        moe, ex, r = blocks[i]
        if not 0 < int(n) <= ex.gate_up_proj.shape[0]:
            raise ValueError(f"block {i}: invalid expert count {n}")
        if int(n) != ex.gate_up_proj.shape[0]:
            keep_experts(moe, ex, r, torch.arange(int(n)))


# --- MC-MoE dynamic skipping -------------------------------------------------------------------
def _skip_hook(router: nn.Module, args, output):
    logits, weights, index = output
    beta = float(getattr(router, "prunekit_beta", 0.0))
    k = index.shape[-1]
    if beta <= 0.0 or k < 2:
        return output
    w1, first = weights.max(dim=-1, keepdim=True)
    ranks = torch.arange(k, device=index.device).expand_as(index)
    skip = (weights < beta * w1) & (ranks != first)
    counter = router.prunekit_skipped
    counter[0] += int(skip.sum())
    counter[1] += int(skip.numel())
    if getattr(router, "prunekit_skip_to_none", False):  # eager experts: the out-of-range slot is not run
        slot = torch.full_like(index, int(getattr(router, "num_experts", 0) or router.weight.shape[0]))
    else:  # fused kernels may leave that slot's rows uninitialised (NaN * 0): send it to the first expert, weight 0
        slot = index.gather(-1, first).expand_as(index)
    return logits, weights.masked_fill(skip, 0.0), torch.where(skip, slot, index)


def _eager_experts(model: nn.Module, on: bool) -> bool:
    """Switch ``model`` to the eager experts loop (remembering the implementation before), or back
    to that one; returns whether the eager loop is now on."""
    if not hasattr(model, "set_experts_implementation"):
        return False
    if not on:
        before = model.__dict__.pop("_prunekit_experts_before", None)
        if before is not None:
            model.set_experts_implementation(before)
        return False
    model.__dict__.setdefault("_prunekit_experts_before", getattr(model.config, "_experts_implementation", None))
    try:
        model.set_experts_implementation("eager")
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return True


def set_dynamic_skipping(model: nn.Module, beta: float | None) -> int:
    """Install (``beta > 0``) or remove (``None``/0) dynamic skipping on every router; returns the
    number of routers. Counters restart at zero.

    Skipping needs the eager experts loop (``set_experts_implementation("eager")``): it runs only
    the experts a token is routed to, so a skipped slot costs nothing, while the fused kernels of
    transformers 5 may leave an unused slot's rows uninitialised. The previous implementation is
    restored when skipping is removed."""
    eager = _eager_experts(model, bool(beta))
    routers = 0
    for _, _, _, router in moe_blocks(model):
        for h in getattr(router, "_prunekit_skip_handles", ()):
            h.remove()
        router._prunekit_skip_handles = []
        router.prunekit_beta = float(beta or 0.0)
        router.prunekit_skipped = [0, 0]
        router.prunekit_skip_to_none = eager
        if beta:
            router._prunekit_skip_handles.append(router.register_forward_hook(_skip_hook))
        routers += 1
    return routers


def skipping_counts(model: nn.Module) -> tuple[int, int]:
    """``(expert evaluations skipped, expert evaluations routed)`` since skipping was installed."""
    skipped = routed = 0
    for _, _, _, router in moe_blocks(model):
        s, r = getattr(router, "prunekit_skipped", (0, 0))
        skipped, routed = skipped + s, routed + r
    return skipped, routed


def apply_prunekit_moe(model: nn.Module, config) -> None:
    counts = getattr(config, "prunekit_experts", None)
    if counts:
        shrink_to_expert_counts(model, list(counts))
    beta = getattr(config, "prunekit_dynamic_experts", None)
    if beta:
        set_dynamic_skipping(model, float(beta))


class PrunekitMixtralForCausalLM(MixtralForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        apply_prunekit_moe(self, config)


class PrunekitQwen2MoeForCausalLM(Qwen2MoeForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        apply_prunekit_moe(self, config)


class PrunekitQwen3MoeForCausalLM(Qwen3MoeForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        apply_prunekit_moe(self, config)


class PrunekitOlmoeForCausalLM(OlmoeForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        apply_prunekit_moe(self, config)


# model_type -> class name (prunekit writes the matching ``auto_map`` entry into config.json)
CLASSES = {
    "mixtral": "PrunekitMixtralForCausalLM",
    "qwen2_moe": "PrunekitQwen2MoeForCausalLM",
    "qwen3_moe": "PrunekitQwen3MoeForCausalLM",
    "olmoe": "PrunekitOlmoeForCausalLM",
}
