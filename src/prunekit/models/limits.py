"""What a loaded model can take: the sequence length its position encoding covers.

Models with a learned position table (GPT-2's ``wpe``, OPT's ``embed_positions``, GPT-Neo, BLOOM
has none) index it by position, so a window longer than the table is an ``IndexError`` deep inside
the forward: refused here as one line. Rotary models (Llama, Qwen2, Mistral, ...) run past
``max_position_embeddings`` but extrapolate badly: a note says so and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's config declares (``None`` when it declares none)."""
    cfg = getattr(model, "config", None)
    for key in _POSITION_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def learned_position_limit(model: nn.Module) -> int | None:
    """Positions of a learned absolute position table, or ``None`` for rotary/ALiBi models."""
    inp = None
    try:
        inp = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        pass
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Embedding) and m is not inp and leaf in ("wpe", "embed_positions", "position_embeddings"):
            offset = int(getattr(m, "offset", 0) or 0)  # OPT's table has 2 extra rows
            return int(m.num_embeddings) - offset
    return None


def check_positions(model: nn.Module, seqlen: int, flag: str = "--seqlen",
                    notify: Callable[[str], None] | None = None) -> None:  # fmt: skip
    """Refuse a window longer than a learned position table; note one past a rotary model's limit."""
    learned = learned_position_limit(model)
    if learned is not None and seqlen > learned:
        raise ConfigError(f"{flag} {seqlen} is longer than this model's {learned} learned positions "
                          f"({getattr(model.config, 'model_type', 'model')}): use {flag} {learned} or less")  # fmt: skip
    limit = max_positions(model)
    if learned is None and limit is not None and seqlen > limit and notify is not None:
        notify(f"{flag} {seqlen} is beyond this model's max_position_embeddings {limit}: it runs, but positions past "
               f"{limit} were never trained, so statistics and perplexity there are unrepresentative")  # fmt: skip


def vocab_size(model: nn.Module | None) -> int | None:
    """Rows of the input embedding (else ``config.vocab_size``): the largest token id is one less."""
    emb = getattr(model, "get_input_embeddings", None)
    try:
        e = emb() if emb is not None else None
    except (AttributeError, NotImplementedError):
        e = None
    if e is not None and getattr(e, "num_embeddings", None):
        return int(e.num_embeddings)
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None
