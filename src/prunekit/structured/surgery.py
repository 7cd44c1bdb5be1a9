"""Surgery: physically remove output rows, input columns, attention heads, MLP channels, blocks.

Every function edits modules in place and keeps dtype and device. Head geometry (``head_dim``,
query heads per KV head) comes from the model config through the adapter, never from literals.

Grouped-query attention: query head ``h`` reads KV head ``h // G`` (``G`` = query heads per KV
head; ``repeat_kv`` expands KV heads with ``repeat_interleave`` semantics). A shrunk attention
keeps ``kk`` KV heads and exactly ``qq`` query heads from each kept KV group, laid out group after
group, so the stock ``h // qq`` mapping stays valid.

Fused projections are split, shrunk and re-fused in place: Phi-3's ``qkv_proj`` rows are
``[q | k | v]`` and ``gate_up_proj`` rows ``[gate | up]``; GPT-NeoX's ``query_key_value`` rows
are ``[q_h | k_h | v_h]`` head after head (``ModelAdapter.qkv_layout`` / ``mlp_in_fused``).

Bias compensation (FLAP): removing input columns ``R`` of ``y = W x + b`` and replacing the
removed inputs by their calibration mean ``m`` gives ``y ≈ W[:, K] x_K + (b + W[:, R] m_R)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.adapters import ModelAdapter


class BlockLocator(Protocol):
    """What block removal needs: an adapter or ``discovery.DiscoveredBlocks``."""

    blocks_path: str

    def blocks(self, model: nn.Module) -> nn.ModuleList: ...


# Families whose stock config can carry biases on the attention output / MLP output Linears.
# llama: ``attention_bias`` (q, k, v and o together) and ``mlp_bias`` (gate, up and down);
# qwen3: ``attention_bias`` only; opt: ``enable_bias`` (every Linear, on by default);
# mistral and qwen2 hard-code bias=False on o_proj / down_proj.
ALWAYS = "<always>"  # the Linear always has a bias (no config flag)
_BIAS_FLAGS: dict[str, tuple[str | None, str | None]] = {
    "llama": ("attention_bias", "mlp_bias"),
    "qwen3": ("attention_bias", None),
    "mistral": (None, None),
    "qwen2": (None, None),
    "gemma": ("attention_bias", None),
    "gemma2": ("attention_bias", None),
    "gemma3_text": ("attention_bias", None),
    "opt": ("enable_bias", "enable_bias"),
    "phi3": (None, None),  # qkv_proj, o_proj, gate_up_proj, down_proj: bias=False hard-coded
    "gpt_neox": ("attention_bias", ALWAYS),  # dense_h_to_4h / dense_4h_to_h always have biases
}

# Families whose stock attention derives head_dim from hidden_size / num_heads: heads cannot be
# removed there without custom modeling code.
HEAD_DIM_FROM_HIDDEN = {"opt", "gpt_neox"}


def heads_fixed(model: nn.Module, adapter: ModelAdapter) -> str | None:
    """Why a stock config of this model cannot express fewer attention heads (None: it can)."""
    if adapter.family in HEAD_DIM_FROM_HIDDEN:
        return "stock config derives head_dim"
    rope = getattr(model.config, "rope_parameters", None) or {}
    if adapter.family == "phi3" and (rope.get("short_factor") or rope.get("long_factor")):
        return "its LongRoPE factors are sized by hidden_size / heads"
    return None


def _as_index(keep: Tensor | Sequence[int], size: int) -> Tensor:
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.numel() != size:
            raise ValueError(f"keep mask has {keep.numel()} entries, expected {size}")
        keep = keep.nonzero().flatten()
    keep = keep.long().flatten()
    if keep.numel() and (keep.min() < 0 or keep.max() >= size):
        raise ValueError(f"keep index out of range for size {size}")
    if keep.unique().numel() != keep.numel():
        raise ValueError("keep index has duplicates")
    return keep


def _removed(keep: Tensor, size: int) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[keep.cpu()] = False
    return mask.nonzero().flatten()


@torch.no_grad()
def prune_linear_out(linear: nn.Linear, keep: Tensor | Sequence[int]) -> None:
    """Keep only the output rows ``keep`` (index or bool mask) of ``linear``."""
    idx = _as_index(keep, linear.out_features).to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, idx).clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, idx).clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = int(idx.numel())


@torch.no_grad()
def prune_linear_in(
    linear: nn.Linear, keep: Tensor | Sequence[int], *, input_mean: Tensor | None = None
) -> None:
    """Keep only the input columns ``keep`` of ``linear``.

    If ``input_mean`` ([in_features], the calibration mean of the input) is given, the removed
    columns' mean contribution ``W[:, removed] @ mean[removed]`` is folded into the bias (a bias
    is created if the Linear has none).
    """
    n_in = linear.in_features
    idx = _as_index(keep, n_in).to(linear.weight.device)
    W = linear.weight.data  # [out, in]
    if input_mean is not None:
        rem = _removed(idx, n_in).to(W.device)
        comp = W.index_select(1, rem).float() @ input_mean.to(W.device).float().index_select(0, rem)  # [out]
        old = linear.bias.data.float() if linear.bias is not None else torch.zeros_like(comp)
        linear.bias = nn.Parameter((old + comp).to(W.dtype))
    linear.weight = nn.Parameter(W.index_select(1, idx).clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = int(idx.numel())


@torch.no_grad()
def ensure_bias(linear: nn.Linear) -> None:
    """Give ``linear`` a zero bias if it has none (the stock config's bias flag covers it)."""
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device))


