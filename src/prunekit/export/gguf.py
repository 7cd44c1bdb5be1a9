"""Export a prunekit model (dense, sparse, structured, per-block widths, blocks removed) to GGUF.

``prunekit export MODEL --format gguf --outtype f16 --out FILE.gguf`` writes one file that
llama.cpp (and what embeds it: Ollama, LM Studio) loads with no custom code. Written with the
``gguf`` package's ``GGUFWriter`` and quantisers; llama.cpp's converter is not run.

Architectures written:

* Llama and Mistral with the same widths in every block: ``llama``; dense Qwen2: ``qwen2``. A
  uniformly shrunk Qwen2 (fewer heads: llama.cpp's ``qwen2`` wants q and o as wide as the hidden
  size) or one with output biases (FLAP's compensation) is written as ``llama``, which takes any
  head count and optional q/k/v/o and MLP biases.
* Any of these with per-block widths (CFSP, Týr, Adapt-Pruner, FLAP adaptive): ``deci`` (the
  Llama-based architecture of Nemotron-NAS in llama.cpp), whose loader and graph read
  ``head_count``, ``head_count_kv`` and ``feed_forward_length`` per layer (arrays) and which keeps
  optional q/k/v/o and MLP biases, so a per-block Qwen2 fits it too. A block whose attention
  (or MLP) was removed whole is written without those tensors (deci's attention-free /
  FFN-free blocks).
* Removed blocks simply lower ``block_count``. Unstructured and N:M outputs are written dense
  (llama.cpp has no sparse kernels: they run at dense speed).

``llama`` and ``deci`` use llama.cpp's "normal" rope (consecutive pairs), so the q/k rows (and
biases) of each head are reordered from the Hugging Face half-split layout; ``qwen2`` uses the
"neox" rope, the HF layout, and is written as is. The head size is always written
(``attention.key_length``/``value_length``) since llama.cpp would otherwise derive it from
block 0's head count.

Quantisation (``--outtype``): ``f32``, ``f16``, ``bf16``, ``q8_0``, ``q4_0``. Norms and biases
stay f32; a matrix whose rows are not a multiple of the 32-value block (a per-block FFN width of
1203, say) falls back to f16 and is listed in the summary. ``q4_0`` keeps the token embedding and
the output matrix at ``q8_0`` (the ``gguf`` package has no ``q6_K`` quantiser, which is what
``llama-quantize`` uses for the output).

Refused with one line: families other than Llama/Mistral/Qwen2, ARMOR wrappers (not a llama.cpp
architecture), MoE outputs, rope scaling other than none/linear, tokenizers other than byte-level
BPE (Llama-3, SmolLM, Qwen2) and SentencePiece BPE with byte fallback (Llama-2, Mistral, TinyLlama:
written as llama.cpp's ``llama`` vocabulary with piece scores), and any tensor without a GGUF
counterpart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError, OutputError
from .hf import SPACE_MARGIN, SPACE_SLACK, TMP_TAG, check_output_file, fmt_bytes, os_reason

log = logging.getLogger(__name__)

FORMATS = ("gguf",)
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
#: HF model_type -> GGUF architecture when every block has the same widths
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PER_BLOCK_ARCH = "deci"
NORMAL_ROPE = {"llama", "deci"}  # llama.cpp rope on consecutive pairs: q/k rows are reordered
QBLOCK = 32  # values per block of q8_0 / q4_0
REFUSED_KEYS = {
    "prunekit_armor": "ARMOR wrappers (A·(W′⊙M)·B) are not a llama.cpp architecture: export the model before ARMOR",
    "prunekit_experts": "mixture-of-experts outputs are not supported by the GGUF exporter",
    "prunekit_dynamic_experts": "mixture-of-experts outputs are not supported by the GGUF exporter",
}
MOE_TYPES = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "phimoe"}

_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.bias": "ffn_down.bias",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


# ----------------------------------------------------------------------------------------------
# checks done before anything is loaded


def _need_gguf() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("GGUF export needs the 'gguf' package: pip install 'gguf>=0.19' (or `pip install prunekit[dev]`)")


def check_outtype(outtype: str) -> str:
    t = str(outtype).strip().lower()
    if t not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype!r} is not supported: use one of {', '.join(OUTTYPES)}")
    return t


def check_format(fmt: str) -> str:
    f = str(fmt).strip().lower()
    if f not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported: use gguf")
    return f


def _read_config(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def check_config_dict(cfg: dict, where: str) -> None:
    """Refuse what llama.cpp cannot run, from ``config.json`` alone (before any weight is read)."""
    for key, why in REFUSED_KEYS.items():
        if cfg.get(key):
            raise ConfigError(f"{where}: {why}")
    mt = cfg.get("model_type")
    if mt in MOE_TYPES or cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise ConfigError(f"{where}: mixture-of-experts model ({mt}) is not supported by the GGUF exporter")
    if mt not in FAMILIES:
        raise ConfigError(f"{where}: model family {mt!r} is not supported by the GGUF exporter "
                          f"(supported: Llama, Mistral, Qwen2)")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the model: geometry, tensors


def _rope(cfg) -> tuple[float, dict]:
    """(rope theta, extra rope keys) or ConfigError for a scaling llama.cpp would need more for."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = getattr(cfg, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params} if params else dict(scaling)
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    theta = float(theta) if theta is not None else 10000.0
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return theta, {}
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(params["factor"])}
    raise ConfigError(f"rope scaling {kind!r} is not supported by the GGUF exporter (only none or linear)")


