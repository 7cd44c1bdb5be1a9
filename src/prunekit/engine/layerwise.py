"""The block loop, written once.

1. Capture the inputs of decoder block 0 (hidden states *and* every keyword argument: attention
   mask, position ids, rotary position embeddings, ...) for the calibration windows.
2. For each block: attach accumulators for exactly the statistics the method declares, run the
   block over the calibration set, hand the statistics to a callback (which prunes the block's
   Linears in place), free them, and run the block again so the next block sees pruned outputs.

Only one block's activations and statistics live in memory at a time. Two forward passes per
block are the physical floor of a sequential prune; ``propagate="dense"`` skips the second pass's
use (the next block then sees the *dense* outputs, computed in the first pass). The statistics
pass of a pruned-propagation run stops as soon as the last target Linear has seen its input
(the block output is not needed) once one full batch of that kind of block showed each target
running exactly once per forward; a method that needs no statistics skips the pass entirely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..models.adapters import ModelAdapter
from .stats import LayerStats, Stat, StatCollector, StatsComplete

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """Inputs of one chunk of calibration windows to the current block."""

    hidden: Tensor  # [batch, seq, hidden]
    kwargs: dict[str, Any]


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, adapter: ModelAdapter, input_ids: Tensor, batch_size: int = 8
) -> list[BlockInputs]:
    """Run the model up to block 0 and record its inputs, one entry per chunk of windows."""
    block0 = adapter.blocks(model)[0]
    device = next(model.parameters()).device
    captured: list[BlockInputs] = []

    def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kw["use_cache"] = False
        kw.pop("past_key_values", None)
        kw.pop("cache", None)
        kw.pop("past_key_value", None)
        captured.append(BlockInputs(hidden, kw))
        raise _StopForward

    handle = block0.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for i in range(0, input_ids.shape[0], batch_size):
            chunk = input_ids[i : i + batch_size].to(device)
            try:
                model(input_ids=chunk, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def linears_in(block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    return {
        f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear) and n
    }


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    adapter: ModelAdapter,
    calib_ids: Tensor,
    *,
    needs: frozenset[Stat] | set[Stat],
    select: Callable[[str, nn.Linear], bool],
    on_block: Callable[[int, Mapping[str, nn.Linear], Mapping[str, LayerStats]], None],
    batch_size: int = 8,
    propagate: Literal["pruned", "dense"] = "pruned",
    sample_tokens: int = 0,
    progress: Callable[[Sequence], Sequence] | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Calibrate and prune block by block.

    Args:
        model: a causal LM (its ``config.use_cache`` is left untouched).
        adapter: where the blocks are.
        calib_ids: LongTensor ``[nsamples, seqlen]``.
        needs: statistics to accumulate for each selected Linear.
        select: ``(full_name, linear) -> bool``: which Linears are targets.
        on_block: ``(block_index, targets, stats)``; prunes the targets in place.
        batch_size: calibration windows per forward call.
        propagate: feed the next block the pruned block's outputs (default) or the dense ones.
        sample_tokens: also keep the first N input rows of each target (for error reports).
        progress: wraps the block iterator (e.g. tqdm).
        timings: if given, receives ``capture``, ``stats_forward``, ``prune`` and
            ``propagate_forward`` seconds.
    """
    t = timings if timings is not None else {}
    for k in ("capture", "stats_forward", "prune", "propagate_forward"):
        t.setdefault(k, 0.0)
    t0 = time.perf_counter()
    inputs = capture_block_inputs(model, adapter, calib_ids, batch_size)
    t["capture"] += time.perf_counter() - t0
    blocks = adapter.blocks(model)
    stop_ok: dict[tuple, bool] = {}  # per kind of block: may its statistics pass stop early?
    it = range(len(blocks))
    for i in progress(it) if progress else it:
        block = blocks[i]
        targets = {
            n: m for n, m in linears_in(block, adapter.block_prefix(i)).items() if select(n, m)
        }
        t0 = time.perf_counter()
        dense_out: list[Tensor] = []
        keep_out = propagate == "dense" or not targets
        collect = bool(needs) or sample_tokens > 0
        # A statistics pass whose output is thrown away stops each forward once the last target
        # saw its input; with nothing to collect (magnitude) it is skipped altogether.
        # The first batch of a new kind of block runs in full and decides for the rest.
        prefix = adapter.block_prefix(i)
        kind = (type(block), tuple(n[len(prefix) :] for n in targets))
        stop = not keep_out and stop_ok.get(kind, False)
        with StatCollector(targets, needs, sample_tokens, stop_when_complete=stop) as col:
            for inp in inputs if keep_out or collect else ():
                try:
                    out = _block_output(block(inp.hidden, **inp.kwargs))
                except StatsComplete:
                    out = None
                if not keep_out and kind not in stop_ok:
                    stop_ok[kind] = col.stop_when_complete = col.each_target_ran_once()
                col.end_batch()
                if keep_out:  # never stopped early: stop_when_complete is off
                    dense_out.append(out)
        stats = col.results()
        t["stats_forward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if targets:
            on_block(i, targets, stats)
        del stats
        t["prune"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if dense_out:
            for inp, out in zip(inputs, dense_out):
                inp.hidden = out
        else:
            for inp in inputs:
                inp.hidden = _block_output(block(inp.hidden, **inp.kwargs))
        t["propagate_forward"] += time.perf_counter() - t0
    del inputs
