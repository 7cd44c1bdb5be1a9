"""The one in-model token hook: scorer → selector → recovery, on the decoder layers of a causal LM.

Two ways a selection acts, one mechanism (each decoder layer's ``forward`` is wrapped):

- **shorten** (FastV, Recoverable Compression, random): at the input of layer ``K`` (prefill) the
  method picks the kept rows; the layers ``K..L-1`` then see only those rows. Their attention
  mask (rows and columns), position ids (the kept tokens keep their *original* positions) and
  rotary tables ``(cos, sin)`` are gathered to match, so their KV caches hold only the kept
  tokens; during decode the mask columns of the removed tokens are dropped for those layers.
  Recovery: ``drop``, or ``merge`` (each dropped token is averaged into its most similar kept
  candidate). Logits come back for the kept positions only (the last token is always kept).
- **route** (FTP, random routing, whole-block skipping): every routed block picks its own rows;
  only they run the block, the others pass through unchanged (``h_out = h`` for a skipped token).
  A skipped token is neither a query nor a key/value in that block (its K/V is not computed
  and not cached there), so the block is exactly a shorter sequence; later blocks see every token again.

Every patch counts what it did: ``removed[i]`` (tokens that did not enter layer ``i`` because of
this patch, summed over rows and calls) and ``token_blocks[i]`` (token rows layer ``i`` computed).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError

_ATTR = "_prunekit_token_patch"


# --- finding the decoder layers ------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The causal LM's decoder-layer list (also inside a LLaVA-style model), with its dotted name."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and "vision" not in name and all(
            hasattr(b, "self_attn") and hasattr(b, "mlp") for b in m
        ):
            params = inspect.signature(type(m[0]).forward).parameters
            if "position_embeddings" not in params:
                raise ConfigError(f"{type(m[0]).__name__} takes no position_embeddings: token hooks support the rotary "
                                  f"decoder layers of the Llama, Qwen2 and Mistral families")  # fmt: skip
            return name, m
    raise ConfigError(f"{type(model).__name__} has no decoder layers with self_attn and mlp: token hooks need a "
                      f"Hugging Face causal LM (Llama, Qwen2, Mistral) or a LLaVA-style model around one")  # fmt: skip


def text_config(model: nn.Module) -> Any:
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


# --- gathering rows -----------------------------------------------------------------------------
def take(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` along dim 1 for ``x`` [B|1, n, ...] and ``idx`` [B, m]."""
    b = idx.shape[0]
    if x.shape[0] != b:
        x = x.expand(b, *x.shape[1:])
    ix = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, ix)


def take_mask(mask: Tensor, cols: Tensor, rows: Tensor | None = None) -> Tensor:
    """A 4-D mask [B|1, H|1, q, kv] with the query ``rows`` and key ``cols`` ([B, m]) kept; any dtype."""
    b = cols.shape[0]
    if mask.shape[0] != b:
        mask = mask.expand(b, *mask.shape[1:])
    if rows is not None:
        mask = torch.gather(mask, 2, rows[:, None, :, None].expand(b, mask.shape[1], rows.shape[1], mask.shape[3]))
    return torch.gather(mask, 3, cols[:, None, None, :].expand(b, mask.shape[1], mask.shape[2], cols.shape[1]))


def complement(idx: Tensor, n: int) -> Tensor:
    """The sorted indices in ``[0, n)`` that are not in ``idx`` (row-wise; equal counts per row)."""
    keep = torch.zeros(idx.shape[0], n, dtype=torch.bool, device=idx.device)
    keep.scatter_(1, idx, True)
    r = n - idx.shape[1]
    return (~keep).nonzero()[:, 1].view(idx.shape[0], r)


def cache_len(cache: Any, i: int) -> int:
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length(i))
    except (AttributeError, IndexError, TypeError):
        return 0


def topk_keep(scores: Tensor, candidates: Tensor, keep: float) -> Tensor:
    """Selector: every non-candidate plus the ``round(keep · n_c)`` best-scored candidates, sorted [B, m]."""
    nc = candidates.sum(1)
    if bool((nc != nc[0]).any()):
        raise DataError(f"the rows of the batch have different candidate counts {nc.tolist()}: prune one row at a "
                        f"time or give rows with the same image-token span")  # fmt: skip
    n, c = scores.shape[1], int(nc[0])
    k = max(1, round(keep * c)) if c else 0
    return topk_count(scores, candidates, k)