def _head_dim(cfg) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else int(cfg.hidden_size) // int(cfg.num_attention_heads)


def _layer_widths(model, head_dim: int) -> list[dict[str, int]]:
    """Per block: query heads, KV heads, MLP channels, read from the weight shapes."""
    out = []
    for i, layer in enumerate(model.model.layers):
        at, mlp = layer.self_attn, layer.mlp
        q, k = at.q_proj.weight.shape[0], at.k_proj.weight.shape[0]
        if q % head_dim or k % head_dim:
            raise ConfigError(f"block {i}: q/k widths {q}/{k} are not whole heads of size {head_dim}")
        heads, kv = q // head_dim, k // head_dim
        if (heads == 0) != (kv == 0) or (kv and heads % kv):
            raise ConfigError(f"block {i}: {heads} query heads over {kv} KV heads is not a grouped-query layout")
        out.append({"heads": heads, "kv_heads": kv, "intermediate": int(mlp.gate_proj.weight.shape[0])})
    return out


def _permute_rows(w, n_head: int):
    """HF half-split rotary layout -> llama.cpp consecutive pairs, per head (rows of q or k)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _gguf_name(hf_name: str) -> str | None:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        rest = ".".join(parts[3:])
        if rest in _BLOCK_NAMES:
            return f"blk.{int(parts[2])}.{_BLOCK_NAMES[rest]}"
    return None


def _qtype_for(name: str, shape: tuple[int, ...], outtype: str):
    """(GGMLQuantizationType, fell back to f16?) for one tensor."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) < 2 or outtype == "f32":
        return Q.F32, False
    if outtype in ("f16", "bf16"):
        return (Q.F16 if outtype == "f16" else Q.BF16), False
    want = Q.Q8_0 if outtype == "q8_0" or name in ("token_embd.weight", "output.weight") else Q.Q4_0
    if shape[-1] % QBLOCK:
        return Q.F16, True
    return want, False


def _file_type(outtype: str) -> int:
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16,
            "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[outtype]  # fmt: skip