def head_channels(heads: Tensor, head_dim: int) -> Tensor:
    """Channel indices ``[len(heads) * head_dim]`` of the given heads."""
    heads = torch.as_tensor(heads).long()
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def check_gqa_keep(keep_q: Tensor, keep_kv: Tensor, heads: int, kv_heads: int) -> int:
    """Validate a (query heads, KV heads) selection; returns query heads kept per KV head."""
    keep_q = torch.as_tensor(keep_q).long()
    keep_kv = torch.as_tensor(keep_kv).long()
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} KV groups")
    group = heads // kv_heads
    kk = keep_kv.numel()
    if kk == 0 or keep_q.numel() == 0:
        raise ConfigError("cannot remove every attention head of a block")
    if keep_q.numel() % kk:
        raise ValueError(f"{keep_q.numel()} query heads cannot be split evenly over {kk} KV heads")
    qq = keep_q.numel() // kk
    owner = (keep_q // group).reshape(kk, qq)
    if not torch.equal(owner, keep_kv[:, None].expand(kk, qq)):
        raise ValueError("each kept query head must sit in the slot of its own KV head (GQA mapping)")
    if keep_kv.unique().numel() != kk or keep_q.unique().numel() != keep_q.numel():
        raise ValueError("duplicate heads in keep")
    return qq


# Rows of a Linear that belong to one projection: all of them (a separate Linear), a range
# (Phi-3's [q | k | v] and [gate | up]) or an index (GPT-NeoX's per-head interleaving).
Rows = slice | Tensor


def row_index(lin: nn.Linear, rows: Rows) -> Tensor:
    """``rows`` of ``lin`` as an index tensor."""
    if isinstance(rows, slice):
        return torch.arange(lin.out_features)[rows]
    return rows


def _count(lin: nn.Linear, rows: Rows) -> int:
    return len(range(lin.out_features)[rows]) if isinstance(rows, slice) else int(rows.numel())


def qkv_parts(attn: nn.Module, adapter: ModelAdapter, head_dim: int) -> dict[str, tuple[nn.Linear, Rows]]:
    """Where the q, k and v projections of an attention module are: ``{part: (Linear, rows)}``.

    Fused layouts are read from the current shapes: Phi-3's ``qkv_proj`` holds as many query
    rows as ``o_proj`` has input columns, then k and v in equal halves of the rest; GPT-NeoX's
    ``query_key_value`` holds ``3 * head_dim`` rows per head (q, k, v of head 0, then head 1...).
    """
    layout = adapter.qkv_layout
    if layout == "separate":
        return {p: (attn.get_submodule(getattr(adapter, p)), slice(None)) for p in ("q", "k", "v")}
    lin = attn.get_submodule(adapter.q)
    if layout == "concat":
        nq = attn.get_submodule(adapter.o).in_features
        nkv = (lin.out_features - nq) // 2
        return {"q": (lin, slice(0, nq)), "k": (lin, slice(nq, nq + nkv)), "v": (lin, slice(nq + nkv, nq + 2 * nkv))}
    if layout == "interleaved":
        heads = lin.out_features // (3 * head_dim)
        base = (torch.arange(heads)[:, None] * 3 * head_dim + torch.arange(head_dim)[None, :]).flatten()
        return {"q": (lin, base), "k": (lin, base + head_dim), "v": (lin, base + 2 * head_dim)}
    raise ValueError(f"unknown qkv_layout {layout!r}")


def mlp_in_parts(mlp: nn.Module, adapter: ModelAdapter) -> list[tuple[nn.Linear, Rows]]:
    """The MLP input projections as ``(Linear, rows)``: gate then up (or fc1 alone)."""
    if not adapter.mlp_in_fused:
        return [(mlp.get_submodule(n), slice(None)) for n in adapter.mlp_in]
    lin = mlp.get_submodule(adapter.mlp_in[0])
    half = lin.out_features // 2
    return [(lin, slice(0, half)), (lin, slice(half, 2 * half))]


def attention_widths(block: nn.Module, adapter: ModelAdapter, head_dim: int) -> tuple[int, int]:
    """(query heads, KV heads) currently held by a block's attention."""
    parts = qkv_parts(adapter.attention(block), adapter, head_dim)
    q = _count(*parts["q"]) // head_dim
    kv = _count(*parts["k"]) // head_dim
    return q, kv


def mlp_width(block: nn.Module, adapter: ModelAdapter) -> int:
    return _count(*mlp_in_parts(adapter.mlp_module(block), adapter)[0])


def _prune_parts_out(parts: list[tuple[nn.Linear, Rows, Tensor]], interleave: int = 0) -> None:
    """Keep, in each Linear, the rows ``rows[keep]`` of each of its parts, part after part
    (re-fusing [q | k | v] / [gate | up]); ``interleave=d`` lays the parts out in chunks of
    ``d`` rows instead (GPT-NeoX: q, k, v of one head, then the next head)."""
    by_lin: dict[int, tuple[nn.Linear, list[Tensor]]] = {}
    for lin, rows, keep in parts:
        if isinstance(rows, slice) and rows == slice(None):
            idx = keep
        else:
            idx = row_index(lin, rows)[keep]
        by_lin.setdefault(id(lin), (lin, []))[1].append(idx)
    for lin, idxs in by_lin.values():
        if len(idxs) == 1:
            prune_linear_out(lin, idxs[0])
        elif interleave:
            prune_linear_out(lin, torch.stack([i.reshape(-1, interleave) for i in idxs], 1).flatten())
        else:
            prune_linear_out(lin, torch.cat(idxs))


@torch.no_grad()
def shrink_attention(
    block: nn.Module,
    adapter: ModelAdapter,
    head_dim: int,
    keep_q: Tensor | Sequence[int],
    keep_kv: Tensor | Sequence[int],
    *,
    input_mean: Tensor | None = None,
) -> None:
    """Keep query heads ``keep_q`` and KV heads ``keep_kv`` of a block's attention.

    ``keep_q`` lists the kept query heads (original indices) group by group in the order of
    ``keep_kv``: with ``qq`` heads per kept KV head, ``keep_q[j*qq:(j+1)*qq]`` must all belong to
    KV head ``keep_kv[j]``. ``input_mean`` ([heads * head_dim], mean of the o_proj input) turns
    on bias compensation in the output projection.
    """
    attn = adapter.attention(block)
    heads, kv_heads = attention_widths(block, adapter, head_dim)
    keep_q = torch.as_tensor(keep_q).long()
    keep_kv = torch.as_tensor(keep_kv).long()
    qq = check_gqa_keep(keep_q, keep_kv, heads, kv_heads)
    q_ch = head_channels(keep_q, head_dim)
    kv_ch = head_channels(keep_kv, head_dim)
    if adapter.qkv_layout == "separate":
        prune_linear_out(attn.get_submodule(adapter.q), q_ch)
        prune_linear_out(attn.get_submodule(adapter.k), kv_ch)
        prune_linear_out(attn.get_submodule(adapter.v), kv_ch)
    else:
        if adapter.qkv_layout == "interleaved" and not torch.equal(keep_q, keep_kv):
            raise ValueError("an interleaved q/k/v projection (MHA) keeps the same query and KV heads")
        parts = qkv_parts(attn, adapter, head_dim)
        _prune_parts_out([(*parts["q"], q_ch), (*parts["k"], kv_ch), (*parts["v"], kv_ch)],
                         interleave=head_dim if adapter.qkv_layout == "interleaved" else 0)  # fmt: skip
    prune_linear_in(attn.get_submodule(adapter.o), q_ch, input_mean=input_mean)
    kk = int(keep_kv.numel())
    _private_head_config(attn, adapter, kk * qq, kk)
    # attributes some attention implementations read (set only when present)
    for name, val in (("num_heads", kk * qq), ("num_attention_heads", kk * qq),
                      ("num_key_value_heads", kk), ("num_key_value_groups", qq)):  # fmt: skip
        if hasattr(attn, name):
            setattr(attn, name, val)


def _private_head_config(attn: nn.Module, adapter: ModelAdapter, heads: int, kv_heads: int) -> None:
    """Phi-3's attention splits ``qkv_proj`` at ``config.num_attention_heads * head_dim`` in its
    forward: give a shrunk attention its own config copy with its head counts (the model config
    still describes the blocks not yet pruned); ``sync_config`` points it back at the model
    config once that describes every block."""
    cfg = getattr(attn, "config", None)
    if adapter.qkv_layout != "concat" or cfg is None or not hasattr(cfg, "num_attention_heads"):
        return
    attn.config = copy.copy(cfg)
    attn.config.num_attention_heads = heads
    attn.config.num_key_value_heads = kv_heads


@torch.no_grad()
def shrink_mlp(
    block: nn.Module,
    adapter: ModelAdapter,
    keep: Tensor | Sequence[int],
    *,
    input_mean: Tensor | None = None,
) -> None:
    """Keep the MLP intermediate channels ``keep`` (across gate/up and down, or fc1 and fc2)."""
    mlp = adapter.mlp_module(block)
    width = mlp_width(block, adapter)
    idx = _as_index(keep, width)
    if idx.numel() == 0:
        raise ConfigError("cannot remove every MLP channel of a block")
    if adapter.mlp_in_fused:
        _prune_parts_out([(lin, rows, idx) for lin, rows in mlp_in_parts(mlp, adapter)])
    else:
        for name in adapter.mlp_in:
            prune_linear_out(mlp.get_submodule(name), idx)
    prune_linear_in(mlp.get_submodule(adapter.mlp_out), idx, input_mean=input_mean)
    if adapter.mlp and hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(idx.numel())


def bias_flags(adapter: ModelAdapter) -> tuple[str | None, str | None]:
    """Config flags that switch on attention / MLP biases for this family (None: impossible)."""
    return _BIAS_FLAGS.get(adapter.family, (None, None))


def _flag_on(cfg, flag: str | None) -> bool:
    return flag == ALWAYS or bool(flag and getattr(cfg, flag, False))


def can_compensate(model: nn.Module, adapter: ModelAdapter) -> tuple[bool, bool]:
    """Whether a stock config of this family can carry o_proj / down_proj compensation biases."""
    a, m = bias_flags(adapter)
    cfg = model.config
    if adapter.family == "opt":  # biases exist only when enable_bias is on
        ok = bool(getattr(cfg, "enable_bias", True))
        return ok, ok
    return a is not None, m is not None


# Config lists with one entry per decoder block (reordered with the kept blocks) and lists of
# block indices (renumbered): Gemma2/3, GPT-OSS, Qwen2 ``layer_types``; SmolLM3 ``no_rope_layers``;
# Qwen-MoE ``mlp_only_layers`` (dense blocks among MoE ones).
PER_LAYER_LISTS = ("layer_types", "no_rope_layers")
LAYER_INDEX_LISTS = ("mlp_only_layers",)


def _renumber_config(cfg, kept: list[int], n: int) -> None:
    """Rewrite ``cfg`` (the text config) so a model built from it has the kept blocks, in order."""
    for name in PER_LAYER_LISTS:
        val = getattr(cfg, name, None)
        if isinstance(val, (list, tuple)) and len(val) == n:
            setattr(cfg, name, [val[i] for i in kept])
    step = getattr(cfg, "decoder_sparse_step", None)
    if isinstance(step, int) and step > 1 and isinstance(getattr(cfg, "mlp_only_layers", None), list):
        # Qwen-MoE: block i is sparse iff i not in mlp_only_layers and (i + 1) % step == 0; with
        # step 1 the dense blocks are exactly mlp_only_layers, which expresses any kept subset
        dense = set(cfg.mlp_only_layers) | {i for i in range(n) if (i + 1) % step}
        cfg.mlp_only_layers = sorted(dense)
        cfg.decoder_sparse_step = 1
    for name in LAYER_INDEX_LISTS:
        val = getattr(cfg, name, None)
        if isinstance(val, (list, tuple)):
            listed = set(val)
            setattr(cfg, name, [j for j, i in enumerate(kept) if i in listed])
    k = getattr(cfg, "first_k_dense_replace", None)  # DeepSeek: blocks < k have a dense MLP
    if isinstance(k, int):
        cfg.first_k_dense_replace = sum(1 for i in kept if i < k)
    cfg.num_hidden_layers = len(kept)  # GPT-2's n_layer through its attribute_map


def _check_index_free(cfg, kept: list[int]) -> None:
    """Refuse a removal whose result a config cannot describe: GPT-2's attention scaled by
    ``1 / (layer_idx + 1)`` is fixed at build time from the block's position."""
    moved = any(j != i for j, i in enumerate(kept))
    if moved and getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(
            "this config has scale_attn_by_inverse_layer_idx=True: blocks after a removed one would "
            "change their attention scale on reload; remove only trailing blocks (--set blocks=N "
            "picks by influence) or use a width method"
        )


@torch.no_grad()
def remove_blocks(model: nn.Module, adapter: BlockLocator, drop: Sequence[int]) -> list[int]:
    """Delete decoder blocks ``drop``; renumber ``layer_idx`` and update the config.

    Works on any model whose blocks an adapter or discovery finds. Per-layer config lists
    (``layer_types``: sliding/full attention), dense-vs-MoE block patterns
    (``mlp_only_layers``, ``decoder_sparse_step``, ``first_k_dense_replace``) and
    ``num_hidden_layers`` are rewritten so a plain ``from_pretrained`` rebuilds the same blocks.
    Returns the original indices of the kept blocks.
    """
    blocks = adapter.blocks(model)
    n = len(blocks)
    drop_set = {int(i) for i in drop}
    if any(i < 0 or i >= n for i in drop_set):
        raise ConfigError(f"block index out of range 0..{n - 1}")
    if len(drop_set) >= n:
        raise ConfigError(f"cannot remove all {n} blocks")
    kept = [i for i in range(n) if i not in drop_set]
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    _check_index_free(text, kept)
    new = nn.ModuleList([blocks[i] for i in kept])
    parent_path, _, attr = adapter.blocks_path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
    for j, block in enumerate(new):
        for mod in block.modules():
            if hasattr(mod, "layer_idx") and isinstance(mod.layer_idx, int):
                mod.layer_idx = j
    _renumber_config(text, kept, n)
    return kept


def block_widths(model: nn.Module, adapter: ModelAdapter, head_dim: int) -> list[dict[str, int]]:
    out = []
    for i, block in enumerate(adapter.blocks(model)):
        q, kv = attention_widths(block, adapter, head_dim)
        out.append({"index": i, "heads": q, "kv_heads": kv, "intermediate": mlp_width(block, adapter)})
    return out


@torch.no_grad()
def sync_config(
    model: nn.Module, adapter: ModelAdapter, head_dim: int, *, allow_per_block: bool = False
) -> dict[str, int]:
    """Write the shrunk widths and bias flags into ``model.config``.

    Uniform widths become the stock fields (``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``, ``intermediate_size``). Per-block widths (only with ``allow_per_block``) leave
    those fields at the original widths and are listed in ``config.prunekit_block_widths``
    (see :mod:`prunekit.structured.per_block`). Raises ConfigError when blocks differ and that
    is not allowed, or when a bias was added that the family's stock config cannot carry.
    """
    cfg = model.config
    widths = block_widths(model, adapter, head_dim)
    shapes = {(w["heads"], w["kv_heads"], w["intermediate"]) for w in widths}
    if len(shapes) != 1 and not allow_per_block:
        raise ConfigError("blocks have different widths: a stock config cannot describe them")
    heads, kv, inter = max(shapes)
    blocks = adapter.blocks(model)
    attn_flag, mlp_flag = bias_flags(adapter)
    attn_names = dict.fromkeys((adapter.q, adapter.k, adapter.v, adapter.o))  # fused: one Linear
    attn_lins = [adapter.attention(b).get_submodule(n) for b in blocks for n in attn_names]
    mlp_names = (*adapter.mlp_in, adapter.mlp_out)
    mlp_lins = [adapter.mlp_module(b).get_submodule(n) for b in blocks for n in mlp_names]
    if adapter.family == "opt":
        if not getattr(cfg, "enable_bias", True) and any(l.bias is not None for l in attn_lins + mlp_lins):
            raise ConfigError("this OPT config has enable_bias=False: compensation biases cannot be saved")
    else:
        o_lins = [adapter.attention(b).get_submodule(adapter.o) for b in blocks]
        d_lins = [adapter.mlp_module(b).get_submodule(adapter.mlp_out) for b in blocks]
        if any(l.bias is not None for l in o_lins) and not _flag_on(cfg, attn_flag):
            if attn_flag is None:
                raise ConfigError(f"{adapter.family}: the stock config cannot hold an o_proj bias (use compensate=false)")
            setattr(cfg, attn_flag, True)
        if any(l.bias is not None for l in d_lins) and not _flag_on(cfg, mlp_flag):
            if mlp_flag is None:
                raise ConfigError(f"{adapter.family}: the stock config cannot hold a down_proj bias (use compensate=false)")
            setattr(cfg, mlp_flag, True)
        if _flag_on(cfg, attn_flag):
            for l in attn_lins:
                ensure_bias(l)
        if _flag_on(cfg, mlp_flag):
            for l in mlp_lins:
                ensure_bias(l)
    if len(shapes) != 1:
        cfg.prunekit_block_widths = [
            {"heads": w["heads"], "kv_heads": w["kv_heads"], "intermediate": w["intermediate"]} for w in widths
        ]
        return {"per_block": True, "head_dim": head_dim}
    if getattr(cfg, "prunekit_block_widths", None) is not None:
        cfg.prunekit_block_widths = None
    for b in blocks:  # Phi-3: shrunk attentions read the (now matching) model config again
        attn = adapter.attention(b)
        if adapter.qkv_layout == "concat" and getattr(attn, "config", cfg) is not cfg:
            attn.config = cfg
    if adapter.family == "opt":
        cfg.ffn_dim = inter
    elif adapter.family in HEAD_DIM_FROM_HIDDEN:  # heads fixed: only the MLP width changes
        cfg.intermediate_size = inter
    else:
        cfg.num_attention_heads = heads
        cfg.num_key_value_heads = kv
        cfg.head_dim = head_dim
        cfg.intermediate_size = inter
    return {"heads": heads, "kv_heads": kv, "head_dim": head_dim, "intermediate": inter}


__all__ = [
    "HEAD_DIM_FROM_HIDDEN",
    "heads_fixed",
    "attention_widths",
    "block_widths",
    "can_compensate",
    "check_gqa_keep",
    "ensure_bias",
    "head_channels",
    "mlp_width",
    "prune_linear_in",
    "prune_linear_out",
    "remove_blocks",
    "shrink_attention",
    "shrink_mlp",
    "sync_config",
]
