"""XQuAD retrieval-augmented QA with and without context pruning: the ``xquad-rag`` eval task.

``prunekit eval MODEL --tasks xquad-rag --context-prune provence:threshold=0.1`` reads each test
question twice — the full retrieved context and the pruned one — and reports SQuAD exact match and
F1 of the greedy answer, the teacher-forced log-likelihood of the gold answer, and the reader tokens
removed, side by side (the shape of ``--dynamic-experts``).

Protocol (Provence, arXiv 2501.16214, §4 setting on XQuAD English): articles 24-47 in file order
are the test half (the shipped provence heads were trained on 0-23); questions in a seed-0 shuffle,
the first ``limit``; BM25 ranks all 240 paragraphs and the top ``k`` are joined in rank order.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

PROMPT = ("Answer the question with a short phrase copied from the context.\n\nContext:\n{context}\n\n"
          "Question: {question}")  # fmt: skip
DEFAULT_FILE = "xquad/xquad.en.json"


def normalize(s: str) -> str:
    """SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(pred: str, golds: list[str]) -> float:
    return max(float(normalize(pred) == normalize(g)) for g in golds)


def f1(pred: str, golds: list[str]) -> float:
    """SQuAD token F1, the max over the gold answers."""

    def one(g: str) -> float:
        p, t = normalize(pred).split(), normalize(g).split()
        same = sum((Counter(p) & Counter(t)).values())
        if same == 0:
            return 0.0
        pr, rc = same / len(p), same / len(t)
        return 2 * pr * rc / (pr + rc)

    return max(one(g) for g in golds)


