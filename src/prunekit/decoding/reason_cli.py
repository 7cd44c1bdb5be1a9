"""``prunekit reason MODEL --data gsm8k --n 8 --prune deepprune:JUDGE --json`` and
``prunekit reason train-judge MODEL --data gsm8k-train --limit 48 --out judge.safetensors``.

The first samples ``--n`` traces per question, prunes them (``--prune``: none, ``esc:window=W``,
``deepconf[:...]``, ``deepprune:JUDGE``), votes, and reports the accuracy of the vote and the
tokens spent; the second trains DeepPrune's judge (see :mod:`prunekit.decoding.judge`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..errors import ConfigError, DataError

DATASETS = {  # name -> (file under the data folder, question field, answer field, answer kind)
    "gsm8k": ("gsm8k/test.jsonl", "question", "answer", "gsm8k"),
    "gsm8k-train": ("gsm8k/train.jsonl", "question", "answer", "gsm8k"),
    "math500": ("math/math500/test.jsonl", "problem", "answer", "math"),
    "aime24": ("math/aime24/test.jsonl", "problem", "answer", "math"),
    "aime25": ("math/aime25/test.jsonl", "problem", "answer", "math"),
}


def load_questions(spec: str, limit: int | None = None, kind: str | None = None) -> tuple[list[tuple[str, str | None]], str]:
    """``[(question, canonical gold)]`` and the answer kind, from a dataset name or a JSONL file
    (fields ``question``/``problem`` and ``answer``).

    Raises:
        DataError: the file is missing, not JSON Lines, or lacks the fields.
    """
    from . import answers as A

    if spec in DATASETS:
        from ..eval.tasks import data_dir

        rel, qf, af, k = DATASETS[spec]
        path = data_dir() / rel
        k = kind or k
    else:
        path, qf, af, k = Path(spec).expanduser(), None, "answer", kind or "gsm8k"
    if not path.is_file():
        raise DataError(f"--data {spec}: {path} does not exist (datasets: {', '.join(DATASETS)}, or a .jsonl file)")
    from ..data.sources import json_lines

    out = []
    for ln, rec in json_lines(path):
        fq = qf or next((f for f in ("question", "problem") if isinstance(rec, dict) and f in rec), "question")
        if not isinstance(rec, dict) or not isinstance(rec.get(fq), str) or not rec[fq].strip() or "answer" not in rec:
            raise DataError(f"--data {path}:{ln} lacks a string 'question' (or 'problem') and an 'answer' field")
        out.append((rec[fq], A.gold(str(rec[af]), k)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"--data {path} holds no records")
    return out, k


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the reasoning MODEL (folder, or an alias such as qwen2.5-coder-0.5b)")
    p.add_argument("--data", default="gsm8k", help=f"questions: {', '.join(DATASETS)} or a .jsonl file (default gsm8k)")
    p.add_argument("--kind", choices=("gsm8k", "math", "mc"), default=None,
                   help="answer extraction and equivalence (default: the dataset's; gsm8k for a file)")
    p.add_argument("--limit", type=int_flag(1), default=None, help="the first N questions")
    p.add_argument("--n", type=int_flag(1, 4096), default=8, help="traces per question (default 8)")
    p.add_argument("--max-new-tokens", type=int_flag(1, 1 << 20), default=256, help="per trace (default 256)")
    p.add_argument("--temperature", type=float_flag(0, 100, lo_open=False), default=0.7, help="0: greedy (default 0.7)")
    p.add_argument("--top-p", type=float_flag(0, 1), default=0.95)
    p.add_argument("--seed", type=int_flag(0, 2**62), default=0, help="trace i of question q: seed + 1000 q + i")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int_flag(0, 1024), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


class _TrainJudgeDispatch:
    """Mixed into the ``reason`` parser: ``reason train-judge ...`` parses with the train-judge parser."""

    train_parser: argparse.ArgumentParser

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if args and args[0] == "train-judge":
            return self.train_parser.parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)  # type: ignore[misc]


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reason", help="parallel reasoning with trace pruning (DeepPrune, ESC, DeepConf)",
                              description="prunekit reason MODEL [...] | prunekit reason train-judge MODEL [...] --out FILE")  # fmt: skip
    _common(p)
    p.add_argument("--prune", default=None, metavar="SPEC",
                   help="none (full self-consistency), esc:window=W, deepconf[:low|high|warmup=M,window=w,percentile=p], "
                        "deepprune:JUDGE[,k=K,tau=T]")  # fmt: skip
    p.add_argument("--traces", action="store_true", help="with --json: every trace's text and why it stopped")
    p.set_defaults(_handler=cmd_reason)
    t = type(p)(prog=f"{p.prog} train-judge", description="train DeepPrune's judge on partial traces")
    _common(t)
    t.set_defaults(data="gsm8k-train", limit=48, max_new_tokens=192)
    t.add_argument("--prefixes", default="16,32,64", help="prefix lengths k in tokens (default 16,32,64)")
    t.add_argument("--heldout", type=float_flag(0, 0.9), default=0.25, help="fraction of the questions held out (AUROC)")
    t.add_argument("--epochs", type=int_flag(1, 10000), default=40)
    t.add_argument("--encoder", choices=("minilm", "hidden"), default="minilm",
                   help="prefix representation: all-MiniLM-L6-v2 of the text, or the model's own hidden states")
    t.add_argument("--layer", type=int, default=-1, help="--encoder hidden: the hidden_states index (default -1, the last)")
    t.add_argument("--out", required=True, help="the judge file to write (.safetensors)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(_handler=cmd_train_judge)
    p.__class__ = type("ReasonParser", (_TrainJudgeDispatch, type(p)), {})
    p.train_parser = t  # type: ignore[attr-defined]
    return p


def _setup(a):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    qs, kind = load_questions(a.data, a.limit, a.kind)
    from ..models import load_model

    if not a.json:
        print(f"loading {a.model} ...", flush=True)
    model, tok = load_model(a.model, dtype=a.dtype)
    return qs, kind, model, tok


def _judge_path(spec: str | None) -> str | None:
    if spec is None or not spec.strip().lower().startswith("deepprune"):
        return None
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    return next((x.strip() for x in rest.split(",") if x.strip() and "=" not in x), None)


def cmd_reason(a: argparse.Namespace) -> dict[str, Any]:
    from .reason import check_sampling, parse_prune, reason

    check_sampling(a.n, a.max_new_tokens, a.temperature, a.top_p)
    jp = _judge_path(a.prune)
    if jp is not None and not Path(jp).expanduser().is_file():  # before the model loads
        raise ConfigError(f"judge {jp} does not exist: train one with `prunekit reason train-judge MODEL --out {jp}`")
    if _judge_path(a.prune) is None and not (a.prune or "").strip().lower().startswith("deepprune"):
        parse_prune(a.prune)  # a bad spec fails before the model loads
    load_questions(a.data, a.limit, a.kind)  # a bad data file too
    qs, kind, model, tok = _setup(a)
    pruner = parse_prune(a.prune, model=model)
    rows, t0 = [], time.perf_counter()
    for i, (q, gold) in enumerate(qs):
        r = reason(model, tok, q, n=a.n, prune=pruner, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   top_p=a.top_p, seed=a.seed + 1000 * i, kind=kind)  # fmt: skip
        row = {"question": i, "gold": gold, "answer": r.answer, "correct": r.answer is not None and r.answer == gold,
               **r.stats.to_dict(), "stopped": sum(t.stopped for t in r.traces)}  # fmt: skip
        if a.traces:
            row["traces"] = [t.to_dict(with_tokens=False) for t in r.traces]
        rows.append(row)
        if not a.json:
            print(f"[{i}] answer {r.answer} (gold {gold}) {'ok' if row['correct'] else 'x'}: {r.stats.tokens} tokens, "
                  f"{row['stopped']}/{a.n} stopped", flush=True)  # fmt: skip
    res = {"model": a.model, "data": a.data, "prune": pruner.spec(), "n": a.n, "questions": len(rows),
           "accuracy": sum(r["correct"] for r in rows) / len(rows), "tokens": sum(r["tokens"] for r in rows),
           "forwards": sum(r["forwards"] for r in rows), "rows": sum(r["rows"] for r in rows),
           "seconds": time.perf_counter() - t0, "results": rows}  # fmt: skip
    if not a.json:
        print(f"accuracy {res['accuracy']:.3f} over {len(rows)} questions, {res['tokens']} tokens, {res['seconds']:.1f}s")
    return res


def _prefixes(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"--prefixes {text!r} is not a comma-separated list of token counts (e.g. 16,32,64)") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--prefixes {text!r}: give token counts >= 1 (e.g. 16,32,64)")
    return ks


def cmd_train_judge(a: argparse.Namespace) -> dict[str, Any]:
    from ..export.hf import check_output_file
    from .judge import JudgeTrainConfig, train_judge
    from .reason import check_sampling

    out = check_output_file(a.out, overwrite=a.overwrite)
    check_sampling(a.n, a.max_new_tokens, a.temperature, a.top_p)
    if a.n < 2:
        raise ConfigError(f"--n {a.n}: the judge learns from pairs of traces, use --n 2 or more")
    cfg = JudgeTrainConfig(prefixes=_prefixes(a.prefixes), heldout=a.heldout, epochs=a.epochs, seed=a.seed,
                           encoder=a.encoder, layer=a.layer)  # fmt: skip
    qs, kind, model, tok = _setup(a)
    judge, rep = train_judge(model, tok, [q for q, _ in qs], n=a.n, max_new_tokens=a.max_new_tokens,
                             temperature=a.temperature, top_p=a.top_p, seed=a.seed, kind=kind, config=cfg,
                             progress=not a.json)  # fmt: skip
    judge.save(out)
    if not a.json:
        print(f"judge -> {out}; held-out AUROC per prefix: " + ", ".join(f"k={k}: {v:.3f}" for k, v in rep["auroc"].items()))
    return {"out": str(out), **rep}