def _bytes_of(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for s in shape:
        n *= int(s)
    return n // block * size


def plan_tensors(model, outtype: str) -> tuple[str, list[dict[str, int]], list[tuple[str, str, Any]]]:
    """(architecture, per-block widths, [(gguf name, hf name, tensor)]) or a ConfigError."""
    cfg = model.config
    arch_u = FAMILIES[cfg.model_type]
    hd = _head_dim(cfg)
    widths = _layer_widths(model, hd)
    if not widths:
        raise ConfigError("the model has no decoder blocks")
    uniform = all(w == widths[0] for w in widths)
    if widths[0]["heads"] == 0:
        raise ConfigError("block 0 has no attention heads: llama.cpp derives the rope size from block 0; not supported")
    state = model.state_dict()
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == emb.data_ptr():
        tied = True
    items = []
    for hf_name, t in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = _gguf_name(hf_name)
        if name is None:
            raise ConfigError(f"tensor {hf_name} has no GGUF counterpart (Llama/Mistral/Qwen2 blocks only)")
        if name.startswith("blk."):
            il, part = int(name.split(".")[1]), name.split(".", 2)[2]
            no_attn = widths[il]["heads"] == 0 and part.startswith("attn_")
            no_ffn = widths[il]["intermediate"] == 0 and part.startswith("ffn_")
            if no_attn or no_ffn:  # a removed attention / MLP: llama.cpp's deci skips it whole
                if part.endswith(("attn_output.bias", "ffn_down.bias")) and bool(t.detach().abs().max() > 0):
                    raise ConfigError(f"block {il}: its {'attention' if no_attn else 'MLP'} is removed but keeps "
                                      f"an output bias ({hf_name}), which llama.cpp cannot represent")  # fmt: skip
                continue
        items.append((name, hf_name, t))
    extra_bias = any(n.endswith(("attn_output.bias", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias")) for n, _, _ in items)
    if not uniform or any(w["heads"] == 0 or w["intermediate"] == 0 for w in widths):
        arch = PER_BLOCK_ARCH
    elif arch_u == "qwen2" and (widths[0]["heads"] * hd != int(cfg.hidden_size) or extra_bias):
        arch = "llama"  # llama.cpp's qwen2 expects q = o = hidden size and q/k/v biases only; llama takes both
    else:
        arch = arch_u
    names = [n for n, _, _ in items]
    if len(set(names)) != len(names):
        raise ConfigError("two tensors map to the same GGUF name")
    return arch, widths, items


def _padded_shape(name: str, shape: tuple[int, ...], pad_ff: dict[int, int]) -> tuple[int, ...]:
    """The shape a tensor is written with once its block's MLP width is padded to ``pad_ff``."""
    if not name.startswith("blk.") or int(name.split(".")[1]) not in pad_ff:
        return shape
    ff = pad_ff[int(name.split(".")[1])]
    if name.endswith(("ffn_gate.weight", "ffn_up.weight", "ffn_gate.bias", "ffn_up.bias")):
        return (ff, *shape[1:])
    if name.endswith("ffn_down.weight"):
        return (shape[0], ff)
    return shape


def _to_numpy(name: str, t, widths, arch: str, pad_ff: dict[int, int] | None = None):
    import numpy as np
    import torch

    a = t.detach().to(torch.float32).cpu().numpy()
    if arch in NORMAL_ROPE and name.startswith("blk."):
        il = int(name.split(".")[1])
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            a = _permute_rows(a, widths[il]["heads"])
        elif name.endswith(("attn_k.weight", "attn_k.bias")):
            a = _permute_rows(a, widths[il]["kv_heads"])
    shape = _padded_shape(name, tuple(a.shape), pad_ff or {})
    if shape != tuple(a.shape):  # zero MLP channels: silu(0)·0 = 0 and a zero column of down_proj
        z = np.zeros(shape, dtype=np.float32)
        z[tuple(slice(0, n) for n in a.shape)] = a
        a = z
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------------------------
# the tokenizer


def _source_gguf(spec: str, model) -> Path | None:
    """The GGUF the model came from (an alias, a .gguf, or the source a prunekit folder names)."""
    src = getattr(model, "prunekit_source", None)
    if src is not None and getattr(src, "kind", None) == "gguf":
        return Path(src.path)
    p = Path(str(spec)).expanduser()
    if p.is_dir() and (p / "prunekit.json").is_file():
        try:
            meta = json.loads((p / "prunekit.json").read_text())
        except (OSError, ValueError):
            return None
        found = []

        def walk(o):
            if isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)
            elif isinstance(o, str) and o.endswith(".gguf"):
                found.append(o)

        walk(meta.get("source", meta))
        for f in found:
            if Path(f).is_file():
                return Path(f)
    return None


TOKENIZER_KEYS_COPIED = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
)  # fmt: skip


def _tokenizer_from_gguf(path: Path, vocab_size: int) -> dict | None:
    """tokenizer.* fields of a llama.cpp GGUF, as {key: (value, GGUFValueType[, subtype])}."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out = {}
    for key in TOKENIZER_KEYS_COPIED:
        f = r.fields.get(key)
        if f is not None:
            out[key] = (f.contents(), f.types)
    toks = out.get("tokenizer.ggml.tokens")
    if toks is None or len(toks[0]) != vocab_size:
        return None
    return out


def _guess_pre(model_type: str, tokens: list[str]) -> str:
    """llama.cpp's pre-tokenizer name for the known byte-level BPE vocabularies (else "default")."""
    if model_type == "qwen2":
        return "qwen2"
    if len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        return "smollm"
    if len(tokens) >= 128000 and "<|begin_of_text|>" in tokens[128000:128002]:
        return "llama-bpe"
    return "default"


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _spm_model_file(tok) -> Path | None:
    """The SentencePiece ``tokenizer.model`` beside the tokenizer, if it still has one."""
    for cand in (getattr(tok, "vocab_file", None), Path(str(getattr(tok, "name_or_path", "") or "")) / "tokenizer.model"):
        if cand and Path(cand).is_file() and Path(cand).name.endswith(".model"):
            return Path(cand)
    return None


def _spm_scores(tok, tokens: list[str], types: list[int], merges: list) -> list[float]:
    """Piece scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose
    concatenation is the highest-scoring piece.

    From ``tokenizer.model`` when it is there and ``sentencepiece`` is installed (what llama.cpp's
    converter writes). A saved Hugging Face folder keeps only ``tokenizer.json``; its merge list is
    ordered like the pieces' scores (transformers builds it that way from the model), so a piece
    made by the merge of rank ``r`` gets ``-r``: the same pair wins first in both tokenizers.
    Single characters and bytes, never the result of a merge, get 0; added tokens -1000."""
    from gguf import TokenType

    path = _spm_model_file(tok)
    if path is not None:
        try:
            from sentencepiece import SentencePieceProcessor
        except ImportError:
            log.info("sentencepiece is not installed: scores come from tokenizer.json's merge ranks")
        else:
            sp = SentencePieceProcessor(model_file=str(path))
            n = sp.vocab_size()
            if all(sp.IdToPiece(i) == tokens[i] for i in range(min(n, len(tokens)))):
                return [float(sp.GetScore(i)) if i < n else -1000.0 for i in range(len(tokens))]
            log.warning("%s does not match tokenizer.json: scores come from the merge ranks", path)
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    added = (int(TokenType.CONTROL), int(TokenType.USER_DEFINED), int(TokenType.UNUSED))
    return [-float(rank[t]) if t in rank else (-1000.0 if ty in added else 0.0) for t, ty in zip(tokens, types)]


def _spm_space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts '▁' before the text (SentencePiece's add_dummy_prefix)."""
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer") or {}
    metas = [p for p in [pre, *(pre.get("pretokenizers") or [])] if p.get("type") == "Metaspace"]
    if metas:
        m = metas[0]
        return m.get("prepend_scheme", "always" if m.get("add_prefix_space", True) else "never") != "never"
    return "Prepend" in json.dumps(norm)


def _tokenizer_from_hf(tok, cfg, vocab_size: int) -> dict:
    from gguf import GGUFValueType as V
    from gguf import TokenType

    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise ConfigError("the tokenizer is not a Hugging Face fast tokenizer (tokenizer.json): cannot write it to GGUF")
    spec = json.loads(backend.to_str())
    mdl = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    spm = mdl.get("type") == "BPE" and bool(mdl.get("byte_fallback")) and "ByteLevel" not in pre
    if not spm and (mdl.get("type") != "BPE" or "ByteLevel" not in pre):
        raise ConfigError(f"tokenizer type {mdl.get('type')!r} is not supported by the GGUF exporter "
                          f"(byte-level BPE as in Llama-3, SmolLM, Qwen2, or SentencePiece BPE with byte "
                          f"fallback as in Llama-2, Mistral, TinyLlama)")  # fmt: skip
    vocab = tok.get_vocab()
    if max(vocab.values(), default=-1) >= vocab_size:
        raise ConfigError(f"the tokenizer has ids up to {max(vocab.values())}, beyond the model's {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = {a["content"]: bool(a.get("special")) for a in spec.get("added_tokens") or []}
    unk = mdl.get("unk_token")
    tokens, types = [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif spm and t == unk:
            tokens.append(t)
            types.append(int(TokenType.UNKNOWN))
        elif t in added:
            tokens.append(t)
            types.append(int(TokenType.CONTROL if added[t] else TokenType.USER_DEFINED))
        elif spm and _BYTE_PIECE.fullmatch(t):
            tokens.append(t)
            types.append(int(TokenType.BYTE))
        else:
            tokens.append(t)
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in mdl.get("merges") or []]

    def tid(attr: str, cfg_attr: str):
        v = getattr(tok, attr, None)
        if v is None:
            v = getattr(cfg, cfg_attr, None)
            if isinstance(v, list):
                v = v[0] if v else None
        return int(v) if v is not None else None

    if spm:  # llama.cpp's SentencePiece tokenizer: merges by piece score, no merge list
        scores = _spm_scores(tok, tokens, types, mdl.get("merges") or [])
        out = {
            "tokenizer.ggml.model": ("llama", [V.STRING]),
            "tokenizer.ggml.pre": ("default", [V.STRING]),
            "tokenizer.ggml.tokens": (tokens, [V.ARRAY, V.STRING]),
            "tokenizer.ggml.scores": (scores, [V.ARRAY, V.FLOAT32]),
            "tokenizer.ggml.token_type": (types, [V.ARRAY, V.INT32]),
            "tokenizer.ggml.add_space_prefix": (_spm_space_prefix(spec), [V.BOOL]),
        }
    else:
        out = {
            "tokenizer.ggml.model": ("gpt2", [V.STRING]),
            "tokenizer.ggml.pre": (_guess_pre(cfg.model_type, tokens), [V.STRING]),
            "tokenizer.ggml.tokens": (tokens, [V.ARRAY, V.STRING]),
            "tokenizer.ggml.token_type": (types, [V.ARRAY, V.INT32]),
            "tokenizer.ggml.merges": (merges, [V.ARRAY, V.STRING]),
        }
    for key, attr, cattr in (("bos", "bos_token_id", "bos_token_id"), ("eos", "eos_token_id", "eos_token_id"),
                             ("unknown", "unk_token_id", "unk_token_id"), ("padding", "pad_token_id", "pad_token_id")):  # fmt: skip
        v = tid(attr, cattr)
        if v is not None and 0 <= v < vocab_size:
            out[f"tokenizer.ggml.{key}_token_id"] = (v, [V.UINT32])
    # what the tokenizer does, not its flag: a reloaded transformers 5 tokenizer can say
    # add_bos_token=False while its post-processor still adds BOS
    try:
        probe = list(tok("a", add_special_tokens=True).input_ids)
    except Exception:  # noqa: BLE001 - a custom tokenizer: fall back to its flags
        probe = None
    bos, eos = (out.get(f"tokenizer.ggml.{k}_token_id", (None,))[0] for k in ("bos", "eos"))
    add_bos = bos is not None and (bool(probe) and probe[0] == bos if probe is not None else bool(getattr(tok, "add_bos_token", False)))
    out["tokenizer.ggml.add_bos_token"] = (add_bos, [V.BOOL])
    if spm:  # llama.cpp's SentencePiece vocabulary adds EOS only when told (Llama-2 adds none)
        add_eos = eos is not None and (bool(probe) and probe[-1] == eos if probe is not None else bool(getattr(tok, "add_eos_token", False)))
        out["tokenizer.ggml.add_eos_token"] = (add_eos, [V.BOOL])
    tmpl = getattr(tok, "chat_template", None)
    if isinstance(tmpl, str) and tmpl.strip():
        out["tokenizer.chat_template"] = (tmpl, [V.STRING])
    return out


# ----------------------------------------------------------------------------------------------
# writing


def _add_field(writer, key: str, value, types) -> None:
    from gguf import GGUFValueType as V

    if types[0] == V.ARRAY:
        writer.add_key_value(key, list(value), V.ARRAY, sub_type=types[-1] if len(types) > 1 else None)
    else:
        writer.add_key_value(key, value, types[0])


def _temp_path(out: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}{TMP_TAG}{os.getpid()}-", dir=out.parent)
    os.close(fd)
    return Path(tmp)


def _mkdirs(p: Path) -> list[Path]:
    missing = [a for a in p.parents if not a.exists()]
    made = []
    try:
        for a in reversed(missing):
            a.mkdir()
            made.append(a)
    except OSError as e:
        for a in reversed(made):
            a.rmdir()
        raise OutputError(f"cannot write --out {p}: {e.filename or p.parent}: {os_reason(e)}") from None
    return made


def export_gguf(model: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
                overwrite: bool = False, name: str | None = None, pad_mlp: bool = True,
                progress=None, loaded: tuple | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``model`` (a prunekit output folder, HF folder, .gguf or alias) as a GGUF file.

    ``loaded``: the ``(model, tokenizer)`` that ``prunekit.models.load_model(model)`` returned,
    to export again without reloading (``model`` still names the input). Returns the summary (what ``prunekit export --json`` prints). Raises ConfigError for what
    llama.cpp cannot run (one line naming it), OutputError for a bad ``out``, ModelLoadError for
    a model that does not load. Nothing is left at ``out`` unless the whole file was written.
    """
    t0 = time.time()
    outtype = check_outtype(outtype)
    _need_gguf()
    spec = str(model)
    protect = [spec] if Path(spec).expanduser().exists() else []
    out_p = check_output_file(out, overwrite, protect=protect)
    src_dir = Path(spec).expanduser()
    if src_dir.is_dir() and out_p.resolve().is_relative_to(src_dir.resolve()):
        raise OutputError(f"--out {out} is inside the input folder {spec}: choose a path outside it")
    if not out_p.name.lower().endswith(".gguf"):
        log.warning("--out %s does not end in .gguf", out)
    src_path = Path(spec).expanduser()
    if src_path.is_dir():
        cfg = _read_config(src_path)
        if cfg is None:
            raise ModelLoadError(f"{spec} has no readable config.json: not a model folder")
        check_config_dict(cfg, spec)

    from ..models import load_model

    say = progress or (lambda msg: None)
    if loaded is None:
        say(f"loading {spec}")
        hf_model, tok = load_model(spec)
    else:
        hf_model, tok = loaded
    cfg = hf_model.config
    check_config_dict(cfg.to_dict(), spec)
    if getattr(cfg, "prunekit_block_widths", None) is not None and not hasattr(hf_model, "model"):
        raise ConfigError(f"{spec}: not a decoder-only causal LM")
    arch, widths, items = plan_tensors(hf_model, outtype)
    theta, rope_extra = _rope(cfg)
    hd = _head_dim(cfg)
    vocab_size = int(hf_model.get_input_embeddings().weight.shape[0])

    src_gguf = _source_gguf(spec, hf_model)
    toks = _tokenizer_from_gguf(src_gguf, vocab_size) if src_gguf is not None else None
    tok_from = str(src_gguf) if toks is not None else "tokenizer.json"
    if toks is None:
        toks = _tokenizer_from_hf(tok, cfg, vocab_size)

    # sizes and free space, before writing anything
    plans = []
    need = 4_000_000 + sum(len(t) + 8 for t in toks.get("tokenizer.ggml.tokens", ([], 0))[0])
    need += sum(len(m) + 8 for m in toks.get("tokenizer.ggml.merges", ([], 0))[0])
    fallback = []
    # quantised files: an MLP width that is not a multiple of the 32-value block is padded with
    # zero channels (exactly the same outputs) so that ffn_down can be quantised too
    pad_ff = {} if outtype not in ("q8_0", "q4_0") or not pad_mlp else {
        i: -(-w["intermediate"] // QBLOCK) * QBLOCK for i, w in enumerate(widths) if w["intermediate"] % QBLOCK}
    for gname, hf_name, t in items:
        shape = _padded_shape(gname, tuple(t.shape), pad_ff)
        qt, fb = _qtype_for(gname, shape, outtype)
        if fb:
            fallback.append(gname)
        plans.append((gname, hf_name, t, qt))
        need += _bytes_of(shape, qt) + 64
    kept_ff = [w["intermediate"] for w in widths]
    widths = [{**w, "intermediate": pad_ff.get(i, w["intermediate"])} for i, w in enumerate(widths)]
    made = _mkdirs(out_p)
    try:
        free = shutil.disk_usage(out_p.parent).free
    except OSError as e:
        raise OutputError(f"cannot write --out {out}: {os_reason(e)}") from None
    if free < need * SPACE_MARGIN + SPACE_SLACK:
        for a in reversed(made):
            a.rmdir()
        raise OutputError(f"not enough space for --out {out}: about {fmt_bytes(need)} needed, "
                          f"{fmt_bytes(free)} free on {out_p.parent}")  # fmt: skip

    import gguf
    import numpy as np

    tmp = None
    try:
        tmp = _temp_path(out_p)
        w = gguf.GGUFWriter(str(tmp), arch)
        uniform = arch != PER_BLOCK_ARCH
        n = len(widths)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or (Path(spec).name if Path(spec).exists() else spec))
        w.add_file_type(int(_file_type(outtype)))
        w.add_block_count(n)
        w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048) or 2048))
        w.add_embedding_length(int(cfg.hidden_size))
        heads = [x["heads"] for x in widths]
        kvs = [x["kv_heads"] for x in widths]
        ffs = [x["intermediate"] for x in widths]
        w.add_feed_forward_length(ffs[0] if uniform else ffs)
        w.add_head_count(heads[0] if uniform else heads)
        w.add_head_count_kv(kvs[0] if uniform else kvs)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(theta)
        if rope_extra:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope_extra["factor"])
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(vocab_size)
        for key, (val, types) in toks.items():
            _add_field(w, key, val, types)
        if outtype in ("q8_0", "q4_0"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_string("general.source.prunekit", json.dumps({"model_type": cfg.model_type, "input": spec,
                                                            "per_block": not uniform}))  # fmt: skip
        params = 0
        say(f"converting {len(plans)} tensors to {outtype}")
        for gname, _hf, t, qt in plans:
            a = _to_numpy(gname, t, widths, arch, pad_ff)
            params += int(t.numel())
            if qt == gguf.GGMLQuantizationType.F32:
                w.add_tensor(gname, a.astype(np.float32))
            elif qt == gguf.GGMLQuantizationType.F16:
                w.add_tensor(gname, a.astype(np.float16))
            else:
                w.add_tensor(gname, gguf.quants.quantize(a, qt), raw_dtype=qt)
        say(f"writing {out_p}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out_p)
        tmp = None
    except OSError as e:
        raise OutputError(f"could not write --out {out}: {os_reason(e)}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
            for a in reversed(made):
                try:
                    a.rmdir()
                except OSError:
                    break
    size = out_p.stat().st_size
    return {
        "out": str(out_p), "format": "gguf", "outtype": outtype, "architecture": arch,
        "model_type": cfg.model_type, "block_count": len(widths), "per_layer": arch == PER_BLOCK_ARCH,
        "heads": heads, "kv_heads": kvs, "feed_forward": ffs, "head_dim": hd,
        "tensors": len(plans), "parameters": int(params), "bytes": int(size), "size": fmt_bytes(size),
        "f16_fallback": fallback, "mlp_padded": {str(i): [kept_ff[i], f] for i, f in pad_ff.items()}, "tokenizer_from": tok_from,
        "tokenizer_pre": toks.get("tokenizer.ggml.pre", (None,))[0],
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ----------------------------------------------------------------------------------------------
# reading back: prunekit info FILE.gguf


def describe_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """What a GGUF holds: architecture, per-layer widths, tokenizer, tensor types and sizes."""
    _need_gguf()
    from gguf import GGUFReader

    p = Path(path)
    try:
        r = GGUFReader(str(p))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {' '.join(str(e).split())[:300]}") from None

    def val(key):
        f = r.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # pragma: no cover - an odd field
            return None

    arch = val("general.architecture") or "?"
    n = val(f"{arch}.block_count")

    def per_layer(key):
        v = val(f"{arch}.{key}")
        if v is None:
            return None
        return [int(x) for x in v] if isinstance(v, list) else [int(v)] * int(n or 0)

    types: dict[str, int] = {}
    params = 0
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        params += int(t.n_elements)
    toks = val("tokenizer.ggml.tokens")
    return {
        "file": str(p), "bytes": p.stat().st_size, "size": fmt_bytes(p.stat().st_size),
        "architecture": arch, "name": val("general.name"), "file_type": val("general.file_type"),
        "block_count": n, "embedding_length": val(f"{arch}.embedding_length"),
        "context_length": val(f"{arch}.context_length"),
        "heads": per_layer("attention.head_count"), "kv_heads": per_layer("attention.head_count_kv"),
        "feed_forward": per_layer("feed_forward_length"),
        "per_layer": any(isinstance(val(f"{arch}.{k}"), list) for k in
                         ("attention.head_count", "attention.head_count_kv", "feed_forward_length")),
        "head_dim": val(f"{arch}.attention.key_length"), "rope_freq_base": val(f"{arch}.rope.freq_base"),
        "tokenizer": {"model": val("tokenizer.ggml.model"), "pre": val("tokenizer.ggml.pre"),
                      "tokens": len(toks) if toks else 0, "chat_template": val("tokenizer.chat_template") is not None},
        "tensors": len(r.tensors), "tensor_types": types, "parameters": params,
        "prunekit": json.loads(val("general.source.prunekit")) if val("general.source.prunekit") else None,
    }  # fmt: skip


def print_gguf(info: dict[str, Any]) -> None:
    print(f"{info['file']}: GGUF, {info['architecture']}, {info['block_count']} blocks, "
          f"{info['parameters']:,} parameters, {info['size']}")  # fmt: skip
    tk = info["tokenizer"]
    print(f"tokenizer: {tk['model']} (pre {tk['pre']}), {tk['tokens']:,} tokens"
          + (", chat template" if tk["chat_template"] else ""))  # fmt: skip
    print("tensor types: " + ", ".join(f"{k} x{v}" for k, v in sorted(info["tensor_types"].items())))
    h, kv, ff = info["heads"] or [], info["kv_heads"] or [], info["feed_forward"] or []
    print(f"widths ({'per layer' if info['per_layer'] else 'uniform'}, head size {info['head_dim']}):")
    for i in range(len(h)):
        print(f"  block {i:>3}: heads {h[i]:>3}  kv heads {kv[i] if i < len(kv) else '?':>3}  ffn {ff[i] if i < len(ff) else '?':>6}")


# ----------------------------------------------------------------------------------------------
# CLI


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as one GGUF file for llama.cpp / Ollama / LM Studio")
    p.add_argument("model", help="prunekit output folder, HF folder, .gguf or alias")
    p.add_argument("--format", default="gguf", help="output format (gguf)")
    p.add_argument("--outtype", default="f16", help=f"tensor type: {' | '.join(OUTTYPES)} (default f16)")
    p.add_argument("--out", "-o", required=True, help="output file (FILE.gguf), written atomically")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-pad-mlp", dest="pad_mlp", action="store_false",
                   help="q8_0/q4_0: keep an MLP width that is not a multiple of 32 as is (its ffn_down then stays f16) "
                        "instead of padding it with zero channels (same outputs)")
    p.add_argument("--name", default=None, help="general.name in the file (default: the input's name)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(_handler=cmd_export)


def cmd_export(args) -> dict[str, Any]:
    import sys

    check_format(args.format)
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    say = None if quiet else (lambda m: print(f"[export] {m}", file=sys.stderr, flush=True))
    res = export_gguf(args.model, args.out, outtype=args.outtype, overwrite=args.overwrite,
                      name=args.name, pad_mlp=getattr(args, "pad_mlp", True), progress=say)  # fmt: skip
    if not getattr(args, "json", False):
        kind = "per-layer widths" if res["per_layer"] else "uniform widths"
        print(f"wrote {res['out']}: {res['architecture']} ({kind}), {res['block_count']} blocks, "
              f"{res['outtype']}, {res['parameters']:,} parameters, {res['size']} in {res['seconds']} s")  # fmt: skip
        if res["mlp_padded"]:
            print(f"  {len(res['mlp_padded'])} MLP widths padded with zero channels to a multiple of {QBLOCK} "
                  f"(same outputs) so ffn_down quantises")  # fmt: skip
        if res["f16_fallback"]:
            print(f"  {len(res['f16_fallback'])} tensors kept at f16 (rows not a multiple of {QBLOCK}): "
                  f"{', '.join(res['f16_fallback'][:4])}{' ...' if len(res['f16_fallback']) > 4 else ''}")  # fmt: skip
    return res


__all__ = ["OUTTYPES", "cmd_export", "describe_gguf", "export_gguf", "print_gguf", "register"]
