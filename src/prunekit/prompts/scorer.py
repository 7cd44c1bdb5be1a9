"""Batched, cached, counted LM scoring of prompts on a task split.

One *LM call* = one prompt scored on the first ``n`` examples of one split (all of them in
``ceil(n / batch)`` forwards: the prompt's KV cache is computed once and shared by the batch, and
only the last position goes through the LM head, restricted to the label words). Calls are cached
by (sha1 of the prompt's token ids, split, n) within a run; :attr:`Scorer.calls` counts the
uncached ones and is the search budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DataError
from .tasks import Task


@dataclass(frozen=True)
class Score:
    accuracy: float
    margin: float  # mean log p(gold) - max log p(other label)

    @property
    def fitness(self) -> float:
        """Lower is better: −accuracy, ties broken by the mean margin (tiny weight)."""
        return -(self.accuracy + 1e-3 * max(-1.0, min(1.0, self.margin / 10)))


def label_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """One token id per label word (encoded with a leading space); a word that is more than one
    token is rejected (pick a single-token synonym): next-token scoring needs one token."""
    ids = []
    for w in labels:
        t = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise DataError(f"label word {w!r} is {len(t)} tokens for this tokenizer; "
                            "use a word that encodes to one token (with a leading space)")  # fmt: skip
        ids.append(t[0])
    if len(set(ids)) != len(ids):
        raise DataError(f"label words {list(labels)} share a token; give distinct words")
    return ids


class Scorer:
    def __init__(self, model: nn.Module, tokenizer, task: Task, batch_size: int = 64):
        self.model, self.tok, self.task, self.batch_size = model, tokenizer, task, batch_size
        self.label_ids = torch.tensor(label_token_ids(tokenizer, task.labels))
        self.queries: dict[str, list[list[int]]] = {}
        self.gold: dict[str, torch.Tensor] = {}
        for split in ("train", "dev", "test"):
            rows = getattr(task, split)
            self.queries[split] = [self.encode(task.query(x)) for x, _ in rows]
            self.gold[split] = torch.tensor([y for _, y in rows], dtype=torch.long)
        self.cache: dict[tuple, Score] = {}
        self.calls = 0  # uncached LM calls (the budget)
        self.hits = 0
        self.forwards = 0  # batched forwards
        self.tokens = 0  # tokens through the model

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def key(prompt: Sequence[int], split: str, n: int) -> tuple:
        h = hashlib.sha1(torch.tensor(list(prompt), dtype=torch.int64).numpy().tobytes()).hexdigest()
        return h, split, n

    def __call__(self, prompt: Sequence[int], split: str = "dev", n: int | None = None) -> Score:
        n = len(self.queries[split]) if n is None else min(n, len(self.queries[split]))
        k = self.key(prompt, split, n)
        if k in self.cache:
            self.hits += 1
            return self.cache[k]
        self.calls += 1
        s = self._score(list(prompt), self.queries[split][:n], self.gold[split][:n])
        self.cache[k] = s
        return s

    @torch.no_grad()
    def logprobs(self, prompt: list[int], queries: list[list[int]]) -> torch.Tensor:
        """``[len(queries), n_labels]`` log-probabilities of the label words (over the full vocab)."""
        model = self.model
        dev = next(model.parameters()).device
        body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        head = model.get_output_embeddings()
        out = []
        past0 = None
        if prompt:
            p = torch.tensor([prompt], device=dev)
            past0 = body(input_ids=p, use_cache=True).past_key_values
            self.tokens += len(prompt)
        for i in range(0, len(queries), self.batch_size):
            chunk = queries[i : i + self.batch_size]
            L = max(len(q) for q in chunk)
            pad = 0
            ids = torch.tensor([q + [pad] * (L - len(q)) for q in chunk], device=dev)
            last = torch.tensor([len(q) - 1 for q in chunk], device=dev)
            kw = {}
            if past0 is not None:
                import copy

                past = copy.deepcopy(past0)
                past.batch_repeat_interleave(len(chunk))
                P = len(prompt)
                kw = {"past_key_values": past, "position_ids": torch.arange(P, P + L, device=dev).expand(len(chunk), L),
                      "attention_mask": torch.ones(len(chunk), P + L, dtype=torch.long, device=dev)}  # fmt: skip
            h = body(input_ids=ids, use_cache=past0 is not None, **kw).last_hidden_state  # right padding: causal
            hl = h[torch.arange(len(chunk), device=dev), last]
            z = head(hl).float()
            out.append(torch.log_softmax(z, -1)[:, self.label_ids.to(dev)].cpu())
            self.forwards += 1
            self.tokens += sum(len(q) for q in chunk)
        return torch.cat(out) if out else torch.zeros(0, len(self.label_ids))

    def _score(self, prompt: list[int], queries: list[list[int]], gold: torch.Tensor) -> Score:
        lp = self.logprobs(prompt, queries)
        acc = float((lp.argmax(-1) == gold).float().mean())
        g = lp.gather(1, gold[:, None])[:, 0]
        other = lp.clone()
        other.scatter_(1, gold[:, None], -float("inf"))
        return Score(acc, float((g - other.max(-1).values).mean()))
