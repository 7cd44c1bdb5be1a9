"""The tree verifier: one forward of a Hugging Face causal LM over every tree node against its cached prefix.

The model's KV cache holds the committed tokens except the last one (the tree's root). A tree
forward feeds the root and all drafted nodes at once with

- a 4-D additive attention mask ``(1, 1, n, past + n)``: each node sees the whole cached prefix and
  its own ancestors (itself included), nothing else;
- position ids ``past + depth`` (siblings share a position, as they would in a plain decode).

Greedy verification accepts the longest root-to-node path whose every token is the target's argmax
after its parent, then appends the target's argmax after the path's last node (the "bonus" token):
every forward commits at least one token, and the committed tokens are exactly those of plain greedy
decoding. The cache is then gathered to the prefix plus the accepted path (a crop when the path is
the first nodes in order). Sampling verification (:func:`accept_sample`) is token-level rejection
sampling over the tree that keeps the target's distribution (drafted tokens are deterministic
proposals: a child is accepted with the residual probability of its token, a rejected token's mass
is removed and renormalised, and the next sibling is tried; the bonus token is drawn from the
residual).

Float caveat: a tree forward computes a node's logits in a matrix product of ``n`` rows where plain
greedy computes one row; on some BLAS back ends the results differ in the last bits. Greedy output
can then differ only where the target's top two logits tie to within that rounding (never observed
in the tests; compare in the same dtype and attention implementation).
"""

from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError
from .tree import Tree


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()  # full-attention layers only: the tree mask is the whole story


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def check_tree_support(model, total_len: int | None = None) -> None:
    """Refuse a model whose attention cannot take a 4-D tree mask (one line)."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise ConfigError(
            f"tree verification needs eager or sdpa attention (this model uses {impl!r}): "
            "load it with attn_implementation='sdpa'"
        )
    if getattr(cfg, "is_encoder_decoder", False):
        raise ConfigError("tree verification needs a decoder-only causal LM (this model is encoder-decoder)")
    types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    uses_window = any("sliding" in str(t) for t in types) or (window and getattr(cfg, "use_sliding_window", True)
                                                               and not types)
    if uses_window and window and total_len is not None and total_len > window:
        raise ConfigError(
            f"the prompt and max_new_tokens ({total_len} tokens) pass this model's sliding window of {window}; "
            "tree verification covers sequences within the window only"
        )


class TreeModel:
    """A causal LM with its own cache, fed chains and trees; ``past`` is the number of cached tokens."""

    def __init__(self, model):
        self.model = model
        self._kw = _cache_kwarg(model)
        self._keep_kw = "logits_to_keep" in inspect.signature(model.forward).parameters
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.reset()

    def reset(self) -> None:
        self.cache = _new_cache()
        self.past = 0
        self.forwards = 0

    def _forward(self, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
                 last: int = 0) -> torch.Tensor:  # fmt: skip
        kw = {self._kw: self.cache, "use_cache": True, "position_ids": position_ids}
        if mask is not None:
            kw["attention_mask"] = mask
        if last and self._keep_kw:  # the LM head over the last rows only (a long prefill's logits are big)
            kw["logits_to_keep"] = last
        with torch.inference_mode():
            out = self.model(input_ids=ids, **kw)
        self.forwards += 1
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is not None:
            self.cache = cache
        self.past += ids.shape[1]
        logits = out.logits[0]
        return (logits[-last:] if last else logits).float()

    def prefill(self, tokens: list[int], last: int = 1) -> torch.Tensor | None:
        """Feed a causal chain (the model's own causal mask); returns the logits of its ``last`` tokens (0: all)."""
        if not tokens:
            return None
        ids = torch.tensor([tokens], device=self.device)
        pos = torch.arange(self.past, self.past + len(tokens), device=self.device)[None]
        return self._forward(ids, pos, None, last)

    def tree_mask(self, tree: Tree) -> torch.Tensor:
        n = len(tree)
        allowed = torch.ones(n, self.past + n, dtype=torch.bool)
        allowed[:, self.past:] = tree.ancestors_mask()
        mask = torch.zeros(n, self.past + n, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[None, None].to(self.device)

    def forward_tree(self, tree: Tree, last: int = 0) -> torch.Tensor:
        """Feed every node of ``tree`` at once; returns ``(len(tree), vocab)`` float logits (``last``: the last rows)."""
        ids = torch.tensor([tree.tokens], device=self.device)
        pos = (torch.tensor(tree.depth) + self.past)[None].to(self.device)
        return self._forward(ids, pos, self.tree_mask(tree), last)

    def keep(self, prefix: int, nodes: list[int]) -> None:
        """Keep the first ``prefix`` cached tokens and the tree nodes ``nodes`` (indices after it), in order."""
        if nodes == list(range(len(nodes))):
            self.crop(prefix + len(nodes))
            return
        idx = torch.tensor(list(range(prefix)) + [prefix + i for i in nodes], device=self.device)
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, idx)
                layer.values = layer.values.index_select(-2, idx)
        self.past = prefix + len(nodes)

    def crop(self, length: int) -> None:
        drop = self.past - length
        if drop > 0:
            for layer in self.cache.layers:
                if getattr(layer, "keys", None) is not None and layer.keys.numel():
                    layer.keys = layer.keys[..., :length, :]
                    layer.values = layer.values[..., :length, :]
            self.past = length


def accept_greedy(tree: Tree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Longest path of target-argmax tokens; returns (path node indices from the root, bonus token)."""
    best = logits.argmax(-1).tolist()
    cur, path = 0, [0]
    while True:
        want = best[cur]
        nxt = next((c for c in tree.children[cur] if tree.tokens[c] == want), None)
        if nxt is None:
            return path, want
        cur = nxt
        path.append(cur)


def target_probs(logits: torch.Tensor, temperature: float, top_k: int = 0) -> torch.Tensor:
    z = logits.double() / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.softmax(z, dim=-1)


def accept_sample(tree: Tree, probs: torch.Tensor, generator: torch.Generator) -> tuple[list[int], int]:
    """Tree rejection sampling with deterministic proposals; the committed tokens follow the target exactly.

    At a node with target distribution ``p`` the children are tried in order: child token ``x`` is
    accepted with probability ``p(x) / sum(p)``; a rejected ``x`` gets ``p(x) = 0`` and the next
    child is tried. When no child is accepted the bonus token is drawn from what is left. By
    induction every committed token is drawn from the target's next-token distribution.
    """
    cur, path = 0, [0]
    while True:
        p = probs[cur].clone()
        moved = False
        for c in tree.children[cur]:
            x = tree.tokens[c]
            total = float(p.sum())
            if total <= 0:
                break
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            if u * total < float(p[x]):
                cur, moved = c, True
                path.append(c)
                break
            p[x] = 0.0
        if not moved:
            if float(p.sum()) <= 0:  # every token with mass was a rejected child: impossible in exact arithmetic
                p = probs[cur]
            tok = int(torch.multinomial(p.float() / p.sum().float(), 1, generator=generator))
            return path, tok
