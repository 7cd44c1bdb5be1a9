"""What the engine can prune inside a decoder block, each seen by methods as an ``[out, in]`` matrix.

- ``nn.Linear`` (fused projections such as ``qkv_proj``, ``gate_up_proj`` or
  ``query_key_value`` are plain Linears: methods that rank per output row or per group of inputs
  are exact on them).
- GPT-2's ``transformers.pytorch_utils.Conv1D``: weight stored ``[in, out]``; methods get its
  transpose (a view, so writing back lands transposed) and statistics hooks see the same input.
- One expert of a fused mixture-of-experts module (transformers 5 stores experts as 3-D
  parameters ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``): :class:`ExpertSlice`.

Quantized layers (bitsandbytes, GPTQ/AWQ, anything whose weight is not a 16/32/64-bit float
tensor) are refused: masks must be applied to real weights.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from ..errors import ConfigError

_QUANT_NAMES = ("Linear4bit", "Linear8bitLt", "QuantLinear", "WQLinear", "FP8Linear", "QLinear")


def _is_conv1d(m: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(m, Conv1D)


class ExpertSlice:
    """Expert ``expert`` of a fused experts module's 3-D parameter ``param``, as ``[out, in]``.

    ``weight`` is a view into the parameter: copying into it updates the model.
    """

    __slots__ = ("expert", "module", "param")

    def __init__(self, module: nn.Module, param: str, expert: int) -> None:
        self.module, self.param, self.expert = module, param, expert

    @property
    def weight(self) -> Tensor:
        w = getattr(self.module, self.param).data[self.expert]
        return w.T if getattr(self.module, "is_transposed", False) else w

    def __repr__(self) -> str:
        return f"ExpertSlice({type(self.module).__name__}.{self.param}[{self.expert}])"


def fused_experts(m: nn.Module) -> bool:
    """A transformers-5 fused experts module whose layout prunekit understands (SwiGLU-style
    ``gate_up_proj`` + ``down_proj`` 3-D parameters, optionally transposed or with biases)."""
    gu, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    return (
        isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter)
        and gu.dim() == 3 and down.dim() == 3 and (hasattr(m, "act_fn") or hasattr(m, "_apply_gate"))
        and getattr(m, "has_gate", True) and not getattr(m, "has_post_expert_norm", False)
    )  # fmt: skip


def weight_of(m: nn.Module | ExpertSlice) -> Tensor:
    """The ``[out, in]`` weight a method sees (a view of the stored data)."""
    if isinstance(m, ExpertSlice):
        return m.weight
    return m.weight.data.T if _is_conv1d(m) else m.weight.data


def write_weight(m: nn.Module | ExpertSlice, W: Tensor) -> None:
    """Store ``W [out, in]`` into ``m`` in ``m``'s dtype (transposed back where stored so)."""
    dst = weight_of(m)
    dst.copy_(W.to(dst.dtype))


def _is_router(parent: nn.Module) -> bool:
    """A Linear beside an ``experts`` module (a router or a shared-expert gate): never pruned."""
    return isinstance(getattr(parent, "experts", None), nn.Module)


def _quantized_kind(m: nn.Module) -> bool:
    if any(n in type(m).__name__ for n in _QUANT_NAMES) or hasattr(m, "qweight"):
        return True
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear) or _is_conv1d(m):
        return not isinstance(w, Tensor) or not w.is_floating_point() or w.element_size() < 2
    if fused_experts(m):
        return any(not p.is_floating_point() or p.element_size() < 2 for p in (m.gate_up_proj, m.down_proj))
    return False


def check_unquantized(block: nn.Module, prefix: str) -> None:
    """Raise a one-line ConfigError on the first quantized linear layer in ``block``."""
    for n, m in block.named_modules():
        if n and _quantized_kind(m):
            w = getattr(m, "weight", getattr(m, "gate_up_proj", None))
            dt = f", weight {w.dtype}" if isinstance(w, Tensor) else ""
            raise ConfigError(
                f"{prefix}.{n} is a quantized layer ({type(m).__module__}.{type(m).__name__}{dt}) "
                "that prunekit cannot mask: load the model unquantized (no quantization_config, "
                "a float dtype) and prune that"
            )


def _with_parent(block: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    for n, m in block.named_modules():
        if n:
            yield n, m, block.get_submodule(n.rsplit(".", 1)[0]) if "." in n else block


def prunable_in(block: nn.Module, prefix: str) -> dict[str, nn.Module | ExpertSlice]:
    """Every prunable matrix inside one block, by full name.

    Linears and Conv1Ds by module name; experts of a fused experts module as
    ``{experts}.{e}.{gate_up_proj|down_proj}``. Routers and shared-expert gates (Linears that sit
    beside an ``experts`` module) are left out.
    """
    check_unquantized(block, prefix)
    out: dict[str, nn.Module | ExpertSlice] = {}
    for n, m, parent in _with_parent(block):
        if isinstance(m, nn.Linear) or _is_conv1d(m):
            if not _is_router(parent):
                out[f"{prefix}.{n}"] = m
        elif fused_experts(m):
            for e in range(m.gate_up_proj.shape[0]):
                for p in ("gate_up_proj", "down_proj"):
                    out[f"{prefix}.{n}.{e}.{p}"] = ExpertSlice(m, p, e)
    return out


def is_expert_slice(m: object) -> bool:
    return isinstance(m, ExpertSlice)


def unsupported_experts(block: nn.Module, prefix: str) -> list[str]:
    """Expert modules holding 3-D weights in a layout prunekit does not slice (left dense)."""
    out = []
    for n, m in block.named_modules():
        expertish = n.endswith("experts") or "Expert" in type(m).__name__
        three_d = any(p.dim() == 3 for p in m.parameters(recurse=False))
        if n and expertish and three_d and not fused_experts(m):
            out.append(f"{prefix}.{n} ({type(m).__name__})")
    return out


__all__ = [
    "ExpertSlice", "check_unquantized", "fused_experts", "is_expert_slice", "prunable_in",
    "unsupported_experts", "weight_of", "write_weight",
]  # fmt: skip