def parse_prune_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"provence:threshold=0.1"`` / ``"bm25:rate=0.5"`` → ``(method, {"threshold": 0.1})``."""
    from .core import METHODS, check_budget

    name, _, rest = str(spec).strip().partition(":")
    name = name.strip().lower()
    if name not in METHODS:
        raise ConfigError(f"--context-prune {spec!r}: unknown method {name!r}: use one of {', '.join(METHODS)}[:rate=R|threshold=T]")
    kw: dict[str, Any] = {}
    for item in filter(str.strip, rest.split(",")):
        key, eq, val = (x.strip() for x in item.partition("="))
        if not eq or key not in ("rate", "threshold"):
            raise ConfigError(f"--context-prune {spec!r}: {item!r} is not rate=R or threshold=T")
        try:
            kw[key] = float(val)
        except ValueError:
            raise ConfigError(f"--context-prune {spec!r}: {key}={val!r} is not a number") from None
    try:
        check_budget(name, kw.get("rate"), kw.get("threshold"))  # out of range: refused before any model loads
    except ConfigError as e:
        raise ConfigError(f"--context-prune {spec!r}: {e}") from None
    return name, kw


def rag_questions(path: str | Path, k: int = 5, limit: int | None = None, seed: int = 0) -> tuple[list[dict], float]:
    """Test-half questions with their top-``k`` BM25 paragraphs (``q["passages"]``), and the
    gold-paragraph recall@k over the returned questions."""
    from .scorers import bm25_scores, terms
    from .train import load_xquad, paragraphs, questions, split

    try:
        arts = load_xquad(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"xquad-rag data file {str(path)!r} unreadable ({e}): expected SQuAD v1.1 JSON (XQuAD English)") from None
    allp = paragraphs(arts)
    offset = len(paragraphs(split(arts, "train")))
    qs = questions(split(arts, "test"))
    if not qs:
        raise DataError(f"xquad-rag data file {str(path)!r} has no test-half questions (articles 24 onwards)")
    random.Random(seed).shuffle(qs)
    qs = qs[:limit] if limit else qs
    docs = [terms(p) for p in allp]
    hits = 0
    for q in qs:
        s = bm25_scores(terms(q["question"]), docs)
        top = sorted(range(len(allp)), key=lambda i: -s[i])[:k]
        hits += (q["pid"] + offset) in top
        q["passages"] = [allp[i] for i in top]
    return qs, hits / len(qs)


def _read(model, tok, question: str, context: str, golds: list[str], max_new_tokens: int) -> dict[str, Any]:
    import torch

    msgs = [{"role": "user", "content": PROMPT.format(context=context, question=question)}]
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    else:
        ids = torch.tensor([tok.encode(msgs[0]["content"] + "\nAnswer:")])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)  # fmt: skip
        pred = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip().split("\n")[0]
        gold = tok.encode(golds[0], add_special_tokens=False)
        full = torch.cat([ids, torch.tensor([gold])], 1)
        lp = torch.log_softmax(model(input_ids=full).logits[0, ids.shape[1] - 1 : -1].float(), -1)
    return {"em": exact_match(pred, golds), "f1": f1(pred, golds), "ll": lp.gather(1, torch.tensor(gold)[:, None]).sum().item(),
            "prefill": int(ids.shape[1]), "read_s": time.perf_counter() - t0, "pred": pred}  # fmt: skip


def evaluate_xquad_rag(model, tokenizer, path: str | Path | None = None, limit: int | None = None,
                       context_prune: str | None = None, *, k: int = 5, max_new_tokens: int = 16,
                       progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Score ``model`` as the reader on XQuAD RAG; with ``context_prune`` (``METHOD[:rate=R|threshold=T]``)
    also on the pruned contexts, tokens counted with the reader's tokenizer.

    Returns ``{"metrics": {em, f1, gold_ll, prefill_tokens}, "n", "recall_at_k", "path"}`` and, with
    pruning, ``"pruned": {"metrics": ..., "rate_achieved", "tokens_before", "tokens_after", "pruner_s"}``.
    """
    from ..eval.tasks import data_dir

    p = Path(path).expanduser() if path else data_dir() / DEFAULT_FILE
    if p.is_dir():
        p = p / Path(DEFAULT_FILE).name
    if not p.is_file():
        raise DataError(f"xquad-rag data file {str(p)!r} not found: expected XQuAD English (SQuAD v1.1 JSON); pass xquad-rag:PATH")
    spec = parse_prune_spec(context_prune) if context_prune else None
    qs, recall = rag_questions(p, k=k, limit=limit)
    from tqdm.auto import tqdm

    from .core import prune

    full_rows, pr_rows, before, after, pruner_s = [], [], 0, 0, 0.0
    t0 = time.perf_counter()
    for q in tqdm(qs, desc="xquad-rag", disable=not progress):
        full_rows.append(_read(model, tokenizer, q["question"], "\n\n".join(q["passages"]), q["answers"], max_new_tokens))
        if spec:
            t1 = time.perf_counter()
            r = prune(q["question"], q["passages"], method=spec[0], reader_tokenizer=tokenizer, lm=(model, tokenizer), **spec[1])
            pruner_s += time.perf_counter() - t1
            before, after = before + r.tokens_before, after + r.tokens_after
            pr_rows.append(_read(model, tokenizer, q["question"], r.text, q["answers"], max_new_tokens))

    def agg(rows: list[dict]) -> dict[str, float]:
        n = len(rows)
        return {"em": sum(r["em"] for r in rows) / n, "f1": sum(r["f1"] for r in rows) / n,
                "gold_ll": sum(r["ll"] for r in rows) / n, "prefill_tokens": sum(r["prefill"] for r in rows) / n,
                "read_s": sum(r["read_s"] for r in rows) / n}  # fmt: skip

    out: dict[str, Any] = {"metrics": agg(full_rows), "n": len(qs), "recall_at_k": recall, "k": k, "path": str(p),
                           "seconds": time.perf_counter() - t0}  # fmt: skip
    if spec:
        out["pruned"] = {"spec": context_prune, "metrics": agg(pr_rows), "tokens_before": before, "tokens_after": after,
                         "rate_achieved": 1 - after / before if before else 0.0, "pruner_s": pruner_s / len(qs)}  # fmt: skip
    return out
