"""ClaPS: clustering and pruning for efficient black-box prompt search (Zhou, Wan, Vulić,
Korhonen, arXiv:2310.12774, Findings of EMNLP 2023).

1. **Cluster.** k-means of the LM's input embeddings ``E ∈ R^{V×d}`` into ``C`` clusters; each
   cluster is represented by its token nearest the centroid.
2. **Prune.** Influence probe: each representative ``t`` alone as the prompt, scored on the
   train split; influence ``I(t) = acc([t]) − acc(∅)`` (margin breaks ties). Keep the top
   ``keep_fraction`` of the representatives: the pruned search space ``V'``.
3. **Search** prompts of ``length`` tokens from ``V'`` on the dev split: *greedy* (position by
   position, the best token of ``V'`` appended) or *genetic* (:func:`prunekit.search.evolve`,
   mutation = one position resampled from ``V'``).

Deviation: the probe is the single-token prompt (the paper also probes by masking tokens of a
prompt); scikit-learn's k-means when installed, else a short torch Lloyd loop.
"""

from __future__ import annotations

import random

import torch


def kmeans(E: torch.Tensor, C: int, seed: int, iters: int = 20) -> torch.Tensor:
    """Cluster labels ``[V]`` of the rows of ``E`` (k-means, ``C`` clusters)."""
    X = E.detach().float().cpu()
    try:
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=C, random_state=seed, n_init=1, batch_size=4096)
        return torch.from_numpy(km.fit_predict(X.numpy())).long()
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        mu = X[torch.randperm(X.shape[0], generator=g)[:C]].clone()
        for _ in range(iters):
            lab = torch.cdist(X, mu).argmin(1)
            for c in range(C):
                m = lab == c
                if m.any():
                    mu[c] = X[m].mean(0)
        return torch.cdist(X, mu).argmin(1)


def representatives(E: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor) -> list[int]:
    """Per cluster, the allowed token nearest its centroid (clusters with no allowed token skipped)."""
    X = E.detach().float().cpu()
    reps = []
    for c in labels.unique().tolist():
        idx = ((labels == c) & allowed).nonzero().flatten()
        if len(idx) == 0:
            continue
        mu = X[labels == c].mean(0)
        reps.append(int(idx[(X[idx] - mu).norm(dim=1).argmin()]))
    return reps


def mutate_one(vocab: list[int]):
    def mut(z: tuple[int, ...], rng: random.Random) -> tuple[int, ...] | None:
        j, t = rng.randrange(len(z)), rng.choice(vocab)
        return None if z[j] == t else (*z[:j], t, *z[j + 1 :])

    return mut
