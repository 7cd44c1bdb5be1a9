"""The block loop, written once.

1. Capture the inputs of decoder block 0 (hidden states) and the arguments the model passes to
   *each* block (attention mask, position ids, rotary position embeddings, alibi, ...: Gemma2/3
   and Qwen2-MoE pass per-layer sliding-window masks and per-layer-type rotary tables) for the
   calibration windows, in one cheap pass with every block replaced by a recorder.
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

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from .stats import LayerStats, Stat, StatCollector, StatsComplete
from .targets import ExpertSlice, prunable_in

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


class BlockLocator(Protocol):
    """What the engine needs to know about a model: a ``ModelAdapter`` or discovered blocks."""

    def blocks(self, model: nn.Module) -> nn.ModuleList: ...

    def block_prefix(self, i: int) -> str: ...


@dataclass
class BlockInputs:
    """Inputs of one chunk of calibration windows to the current block.

    ``kwargs`` are block 0's keyword arguments; ``block_kwargs[i]`` those the model passed to
    block ``i`` (per-layer sliding-window masks, per-layer-type rotary tables: Gemma2/3,
    Qwen2-MoE). Positional arguments after the hidden states are stored by parameter name.
    """

    hidden: Tensor  # [batch, seq, hidden]
    kwargs: dict[str, Any]
    block_kwargs: list[dict[str, Any]] = field(default_factory=list)

    def kwargs_for(self, i: int) -> dict[str, Any]:
        return self.block_kwargs[i] if i < len(self.block_kwargs) else self.kwargs


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


_CACHE_KEYS = ("past_key_values", "past_key_value", "cache", "layer_past")


def _is_cache(v: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, Cache)


def _split_call(forward: Callable, args: tuple, kwargs: dict) -> tuple[Tensor, dict[str, Any]]:
    """``(hidden_states, every other argument by name)`` of one block call, cache dropped.

    GPT-2 passes the cache and the attention mask positionally; they are bound to their
    parameter names so that replaying the block needs only keyword arguments."""
    kwargs = dict(kwargs)
    if len(args) > 1:
        sig = inspect.signature(forward)
        bound = sig.bind_partial(*args, **kwargs).arguments
        kwargs = {}
        for name, val in bound.items():
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(val)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if val:
                    raise TypeError("block takes *args")  # caught: fall back to block 0 only
            else:
                kwargs[name] = val
        first = next(iter(sig.parameters))
        hidden = kwargs.pop(first)
    else:
        hidden = args[0] if args else kwargs.pop("hidden_states")
    kw = {k: v for k, v in kwargs.items() if k != "hidden_states" and k not in _CACHE_KEYS and not _is_cache(v)}
    if _accepts(forward, "use_cache"):
        kw["use_cache"] = False
    return hidden, kw


def _accepts(forward: Callable, name: str) -> bool:
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _Recorder(nn.Module):
    """Stands in for block ``index`` during capture: records its arguments, returns its input.

    Swapped into the ModuleList (rather than patching ``forward``) so hooks on the real block do
    not fire on the identity pass; attribute reads fall through to the real block."""

    def __init__(self, index: int, block: nn.Module, sink: Callable[[int, Tensor, dict], None]):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_sink", sink)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        hidden, kw = _split_call(self._block.forward, args, kwargs)
        self._sink(self._index, hidden, kw)
        return hidden


def _capture_all_blocks(
    model: nn.Module, blocks: nn.ModuleList, chunks: list[Tensor]
) -> list[BlockInputs]:
    """One forward per chunk with every block replaced by a recorder that returns its input
    unchanged; the last one stops the forward. Costs the embeddings, not the blocks."""
    last = len(blocks) - 1
    rec: list[BlockInputs] = []

    def sink(i: int, hidden: Tensor, kw: dict) -> None:
        if i == 0:
            rec.append(BlockInputs(hidden, kw))
        elif not rec or len(rec[-1].block_kwargs) != i:
            raise RuntimeError("blocks not called once each, in order")
        rec[-1].block_kwargs.append(kw)
        if i == last:
            raise _StopForward

    real = list(blocks)
    for i, blk in enumerate(real):
        blocks[i] = _Recorder(i, blk, sink)
    try:
        for ci, chunk in enumerate(chunks):
            try:
                model(input_ids=chunk, use_cache=False)
            except _StopForward:
                pass
            if len(rec) != ci + 1 or len(rec[-1].block_kwargs) != len(real):
                raise RuntimeError("blocks not called once each, in order")
    finally:
        for i, blk in enumerate(real):
            blocks[i] = blk
    return rec


def _capture_block0(model: nn.Module, block0: nn.Module, chunks: list[Tensor]) -> list[BlockInputs]:
    captured: list[BlockInputs] = []

    def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(BlockInputs(*_split_call(mod.forward, args, kwargs)))
        raise _StopForward

    handle = block0.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for chunk in chunks:
            try:
                model(input_ids=chunk, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, adapter: BlockLocator, input_ids: Tensor, batch_size: int = 8
) -> list[BlockInputs]:
    """Run the model up to its blocks and record their inputs, one entry per chunk of windows.

    Every block's keyword arguments are recorded (``BlockInputs.kwargs_for(i)``); a model whose
    layer loop does not call each block once, in order, falls back to block 0's arguments for
    all blocks."""
    blocks = adapter.blocks(model)
    device = next(model.parameters()).device
    chunks = [input_ids[i : i + batch_size].to(device) for i in range(0, input_ids.shape[0], batch_size)]
    try:
        return _capture_all_blocks(model, blocks, chunks)
    except Exception as e:  # an unusual layer loop: a real input error re-raises below
        log.debug("per-block capture failed (%s); using block 0's arguments for every block", e)
        return _capture_block0(model, blocks[0], chunks)


def linears_in(block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of one block (the engine itself uses ``targets.prunable_in``,
    which adds Conv1D and expert slices)."""
    return {
        f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear) and n
    }