def topk_count(scores: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Every non-candidate plus the ``k`` best-scored candidates (equal candidate counts per row), sorted."""
    n, c = scores.shape[1], int(candidates[0].sum())
    s = scores.float().masked_fill(~candidates, math.inf)
    return s.topk(n - c + min(k, c), dim=1).indices.sort(dim=1).values


# --- the per-forward selection ------------------------------------------------------------------
@dataclass
class Selection:
    """Kept rows of one prefill and the gathered layer arguments (shared by the later layers)."""

    keep: Tensor  # [B, m] original positions, ascending
    n: int  # the prefill's full length
    hidden: Tensor | None = None  # the kept (possibly merged) rows entering layer K
    _memo: dict[int, tuple[Any, Any]] = field(default_factory=dict)

    def gather(self, kw: dict[str, Any]) -> dict[str, Any]:
        out = dict(kw)
        for key in ("attention_mask", "position_ids", "position_embeddings"):
            v = kw.get(key)
            if v is None:
                continue
            hit = self._memo.get(id(v))
            if hit is None or hit[0] is not v:
                if key == "attention_mask":
                    g = take_mask(v, self.keep, self.keep) if v.dim() == 4 else _unsupported_mask(v)
                elif key == "position_ids":
                    g = take(v, self.keep)
                else:
                    g = tuple(take(t, self.keep) for t in v)
                hit = self._memo[id(v)] = (v, g)
            out[key] = hit[1]
        return out

    def decode_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        """A later forward (decode) over a cache that holds only the kept rows for this layer."""
        mask = kw.get("attention_mask")
        if mask is None or not torch.is_tensor(mask):
            return kw
        kv = mask.shape[-1]
        extra = torch.arange(self.n, kv, device=mask.device).expand(self.keep.shape[0], kv - self.n)
        out = dict(kw)
        out["attention_mask"] = take_mask(mask, torch.cat([self.keep.to(mask.device), extra], 1))
        return out


def _unsupported_mask(v: Tensor) -> Tensor:
    raise ConfigError(f"a {v.dim()}-D attention mask reached a decoder layer: token hooks need the eager or sdpa "
                      f"attention (4-D masks); load the model with attn_implementation='sdpa'")  # fmt: skip


# --- the patch ------------------------------------------------------------------------------------
class TokenPatch:
    """Wraps every decoder layer's ``forward``; a ``method`` decides which rows each layer computes.

    ``method`` has ``mode`` ("shorten" or "route"), ``layer`` (first shortened layer), and
    ``select(patch, i, h, kw) -> Tensor [B, m] | None`` (kept rows, ascending; None keeps all).
    """

    def __init__(self, model: nn.Module, method: Any) -> None:
        self.model, self.method = model, method
        self.name, self.layers = decoder_layers(model)
        self.L = len(self.layers)
        self.removed = [0] * self.L
        self.token_blocks = [0] * self.L
        self.prefills = 0
        self.input_ids: Tensor | None = None
        self.state: dict[str, Any] = {}  # per-forward scratch a method may use (captured attention inputs, ...)
        self._sel: Selection | None = None  # shorten: the current prefill's selection
        self._sess: dict[int, Selection] = {}  # per layer: what its cache holds (for decode)
        self._handles: list[Any] = []

    # attach / detach
    def attach(self) -> "TokenPatch":
        if getattr(self.model, _ATTR, None) is not None:
            raise ConfigError("the model already has a token patch: call prunekit.tokens.unpatch(model) first")
        for i, layer in enumerate(self.layers):
            orig = layer.forward
            layer.forward = _Wrapped(self, i, orig)
        self._handles.append(self.model.register_forward_pre_hook(self._capture_ids, with_kwargs=True))
        for h in getattr(self.method, "hooks", lambda p: [])(self):
            self._handles.append(h)
        setattr(self.model, _ATTR, self)
        return self

    def detach(self) -> None:
        for layer in self.layers:
            if isinstance(layer.__dict__.get("forward"), _Wrapped):
                del layer.forward
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)

    def _capture_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        self.input_ids = ids
        for k in [k for k in self.state if not k.startswith("vision:")]:  # the vision tower may run before the
            del self.state[k]  # forward (generate precomputes image features): its scores are consumed by select

    # the wrapped forward
    def forward(self, i: int, orig: Callable, hidden: Tensor, kw: dict[str, Any]) -> Tensor:
        cache = kw.get("cache", kw.get("past_key_values"))
        past = cache_len(cache, i)
        prefill = past == 0 and hidden.shape[1] > 1
        m = self.method
        if getattr(m, "observe", None) is not None:
            m.observe(self, i, hidden, kw, prefill)
        if m.mode == "shorten":
            if i < m.layer:
                self.token_blocks[i] += hidden.shape[0] * hidden.shape[1]
                return orig(hidden, **kw)
            if prefill:
                if i == m.layer:
                    self._sel = self._shorten(hidden, kw, cache)
                sel = self._sel
                if sel is not None:
                    if i == m.layer:
                        hidden = sel.hidden
                    kw = sel.gather(kw)
            elif past and i in self._sess:
                kw = self._sess[i].decode_kw(kw)
            self.token_blocks[i] += hidden.shape[0] * hidden.shape[1]
            return orig(hidden, **kw)
        # route: run the block on the kept rows, pass the others through unchanged
        if prefill and i == 0:
            self.prefills += 1
        keep = m.select(self, i, hidden, kw) if prefill else None
        if keep is None:
            if prefill:
                self._sess.pop(i, None)
            elif i in self._sess:
                kw = self._sess[i].decode_kw(kw)
            self.token_blocks[i] += hidden.shape[0] * hidden.shape[1]
            return orig(hidden, **kw)
        n = hidden.shape[1]
        sel = Selection(keep=keep, n=n)
        self.removed[i] += hidden.shape[0] * (n - keep.shape[1])
        self.token_blocks[i] += hidden.shape[0] * keep.shape[1]
        if cache is not None and getattr(m, "kv", "drop") == "drop":
            self._sess[i] = sel
        out = hidden.clone()
        if getattr(m, "kv", "drop") == "keep":  # skipped tokens stay keys/values: their K/V from the unchanged input
            self._sess.pop(i, None)
            y = partial_block(self.layers[i], hidden, keep, kw, cache) if keep.shape[1] else None
        else:
            y = orig(take(hidden, keep), **sel.gather(kw)) if keep.shape[1] else None
        if y is not None:
            out.scatter_(1, keep[..., None].expand(-1, -1, hidden.shape[-1]), y.to(out.dtype))
        return out

    def _shorten(self, hidden: Tensor, kw: dict[str, Any], cache: Any) -> Selection | None:
        m, K = self.method, self.method.layer
        self.prefills += 1
        for j in range(K, self.L):
            self._sess.pop(j, None)
        keep = m.select(self, K, hidden, kw)
        b, n = hidden.shape[:2]
        if keep is None or keep.shape[1] == n:
            return None
        drop = complement(keep, n)
        sel = Selection(keep=keep, n=n)
        sel.hidden = m.recover(self, hidden, keep, drop) if hasattr(m, "recover") else take(hidden, keep)
        self.removed[K] += b * drop.shape[1]
        if cache is not None:
            for j in range(K, self.L):
                self._sess[j] = sel
        return sel

    def stats(self) -> dict[str, Any]:
        dense = [0] * self.L
        for i in range(self.L):
            dense[i] = self.token_blocks[i] + sum(self.removed[: i + 1]) if self.method.mode == "shorten" else \
                self.token_blocks[i] + self.removed[i]  # fmt: skip
        comp, tot = sum(self.token_blocks), sum(dense)
        return {
            "method": self.method.name, "mode": self.method.mode, "layers": self.L, "prefills": self.prefills,
            "removed": {i: r for i, r in enumerate(self.removed) if r},
            "token_blocks": comp, "token_blocks_dense": tot,
            "token_block_sparsity": (1 - comp / tot) if tot else 0.0,
            **getattr(self.method, "describe", lambda: {})(),
        }  # fmt: skip

    def reset_counts(self) -> None:
        self.removed = [0] * self.L
        self.token_blocks = [0] * self.L
        self.prefills = 0


def partial_block(layer: nn.Module, h: Tensor, keep: Tensor, kw: dict[str, Any], cache: Any) -> Tensor:
    """A Llama-style block computed for the rows ``keep`` only, attending to every row's K/V.

    Queries, the output projection, the residual and the MLP run on the kept rows; keys and values
    come from all rows (a skipped token's from its unchanged input), and the cache gets all rows.
    The kept rows' outputs are exactly the dense block's outputs at those rows.
    """
    import sys

    attn = layer.self_attn
    rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb")
    b, n, _ = h.shape
    m = keep.shape[1]
    hd = int(attn.head_dim)
    x = layer.input_layernorm(h)
    q = attn.q_proj(take(x, keep)).view(b, m, -1, hd)
    k = attn.k_proj(x).view(b, n, -1, hd)
    v = attn.v_proj(x).view(b, n, -1, hd).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = kw["position_embeddings"]
    q, _ = rotary(q, q, take(cos, keep), take(sin, keep))
    _, k = rotary(k, k, cos, sin)
    past = cache_len(cache, attn.layer_idx)
    if cache is not None and kw.get("use_cache", True):
        k, v = cache.update(k, v, attn.layer_idx)
    mask = kw.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 4:
        mask = take_mask(mask, torch.arange(mask.shape[-1], device=h.device).expand(b, -1), keep)
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
    else:
        kpos = torch.arange(k.shape[2], device=h.device)
        mask = (kpos[None, None, :] <= (keep + past)[:, :, None])[:, None]  # [B, 1, m, P + n]
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=float(attn.scaling))
    y = take(h, keep) + attn.o_proj(o.transpose(1, 2).reshape(b, m, -1))
    return y + layer.mlp(layer.post_attention_layernorm(y))


class _Wrapped:
    """A layer's instance-level ``forward``: calls back into the patch (``del layer.forward`` undoes it)."""

    def __init__(self, patch: TokenPatch, i: int, orig: Callable) -> None:
        self.patch, self.i, self.orig = patch, i, orig

    def __call__(self, hidden_states: Tensor, *args: Any, **kw: Any) -> Tensor:
        if args:
            names = [p for p in inspect.signature(self.orig).parameters][1 : 1 + len(args)]
            kw.update(zip(names, args))
        return self.patch.forward(self.i, self.orig, hidden_states, kw)


def get_patch(model: nn.Module) -> TokenPatch | None:
    return getattr(model, _ATTR, None)
