"""What a recovery run does (:class:`RecoveryConfig`), importable without torch (the CLI's parser
reads its defaults)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..settings import schema_of, setting, validate_settings

MASK_MODES = ("auto", "on", "off")
ADAPTERS = ("lora", "full")
PRECISIONS = ("fp32", "bf16")
WINDOW_MODES = ("random", "packed")


@dataclass(frozen=True)
class RecoveryConfig:
    """What a recovery run does; every field is range-checked on construction (ConfigError).

    ``tokens`` is the training budget; ``steps = ceil(tokens / (batch_size * seqlen))``.
    ``target_modules`` is ``"all"`` (every Linear inside the decoder blocks: all projections) or a
    comma-separated list of name suffixes (``"q_proj,v_proj"``). ``mask``: ``auto`` (masked LoRA
    when the model is sparse, see :func:`is_sparse`), ``on`` or ``off``. ``adapter="full"`` trains
    the target weights directly (no LoRA; ``r``, ``alpha``, ``dropout`` unused); on a sparse model
    their gradients are multiplied by the mask, so AdamW (no weight decay on zeros) keeps every zero
    exactly zero. ``distill`` > 0 mixes
    knowledge distillation from a teacher (the dense model) into the loss:
    ``(1 - distill) * CE + distill * T² * KL(p_teacher,T ‖ p_student,T)`` per token
    (Hinton et al., 2015), which needs a ``teacher`` in :func:`~prunekit.recovery.lora.recover_`.
    ``precision="bf16"`` runs the forward and backward passes (student and teacher) under bfloat16
    autocast while the weights, gradients, optimizer state and merge stay float32 (mixed precision):
    ~2.5x faster steps on CPUs with AVX512-BF16/AMX and on recent GPUs; the default ``fp32`` is exact.
    ``max_seconds`` > 0 makes the budget a wall-clock one as well: the learning rate at each step is
    the smaller of the token schedule's and ``peak * (1 - elapsed / max_seconds)``, and the loop stops
    once ``max_seconds`` of training have passed, so a run that is slower than planned still ends
    with a fully decayed learning rate instead of being cut mid-schedule (the trained tokens then
    depend on the machine's speed: not bit-reproducible).
    ``windows`` says how a text SOURCE becomes training windows: ``random`` (the calibration
    sampler: a random document longer than ``seqlen``, a random start in it; short documents are
    never seen, long ones are revisited) or ``packed`` (every document end to end with EOS between,
    in a seeded order, each token once per epoch: the usual pre-training layout, and the one that
    keeps a budget of long windows, e.g. ``seqlen`` 2048 on short C4 documents, from a handful of
    long documents).
    """

    r: int = setting(8, ge=1, le=4096, help="LoRA rank")
    alpha: float = setting(16.0, gt=0, help="LoRA alpha (scale alpha / r)")
    dropout: float = setting(0.05, ge=0, lt=1, help="dropout on the LoRA branch input")
    target_modules: str = setting("all", help="'all' or comma-separated Linear name suffixes")
    lr: float = setting(1e-4, gt=0, le=1, help="AdamW learning rate (peak)")
    weight_decay: float = setting(0.0, ge=0, le=1)
    warmup: float = setting(0.05, ge=0, lt=1, help="fraction of steps of linear warm-up, then linear decay")
    grad_clip: float = setting(1.0, ge=0, help="max gradient norm (0: off)")
    tokens: int = setting(65536, ge=2, le=10**12, help="training tokens (budget)")
    seqlen: int = setting(512, ge=2, le=1 << 20, help="tokens per training window")
    batch_size: int = setting(4, ge=1, le=1 << 16, help="windows per optimizer step")
    seed: int = setting(0, ge=0, le=2**63 - 1)
    mask: str = setting("auto", choices=MASK_MODES, help="masked LoRA: auto | on | off")
    checkpoint_every: int = setting(50, ge=1, help="steps between checkpoints")
    adapter: str = setting("lora", choices=ADAPTERS,
                           help="lora: LoRA adapters, merged; full: train the target Linears' weights themselves")
    distill: float = setting(0.0, ge=0, le=1, help="weight of the KL-to-teacher term (0: LM loss only, 1: distillation only)")
    temperature: float = setting(1.0, gt=0, le=100, help="softmax temperature of the distillation term")
    precision: str = setting("fp32", choices=PRECISIONS,
                             help="fp32, or bf16: bfloat16 autocast for the passes, float32 weights and optimizer")
    windows: str = setting("random", choices=WINDOW_MODES,
                           help="random: random windows from documents longer than seqlen; packed: all documents end to end")
    grad_checkpointing: bool = setting(False, help="recompute each block's activations in the backward pass: "
                                       "about half the peak memory, ~20% more time per step")
    max_seconds: float = setting(0.0, ge=0, le=10**8,
                                 help="time budget of the training loop in seconds (0: off): the learning rate also "
                                      "decays with elapsed time and training stops when the budget is spent")

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in validate_settings("recover", schema_of(type(self)), given).items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecoveryConfig:
        """Build from a mapping; unknown keys are one ConfigError line (with a did-you-mean)."""
        validate_settings("recover", schema_of(cls), d)
        return cls(**d)

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.batch_size * self.seqlen))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