def collect_block_stats(block: nn.Module, i: int, targets: Mapping[str, Any], inputs: list[BlockInputs],
                        needs: frozenset[Stat], sample_tokens: int, keep_out: bool, stop_ok: dict, kind: tuple
                        ) -> tuple[dict[str, LayerStats], list[Tensor]]:  # fmt: skip
    """One statistics pass of block ``i`` over the calibration inputs; returns ``(stats, outputs)``
    (outputs only when ``keep_out``).

    A pass whose output is thrown away stops each forward once the last target saw its input;
    with nothing to collect (magnitude) it is skipped altogether. The first batch of a new
    ``kind`` of block runs in full and decides (in ``stop_ok``) whether the rest may stop early.
    """
    dense_out: list[Tensor] = []
    collect = bool(needs) or sample_tokens > 0
    stop = not keep_out and stop_ok.get(kind, False)
    with StatCollector(targets, needs, sample_tokens, stop_when_complete=stop) as col:
        for inp in inputs if keep_out or collect else ():
            try:
                out = _block_output(block(inp.hidden, **inp.kwargs_for(i)))
            except StatsComplete:
                out = None
            if not keep_out and kind not in stop_ok:
                stop_ok[kind] = col.stop_when_complete = col.each_target_ran_once()
            col.end_batch()
            if keep_out:  # never stopped early: stop_when_complete is off
                dense_out.append(out)
    return col.results(), dense_out


def propagate_block(block: nn.Module, i: int, inputs: list[BlockInputs], dense_out: list[Tensor]) -> None:
    """The next block's inputs: the dense outputs kept by the statistics pass, else a forward of
    the (now pruned) block."""
    if dense_out:
        for inp, out in zip(inputs, dense_out):
            inp.hidden = out
    else:
        for inp in inputs:
            inp.hidden = _block_output(block(inp.hidden, **inp.kwargs_for(i)))


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    adapter: BlockLocator,
    calib_ids: Tensor,
    *,
    needs: frozenset[Stat] | set[Stat],
    select: Callable[[str, nn.Module | ExpertSlice], bool],
    on_block: Callable[[int, Mapping[str, nn.Module | ExpertSlice], Mapping[str, LayerStats]], None],
    batch_size: int = 8,
    propagate: Literal["pruned", "dense"] = "pruned",
    sample_tokens: int = 0,
    progress: Callable[[Sequence], Sequence] | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Calibrate and prune block by block.

    Args:
        model: a causal LM (its ``config.use_cache`` is left untouched).
        adapter: where the blocks are (a ``ModelAdapter`` or ``discover_blocks(model)``).
        calib_ids: LongTensor ``[nsamples, seqlen]``.
        needs: statistics to accumulate for each selected Linear.
        select: ``(full_name, target) -> bool``: which prunable matrices are targets (Linears,
            Conv1Ds, expert slices: ``targets.prunable_in``).
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
            n: m for n, m in prunable_in(block, adapter.block_prefix(i)).items() if select(n, m)
        }
        t0 = time.perf_counter()
        keep_out = propagate == "dense" or not targets
        prefix = adapter.block_prefix(i)
        kind = (type(block), tuple(n[len(prefix) :] for n in targets))
        stats, dense_out = collect_block_stats(block, i, targets, inputs, frozenset(needs), sample_tokens,
                                               keep_out, stop_ok, kind)  # fmt: skip
        t["stats_forward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if targets:
            on_block(i, targets, stats)
        del stats
        t["prune"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        propagate_block(block, i, inputs, dense_out)
        t["propagate_forward"] += time.perf_counter() - t0
    del inputs
