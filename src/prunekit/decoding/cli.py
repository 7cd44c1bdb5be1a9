"""``prunekit decode MODEL [--draft DRAFT] [--lookup 2:10] [--datastore FILE] [--tree 16] --prompt TEXT|--prompts FILE.jsonl``.

``--draft`` alone drafts with that model; ``--lookup``/``--datastore`` alone draft by retrieval;
``--draft`` with either is RASD (the retrieval tree pruned by the draft's probabilities, fused
with the draft's tree). Greedy output is exactly the target's plain greedy output; ``--check``
also runs plain greedy and says so, with the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..cli.flags import note as _note
from ..errors import ConfigError, DataError


def _lookup(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NGRAM:MAX (e.g. 2:10)") from None
    if not (1 <= a <= 64 and 1 <= b <= 256):
        raise argparse.ArgumentTypeError(f"{text!r}: NGRAM must be 1..64 and MAX 1..256")
    return a, b


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("decode", help="speculative decoding with draft/retrieval trees (exact greedy)")
    p.add_argument("model", help="the target MODEL (its output is what you get)")
    p.add_argument("--draft", default=None, help="a draft MODEL with the same tokenizer (e.g. a prunekit-pruned folder)")
    p.add_argument("--lookup", type=_lookup, default=None, metavar="NGRAM:MAX",
                   help="prompt lookup: continuations of the last NGRAM tokens' earlier occurrences, up to MAX tokens")
    p.add_argument("--datastore", default=None, metavar="FILE",
                   help="retrieval from a corpus (text, .jsonl with a 'text' field, or a folder)")
    p.add_argument("--tree", type=int_flag(1, 1024), default=16, metavar="N",
                   help="tree budget: drafted tokens verified per target forward (default 16)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", default=None, help="the prompt text")
    src.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                     help="one prompt per line: a JSON string or an object with 'prompt' (or 'text')")
    p.add_argument("--max-new-tokens", type=int_flag(1, 1 << 20), default=128, help="default 128")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--sample", action="store_true", help="sample (tree rejection sampling) instead of greedy")
    p.add_argument("--temperature", type=float_flag(0, 100), default=1.0)
    p.add_argument("--top-k", type=int_flag(0, 1 << 24), default=0, help="sampling: keep the K likeliest tokens (0: all)")
    p.add_argument("--seed", type=int_flag(0, 2**63 - 1), default=0)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="weights' dtype for target and draft (default: as stored)")
    p.add_argument("--check", action="store_true",
                   help="also decode with plain greedy: report whether the ids are identical and the speed-up")
    p.add_argument("--threads", type=int_flag(0, 1024), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(_handler=cmd_decode)
    return p


def read_prompts(path: str) -> list[str]:
    f = Path(path)
    if not f.is_file():
        raise DataError(f"--prompts {path} does not exist")
    from ..data.sources import json_lines

    out = []
    for n, rec in json_lines(f):
        if isinstance(rec, dict):
            rec = rec.get("prompt", rec.get("text"))
        if not isinstance(rec, str) or not rec.strip():
            raise DataError(f"--prompts {path}: line {n} has no prompt text (a JSON string or {{\"prompt\": ...}})")
        out.append(rec)
    if not out:
        raise DataError(f"--prompts {path} holds no prompts")
    return out


def build_drafter(a: argparse.Namespace, dtype: str):
    from . import drafters as Dr

    retrieval = []
    if a.lookup:
        retrieval.append(Dr.prompt_lookup(*a.lookup))
    if a.datastore:
        ds = Dr.datastore(a.datastore)
        retrieval.append(ds)
    draft = None
    if a.draft:
        from ..models import load_model

        if not a.json:
            print(f"loading the draft {a.draft} ...", flush=True)
        dm, dtok = load_model(a.draft, dtype=dtype)
        draft = Dr.ModelDraft(dm, dtok, name=a.draft)
    if draft is not None and retrieval:
        return Dr.RASD(retrieval if len(retrieval) > 1 else retrieval[0], draft)
    if draft is not None:
        return draft
    if retrieval:
        return retrieval[0] if len(retrieval) == 1 else Dr.Compose(retrieval)
    return None


def cmd_decode(a: argparse.Namespace) -> dict[str, Any]:
    import time

    import torch

    from ..models import load_model
    from .generate import encode_prompt, generate, plain_greedy

    if a.threads:
        torch.set_num_threads(a.threads)
    prompts = [a.prompt] if a.prompt is not None else read_prompts(a.prompts)
    if a.prompt is not None and not a.prompt.strip():
        raise DataError("--prompt is empty: give some text to continue")
    if a.check and a.sample:
        raise ConfigError("--check compares greedy outputs: drop --sample")
    if a.datastore and not Path(a.datastore).exists():
        raise DataError(f"--datastore {a.datastore} does not exist")
    if not a.json:
        print(f"loading {a.model} ...", flush=True)
    model, tok = load_model(a.model, dtype=a.dtype)
    from ..models.limits import max_positions

    limit = max_positions(model)
    for i, text in enumerate(prompts):
        n = len(encode_prompt(tok, text, a.chat))
        if limit is not None and n >= limit:
            where = f"prompt {i + 1} of {a.prompts}" if a.prompts else "the prompt"
            raise DataError(f"{where} has {n} tokens: the context window of {a.model} is {limit}")
    drafter = build_drafter(a, a.dtype)
    if drafter is None:
        _note("no --draft, --lookup or --datastore: plain decoding (one target forward per token)")
    rows = []
    for i, text in enumerate(prompts):
        r = generate(model, tok, text, draft=drafter, max_new_tokens=a.max_new_tokens, tree_budget=a.tree,
                     do_sample=a.sample, temperature=a.temperature, top_k=a.top_k, seed=a.seed + i, chat=a.chat)  # fmt: skip
        row: dict[str, Any] = {"prompt": i, "text": r.text, "ids": r.ids, **{k: v for k, v in r.stats.to_dict().items()}}
        if a.check:
            ids = encode_prompt(tok, text, a.chat)
            t0 = time.perf_counter()
            ref = plain_greedy(model, ids, a.max_new_tokens)
            dt = time.perf_counter() - t0
            row["identical"] = ref == r.ids
            row["plain_tokens_per_second"] = len(ref) / dt if dt > 0 else 0.0
            row["speedup"] = row["tokens_per_second"] / row["plain_tokens_per_second"] if row["plain_tokens_per_second"] else 0.0
        rows.append(row)
        if not a.json:
            print(r.text if len(prompts) == 1 else f"[{i}] {r.text}")
            s = r.stats
            extra = f", identical to plain greedy: {row['identical']}, {row['speedup']:.2f}x" if a.check else ""
            print(f"  {s.new_tokens} tokens, {s.tokens_per_forward:.2f} per target forward, "
                  f"{s.tokens_per_second:.1f} tokens/s (draft {s.draft_seconds:.2f}s, verify {s.verify_seconds:.2f}s){extra}")  # fmt: skip
    tot_new = sum(r["new_tokens"] for r in rows)
    tot_fw = sum(r["target_forwards"] for r in rows)
    tot_s = sum(r["seconds"] for r in rows)
    res: dict[str, Any] = {
        "model": a.model, "draft": drafter.name if drafter is not None else "none", "tree": a.tree,
        "sample": a.sample, "prompts": len(rows), "new_tokens": tot_new, "target_forwards": tot_fw,
        "tokens_per_forward": tot_new / tot_fw if tot_fw else 0.0,
        "forwards_per_token": tot_fw / tot_new if tot_new else 0.0,
        "tokens_per_second": tot_new / tot_s if tot_s else 0.0,
        "draft_seconds": sum(r["draft_seconds"] for r in rows), "verify_seconds": sum(r["verify_seconds"] for r in rows),
        "results": rows,
    }  # fmt: skip
    if a.check:
        res["identical"] = sum(r["identical"] for r in rows)
        res["median_speedup"] = statistics.median(r["speedup"] for r in rows)
    return res
