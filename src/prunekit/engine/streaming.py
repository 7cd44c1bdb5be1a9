"""Prune a checkpoint larger than memory: one decoder block at a time, from disk to disk.

The sequential loop of SparseGPT (Frantar & Alistarh, ICML 2023, §4: "we only need to load one
Transformer block at a time") and of llm-compressor's sequential onloading, run on the shards of
a safetensors folder:

1. Build the model on the ``meta`` device from its ``config.json`` (no weights), load only what
   runs before the blocks (embeddings, rotary tables are computed), and capture block 0's inputs
   and every block's arguments for the calibration windows (``layerwise.capture_block_inputs``).
2. For each block: read its tensors from the shards onto ``device``, collect the statistics the
   method declares (``StatCollector``, fp32), prune every target with the method exactly as
   :func:`prunekit.api.prune_` does, run the pruned block to get the next block's inputs, write
   its tensors to an output shard at once and put the block back on ``meta``.
3. Copy the other tensors (embeddings, final norm, ``lm_head``) and the config, generation
   config and tokenizer files, write ``model.safetensors.index.json`` and ``prunekit.json``.

Peak memory is one block, its statistics and the calibration activations, whatever the number of
blocks. The dtype is kept (bf16 stays bf16; statistics and the methods' math are fp32 and cast
back on write) unless ``dtype`` overrides it.

**Resume.** Work happens in a temporary folder beside the output whose name depends only on the
output path (``.NAME.tmp-prunekit-resume-<hash>``; ``export.hf``'s stale-folder cleanup never
takes it for a dead run's). After each block its shard, the next block's inputs and the report so
far are written, then ``.resume/state.json`` (atomic renames, so a ``kill -9`` at any moment
leaves a consistent state). ``resume=True`` continues from the last finished block and ends
bit-identical to an uninterrupted run; the state records a hash of everything that determines
the result (config, calibration ids, dtype, device type, world size, the input shards), and a
different one is refused.

**Data-parallel statistics** (torch.distributed, any backend): inside an initialised process
group each rank forwards a contiguous share of the calibration windows; before pruning a block
the statistics are summed over ranks (raw sums and token counts: Hessian sums ``Σ x xᵀ``, squared
norms; means/variances by Chan et al.'s pairwise formula), so every rank prunes identically, and
rank 0 writes. The result equals a single process's up to float summation order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PruneConfig
from ..errors import ConfigError, ModelLoadError, OutputError, PrunekitError
from ..export.hf import OutputSlot, pid_alive, versions
from ..models import shards
from ..report import LayerReport, PruneReport
from .layerwise import BlockInputs, capture_block_inputs, collect_block_stats, propagate_block
from .stats import LayerStats, Stat
from .targets import ExpertSlice, prunable_in, unsupported_experts, weight_of

log = logging.getLogger(__name__)

REPORT_TOKENS = 4096  # as api.REPORT_TOKENS
RESUME_TAG = "resume-"
STATE_DIR = ".resume"
STATE_VERSION = 1
_COPY_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".partial")
_COPY_SKIP_NAMES = {shards.INDEX_NAME, "prunekit.json", "pytorch_model.bin.index.json"}


# --- device and process group ------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None → cuda when available else cpu; ``"cuda"`` without a GPU is a ConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a torch device: pass cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (a CPU-only build)"
            raise ConfigError(
                f"device={device!r} but torch {torch.__version__} sees no CUDA GPU (CUDA build: {build}): "
                "pass device='cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA GPUs are visible: pass cuda:0..")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"device={device!r} is not supported: pass cpu, cuda, cuda:N or auto")
    return dev


class _Group:
    """The torch.distributed process group this run is part of (world 1 when there is none)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.cpu_only = self.on and dist.get_backend() == "gloo"

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (a new tensor, on ``t``'s device)."""
        if not self.on:
            return t
        import torch.distributed as dist

        buf = t.detach().to("cpu" if self.cpu_only else t.device, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_distributed_from_env(device: str | torch.device | None = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` in the
    environment): NCCL for a CUDA device, gloo otherwise. Returns whether this process is part of
    a group of more than one rank; a no-op without ``torchrun`` or when a group already exists."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = resolve_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return dist.get_world_size() > 1


def _agree(group: _Group, err: PrunekitError | None) -> None:
    """Raise on every rank when rank 0 hit a user error in a step only it runs (reserving the
    output, reading the resume state), so that the other ranks do not wait for it forever."""
    msgs = group.gather(None if err is None else (type(err).__name__, str(err)))
    if err is not None:
        raise err
    first = next((m for m in msgs if m is not None), None)
    if first is not None:
        kinds = {"ConfigError": ConfigError, "OutputError": OutputError, "ModelLoadError": ModelLoadError}
        raise kinds.get(first[0], ConfigError)(f"rank 0: {first[1]}")


def _share(calib: Tensor, group: _Group) -> Tensor:
    """This rank's contiguous share of the calibration windows (rank 0 gets the first)."""
    if group.world == 1:
        return calib
    n = calib.shape[0]
    if n < group.world:
        raise ConfigError(f"{n} calibration windows cannot be shared by {group.world} ranks: use at least {group.world} (--nsamples)")
    lo, hi = group.rank * n // group.world, (group.rank + 1) * n // group.world
    return calib[lo:hi]


def _reduce_stats(stats: Mapping[str, LayerStats], targets: Mapping[str, nn.Module | ExpertSlice],
                  needs: frozenset[Stat], group: _Group) -> dict[str, LayerStats]:  # fmt: skip
    """Statistics over every rank's tokens: raw sums are all-reduced, then normalised again.

    Every rank calls this with the same names in the same order (sorted), so the collectives
    match; a target no token reached locally contributes zeros."""
    if group.world == 1:
        return dict(stats)
    out: dict[str, LayerStats] = {}
    for name in sorted(stats):
        s = stats[name]
        n_in = weight_of(targets[name]).shape[1]
        dev = weight_of(targets[name]).device
        n_loc = torch.tensor([float(s.num_tokens)], dtype=torch.float64, device=dev)
        n_all = int(group.all_sum(n_loc).item())
        t: dict[Stat, Tensor] = {}
        if Stat.SAMPLE in s:
            t[Stat.SAMPLE] = s[Stat.SAMPLE]  # report only: rank 0's share starts the calibration set
        if Stat.INPUT_SQNORM in needs:
            loc = s.tensors.get(Stat.INPUT_SQNORM)
            loc = loc if loc is not None else torch.zeros(n_in, dtype=torch.float32, device=dev)
            t[Stat.INPUT_SQNORM] = group.all_sum(loc)
        if Stat.HESSIAN in needs:
            loc = s.tensors.get(Stat.HESSIAN)
            gram = loc * (s.num_tokens / 2.0) if loc is not None else torch.zeros(n_in, n_in, dtype=torch.float32, device=dev)
            t[Stat.HESSIAN] = group.all_sum(gram).mul_(2.0 / max(n_all, 1))
        if Stat.INPUT_MEAN in needs or Stat.INPUT_VAR in needs:
            t.update(_reduce_moments(s, n_in, dev, n_all, needs, group))
        out[name] = LayerStats(name, n_all, t if n_all else {})
    return out


def _reduce_moments(s: LayerStats, n_in: int, dev: torch.device, n_all: int, needs: frozenset[Stat],
                    group: _Group) -> dict[Stat, Tensor]:  # fmt: skip
    """Pooled mean and population variance (Chan et al. 1979): Σ n_r μ_r / N and
    (Σ n_r σ²_r + Σ n_r μ_r² − N μ²) / N."""
    zero = torch.zeros(n_in, dtype=torch.float32, device=dev)
    n = float(s.num_tokens)
    mean = s.tensors.get(Stat.INPUT_MEAN, zero) if n else zero
    var = s.tensors.get(Stat.INPUT_VAR, zero) if n else zero
    tot = max(n_all, 1)
    mu = group.all_sum(mean * n) / tot
    out = {Stat.INPUT_MEAN: mu} if Stat.INPUT_MEAN in needs else {}
    if Stat.INPUT_VAR in needs:
        second = group.all_sum(var * n + mean.pow(2) * n)
        out[Stat.INPUT_VAR] = (second / tot - mu.pow(2)).clamp_min_(0)
    return out


# --- the output folder and its resume state ----------------------------------------------------
def resume_dir(out: Path) -> Path:
    """The deterministic work folder of a resumable run writing to ``out`` (an absolute path)."""
    h = hashlib.sha256(str(out).encode()).hexdigest()[:12]
    return out.parent / f".{out.name}.tmp-prunekit-{RESUME_TAG}{h}"


class _ResumableSlot(OutputSlot):
    """An :class:`OutputSlot` whose temp folder is :func:`resume_dir` and survives a failure once it
    holds finished blocks (``keep``), so that ``resume=True`` can continue from it."""

    def __init__(self, out: str | os.PathLike, overwrite: bool, *, protect: list[str], notify: Callable[[str], None]) -> None:
        self.keep = False
        super().__init__(out, overwrite, protect=protect, notify=notify)

    def _make_tmp(self) -> None:
        """The deterministic resume folder (finished blocks of an earlier run are never removed here)."""
        self.tmp = resume_dir(self.target)
        try:
            (self.tmp / STATE_DIR).mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError:
            self.tmp = None  # may hold an earlier run's finished blocks: not ours to remove
            raise

    def _lock(self) -> None:
        lock = self.tmp / STATE_DIR / "lock"
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and pid_alive(pid):
            self.tmp = None  # not ours to remove
            raise OutputError(f"--out {self.spec} is being written by another prunekit run (pid {pid}): wait for it or choose another folder")
        lock.write_text(str(os.getpid()))

    def discard(self) -> None:
        if self.keep and self.tmp is not None and self.tmp.exists():
            self.notify(f"kept {self.tmp} (finished blocks): rerun the same command with --resume to continue")
            self.tmp = None
            self._created = []
            return
        super().discard()


def _atomic_json(obj: Any, path: Path) -> None:
    part = path.with_name(path.name + ".partial")
    part.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(part, path)


def _inputs_path(state: Path, block: int, rank: int) -> Path:
    return state / f"inputs-{block:05d}-rank{rank}.pt"


def _save_inputs(inputs: list[BlockInputs], path: Path) -> None:
    part = path.with_name(path.name + ".partial")
    with shards.disk_full_is_resumable(part):
        torch.save([inp.hidden.detach().to("cpu") for inp in inputs], part)
    os.replace(part, path)


def _load_inputs(inputs: list[BlockInputs], path: Path, device: torch.device) -> None:
    try:
        hidden = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise OutputError(f"resume state {path} is unreadable ({type(e).__name__}): rerun without --resume") from None
    if len(hidden) != len(inputs):
        raise OutputError(f"resume state {path} holds {len(hidden)} chunks, expected {len(inputs)}: rerun without --resume")
    for inp, h in zip(inputs, hidden):
        inp.hidden = h.to(device)


def _run_hash(config: PruneConfig, calib: Tensor | None, ckpt: shards.Checkpoint, dtype: torch.dtype,
              device: torch.device, world: int, report_tokens: int) -> str:  # fmt: skip
    """Hash of everything that determines the output bits."""
    h = hashlib.sha256()
    files = sorted({f for f in ckpt.files.values()})
    body = {
        "config": config.to_dict(), "dtype": str(dtype), "device": device.type, "world": world,
        "report_tokens": report_tokens, "prunekit_streaming": STATE_VERSION,
        "shards": [(f, (ckpt.folder / f).stat().st_size) for f in files],
    }  # fmt: skip
    h.update(json.dumps(body, sort_keys=True, default=str).encode())
    if calib is not None:
        h.update(str(tuple(calib.shape)).encode())
        h.update(calib.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- per-block work -----------------------------------------------------------------------------
def _to(obj: Any, device: torch.device, memo: dict[int, Any]) -> Any:
    """``obj`` with every tensor moved to ``device``; a tensor shared by several blocks'
    arguments (rotary tables, masks) is moved once and stays shared."""
    if isinstance(obj, Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # keep obj alive so its id is not reused
        return memo[id(obj)][1]
    if isinstance(obj, tuple):
        return tuple(_to(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, memo) for k, v in obj.items()}
    return obj


def _inputs_to(inputs: list[BlockInputs], device: torch.device) -> None:
    memo: dict[int, Any] = {}
    for inp in inputs:
        inp.hidden = inp.hidden.to(device)
        inp.kwargs = _to(inp.kwargs, device, memo)
        inp.block_kwargs = [_to(kw, device, memo) for kw in inp.block_kwargs]


def _collect(block: nn.Module, i: int, targets: Mapping[str, nn.Module | ExpertSlice], inputs: list[BlockInputs],
             needs: frozenset[Stat], sample_tokens: int, keep_out: bool, stop_ok: dict, kind: tuple
             ) -> tuple[dict[str, LayerStats], list[Tensor]]:  # fmt: skip
    """One statistics pass over the block: the in-memory engine's own (``collect_block_stats``)."""
    return collect_block_stats(block, i, targets, inputs, needs, sample_tokens, keep_out, stop_ok, kind)


class _Pruner:
    """Prunes one target exactly as :func:`prunekit.api.prune_` does and records its LayerReport."""

    def __init__(self, method: Any, pattern: Any, per_layer: Mapping[str, float], needs: frozenset[Stat]) -> None:
        self.method, self.pattern, self.per_layer, self.needs = method, pattern, per_layer, needs
        self.idle: list[str] = []

    def __call__(self, name: str, lin: nn.Module | ExpertSlice, stats: LayerStats) -> LayerReport:
        from ..api import prune_target

        lr = prune_target(name, lin, stats, self.method, self.pattern, self.per_layer[name], self.needs, "dense")
        if lr.info.get("idle"):
            self.idle.append(name)
        return lr


# --- the run --------------------------------------------------------------------------------------
class _Run:
    """State of one streaming prune (built by :func:`prune_streaming`)."""

    def __init__(self, model_dir: str | os.PathLike, config: PruneConfig, device: torch.device,
                 dtype: torch.dtype | None, group: _Group, report_tokens: int) -> None:  # fmt: skip
        from ..models.discovery import engine_adapter
        from ..models.loading import resolve_model

        self.src = resolve_model(model_dir)
        if self.src.kind != "folder":
            raise ConfigError(
                f"streaming prunes a local safetensors folder; {str(model_dir)!r} is a {self.src.kind}: "
                "prune it in memory (without --stream), or save it with save_pretrained first"
            )
        self.folder = Path(self.src.path)
        self.ckpt = shards.Checkpoint(self.folder)
        self.hf_config = _load_config(self.folder)
        self.override = dtype
        self.dtype = dtype or _config_dtype(self.hf_config) or self.ckpt.stored_float_dtype() or torch.float32
        self.model = shards.empty_model(self.hf_config, self.dtype)
        self.adapter = engine_adapter(self.model)
        self.blocks = self.adapter.blocks(self.model)
        self.blocks_path = self.adapter.block_prefix(0).rsplit(".", 1)[0]
        self.head = _output_head_name(self.model)
        self.device, self.group, self.report_tokens = device, group, report_tokens
        self.config = config
        have = set(self.ckpt.keys())
        self.layouts = []
        lacking: list[str] = []
        for i, b in enumerate(self.blocks):
            lay, miss = shards.layout_of(b, self.adapter.block_prefix(i), have)
            self.layouts.append(lay)
            lacking += miss
        self._check_layout(have, lacking)

    def _check_layout(self, have: set[str], lacking: list[str]) -> None:
        """Every block tensor the model declares comes from the checkpoint (same key, or the
        per-expert keys transformers fuses on load), and the checkpoint has no block tensor
        the model lacks."""
        if lacking:
            raise ModelLoadError(
                f"{self.folder}: the checkpoint has no tensor {lacking[0]!r} ({len(lacking)} block tensors "
                "missing) in a layout prunekit can stream: prune it in memory (without --stream)"
            )
        used = {k for lay in self.layouts for src in lay.values() for k in src.keys}
        extra = sorted(k for k in have - used if k.startswith(self.blocks_path + "."))
        if extra:
            raise ModelLoadError(
                f"{self.folder}: block tensor {extra[0]!r} ({len(extra)} in all) is not a parameter of "
                f"{type(self.model).__name__}: its keys differ from the model's; prune it in memory (without --stream)"
            )
        self.other_keys = sorted(have - used)

    def targets(self, i: int) -> dict[str, nn.Module | ExpertSlice]:
        prefix = self.adapter.block_prefix(i)
        return {n: m for n, m in prunable_in(self.blocks[i], prefix).items() if self.config.targets.matches(n)}

    def load_embeddings(self) -> None:
        """Load what runs before the blocks (everything outside them except the output head) on
        the CPU, for the capture pass."""
        shards.materialize(self.model, "", self.ckpt, "cpu", only_present=True,
                           skip=(self.blocks_path, *((self.head,) if self.head else ())))  # fmt: skip

    def free_embeddings(self) -> None:
        shards.release(self.model, skip=(self.blocks_path,))


def _load_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except Exception as e:
        reason = " ".join(str(e).split())[:300]
        raise ModelLoadError(f"could not read {folder / 'config.json'}: {reason}") from None


def _config_dtype(cfg: Any) -> torch.dtype | None:
    dt = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None


def _output_head_name(model: nn.Module) -> str:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return ""
    for n, m in model.named_modules():
        if m is head:
            return n
    return ""


def _check_supported(config: PruneConfig) -> None:
    from ..allocation import get_allocator
    from ..methods import is_structured

    if is_structured(config.method):
        raise ConfigError(
            f"method {config.method!r} is structured (it changes tensor shapes): streaming supports "
            "unstructured and N:M methods (magnitude, wanda, sparsegpt); prune it in memory (without --stream)"
        )
    from ..methods import get_method
    from .gradients import PREPASS_STATS

    method = get_method(config.method, **config.method_args)
    if config.engine != "two-pass":
        raise ConfigError(f"--engine {config.engine} runs in memory today: --stream uses the two-pass engine "
                          f"(drop --engine, or drop --stream)")  # fmt: skip
    if set(method.needs) & set(PREPASS_STATS):
        raise ConfigError(
            f"method {config.method!r} needs gradients of the whole model's loss (a backward pass through every "
            "block at once): streaming keeps one block in memory; prune it in memory (without --stream)"
        )
    if getattr(method, "install", None) is not None:
        raise ConfigError(
            f"method {config.method!r} adds modules around the pruned weights (a remote-code folder): streaming "
            "writes stock shards only; prune it in memory (without --stream)"
        )
    if get_allocator(config.allocation, config.allocation_args).needs_calibration:
        raise ConfigError(
            f"allocation {config.allocation!r} needs the whole model before pruning: streaming supports "
            "allocations from matrix sizes only (uniform); prune it in memory (without --stream)"
        )


def _progress(enabled: bool, desc: str, rank: int) -> Callable:
    if not enabled or rank:
        return lambda it: it
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="block", dynamic_ncols=True)


def _draw_calib(config: PruneConfig, tokenizer: Any, folder: Path) -> Tensor:
    from ..data import calibration_windows

    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception:
            raise ConfigError(
                f"method {config.method!r} needs calibration data and {folder} has no loadable tokenizer: pass calib ids or a tokenizer"
            ) from None
    c = config.calib
    return calibration_windows(c.source, tokenizer, c.nsamples, c.seqlen, c.seed)


@torch.no_grad()
def prune_streaming(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PruneConfig,
    *,
    calib: Tensor | None = None,
    tokenizer: Any = None,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    report_tokens: int = REPORT_TOKENS,
    notify: Callable[[str], None] | None = None,
    after_block: Callable[[int], None] | None = None,
) -> PruneReport:
    """Prune the safetensors folder ``model_dir`` block by block into ``out_dir``.

    Args:
        model_dir: a Hugging Face folder with ``model.safetensors`` or a sharded index.
        out_dir: the output folder (created atomically; see :class:`prunekit.export.OutputSlot`).
        config: an unstructured or N:M prune with a size-only allocation (``uniform``).
        calib: calibration ids ``[nsamples, seqlen]``; drawn from ``config.calib`` with
            ``tokenizer`` (or the folder's tokenizer) when omitted.
        device: where each block runs (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``); the model
            itself stays on disk.
        dtype: output and compute dtype (``"bf16"``, ``"fp16"``, ``"fp32"``); default: as stored.
        resume: continue the run that wrote the same ``out_dir`` and was interrupted; without it
            any earlier unfinished run's state is discarded.
        report_tokens: calibration tokens per Linear for the reconstruction-error report.
        notify: receives one-line notes (default: the log).
        after_block: called with the block index once that block is durably checkpointed.

    Inside an initialised ``torch.distributed`` process group every rank must call this with the
    same arguments; statistics are all-reduced and rank 0 writes the output (the others return
    the same report). Non-zero ranks need ``out_dir`` on a file system they share with rank 0
    when ``resume`` is used.

    Raises:
        ConfigError: unsupported method/allocation, bad device/dtype, a resume whose config differs,
            ranks that disagree on the config.
        ModelLoadError: missing or truncated shards, keys that do not match the config.
        OutputError: output not writable, not empty, or too little free space.
    """
    note = notify or (lambda m: log.warning("%s", m))
    config.validate()
    _check_supported(config)
    dev = resolve_device(device)
    override = shards.parse_dtype(dtype)
    group = _Group()
    if group.on and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", group.rank % torch.cuda.device_count())))
    t_start = time.perf_counter()
    from ..methods import get_method

    method = get_method(config.method, **config.method_args)
    needs = frozenset(method.needs)
    if not needs:  # data-free (magnitude): no calibration and no forward, as in memory
        report_tokens = 0
    run = _Run(model_dir, config, dev, override, group, report_tokens)
    forward = bool(needs) or report_tokens > 0
    timings: dict[str, float] = {k: 0.0 for k in ("capture", "stats_forward", "prune", "propagate_forward", "write")}
    if calib is None and forward:
        t0 = time.perf_counter()
        calib = _draw_calib(config, tokenizer, run.folder)
        timings["calib_tokenize"] = time.perf_counter() - t0
    run_hash = _run_hash(config, calib if forward else None, run.ckpt, run.dtype, dev, group.world, report_tokens)
    hashes = group.gather(run_hash)
    if len(set(hashes)) > 1:
        raise ConfigError(
            f"the {group.world} ranks disagree on the prune (run hashes {', '.join(hashes)}): launch every rank with "
            "the same model, config, calibration data, dtype and device type"
        )
    target = Path(out_dir).expanduser().absolute()
    slot, err = None, None
    if group.rank == 0:
        try:
            slot = _ResumableSlot(out_dir, overwrite, protect=[str(run.folder)], notify=note)
        except PrunekitError as e:
            err = e
    _agree(group, err)
    try:
        report = _stream(run, config, method, needs, calib if forward else None, slot, target, run_hash,
                         resume, progress, note, after_block, timings, t_start)  # fmt: skip
    except BaseException:
        if slot is not None:
            slot.discard()
        raise
    return report


def _stream(run: _Run, config: PruneConfig, method: Any, needs: frozenset[Stat], calib: Tensor | None,
            slot: _ResumableSlot | None, target: Path, run_hash: str, resume: bool, progress: bool,
            note: Callable[[str], None], after_block: Callable[[int], None] | None,
            timings: dict[str, float], t_start: float) -> PruneReport:  # fmt: skip
    from ..allocation import get_allocator
    from ..patterns import parse_pattern

    group = run.group
    work = resume_dir(target.parent.resolve() / target.name if target.name else target.resolve())
    if slot is not None:
        work = slot.tmp
    state_dir = work / STATE_DIR
    nblocks = len(run.blocks)
    pattern = parse_pattern(config.pattern)
    sparsity = config.resolved_sparsity()
    all_targets = {n: m for i in range(nblocks) for n, m in run.targets(i).items()}
    if not all_targets:
        raise ConfigError("no Linear matches the include/exclude patterns: nothing to prune")
    allocator = get_allocator(config.allocation, config.allocation_args)
    per_layer = allocator.allocate({n: weight_of(m).numel() for n, m in all_targets.items()}, sparsity, None)
    del all_targets

    state = _start_state(slot, state_dir, run, run_hash, resume, note)
    start = int(state["next_block"])
    n_out = nblocks + 1
    report = PruneReport(
        method=config.method, settings=method.settings(), pattern=str(method.effective_pattern(pattern)),
        target_sparsity=sparsity, calib=_calib_desc(config, calib),
        allocation={"name": config.allocation, **allocator.settings()},
    )  # fmt: skip
    report.layers = [LayerReport(**{**d, "shape": tuple(d["shape"])}) for d in state["layers"]]

    inputs: list[BlockInputs] = []
    if calib is not None:
        t0 = time.perf_counter()
        run.load_embeddings()
        inputs = capture_block_inputs(run.model, run.adapter, _share(calib, group), config.calib.batch_size)
        run.free_embeddings()
        _inputs_to(inputs, run.device)
        if start > 0:
            _load_inputs(inputs, _inputs_path(state_dir, start, group.rank), run.device)
        timings["capture"] += time.perf_counter() - t0
    if slot is not None and start == 0:
        t0 = time.perf_counter()
        _write_other(run, work / shards.shard_name(0, n_out), state)
        timings["write"] += time.perf_counter() - t0
    pruner = _Pruner(method, pattern, per_layer, needs)
    stop_ok: dict[tuple, bool] = {}
    bar = _progress(progress, f"{config.method} {pattern} (streaming)", group.rank)
    for i in bar(range(start, nblocks)):
        _one_block(run, i, inputs, needs, pruner, report, config, stop_ok, timings)
        if slot is not None:
            t0 = time.perf_counter()
            tensors = shards.state_of(run.blocks[i], run.adapter.block_prefix(i), run.layouts[i])
            _put_shard(tensors, work / shards.shard_name(i + 1, n_out), state)
            del tensors
            timings["write"] += time.perf_counter() - t0
        shards.release(run.blocks[i])
        _trim_heap()
        _checkpoint(slot, state_dir, state, i, inputs, report, group)
        if after_block is not None:
            after_block(i)
    del inputs
    group.barrier()
    timings["total"] = time.perf_counter() - t_start
    report.timings = {**timings}
    _notes(run, report, pruner)
    if slot is not None:
        meta = _meta(run, config, report, state)
        slot.commit(lambda tmp: _finish(run, tmp, state, meta, n_out))
    group.barrier()
    return report


def _put_shard(tensors: Mapping[str, Tensor], path: Path, state: dict[str, Any]) -> None:
    """Write one output shard and account for it in the run state."""
    shards.write_shard(tensors, path)
    state["weight_map"].update({k: path.name for k in tensors})
    state["bytes"] += sum(t.numel() * t.element_size() for t in tensors.values())
    state["nonzero"] += sum(int((t != 0).sum()) for t in tensors.values())
    state["params"] += sum(t.numel() for t in tensors.values())


def _checkpoint(slot: _ResumableSlot | None, state_dir: Path, state: dict[str, Any], i: int,
                inputs: list[BlockInputs], report: PruneReport, group: _Group) -> None:  # fmt: skip
    """Make block ``i`` durable: every rank saves the next block's inputs, then rank 0 records
    ``next_block = i + 1`` (atomically) and drops block ``i``'s inputs. A kill between any two
    steps leaves a state that resumes at block ``i`` or ``i + 1``."""
    if i + 1 < state["nblocks"] and inputs:
        _save_inputs(inputs, _inputs_path(state_dir, i + 1, group.rank))
    group.barrier()
    if slot is not None:
        state.update(next_block=i + 1, layers=[asdict(lr) for lr in report.layers])
        _atomic_json(state, state_dir / "state.json")
        slot.keep = True
        for r in range(group.world):
            _inputs_path(state_dir, i, r).unlink(missing_ok=True)


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``): without it glibc keeps
    the fragments of each released block and RSS creeps up ~1% of a block per block; with it
    RSS after every block is flat. A no-op where there is no glibc."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _calib_desc(config: PruneConfig, calib: Tensor | None) -> dict[str, Any]:
    d: dict[str, Any] = {"source": config.calib.source, "nsamples": config.calib.nsamples,
                         "seqlen": config.calib.seqlen, "seed": config.calib.seed}  # fmt: skip
    if calib is not None:
        d.update(nsamples=int(calib.shape[0]), seqlen=int(calib.shape[1]))
    return d


def _start_state(slot: _ResumableSlot | None, state_dir: Path, run: _Run, run_hash: str, resume: bool,
                 note: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The state to continue from: a previous run's (``resume``, same hash) or a fresh one.

    Rank 0 decides, prepares the folder and checks the free space; the other ranks read its
    decision (or its error) after it."""
    nblocks = len(run.blocks)
    fresh = {"version": STATE_VERSION, "hash": run_hash, "next_block": 0, "nblocks": nblocks, "layers": [],
             "weight_map": {}, "bytes": 0, "nonzero": 0, "params": 0, "resumed_from": None}  # fmt: skip
    path = state_dir / "state.json"
    err = None
    if slot is not None:
        try:
            state = _prepare_state(slot, state_dir, fresh, resume, note)
            start = int(state["next_block"])
            slot.keep = start > 0  # a failed space check must not delete finished blocks
            slot.check_space(run.ckpt.tensor_bytes(run.override) * (nblocks - start + 1) / (nblocks + 1))
        except PrunekitError as e:
            err = e
    _agree(run.group, err)
    if slot is None:
        state = _read_state(path) or fresh
    return state


def _prepare_state(slot: _ResumableSlot, state_dir: Path, fresh: dict[str, Any], resume: bool,
                   note: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    path = state_dir / "state.json"
    old = _read_state(path)
    if resume and old is not None:
        if old.get("hash") != fresh["hash"] or old.get("nblocks") != fresh["nblocks"]:
            slot.keep = True  # refusing must not delete the earlier run's work
            raise ConfigError(
                f"--resume: the unfinished run in {slot.tmp} used a different config (run hash "
                f"{old.get('hash')}, this one {fresh['hash']}): rerun with its settings, or without --resume to start over"
            )
        old["resumed_from"] = old["next_block"]
        note(f"resuming from block {old['next_block']} of {fresh['nblocks']} ({slot.tmp})")
        for q in slot.tmp.glob("*.partial"):  # a write the kill interrupted
            q.unlink()
        return old
    if old is not None:
        note(f"discarded the unfinished run in {slot.tmp} (pass --resume to continue it instead)")
    elif resume:
        note(f"nothing to resume for --out {slot.spec}: starting from block 0")
    for q in list(slot.tmp.iterdir()):
        if q.name != STATE_DIR:
            shutil.rmtree(q) if q.is_dir() else q.unlink()
    for q in list(state_dir.iterdir()):
        if q.name != "lock":
            q.unlink()
    _atomic_json(fresh, path)
    return fresh


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) and s.get("version") == STATE_VERSION else None


def _write_other(run: _Run, path: Path, state: dict[str, Any]) -> None:
    """Shard 1: every tensor outside the blocks, as stored (cast only with a dtype override)."""
    tensors = run.ckpt.load(run.other_keys, "cpu")
    if run.override is not None:
        tensors = {k: (t.to(run.override) if t.is_floating_point() else t) for k, t in tensors.items()}
    _put_shard({k: t.contiguous() for k, t in tensors.items()}, path, state)


def _one_block(run: _Run, i: int, inputs: list[BlockInputs], needs: frozenset[Stat], pruner: _Pruner,
               report: PruneReport, config: PruneConfig, stop_ok: dict, timings: dict[str, float]) -> None:  # fmt: skip
    """Load block ``i``, collect statistics, prune its targets, and advance ``inputs`` past it."""
    t0 = time.perf_counter()
    block = run.blocks[i]
    shards.materialize(block, run.adapter.block_prefix(i), run.ckpt, run.device, layout=run.layouts[i])
    targets = run.targets(i)
    timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    keep_out = config.propagate == "dense" or not targets
    prefix = run.adapter.block_prefix(i)
    kind = (type(block), tuple(n[len(prefix) :] for n in targets))
    if inputs:
        stats, dense_out = _collect(block, i, targets, inputs, needs, run.report_tokens, keep_out, stop_ok, kind)
        stats = _reduce_stats(stats, targets, needs, run.group)
    else:
        stats, dense_out = {n: LayerStats(n, 0, {}) for n in targets}, []
    timings["stats_forward"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, lin in targets.items():
        report.layers.append(pruner(name, lin, stats[name]))
    del stats
    timings["prune"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    propagate_block(block, i, inputs, dense_out)
    timings["propagate_forward"] += time.perf_counter() - t0
    odd = unsupported_experts(block, prefix)
    if odd:
        report.notes.append(f"experts in a layout prunekit cannot slice were left dense: {', '.join(odd)}")


def _notes(run: _Run, report: PruneReport, pruner: _Pruner) -> None:
    if pruner.idle:
        report.notes.append(
            f"{len(pruner.idle)} experts received no calibration token and were left dense "
            f"(idle_experts=dense): {', '.join(pruner.idle)}"
        )
    retries = [lr.name for lr in report.layers if lr.info.get("cholesky_retries")]
    if retries:
        report.notes.append(f"Cholesky needed extra dampening on {len(retries)} layers: {', '.join(retries)}")
    report.notes.append(
        f"streamed from disk one block at a time on {run.device} in {shards.dtype_name(run.dtype)}"
        + (f", statistics over {run.group.world} ranks" if run.group.world > 1 else "")
    )


def _meta(run: _Run, config: PruneConfig, report: PruneReport, state: dict[str, Any]) -> dict[str, Any]:
    from ..models.loading import source_info

    dense = sum(_numel(shape) for _, shape in run.ckpt.meta.values())
    return {
        "prunekit_format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_model": source_info(run.src),
        "config": config.to_dict(),
        "applied": {"method": config.method, "pattern": report.pattern, "target_sparsity": report.target_sparsity,
                    "sparsity": report.sparsity},  # fmt: skip
        "parameters": {"dense": dense, "pruned": state["params"], "nonzero": state["nonzero"]},
        "report": report.to_dict(),
        "streaming": {"device": str(run.device), "dtype": shards.dtype_name(run.dtype), "world_size": run.group.world,
                      "resumed_from_block": state.get("resumed_from")},  # fmt: skip
        "versions": versions(),
    }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _finish(run: _Run, tmp: Path, state: dict[str, Any], meta: dict[str, Any], n_out: int) -> None:
    """Complete the temp folder: index, config, copied files, prunekit.json; drop the state."""
    names = {shards.shard_name(i, n_out) for i in range(n_out)}
    present = {q.name for q in tmp.iterdir()}
    if not names <= present:
        raise OutputError(f"{tmp} lacks {sorted(names - present)[0]}: the run state is inconsistent; rerun without --resume")
    shards.write_index(tmp, state["weight_map"], state["bytes"])
    for q in sorted(run.folder.iterdir()):
        if q.is_file() and not q.name.endswith(_COPY_SKIP) and q.name not in _COPY_SKIP_NAMES:
            shutil.copy2(q, tmp / q.name)
    if run.override is not None:
        cfg = json.loads((run.folder / "config.json").read_text())
        cfg["dtype"] = shards.dtype_name(run.override)
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = cfg["dtype"]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "prunekit.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    shutil.rmtree(tmp / STATE_DIR, ignore_errors=True)


__all__ = ["init_distributed_from_env", "prune_streaming", "resolve_device", "resume_dir"]
