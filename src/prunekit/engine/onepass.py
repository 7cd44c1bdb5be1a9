"""One forward per block: prune each target the moment every calibration window has reached it.

The two-pass loop (:mod:`prunekit.engine.layerwise`) runs each block twice over the calibration
set: once to gather statistics, once with the pruned weights to feed the next block. Here each
calibration batch runs the block's forward in its own thread. A forward-pre-hook on every target
Linear parks the batch's input there and waits on a barrier; when the last batch arrives, one
thread folds the parked inputs into the statistics **in batch order** (so the result does not
depend on thread timing), prunes the target, and releases everyone; the batches go on with the
pruned weights. The single forward thus both gathers statistics and produces the next block's
inputs, and every target after the first sees the outputs of the already-pruned targets before
it ("true-sequential": ``o_proj`` is calibrated on pruned ``q/k/v``, ``down_proj`` on the pruned
MLP input), with no per-family code.

Targets that share an input (q/k/v, gate/up: the same tensor object in every batch) share one
statistic, as in the two-pass loop. A block whose targets do not all run exactly once per batch
(mixture-of-experts slices, conditional paths) is not safe for barriers: it falls back to the
two-pass loop for that block (``fallbacks`` counts them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .layerwise import BlockInputs, BlockLocator, _block_output, capture_block_inputs, collect_block_stats, propagate_block
from .stats import LayerStats, Stat, _Accumulator, _is_expert
from .targets import ExpertSlice, prunable_in

BARRIER_TIMEOUT_S = 3600.0  # a target some batch never reaches would otherwise wait forever


class _Block:
    """The hooks and barrier of one block's threaded forward."""

    def __init__(self, targets: Mapping[str, nn.Module], n: int, needs: frozenset[Stat], sample_tokens: int,
                 on_target: Callable[[str, nn.Module, LayerStats], None]) -> None:  # fmt: skip
        self.targets, self.n, self.needs, self.sample_tokens = targets, n, needs, sample_tokens
        self.on_target = on_target
        self.barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT_S)
        self.local = threading.local()
        self.parked: dict[str, list[Tensor | None]] = {}
        self.last: tuple[str, list[Tensor | None], LayerStats] | None = None  # the previous target's inputs
        self.order: list[str] = []
        self.prune_s = 0.0

    def hook(self, name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            b = self.local.batch
            self.parked.setdefault(name, [None] * self.n)[b] = args[0]
            if self.barrier.wait() == 0:  # exactly one thread: every batch's input is here
                t0 = time.perf_counter()
                self._prune(name, mod)
                self.prune_s += time.perf_counter() - t0
            self.barrier.wait()  # nobody multiplies by the weight before it is pruned

        return fn

    def _prune(self, name: str, mod: nn.Module) -> None:
        xs = self.parked.pop(name)
        if self.last is not None and all(a is b for a, b in zip(xs, self.last[1])):
            stats = LayerStats(name, self.last[2].num_tokens, self.last[2].tensors)  # shared input
        else:
            acc = _Accumulator(self.needs | ({Stat.SAMPLE} if self.sample_tokens else set()), self.sample_tokens)
            for x in xs:  # batch order: the same sums whatever thread came first
                acc.update(x)
            stats = LayerStats(name, acc.n, acc.finish())
        self.last = (name, xs, stats)
        self.order.append(name)
        self.on_target(name, mod, stats)

    def run(self, block: nn.Module, i: int, inputs: list[BlockInputs]) -> None:
        outs: list[Tensor | None] = [None] * self.n
        errors: list[BaseException] = []

        def work(b: int) -> None:
            self.local.batch = b
            try:
                with torch.no_grad():
                    outs[b] = _block_output(block(inputs[b].hidden, **inputs[b].kwargs_for(i)))
            except threading.BrokenBarrierError:
                pass
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                self.barrier.abort()

        handles = [h for name, m in self.targets.items() for h in [m.register_forward_pre_hook(self.hook(name))]]
        threads = [threading.Thread(target=work, args=(b,), daemon=True, name=f"prunekit-batch-{b}") for b in range(self.n)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins: Ctrl-C reaches the main thread
        except BaseException:
            self.barrier.abort()
            raise
        finally:
            for h in handles:
                h.remove()
        if errors:
            raise errors[0]
        missing = [n for n in self.targets if n not in self.order]
        if missing or any(o is None for o in outs):
            raise RuntimeError(f"one-pass block {i}: targets never reached by every batch: {', '.join(missing) or '?'}")
        for inp, out in zip(inputs, outs):
            inp.hidden = out


@torch.no_grad()
def run_onepass(
    model: nn.Module,
    adapter: BlockLocator,
    calib_ids: Tensor,
    *,
    needs: frozenset[Stat] | set[Stat],
    select: Callable[[str, nn.Module | ExpertSlice], bool],
    on_target: Callable[[str, nn.Module, LayerStats], None],
    on_block: Callable[[int, Mapping[str, nn.Module | ExpertSlice], Mapping[str, LayerStats]], None],
    batch_size: int = 8,
    sample_tokens: int = 0,
    progress: Callable[[Sequence], Sequence] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, int]:
    """Calibrate and prune block by block with one forward per block (see the module docstring).

    ``on_target(name, module, stats)`` prunes one target in place the moment its statistics are
    complete; ``on_block`` is the two-pass callback, used for blocks that fall back. Returns
    ``{"onepass_blocks": ..., "fallback_blocks": ...}``; ``timings`` gets ``capture``,
    ``forward`` (the one forward, pruning excluded) and ``prune``.
    """
    t = timings if timings is not None else {}
    for k in ("capture", "forward", "prune", "stats_forward", "propagate_forward"):
        t.setdefault(k, 0.0)
    t0 = time.perf_counter()
    inputs = capture_block_inputs(model, adapter, calib_ids, batch_size)
    t["capture"] += time.perf_counter() - t0
    blocks = adapter.blocks(model)
    counts = {"onepass_blocks": 0, "fallback_blocks": 0}
    stop_ok: dict[tuple, bool] = {}
    once: dict[tuple, bool] = {}  # per kind of block: do its targets run exactly once per batch?
    it = range(len(blocks))
    for i in progress(it) if progress else it:
        block, prefix = blocks[i], adapter.block_prefix(i)
        targets = {n: m for n, m in prunable_in(block, prefix).items() if select(n, m)}
        t0 = time.perf_counter()
        if targets and not any(_is_expert(m) for m in targets.values()) and _runs_once(block, i, targets, inputs, once):
            state = _Block(targets, len(inputs), frozenset(needs), sample_tokens, on_target)
            state.run(block, i, inputs)
            t["prune"] += state.prune_s
            t["forward"] += time.perf_counter() - t0 - state.prune_s
            counts["onepass_blocks"] += 1
            continue
        counts["fallback_blocks"] += int(bool(targets))
        kind = (type(block), tuple(n[len(prefix):] for n in targets))
        stats, dense_out = collect_block_stats(block, i, targets, inputs, frozenset(needs), sample_tokens,
                                               not targets, stop_ok, kind)  # fmt: skip
        t["stats_forward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if targets:
            on_block(i, targets, stats)
        t["prune"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        propagate_block(block, i, inputs, dense_out)
        t["propagate_forward"] += time.perf_counter() - t0
    return counts


def _runs_once(block: nn.Module, i: int, targets: Mapping[str, nn.Module], inputs: list[BlockInputs],
               once: dict[tuple, bool]) -> bool:  # fmt: skip
    """Whether every target's forward runs exactly once per batch (checked once per kind of block
    on its first batch, with counting hooks and no pruning): barriers need it."""
    if len(inputs) < 1:
        return False
    key = (type(block), tuple(sorted(n.rsplit(".", 1)[-1] for n in targets)), len(targets))
    if key not in once:
        calls = dict.fromkeys(targets, 0)
        hs = [m.register_forward_pre_hook(lambda mod, a, n=n: calls.__setitem__(n, calls[n] + 1)) for n, m in targets.items()]
        try:
            block(inputs[0].hidden, **inputs[0].kwargs_for(i))  # the first batch, weights untouched
        except Exception:  # noqa: BLE001 - a block that cannot run on one window: use two passes
            calls = {}
        finally:
            for h in hs:
                h.remove()
        once[key] = bool(calls) and all(c == 1 for c in calls.values())
    return once[key]
