"""PromptQuine: evolve an in-context prompt by token deletion (Wang, Hu, Bing, "Evolving Prompts
In-Context: An Open-ended, Self-replicating Perspective", arXiv:2506.17930, ICML 2025).

1. ``x`` = an ICL prompt of ``k`` demonstrations drawn from the train split (tokens
   ``x_1..x_n``); a candidate is a subsequence ``z`` of ``x``, stored as its kept positions (a mask).
2. Mutation: delete 1–4 kept tokens at random (``min`` of two uniform draws, so small moves are
   the most frequent; at least one token stays).
3. Selection (:func:`prunekit.search.evolve`): each generation's ``population`` offspring are
   scored on the first half of the dev split, the best ``survivors`` on all of it, and the best
   replaces the parent only if strictly better (elitist); fitness = −accuracy, ties broken by
   the mean label margin. The search stops when the LM-call ``budget`` is spent.

Deviation: the paper runs a population GA with its own parent selection and re-ranking on a
held-out split; here the parent is a single elite (Týr's staged loop, shared with Týr), with the
half-dev → full-dev stages as the re-ranking.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .tasks import Task


@dataclass(frozen=True)
class PrunedPrompt:
    """A subsequence of ``original`` (token ids): ``keep`` are the kept positions, increasing."""

    original: tuple[int, ...]
    keep: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [self.original[i] for i in self.keep]

    def mask(self) -> list[int]:
        s = set(self.keep)
        return [int(i in s) for i in range(len(self.original))]

    def text(self, tokenizer) -> str:
        return tokenizer.decode(self.ids)

    def to_dict(self, tokenizer) -> dict:
        return {"original": tokenizer.decode(list(self.original)), "keep": list(self.keep), "text": self.text(tokenizer)}

    @classmethod
    def from_dict(cls, d: dict, tokenizer) -> PrunedPrompt:
        ids = tuple(tokenizer(d["original"], add_special_tokens=False)["input_ids"])
        return cls(ids, tuple(int(i) for i in d["keep"]))

    @classmethod
    def full(cls, ids) -> PrunedPrompt:
        return cls(tuple(ids), tuple(range(len(ids))))


def icl_prompt(task: Task, k: int, rng: random.Random, encode) -> list[int]:
    """Token ids of ``k`` train demonstrations (random order), each ``demo(x, y)``, concatenated."""
    ids: list[int] = []
    for i in rng.sample(range(len(task.train)), k):
        ids += encode(task.demo(*task.train[i]))
    return ids


def mutate(z: tuple[int, ...], rng: random.Random) -> tuple[int, ...] | None:
    """Delete 1–4 of the kept positions ``z`` (one at least stays)."""
    d = min(rng.randint(1, 4), rng.randint(1, 4), len(z) - 1)
    if d < 1:
        return None
    drop = set(rng.sample(range(len(z)), d))
    return tuple(p for j, p in enumerate(z) if j not in drop)


def random_deletion(n: int, m: int, rng: random.Random) -> tuple[int, ...]:
    """Baseline: ``m`` of ``n`` positions kept uniformly at random (PromptQuine's final length)."""
    return tuple(sorted(rng.sample(range(n), m)))
