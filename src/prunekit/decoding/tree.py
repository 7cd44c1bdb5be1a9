"""Token trees: candidate continuations as a trie, chosen within a node budget, flattened for one forward.

A tree is rooted at the last committed token (the one the target has not seen yet). Every other
node is a drafted token whose parent is the token before it. Drafters build a :class:`Trie` with a
score per node (a draft path probability, or a retrieval count); :meth:`Trie.select` keeps the
``budget`` best nodes, always closed under ancestors (a node is only kept with its parent), and
returns a :class:`Tree` whose nodes are ordered parents-first.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch


@dataclass
class _Node:
    token: int
    parent: int  # index in Trie.nodes, -1 for the root
    depth: int
    score: float
    children: dict[int, int] = field(default_factory=dict)  # token -> node index


class Trie:
    """Candidate continuations after ``root``; a node's score must not exceed its parent's."""

    def __init__(self, root: int):
        self.nodes: list[_Node] = [_Node(int(root), -1, 0, float("inf"))]

    def __len__(self) -> int:  # drafted nodes, the root excluded
        return len(self.nodes) - 1

    def child(self, node: int, token: int) -> int | None:
        return self.nodes[node].children.get(int(token))

    def add(self, parent: int, token: int, score: float) -> int:
        """Add (or merge: the higher score wins) ``token`` under ``parent``; returns its index."""
        token = int(token)
        p = self.nodes[parent]
        i = p.children.get(token)
        if i is None:
            i = len(self.nodes)
            self.nodes.append(_Node(token, parent, p.depth + 1, float(score)))
            p.children[token] = i
        elif score > self.nodes[i].score:
            self.nodes[i].score = float(score)
        return i

    def insert(self, tokens, scores) -> None:
        """Insert a path below the root; ``scores[k]`` is the score of its k-th node."""
        cur = 0
        for t, s in zip(tokens, scores):
            cur = self.add(cur, t, s)

    def add_count(self, tokens, weight: float = 1.0) -> None:
        """Insert a path, adding ``weight`` to the score of every node on it (retrieval counts)."""
        cur = 0
        for t in tokens:
            t = int(t)
            i = self.nodes[cur].children.get(t)
            if i is None:
                i = self.add(cur, t, 0.0)
            self.nodes[i].score += weight
            cur = i

    def merge(self, other: Trie, scale: float = 1.0) -> None:
        """Fuse ``other`` (same root) into this trie by longest-prefix matching: shared prefixes are one path."""
        stack = [(0, 0)]
        while stack:
            mine, theirs = stack.pop()
            for tok, j in other.nodes[theirs].children.items():
                i = self.add(mine, tok, other.nodes[j].score * scale)
                stack.append((i, j))

    def select(self, budget: int) -> Tree:
        """The best ``budget`` nodes (best score first, shallower on ties), closed under ancestors."""
        keep = [0]
        new_index = {0: 0}
        heap: list[tuple[float, int, int]] = []
        for j in self.nodes[0].children.values():
            heapq.heappush(heap, (-self.nodes[j].score, self.nodes[j].depth, j))
        while heap and len(keep) <= budget:
            _, _, j = heapq.heappop(heap)
            new_index[j] = len(keep)
            keep.append(j)
            for c in self.nodes[j].children.values():
                heapq.heappush(heap, (-self.nodes[c].score, self.nodes[c].depth, c))
        tokens = [self.nodes[j].token for j in keep]
        parents = [-1] + [new_index[self.nodes[j].parent] for j in keep[1:]]
        return Tree(tokens, parents)


class Tree:
    """A flattened token tree: node 0 is the root, ``parents[i] < i`` for every other node."""

    def __init__(self, tokens: list[int], parents: list[int]):
        assert len(tokens) == len(parents) and parents[0] == -1
        self.tokens = [int(t) for t in tokens]
        self.parents = [int(p) for p in parents]
        self.depth = [0] * len(tokens)
        self.children: list[list[int]] = [[] for _ in tokens]
        for i in range(1, len(tokens)):
            p = self.parents[i]
            assert 0 <= p < i, "a tree's nodes must be ordered parents-first"
            self.depth[i] = self.depth[p] + 1
            self.children[p].append(i)

    @classmethod
    def chain(cls, tokens: list[int]) -> Tree:
        return cls(list(tokens), [-1] + list(range(len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def ancestors_mask(self) -> torch.Tensor:
        """``(n, n)`` bool: ``[i, j]`` is True when node j is node i or one of its ancestors."""
        n = len(self.tokens)
        m = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            m[i, i] = True
            p = self.parents[i]
            if p >= 0:
                m[i] |= m[p]
        return m

    def path_to(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]
