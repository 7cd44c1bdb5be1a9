"""Drafters: where candidate continuations come from. Each ``propose(ids, budget)`` returns a :class:`Trie`.

- :func:`prompt_lookup`: continuations of earlier occurrences of the last n-gram in the prompt and
  the text generated so far (transformers' prompt lookup, as a tree over every occurrence).
- :func:`datastore`: the same over a corpus file (REST-style retrieval), indexed once by sorted
  n-gram keys (numpy, a few bytes per corpus token).
- :func:`model`: any causal LM with the target's tokenizer (a prunekit-pruned model included):
  a greedy chain drafted token by token while the draft is confident, with its runner-up tokens as
  leaves; node score = the draft's path probability.
- :func:`rasd`: RASD. The retrieval tree is scored by the draft model in ONE tree forward (each
  node's score is the draft's probability of its path), pruned to the nodes the draft finds likely,
  and fused with the draft model's own tree by longest-prefix matching; the target then verifies
  the best ``tree_budget`` nodes of the fused tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .tree import Tree, Trie
from .verify import TreeModel


class Drafter:
    """Base: ``bind`` sees the target and tokenizer once; ``propose`` builds a trie after ``ids``."""

    name = "drafter"
    uses_model = False

    def bind(self, target, tokenizer) -> None:  # noqa: B027 - optional hook
        pass

    def reset(self) -> None:  # noqa: B027 - a new prompt starts
        pass

    def propose(self, ids: list[int], budget: int) -> Trie:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class _NgramIndex:
    """Positions after each n-gram of a growing token list (n = 1..max_n), kept incrementally."""

    def __init__(self, max_n: int):
        self.max_n = max_n
        self.ids: list[int] = []
        self.index: dict[tuple[int, ...], list[int]] = {}

    def update(self, ids: list[int]) -> None:
        k = len(self.ids)
        if k > len(ids) or self.ids != ids[:k]:
            self.ids, self.index, k = [], {}, 0
        self.ids = list(ids)
        for end in range(max(k, 1), len(ids) + 1):  # n-grams ending at end-1, continuation starts at end
            for n in range(1, self.max_n + 1):
                if end - n < 0:
                    break
                self.index.setdefault(tuple(ids[end - n:end]), []).append(end)

    def continuations(self, n: int, limit: int, max_len: int) -> list[list[int]]:
        """Continuations after earlier occurrences of the last n tokens, most recent first."""
        if len(self.ids) < n + 1:
            return []
        ends = self.index.get(tuple(self.ids[-n:]), [])
        out = []
        for end in reversed(ends):
            if end >= len(self.ids):  # the occurrence is the suffix itself
                continue
            out.append(self.ids[end:end + max_len])
            if len(out) >= limit:
                break
        return out


class PromptLookup(Drafter):
    def __init__(self, ngram: int = 2, max_tokens: int = 10, matches: int = 8):
        if ngram < 1 or max_tokens < 1:
            raise ConfigError(f"prompt_lookup needs ngram >= 1 and max >= 1 (got {ngram}:{max_tokens})")
        self.ngram, self.max_tokens, self.matches = ngram, max_tokens, matches
        self.name = f"prompt_lookup({ngram}:{max_tokens})"
        self._index = _NgramIndex(ngram)

    def reset(self) -> None:
        self._index = _NgramIndex(self.ngram)

    def propose(self, ids: list[int], budget: int) -> Trie:
        self._index.update(ids)
        trie = Trie(ids[-1])
        for n in range(self.ngram, 0, -1):  # the longest n-gram that occurred before wins
            conts = self._index.continuations(n, self.matches, self.max_tokens)
            if conts:
                # ties between occurrences: the longer continuation first (a recent occurrence inside the
                # generated text is cut short by its end), then the more recent one
                for rank, c in enumerate(conts):
                    trie.add_count(c, 1.0 + 1e-2 * len(c) / self.max_tokens + 1e-4 * (len(conts) - rank))
                break
        return trie


class Datastore(Drafter):
    """An n-gram index over a corpus (text, .jsonl with a "text" field, or a folder of them)."""

    def __init__(self, path, ngram: int = 3, max_tokens: int = 10, matches: int = 64, max_chars: int = 20_000_000):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"datastore {path} does not exist")
        self.ngram, self.max_tokens, self.matches, self.max_chars = ngram, max_tokens, matches, max_chars
        self.name = f"datastore({self.path.name})"
        self._tok_id = None
        self.tokens = None

    def _texts(self) -> list[str]:
        files = sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else [self.path]
        texts, total = [], 0
        for f in files:
            if f.suffix not in (".txt", ".raw", ".jsonl", ".json", ".md", "") and not f.name.endswith(".jsonl"):
                continue
            try:
                raw = f.read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                raise DataError(f"datastore {f} cannot be read: {e.strerror or e}") from None
            if f.suffix == ".jsonl":
                for line in raw.splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        t = rec.get("text") or " ".join(str(rec[k]) for k in ("question", "answer") if k in rec)
                        if t:
                            texts.append(str(t))
                            total += len(t)
                    if total > self.max_chars:
                        break
            else:
                texts += [t for t in raw.split("\n\n") if t.strip()]
                total += len(raw)
            if total > self.max_chars:
                break
        if not texts:
            raise DataError(f"datastore {self.path} holds no text")
        return texts

    def bind(self, target, tokenizer) -> None:
        if self.tokens is not None and (tokenizer is None or self._tok_id == id(tokenizer)):
            return
        if tokenizer is None:
            raise ConfigError("a datastore needs the target's tokenizer to index its corpus")
        ids: list[int] = []
        for t in self._texts():
            ids += tokenizer(t, add_special_tokens=False)["input_ids"]
            ids.append(-1)  # document boundary: never matched, never proposed
        self.tokens = np.asarray(ids, dtype=np.int64)
        self._tok_id = id(tokenizer)
        self._keys = {}
        n_tok = len(self.tokens)
        for n in range(1, self.ngram + 1):
            key = np.zeros(n_tok - n + 1, dtype=np.int64)
            bad = np.zeros(n_tok - n + 1, dtype=bool)
            for k in range(n):
                col = self.tokens[k:n_tok - n + 1 + k]
                key = key * (1 << 20) + np.where(col < 0, 0, col)
                bad |= col < 0
            pos = np.nonzero(~bad)[0]
            order = np.argsort(key[pos], kind="stable")
            self._keys[n] = (key[pos][order], pos[order] + n)  # sorted keys, continuation start

    def _key(self, gram: list[int]) -> int:
        k = 0
        for t in gram:
            k = k * (1 << 20) + int(t)
        return k

    def propose(self, ids: list[int], budget: int) -> Trie:
        trie = Trie(ids[-1])
        for n in range(min(self.ngram, len(ids)), 0, -1):
            keys, starts = self._keys[n]
            k = self._key(ids[-n:])
            lo, hi = np.searchsorted(keys, k, "left"), np.searchsorted(keys, k, "right")
            if hi > lo:
                for s in starts[lo:min(hi, lo + self.matches)]:
                    cont = self.tokens[s:s + self.max_tokens].tolist()
                    if -1 in cont:
                        cont = cont[:cont.index(-1)]
                    if cont:
                        trie.add_count(cont)
                break
        return trie


def _same_vocab(target_tok, draft_tok) -> bool:
    if target_tok is None or draft_tok is None:
        return True
    return target_tok.get_vocab() == draft_tok.get_vocab()


class ModelDraft(Drafter):
    """A draft causal LM: a greedy chain while the draft is confident, runner-up tokens as leaves."""

    uses_model = True

    def __init__(self, draft, tokenizer=None, *, max_depth: int = 8, confidence: float = 0.3, width: int = 2,
                 leaf_min: float = 0.1, name: str | None = None):  # fmt: skip
        if isinstance(draft, (str, Path)):
            from ..models import load_model

            name = name or str(draft)
            draft, tokenizer = load_model(draft)
        self.draft, self.tokenizer = draft.eval(), tokenizer
        self.max_depth, self.confidence, self.width, self.leaf_min = max_depth, confidence, width, leaf_min
        self.name = f"model({name or type(draft).__name__})"
        self.runner: TreeModel | None = None
        self.cached: list[int] = []
        self.draft_forwards = 0

    def bind(self, target, tokenizer) -> None:
        if not _same_vocab(tokenizer, self.tokenizer):
            raise ConfigError(
                f"the draft {self.name[6:-1]} and the target {getattr(getattr(target, 'config', None), '_name_or_path', '?')} "
                "have different tokenizer vocabularies: a draft must share the target's tokenizer"
            )
        tv = target.get_output_embeddings().weight.shape[0] if target is not None else None
        dv = self.draft.get_output_embeddings().weight.shape[0]
        if tv is not None and dv != tv and self.tokenizer is None:
            raise ConfigError(f"the draft's vocabulary ({dv}) differs from the target's ({tv}): a draft must share the target's tokenizer")
        if self.runner is None:
            self.runner = TreeModel(self.draft)

    def reset(self) -> None:
        if self.runner is not None:
            self.runner.reset()
        self.cached = []

    def _sync(self, ids: list[int]) -> torch.Tensor:
        """Feed the draft up to ``ids``; returns its logits after ``ids[-1]``."""
        r = self.runner
        common = 0
        for a, b in zip(self.cached, ids[:-1]):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1, r.past)
        r.crop(common)
        self.cached = self.cached[:common]
        logits = r.prefill(ids[common:])
        self.draft_forwards += 1
        self.cached = list(ids)
        return logits[-1]

    def _chain(self, trie: Trie, logits: torch.Tensor, ids: list[int], budget: int, node: int = 0,
               score: float = 1.0) -> None:  # fmt: skip
        depth = trie.nodes[node].depth
        while len(trie) < budget and depth < self.max_depth:
            probs = torch.softmax(logits, -1)
            top = torch.topk(probs, self.width)
            toks, ps = top.indices.tolist(), top.values.tolist()
            best = trie.add(node, toks[0], score * ps[0])
            for t, p in zip(toks[1:], ps[1:]):
                if p >= self.leaf_min and len(trie) < budget:
                    trie.add(node, t, score * p)
            depth += 1
            score *= ps[0]
            if ps[0] < self.confidence or len(trie) >= budget or depth >= self.max_depth:
                break
            node = best
            logits = self.runner.prefill([toks[0]])[-1]
            self.draft_forwards += 1
            self.cached.append(toks[0])

    def propose(self, ids: list[int], budget: int) -> Trie:
        trie = Trie(ids[-1])
        self._chain(trie, self._sync(ids), ids, budget)
        return trie


class Compose(Drafter):
    """Several retrieval drafters: their tries fused by longest-prefix matching (scores normalised)."""

    def __init__(self, parts: list[Drafter]):
        self.parts = parts
        self.name = " + ".join(p.name for p in parts)
        self.uses_model = any(p.uses_model for p in parts)

    def bind(self, target, tokenizer) -> None:
        for p in self.parts:
            p.bind(target, tokenizer)

    def reset(self) -> None:
        for p in self.parts:
            p.reset()

    def propose(self, ids: list[int], budget: int) -> Trie:
        trie = Trie(ids[-1])
        for p in self.parts:
            t = p.propose(ids, budget)
            top = max((n.score for n in t.nodes[1:]), default=1.0) or 1.0
            trie.merge(t, 1.0 / top)
        return trie


class RASD(Drafter):
    """Retrieval tree pruned by the draft model's probabilities, fused with the draft model's tree.

    One draft forward scores every retrieval node (the draft's path probability). A node is kept
    when ``max(path probability, retrieval_weight * retrieval share) >= prune`` (the share is the
    fraction of the retrieved continuations through the node; ``retrieval_weight=0`` is the paper's
    pruning by the draft alone, a positive weight keeps well-supported copies that a weak draft
    doubts). The draft then extends its own greedy chain — starting after the retrieval path it
    agrees with (argmax at every node), whose cache entries the scoring forward already computed —
    and both trees are fused by longest-prefix matching into one trie; the caller keeps the best
    ``tree_budget`` nodes. ``extend_after=K`` (default 1; ``None``: always) skips the draft's chain when the
    draft already agrees with K retrieved tokens (the chain costs one draft forward per token; the scoring
    forward is one): in the benchmark it was as accepted and faster.
    """

    uses_model = True

    def __init__(self, retrieval: Drafter | list[Drafter], draft: ModelDraft, *, prune: float = 0.05,
                 retrieval_weight: float = 0.5, retrieval_nodes: int = 48, extend_after: int | None = 1):  # fmt: skip
        self.extend_after = extend_after  # skip the draft's own chain when it agrees with this many retrieved tokens
        self.retrieval = Compose(retrieval) if isinstance(retrieval, (list, tuple)) else retrieval
        self.draft = draft if isinstance(draft, ModelDraft) else ModelDraft(draft)
        self.prune, self.retrieval_weight, self.retrieval_nodes = prune, retrieval_weight, retrieval_nodes
        self.name = f"rasd({self.retrieval.name}, {self.draft.name})"
        self.pruned_nodes = 0
        self.retrieved_nodes = 0

    @property
    def draft_forwards(self) -> int:
        return self.draft.draft_forwards

    def bind(self, target, tokenizer) -> None:
        self.retrieval.bind(target, tokenizer)
        self.draft.bind(target, tokenizer)

    def reset(self) -> None:
        self.retrieval.reset()
        self.draft.reset()

    def propose(self, ids: list[int], budget: int) -> Trie:
        d = self.draft
        ret = self.retrieval.propose(ids, self.retrieval_nodes)
        if len(ret) == 0:
            return d.propose(ids, budget)
        rtree = ret.select(self.retrieval_nodes)
        counts = [ret.nodes[0].score] + [0.0] * (len(rtree) - 1)
        top = max((ret.nodes[j].score for j in ret.nodes[0].children.values()), default=1.0) or 1.0
        # one draft forward over (the tokens the draft has not seen) + the retrieval tree below the root
        r = d.runner
        common = 0
        for a, b in zip(d.cached, ids[:-1]):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1, r.past)
        r.crop(common)
        feed = ids[common:]
        m = len(feed)
        tokens = feed + rtree.tokens[1:]
        parents = list(range(-1, m - 1)) + [p + m - 1 for p in rtree.parents[1:]]
        logits = r.forward_tree(Tree(tokens, parents), last=len(rtree))  # row i: retrieval node i (0: the root)
        d.draft_forwards += 1
        logp = torch.log_softmax(logits, -1)
        best = logits.argmax(-1).tolist()
        # retrieval shares (count through the node / the best first token's count), by re-walking the trie
        node_of = [0] * len(rtree)
        for i in range(1, len(rtree)):
            node_of[i] = ret.child(node_of[rtree.parents[i]], rtree.tokens[i])
            counts[i] = ret.nodes[node_of[i]].score / top
        fused = Trie(ids[-1])
        score = [0.0] * len(rtree)
        score[0] = 1.0
        where = [0] * len(rtree)
        draft_p = [1.0] * len(rtree)
        self.retrieved_nodes += len(rtree) - 1
        for i in range(1, len(rtree)):
            p = rtree.parents[i]
            if score[p] <= 0:
                continue
            draft_p[i] = draft_p[p] * float(logp[p, rtree.tokens[i]].exp())
            s = max(draft_p[i], self.retrieval_weight * counts[i])
            if s < self.prune:
                self.pruned_nodes += 1
                continue
            score[i] = s
            where[i] = fused.add(where[p], rtree.tokens[i], s)
        # the retrieval path the draft agrees with: its cache entries are kept, the chain starts after it
        agree, cur = [], 0
        while True:
            nxt = next((c for c in rtree.children[cur] if rtree.tokens[c] == best[cur] and score[c] > 0), None)
            if nxt is None:
                break
            agree.append(nxt)
            cur = nxt
        r.keep(common, list(range(m)) + [m - 1 + i for i in agree])
        d.cached = list(ids) + [rtree.tokens[i] for i in agree]
        if self.extend_after is None or len(agree) < self.extend_after:
            d._chain(fused, logits[cur], ids, budget + len(fused), node=where[cur], score=draft_p[cur])
        return fused


def prompt_lookup(ngram: int = 2, max: int = 10, matches: int = 8) -> PromptLookup:  # noqa: A002 - the issue's name
    """Prompt-lookup drafter: continuations of earlier occurrences of the last ``ngram`` tokens (up to ``max``)."""
    return PromptLookup(ngram, max, matches)


def datastore(path, ngram: int = 3, max: int = 10, matches: int = 64) -> Datastore:  # noqa: A002
    """Retrieval drafter over a corpus file or folder (text or .jsonl), REST-style."""
    return Datastore(path, ngram, max, matches)


def model(draft, tokenizer=None, **kw) -> ModelDraft:
    """Draft-model drafter: any causal LM (or MODEL spec) with the target's tokenizer."""
    return ModelDraft(draft, tokenizer, **kw)


def rasd(retrieval, draft, **kw) -> RASD:
    """RASD: ``retrieval`` (a drafter or a list) pruned by ``draft``'s probabilities, fused with its tree."""
    return RASD(retrieval, draft if isinstance(draft, ModelDraft) else ModelDraft(draft), **kw)


def as_drafter(draft, tokenizer=None) -> Drafter | None:
    if draft is None or isinstance(draft, Drafter):
        return draft
    if isinstance(draft, (list, tuple)):
        return Compose([as_drafter(d) for d in draft])
    if isinstance(draft, torch.nn.Module) or isinstance(draft, (str, Path)):
        return ModelDraft(draft, tokenizer)
    raise ConfigError(f"draft must be a drafter, a model or a MODEL spec (got {type(draft).__name__})")

