"""Perplexity with the SparseGPT/Wanda protocol.

The evaluation text is tokenized once; the token stream is cut into non-overlapping windows of
``seqlen`` tokens (the tail shorter than a window is dropped); each window is scored on its own
(no context carried over), and perplexity = exp(mean over windows of the window's mean token
negative log-likelihood). With equal-length windows this is exp of the mean NLL over all
predicted tokens.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError


@torch.no_grad()
def perplexity(
    model: nn.Module,
    token_ids: Tensor,
    seqlen: int = 2048,
    max_windows: int | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Return ``{"perplexity", "nll", "tokens", "windows", "seqlen", "available_windows", "seconds"}``."""
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ConfigError(f"seqlen must be an integer >= 2 (one predicted token per window), got {seqlen!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1):
        raise ConfigError(f"max_windows must be an integer >= 1 or None (all windows), got {max_windows!r}")
    ids = token_ids.reshape(-1)
    available = ids.numel() // seqlen
    if available < 1:
        raise DataError(
            f"evaluation text has {ids.numel()} tokens, fewer than one window of --seqlen {seqlen}: "
            f"use more text or a smaller --seqlen"
        )
    n = available if max_windows is None else min(max_windows, available)
    from ..models.limits import vocab_size

    vocab = vocab_size(model)
    used = ids[: n * seqlen]
    if used.numel() and (int(used.min()) < 0 or (vocab is not None and int(used.max()) >= vocab)):
        raise DataError(f"evaluation ids run from {int(used.min())} to {int(used.max())}, outside the model's vocabulary "
                        f"[0, {vocab}): the tokenizer does not match the model")  # fmt: skip
    device = next(model.parameters()).device
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="perplexity", unit="window", dynamic_ncols=True)
    t0 = time.perf_counter()
    nlls = []
    for i in it:
        x = ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(input_ids=x, use_cache=False).logits.float()  # [1, T, V]
        nll = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="mean")
        nlls.append(nll.item())
    mean_nll = sum(nlls) / n
    return {
        "perplexity": math.exp(mean_nll),
        "nll": mean_nll,
        "tokens": n * seqlen,
        "windows": n,
        "available_windows": available,
        "seqlen": seqlen,
        "seconds": time.perf_counter() - t0,
    }


def gsm8k_answer_nlls(model, tokenizer, path, n: int | None = None) -> list[tuple[float, int]]:
    """Domain perplexity's parts on a GSM8K-layout JSON Lines file (``question`` / ``answer``):
    for each of the first ``n`` records, ``(summed NLL of the answer tokens, answer tokens)``,
    the answer `` {answer}`` scored with ``Question: {question}\\nAnswer:`` as context.
    ``exp(Σ nll / Σ tokens)`` is the answer perplexity (D-Pruner's and PASER's benchmarks)."""
    from pathlib import Path

    from .tasks import _read_records

    recs = _read_records(Path(path), ("question", "answer"))[:n]
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for r in recs:
            ctx = tokenizer(f"Question: {r['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
            ans = tokenizer(f" {r['answer']}", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + ans], device=dev)
            logits = model(input_ids=ids, use_cache=False).logits[0, len(ctx) - 1 : -1].float()
            out.append((float(F.cross_entropy(logits, ids[0, len(ctx) :], reduction="sum")), len(ans)))
    return out
