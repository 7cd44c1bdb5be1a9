"""Recovery fine-tuning after pruning: LoRA through peft, merged, masks kept exactly.

Defaults are LLM-Pruner's recovery stage (Ma et al., NeurIPS 2023: rank 8, alpha 16, dropout
0.05 on every projection, learning rate 1e-4). For a sparse model (unstructured or N:M) the
adapter's update is masked by the pruning mask, as SQFT's SparsePEFT does (Munoz et al., 2024):

    W' = W + s * (B A) ⊙ M,    M = (W ≠ 0),    s = alpha / r

The masked term is what is trained (:class:`MaskedLoraLinear`) and the same masked term is what
is merged, so every weight pruned to zero stays exactly zero (an N:M model stays N:M) and no
dense delta is ever merged and re-masked. A structured model (smaller but dense) gets plain
LoRA, merged. Either way the result is a plain ``transformers`` model.

Distillation (``RecoveryConfig.distill``): the dense model is a far richer target than the
next token alone — its full next-token distribution on the same windows. With a ``teacher``
the loss per token is ``(1 - λ)·CE + λ·T²·KL(p_teacher ‖ p_student)`` at temperature ``T``
(Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531; the
recovery recipe of Sheared-LLaMA / Minitron-style pruning pipelines). The teacher runs once per
step without gradients (about a third of a training step's compute).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..settings import schema_of, setting, validate_settings  # noqa: F401
from .config import MASK_MODES, RecoveryConfig  # noqa: F401  (re-exported)

SPARSE_ZEROS = 0.10  # a target Linear with at least this fraction of exact zeros is "sparse"
CHECKPOINT_FILE = "recovery-checkpoint.pt"


@dataclass
class RecoveryReport:
    """What a recovery did: data, budget, the loss of every step, time."""

    data: str
    mode: str  # "masked" (sparse model, mask kept) | "plain" (dense/structured model)
    config: dict[str, Any]
    tokens: int
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    targets: int = 0
    trainable_parameters: int = 0
    resumed_from_step: int | None = None
    sparsity: float = 0.0  # exact zeros among the target Linears' weights (before = after in masked mode)
    train_seconds: float = 0.0  # the training loop alone (what ``max_seconds`` bounds)
    time_capped: bool = False  # stopped by ``max_seconds`` before the token budget (tokens/steps: done)

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        if not self.losses:
            return None
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(first_loss=self.first_loss, final_loss=self.final_loss)
        return d


# --- which Linears, sparse or not ---------------------------------------------------------------
def target_names(model: nn.Module, spec: str = "all") -> list[str]:
    """Full names of the ``nn.Linear`` modules LoRA wraps: every Linear inside the decoder blocks
    (never embeddings or ``lm_head``), narrowed by ``spec`` (comma-separated name suffixes)."""
    from ..models.discovery import engine_adapter

    adapter = engine_adapter(model)
    names = []
    for i, block in enumerate(adapter.blocks(model)):
        prefix = adapter.block_prefix(i)
        for n, m in block.named_modules():
            if isinstance(m, nn.Linear):
                names.append(f"{prefix}.{n}" if prefix else n)
    if spec.strip() != "all":
        want = [s.strip() for s in spec.split(",") if s.strip()]
        names = [n for n in names if any(n == w or n.endswith("." + w) for w in want)]
        if not names:
            raise ConfigError(
                f"recover: target_modules={spec} matches no Linear inside the decoder blocks: use 'all' "
                f"or suffixes such as q_proj,v_proj"
            )
    if not names:
        raise ConfigError("recover: the model has no Linear inside its decoder blocks to adapt")
    return names


def zero_fraction(model: nn.Module, names: list[str]) -> float:
    mods = dict(model.named_modules())
    zeros = sum(int((mods[n].weight == 0).sum()) for n in names)
    total = sum(mods[n].weight.numel() for n in names)
    return zeros / total if total else 0.0


def is_sparse(model: nn.Module, names: list[str]) -> bool:
    """True when a target Linear has at least 10% exact zeros spread over its rows (unstructured or
    N:M pruning), not a few all-zero rows or columns (which structured pruning would remove)."""
    mods = dict(model.named_modules())
    for n in names:
        W = mods[n].weight.detach()
        zero = W == 0
        if zero.float().mean().item() < SPARSE_ZEROS:
            continue
        rows_hit = zero.any(dim=1).float().mean().item()
        if rows_hit >= 0.5:  # zeros in most rows: an irregular/N:M mask, not dead channels
            return True
    return False


# --- the masked LoRA layer ------------------------------------------------------------------------
def _lora_linear_cls():
    from peft.tuners.lora.layer import Linear as LoraLinear

    class MaskedLoraLinear(LoraLinear):
        """peft's LoRA Linear whose update is ``s·(B A) ⊙ M`` with ``M = (W ≠ 0)`` (SparsePEFT).

        The mask is read from the frozen base weight at every use, so training, merging and
        unmerging all apply the same masked term.
        """

        def _mask(self) -> Tensor:
            return self.get_base_layer().weight != 0

        def get_delta_weight(self, adapter) -> Tensor:  # used by merge / unmerge
            dense = super().get_delta_weight(adapter)
            return torch.where(self._mask(), dense, torch.zeros((), dtype=dense.dtype, device=dense.device))

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            base = self.get_base_layer()
            result = None
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                delta = self.get_delta_weight(name)
                drop = self.lora_dropout[name]
                if result is None and (not self.training or isinstance(drop, nn.Identity) or drop.p == 0):
                    # one matmul with W + ΔW: the same value, cheaper than two
                    result = F.linear(x, base.weight + delta.to(base.weight.dtype), base.bias)
                else:
                    result = base(x) if result is None else result
                    result = result + F.linear(drop(x).to(delta.dtype), delta).to(result.dtype)
            return base(x) if result is None else result

    return MaskedLoraLinear


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("recovery needs the 'peft' package: pip install 'prunekit[recover]' (or pip install peft)") from None


def attach_lora(model: nn.Module, config: RecoveryConfig, masked: bool, names: list[str] | None = None):
    """Wrap the target Linears of ``model`` with LoRA adapters (masked ones when ``masked``);
    returns the ``peft.PeftModel``. LoRA's A is drawn from torch's RNG seeded with ``config.seed``."""
    _require_peft()
    from peft import LoraConfig, get_peft_model

    names = names or target_names(model, config.target_modules)
    lcfg = LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=names,
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    if masked:
        lcfg._register_custom_module({nn.Linear: _lora_linear_cls()})
    torch.manual_seed(config.seed)
    return get_peft_model(model, lcfg)


class FullTuning:
    """``adapter="full"``: the target Linears' weights are the trainable parameters (everything
    else frozen); on a masked model a gradient hook multiplies each gradient by ``M = (W ≠ 0)``."""

    def __init__(self, model: nn.Module, names: list[str], masked: bool):
        self.model = model
        self.requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        mods = dict(model.named_modules())
        self.hooks = []
        for n in names:
            W = mods[n].weight
            W.requires_grad_(True)
            if masked:
                M = (W.detach() != 0).to(W.dtype)
                self.hooks.append(W.register_hook(lambda g, M=M: g * M))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def named_parameters(self):
        return self.model.named_parameters()

    def train(self, mode: bool = True) -> FullTuning:
        self.model.train(mode)
        return self

    def finish(self) -> nn.Module:
        for h in self.hooks:
            h.remove()
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.requires_grad_before.get(n, True))
        return self.model


def _attach(model: nn.Module, config: RecoveryConfig, masked: bool, names: list[str]):
    """The trainable wrapper for ``config.adapter`` and the function that turns it back into the model."""
    if config.adapter == "full":
        if config.weight_decay and masked:
            raise ConfigError("recover: adapter=full with weight_decay on a sparse model would move no zero but "
                              "shrinks the rest unevenly: set weight_decay=0")  # fmt: skip
        return FullTuning(model, names, masked), FullTuning.finish
    return attach_lora(model, config, masked, names), merge_lora


def merge_lora(peft_model) -> nn.Module:
    """Merge the adapters (the masked term for masked layers) and return the plain model."""
    model = peft_model.merge_and_unload()
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)
    return model


# --- data ---------------------------------------------------------------------------------------
def training_windows(data: Any, tokenizer: Any, config: RecoveryConfig) -> tuple[Tensor, str]:
    """``[steps * batch_size, seqlen]`` token ids in training order, and a description.

    ``data``: a SOURCE string or a :class:`~prunekit.data.sources.TextSource` (random windows
    drawn with ``config.seed`` from documents longer than ``seqlen`` where there are such, or,
    with ``config.windows == "packed"``, all documents packed), a list of documents (e.g. a PASER
    selection: always packed), or token
    ids (``[n, seqlen]`` rows, or any tensor cut into ``seqlen`` windows), cycled in a seeded
    order when they hold fewer windows than the budget needs.
    """
    from ..data import calibration_windows, load_source
    from ..data.sources import TextSource

    need = config.steps * config.batch_size
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, str) for d in data):
        if tokenizer is None:
            raise ConfigError("recover: text data needs a tokenizer: pass tokenizer= or token ids")
        return packed_windows(data, tokenizer, need, config.seqlen, config.seed), f"{len(data)} documents, packed"
    if isinstance(data, (str, TextSource)):
        if tokenizer is None:
            raise ConfigError("recover: text data needs a tokenizer: pass tokenizer= or token ids")
        src = load_source(data, "calib") if isinstance(data, str) else data
        if config.windows == "packed":
            ids = packed_windows(src.documents, tokenizer, need, config.seqlen, config.seed)
            return ids, f"{src.description}, packed"
        ids = calibration_windows(src, tokenizer, need, config.seqlen, config.seed)
        return ids, src.description
    if not isinstance(data, Tensor) or data.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise DataError(f"recover: data must be a SOURCE string or integer token ids, got {type(data).__name__}")
    ids = data.long()
    if ids.dim() == 2 and ids.shape[1] == config.seqlen:
        rows = ids
    else:
        flat = ids.reshape(-1)
        n = flat.numel() // config.seqlen
        if n < 1:
            raise DataError(
                f"recover: the token ids hold {flat.numel()} tokens, fewer than one window of seqlen "
                f"{config.seqlen}: give more tokens or a smaller seqlen"
            )
        rows = flat[: n * config.seqlen].reshape(n, config.seqlen)
    desc = f"token ids ({rows.shape[0]} windows x {config.seqlen})"
    g = torch.Generator().manual_seed(config.seed)
    order = torch.cat([torch.randperm(rows.shape[0], generator=g) for _ in range(math.ceil(need / rows.shape[0]))])
    return rows[order[:need]], desc


def packed_windows(docs: list[str] | tuple[str, ...], tokenizer: Any, need: int, seqlen: int, seed: int) -> Tensor:
    """``need`` windows of ``seqlen`` tokens from documents packed end to end (EOS between them),
    in a seeded order, cycling (reshuffled) when the documents hold fewer tokens than needed: every
    document is used, however short (unlike random windows from documents longer than seqlen)."""
    from ..data.sources import _encode

    eos = getattr(tokenizer, "eos_token_id", None)
    enc = [_encode(tokenizer, d) + ([eos] if eos is not None else []) for d in docs if d.strip()]
    total = sum(len(e) for e in enc)
    if total < seqlen:
        raise DataError(f"recover: the documents hold {total} tokens, fewer than one window of seqlen {seqlen}: give more text or a smaller seqlen")
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < need * seqlen:
        order = list(range(len(enc)))
        rng.shuffle(order)
        for i in order:
            stream.extend(enc[i])
    return torch.tensor(stream[: need * seqlen], dtype=torch.long).reshape(need, seqlen)


# --- checkpoints ----------------------------------------------------------------------------------
def _fingerprint(config: RecoveryConfig, windows: Tensor, mode: str, names: list[str]) -> str:
    # the time budget may change between an interrupted run and its resume (e.g. to extend it)
    cfg = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every", "max_seconds")}
    h = hashlib.sha256(json.dumps({"config": cfg, "mode": mode, "targets": names}, sort_keys=True).encode())
    h.update(windows.numpy().tobytes())
    return h.hexdigest()


def _trainable(peft_model) -> dict[str, nn.Parameter]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"recover: checkpoint {path} cannot be read ({type(e).__name__}): delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"recover: checkpoint {path} was made with other settings, data or model: use the same "
            f"ones to resume, or delete it to start over"
        )
    return state


# --- the loop ---------------------------------------------------------------------------------------
def check_teacher(model: nn.Module, teacher: nn.Module | None, config: RecoveryConfig) -> None:
    """One ConfigError line when ``distill`` and ``teacher`` do not fit together."""
    if config.distill > 0 and teacher is None:
        raise ConfigError(f"recover: distill={config.distill:g} needs a teacher: the dense model (--dense MODEL on the CLI)")
    if teacher is None:
        return
    if config.distill == 0:
        raise ConfigError("recover: a teacher is given but distill=0: set distill (e.g. 0.5 or 1), or drop the teacher")
    vs, vt = (getattr(getattr(m, "config", None), "vocab_size", None) for m in (model, teacher))
    if vs is not None and vt is not None and vs != vt:
        raise ConfigError(f"recover: the teacher's vocabulary ({vt}) differs from the model's ({vs}): "
                          f"distil from the dense model the pruned one came from")  # fmt: skip


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over tokens (all positions)."""
    s = F.log_softmax(student_logits.float() / T, dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float() / T, dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * T * T


def _autocast(device: torch.device, config: RecoveryConfig):
    """bfloat16 autocast for ``precision="bf16"`` (weights stay float32), else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def _step_loss(pm: nn.Module, teacher: nn.Module | None, x: Tensor, config: RecoveryConfig) -> Tensor:
    with _autocast(x.device, config):
        out = pm(input_ids=x, labels=x if config.distill < 1 else None, use_cache=False)
    if teacher is None:
        return out.loss.float()
    t_device = next(teacher.parameters()).device
    with torch.no_grad(), _autocast(t_device, config):
        t_logits = teacher(input_ids=x.to(t_device), use_cache=False).logits
    kd = distill_loss(out.logits, t_logits.to(out.logits.device), config.temperature)
    return kd if config.distill >= 1 else (1 - config.distill) * out.loss.float() + config.distill * kd


def _lr_lambda(steps: int, warmup: float) -> Callable[[int], float]:
    w = int(round(warmup * steps))

    def f(step: int) -> float:  # HF Trainer's linear schedule: warm up, then decay to 0
        if step < w:
            return (step + 1) / (w + 1)
        return max(0.0, (steps - step) / max(1, steps - w))

    return f


def recover_(
    model: nn.Module,
    tokenizer: Any,
    data: Any,
    config: RecoveryConfig | None = None,
    *,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    on_step: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
) -> RecoveryReport:
    """Fine-tune ``model`` in place with LoRA on ``data``, merge, and return a report.

    Args:
        model: a (pruned) causal LM. Sparse models get masked LoRA (zeros stay zero exactly),
            others plain LoRA; see ``config.mask``.
        tokenizer: tokenizes a SOURCE ``data`` (unused for token ids).
        data: a SOURCE string (``prunekit.load_source``), a ``TextSource``, a list of documents,
            or token ids.
        config: :class:`RecoveryConfig` (defaults: LLM-Pruner's recipe, 65k tokens).
        progress: a tqdm bar with the loss.
        checkpoint_dir: save the adapter, optimizer and RNG state there every
            ``config.checkpoint_every`` steps; a checkpoint found there (same settings, data and
            model) is resumed, giving the same result as an uninterrupted run.
        on_step: called with ``(step, loss)`` after each step (and its checkpoint); its own time
            does not count against ``config.max_seconds``.
        teacher: the dense model for ``config.distill > 0`` (same tokenizer/vocabulary; it is
            only run forward, in eval mode, without gradients, and is not modified).

    Example:
        >>> report = recover_(model, tok, "../shared/data/c4-sample/", RecoveryConfig(tokens=200_000))
    """
    config = config or RecoveryConfig()
    check_teacher(model, teacher, config)
    t0 = time.perf_counter()
    names = target_names(model, config.target_modules)
    sparse = is_sparse(model, names)
    masked = {"auto": sparse, "on": True, "off": False}[config.mask]
    zeros = zero_fraction(model, names)
    windows, desc = training_windows(data, tokenizer, config)
    mode = ("masked" if masked else "plain") + ("-full" if config.adapter == "full" else "")
    fp = _fingerprint(config, windows, mode, names)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    state = _load_checkpoint(ckpt, fp) if ckpt is not None else None

    device = next(model.parameters()).device
    was_training = model.training
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    pm, finish = _attach(model, config, masked, names)
    params = _trainable(pm)
    opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.steps, config.warmup))
    report = RecoveryReport(
        data=desc, mode=mode, config=config.to_dict(), tokens=config.steps * config.batch_size * config.seqlen,
        steps=config.steps, targets=len(names), trainable_parameters=sum(p.numel() for p in params.values()),
        sparsity=zeros,
    )  # fmt: skip
    start = 0
    if state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        report.train_seconds = float(state.get("train_seconds", 0.0))
        report.losses = list(state["losses"])
        report.resumed_from_step = start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        what = "full fine-tuning" if config.adapter == "full" else f"LoRA r={config.r}"
        bar = tqdm(total=config.steps, initial=start, desc=f"recover ({mode} {what})", unit="step",
                   dynamic_ncols=True)  # fmt: skip
    pm.train()
    checkpointing = config.grad_checkpointing and hasattr(model, "gradient_checkpointing_enable")
    if checkpointing:  # keep only each block's input; recompute the rest during backward
        kw = {"use_reentrant": False}  # no input needs requires_grad (LoRA on frozen embeddings)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x: the new name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    teacher_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    if use_cache is not None:
        model.config.use_cache = False
    t_loop = time.perf_counter() - report.train_seconds  # resumed runs continue their clock
    try:
        for step in range(start, config.steps):
            if config.max_seconds and time.perf_counter() - t_loop >= config.max_seconds:
                report.time_capped = True
                break
            x = windows[step * config.batch_size : (step + 1) * config.batch_size].to(device)
            loss = _step_loss(pm, teacher, x, config)
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"recover: the loss became {loss.item()} at step {step + 1}: lower --lr (now {config.lr:g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
            opt.step()
            sched.step()
            report.train_seconds = time.perf_counter() - t_loop
            if config.max_seconds:  # the time schedule: never above peak * (1 - elapsed / budget)
                left = max(0.0, 1.0 - report.train_seconds / config.max_seconds)
                for g in opt.param_groups:
                    g["lr"] = min(g["lr"], config.lr * left)
            report.losses.append(float(loss.item()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{report.losses[-1]:.3f}")
            done = step + 1
            if ckpt is not None and (done % config.checkpoint_every == 0) and done < config.steps:
                _save_checkpoint(ckpt, {
                    "fingerprint": fp, "step": done, "losses": report.losses,
                    "params": {n: p.detach().clone() for n, p in params.items()},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                    "seconds": (state or {}).get("seconds", 0.0) + time.perf_counter() - t0,
                    "train_seconds": report.train_seconds,
                })  # fmt: skip
            if on_step is not None:
                t_cb = time.perf_counter()
                on_step(done, report.losses[-1])
                t_loop += time.perf_counter() - t_cb  # a caller's evaluation is not training time
    except BaseException:
        finish(pm)  # leave a plain model behind (partly trained) rather than a peft wrapper
        raise
    finally:
        if bar is not None:
            bar.close()
        if checkpointing:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        if use_cache is not None:
            model.config.use_cache = use_cache
        if teacher is not None:
            teacher.train(teacher_training)
    merged = finish(pm)
    merged.train(was_training)
    if report.time_capped:
        report.steps = len(report.losses)
        report.tokens = report.steps * config.batch_size * config.seqlen
    report.seconds = (state or {}).get("seconds", 0.0) + time.perf_counter() - t0
    return report


def recovery_summary(report: RecoveryReport) -> str:
    """One line for the CLI."""
    fl, ll = report.first_loss, report.final_loss
    loss = f"loss {fl:.3f} -> {ll:.3f}" if fl is not None and ll is not None else "no steps"
    what = "fine-tuning" if report.config.get("adapter") == "full" else f"LoRA r={report.config['r']}"
    return (
        f"recovery: {report.mode} {what} on {report.targets} Linears, "
        f"{report.steps} steps x {report.config['batch_size']} x {report.config['seqlen']} tokens "
        f"({report.tokens:,} tokens) of {report.data}; {loss}; {report.seconds:.1f}s"
        + (f" (stopped by the time budget, {report.config['max_seconds']:g}s of training)" if report.time_capped else "")
    )
