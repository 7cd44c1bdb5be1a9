"""Scorers: how important each token is (higher = keep). They never decide the budget.

- ``attention_received``: FastV's score, the attention a token receives at a decoder layer,
  averaged over heads and (causal) queries, recomputed from that layer's attention input
  (``softmax(q kᵀ / √d + mask)`` with its own q/k projections, norms and rotary tables).
- ``cls_attention``: Recoverable Compression's visual score, the attention the vision tower's
  CLS query pays each patch at the feature layer.
- ``text_similarity``: the best cosine similarity of a visual token to any text token of the prompt.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rotary(attn: nn.Module):
    return getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb")


@torch.no_grad()
def attention_probs(attn: nn.Module, x: Tensor, position_embeddings: tuple[Tensor, Tensor],
                    mask: Tensor | None, config: Any) -> Tensor:  # fmt: skip
    """``softmax(q kᵀ · scaling + causal/mask)`` of a Llama-style attention: [B, H, n, n] (float32)."""
    b, n, _ = x.shape
    hd = int(getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    q = attn.q_proj(x).view(b, n, -1, hd)
    k = attn.k_proj(x).view(b, n, -1, hd)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    q, k = _rotary(attn)(q, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    scale = float(getattr(attn, "scaling", hd**-0.5))
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    s = s.masked_fill(~causal, float("-inf"))
    if mask is not None and torch.is_tensor(mask) and mask.dim() == 4 and mask.shape[-1] == n:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    return s.softmax(-1)


def attention_received(probs: Tensor, query: str = "all") -> Tensor:
    """FastV's score [B, n]: mean over heads of the attention each key receives (all queries, or the last)."""
    p = probs.mean(1)  # [B, n, n]
    return p[:, -1] if query == "last" else p.mean(1)


@torch.no_grad()
def cls_attention(attn: nn.Module, x: Tensor) -> Tensor:
    """CLIP-style attention of the CLS query (row 0) to every token, mean over heads: [B, 1+P]."""
    b, n, _ = x.shape
    h = int(attn.num_heads)
    hd = x.shape[-1] // h if not hasattr(attn, "head_dim") else int(attn.head_dim)
    q = attn.q_proj(x[:, :1]).view(b, 1, h, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, n, h, hd).transpose(1, 2)
    scale = float(getattr(attn, "scale", hd**-0.5))
    return ((q.float() @ k.float().transpose(-1, -2)) * scale).softmax(-1)[:, :, 0].mean(1)


def text_similarity(h: Tensor, visual: Tensor) -> Tensor:
    """[B, n]: each token's highest cosine similarity to the prompt's text tokens (non-visual rows)."""
    hn = F.normalize(h.float(), dim=-1)
    sim = hn @ hn.transpose(1, 2)  # [B, n, n]
    sim = sim.masked_fill(visual[:, None, :], float("-inf"))  # columns: text tokens only
    return sim.max(-1).values


def iqr_outliers(s: Tensor, candidates: Tensor, k: float = 1.5) -> Tensor:
    """Upper outliers per row among the candidates: ``s > Q3 + k·IQR`` (bool [B, n])."""
    out = torch.zeros_like(candidates)
    for b in range(s.shape[0]):
        v = s[b][candidates[b]].float()
        if v.numel() < 4:
            continue
        q1, q3 = torch.quantile(v, 0.25), torch.quantile(v, 0.75)
        out[b] = candidates[b] & (s[b].float() > q3 + k * (q3 - q1))
    return out
