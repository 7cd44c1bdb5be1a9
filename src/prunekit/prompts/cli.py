"""``prunekit prompt-search MODEL --task sst-2 --seed 13 --method promptquine --budget 2000 [--json]``."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli.flags import float_flag, int_flag
from .api import METHODS
from .tasks import SEEDS, TASKS


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prompt-search", help="prompt pruning / search for few-shot classification (PromptQuine, ClaPS)")
    p.add_argument("model", help="the MODEL whose prompt is searched")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--seed", type=int, default=13, help=f"16-shot split and search seed: one of {', '.join(map(str, SEEDS))}")
    p.add_argument("--method", choices=METHODS, default="promptquine")
    p.add_argument("--budget", type=int_flag(1, 1 << 24), default=2000, help="LM calls (one prompt on one split; cached)")
    p.add_argument("--k", type=int_flag(1, 4096), default=4, help="promptquine: demonstrations in the start prompt")
    p.add_argument("--population", type=int_flag(1, 4096), default=8)
    p.add_argument("--survivors", type=int_flag(1, 4096), default=3)
    p.add_argument("--clusters", type=int_flag(1, 1 << 20), default=64, help="claps: k-means clusters")
    p.add_argument("--keep-fraction", type=float_flag(0, 1), default=0.25, help="claps: probed tokens kept")
    p.add_argument("--length", type=int_flag(1, 256), default=4, help="claps: prompt tokens")
    p.add_argument("--test-limit", type=int_flag(0, 1 << 24), default=500, help="test examples (fixed subsample; 0: all)")
    p.add_argument("--data", default=None, help="the fewshot-classification folder (default: the shared one)")
    p.add_argument("--threads", type=int_flag(0, 1024), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(_handler=cmd_prompt_search)
    return p


def cmd_prompt_search(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..models import load_model
    from .api import SearchConfig, search
    from .tasks import load_task

    if a.threads:
        torch.set_num_threads(a.threads)
    task = load_task(a.task, a.seed, a.data, a.test_limit or None)
    model, tok = load_model(a.model)
    cfg = SearchConfig(k=a.k, population=a.population, survivors=a.survivors, clusters=a.clusters,
                       keep_fraction=a.keep_fraction, length=a.length)  # fmt: skip
    r = search(model, tok, task, method=a.method, budget=a.budget, seed=a.seed, config=cfg, progress=not a.json)
    if not a.json:
        print(f"prompt ({r.prompt_tokens} tokens): {r.prompt!r}")
        print(f"dev accuracy {r.dev_accuracy:.3f}, test accuracy {r.test_accuracy}, {r.lm_calls} LM calls "
              f"({r.cache_hits} cached), {r.seconds:.1f}s")  # fmt: skip
    return {"model": a.model, **r.to_dict()}
