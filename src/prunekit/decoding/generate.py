"""``generate``: speculative decoding with a tree verifier, shaped like ``model.generate``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import ConfigError, DataError
from .drafters import Drafter, as_drafter
from .tree import Trie
from .verify import TreeModel, accept_greedy, accept_sample, check_tree_support, target_probs


@dataclass
class DecodeStats:
    new_tokens: int = 0
    target_forwards: int = 0  # verification forwards (the prompt's prefill is counted apart)
    draft_forwards: int = 0
    tree_nodes: int = 0  # drafted nodes verified, all forwards together
    accepted_draft_tokens: int = 0
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    seconds: float = 0.0  # everything, prefill included
    stop: str = ""

    @property
    def tokens_per_forward(self) -> float:  # the mean accepted length (drafted + the target's own token)
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def forwards_per_token(self) -> float:
        return self.target_forwards / self.new_tokens if self.new_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_forward=self.tokens_per_forward, forwards_per_token=self.forwards_per_token,
                 accepted_per_forward=self.accepted_draft_tokens / self.target_forwards if self.target_forwards else 0.0,
                 nodes_per_forward=self.tree_nodes / self.target_forwards if self.target_forwards else 0.0,
                 tokens_per_second=self.tokens_per_second)  # fmt: skip
        return d


@dataclass
class GenerateResult:
    text: str
    ids: list[int]  # the new tokens only
    prompt_ids: list[int]
    stats: DecodeStats = field(default_factory=DecodeStats)
    draft: str = "none"

    def to_dict(self) -> dict:
        return {"text": self.text, "ids": self.ids, "draft": self.draft, "stats": self.stats.to_dict()}


def _eos_ids(model, tokenizer, eos_token_id) -> set[int]:
    if eos_token_id is None:
        gc = getattr(model, "generation_config", None)
        eos_token_id = getattr(gc, "eos_token_id", None)
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return set()
    return {int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id])}


def encode_prompt(tokenizer, prompt, chat: bool = False) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        ids = prompt.reshape(-1).tolist()
    elif isinstance(prompt, (list, tuple)):
        ids = [int(t) for t in prompt]
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("the prompt is empty: give some text to continue")
        if tokenizer is None:
            raise ConfigError("a text prompt needs the tokenizer")
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)  # fmt: skip
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise DataError("the prompt is empty (no tokens): give some text to continue")
    return ids


def _context_limit(model) -> int | None:
    from ..models.limits import max_positions

    return max_positions(model)


def generate(model, tokenizer, prompt, draft=None, max_new_tokens: int = 128, tree_budget: int = 16, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, seed: int | None = None,
             eos_token_id=None, chat: bool = False) -> GenerateResult:  # fmt: skip
    """Decode ``prompt`` with the target ``model``, drafting with ``draft`` and verifying trees.

    Args:
        model: a Hugging Face causal LM (the target; its output is what you get).
        tokenizer: its tokenizer (for a text prompt and the returned text; may be None with ids).
        prompt: text, a list of token ids or a 1-D/``(1, n)`` tensor.
        draft: ``None`` (plain decoding through the same verifier), a drafter from
            :mod:`prunekit.decoding` (``prompt_lookup``, ``datastore``, ``model``, ``rasd``), a list of
            retrieval drafters, or a draft model / MODEL spec (same tokenizer as the target).
        max_new_tokens: the most tokens generated (fewer when an end-of-sequence token comes).
        tree_budget: the most drafted tokens the target verifies in one forward (>= 1).
        do_sample, temperature, top_k, seed: sampling; tree rejection sampling keeps the target's
            distribution. Greedy (the default) returns exactly plain greedy decoding's tokens.
        eos_token_id: stop tokens (default: the model's generation config, else the tokenizer's).
        chat: wrap a text prompt in the tokenizer's chat template.

    Returns:
        :class:`GenerateResult` with ``text``, ``ids`` (new tokens) and ``stats``.
    """
    if isinstance(tree_budget, bool) or not isinstance(tree_budget, int) or tree_budget < 1:
        raise ConfigError(f"tree_budget must be an integer >= 1 (got {tree_budget!r})")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1 (got {max_new_tokens!r})")
    if do_sample and not temperature > 0:
        raise ConfigError(f"temperature must be > 0 when sampling (got {temperature})")
    ids = encode_prompt(tokenizer, prompt, chat)
    limit = _context_limit(model)
    if limit is not None and len(ids) >= limit:
        raise DataError(f"the prompt has {len(ids)} tokens: this model's context window is {limit}")
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - len(ids))
    check_tree_support(model, len(ids) + max_new_tokens + tree_budget)
    drafter: Drafter | None = as_drafter(draft, tokenizer)
    if drafter is not None:
        drafter.bind(model, tokenizer)
        drafter.reset()
    eos = _eos_ids(model, tokenizer, eos_token_id)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed)) if do_sample else None

    st = DecodeStats()
    t0 = time.perf_counter()
    target = TreeModel(model)
    target.prefill(ids[:-1])
    st.prefill_seconds = time.perf_counter() - t0
    committed = list(ids)
    new: list[int] = []
    d_fw0 = getattr(drafter, "draft_forwards", 0)
    while len(new) < max_new_tokens:
        t1 = time.perf_counter()
        room = min(tree_budget, max_new_tokens - len(new) - 1)  # drafted tokens past the end are wasted
        if drafter is not None and room > 0:
            tree = drafter.propose(committed, room).select(room)
        else:
            tree = Trie(committed[-1]).select(0)
        t2 = time.perf_counter()
        past = target.past
        logits = target.forward_tree(tree)
        if do_sample:
            path, bonus = accept_sample(tree, target_probs(logits, temperature, top_k), gen)
        else:
            path, bonus = accept_greedy(tree, logits)
        target.keep(past, path)
        t3 = time.perf_counter()
        st.draft_seconds += t2 - t1
        st.verify_seconds += t3 - t2
        st.target_forwards += 1
        st.tree_nodes += len(tree) - 1
        got = [tree.tokens[i] for i in path[1:]] + [bonus]
        st.accepted_draft_tokens += len(path) - 1
        stop = ""
        for t in got:
            new.append(t)
            committed.append(t)
            if t in eos:
                stop = "eos"
                break
            if len(new) >= max_new_tokens:
                stop = "length"
                break
        if stop:
            st.stop = stop
            break
    st.seconds = time.perf_counter() - t0
    st.new_tokens = len(new)
    st.draft_forwards = getattr(drafter, "draft_forwards", 0) - d_fw0
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else ""
    return GenerateResult(text, new, ids, st, drafter.name if drafter is not None else "none")


def plain_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """Reference: ``model.generate(do_sample=False)`` on one sequence; returns the new token ids."""
    eos = sorted(_eos_ids(model, None, eos_token_id))
    x = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=0, eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0,
                             temperature=None, top_p=None, top_k=None, repetition_penalty=None)  # fmt: skip
    return out[0, len(prompt_ids):].tolist()
