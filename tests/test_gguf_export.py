"""GGUF export (issue 42): tiny random Llama / Qwen2 / Mistral models (dense, uniform structured,
per-block widths, blocks removed) exported and read back with the ``gguf`` package's reader.

Offline and compiler-free: llama.cpp itself is exercised by ``benchmarks/gguf_check.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import make_llama, make_opt  # noqa: E402

from prunekit.cli.main import main  # noqa: E402
from prunekit.export import gguf as gx  # noqa: E402
from prunekit.export.gguf import describe_gguf, export_gguf, print_gguf  # noqa: E402


# ---------------------------------------------------------------------------------------------
# helpers


def _qwen2(tied: bool = True, layers: int = 2, seed: int = 1):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tied, rope_theta=1e6,
    )  # fmt: skip
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random q/k/v biases (zeros would hide a wrong bias permutation)
        for layer in m.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.normal_()
    return m


def _mistral(seed: int = 2):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=False, sliding_window=None,
    )  # fmt: skip
    return MistralForCausalLM(cfg).eval()


def _save(model, tokenizer, d):
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _per_block(model, widths):
    from prunekit.structured.per_block import shrink_to_widths

    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    shrink_to_widths(model, widths)
    model.config.prunekit_block_widths = widths
    return model


def _ref_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Independent statement of llama.cpp's rope layout: per head, row 2i = first half row i,
    row 2i+1 = second half row i (HF keeps the halves apart)."""
    d = w.shape[0] // n_head
    idx = []
    for h in range(n_head):
        for i in range(d // 2):
            idx += [h * d + i, h * d + d // 2 + i]
    return w[np.array(idx)]


def _tensors(path):
    r = gguf.GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def _values(t) -> np.ndarray:
    a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])


def _field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


HF2GG = {**gx._TOP_NAMES}


def _expected(model, arch: str) -> dict[str, np.ndarray]:
    """GGUF name -> values expected in the file, from the HF state dict."""
    out = {}
    cfg = model.config
    tied = getattr(cfg, "tie_word_embeddings", False)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and tied:
            continue
        name = gx._gguf_name(k)
        assert name is not None, k
        a = v.detach().float().numpy()
        if arch in ("llama", "deci") and name.startswith("blk.") and (".attn_q." in name or ".attn_k." in name):
            a = _ref_permute(a, a.shape[0] // hd)
        out[name] = a
    return out


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_f32_round_trip_is_exact(family, tokenizer, tmp_path):
    model = {"llama": make_llama, "qwen2": _qwen2, "mistral": _mistral}[family]()
    src = _save(model, tokenizer, tmp_path / family)
    out = tmp_path / f"{family}.gguf"
    res = export_gguf(src, out, outtype="f32")
    arch = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}[family]
    assert res["architecture"] == arch and not res["per_layer"] and res["block_count"] == 2
    r, ts = _tensors(out)
    exp = _expected(model, arch)
    assert set(ts) == set(exp)
    for name, a in exp.items():
        assert ts[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_array_equal(_values(ts[name]), a, err_msg=name)
    assert _field(r, "general.architecture") == arch
    assert _field(r, f"{arch}.block_count") == 2
    assert _field(r, f"{arch}.attention.head_count") == 4
    assert _field(r, f"{arch}.attention.head_count_kv") == 2
    assert _field(r, f"{arch}.feed_forward_length") == 128
    assert _field(r, f"{arch}.embedding_length") == 64
    assert _field(r, f"{arch}.attention.key_length") == 16
    assert _field(r, f"{arch}.rope.dimension_count") == 16
    assert _field(r, f"{arch}.vocab_size") == 384
    assert _field(r, "general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    theta = 1e6 if family == "qwen2" else 10000.0
    assert _field(r, f"{arch}.rope.freq_base") == pytest.approx(theta)
    assert ("output.weight" in ts) == (family != "qwen2")  # the tiny Qwen2 ties its embeddings


def test_tokenizer_is_written_as_llama_cpp_reads_it(tokenizer, tmp_path):
    src = _save(make_llama(), tokenizer, tmp_path / "m")
    out = tmp_path / "m.gguf"
    export_gguf(src, out, outtype="f16")
    r, _ = _tensors(out)
    toks = _field(r, "tokenizer.ggml.tokens")
    vocab = tokenizer.get_vocab()
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert len(toks) == 384 and all(toks[i] == t for t, i in vocab.items())
    types = _field(r, "tokenizer.ggml.token_type")
    eot = vocab["<|endoftext|>"]
    assert types[eot] == int(gguf.TokenType.CONTROL)
    assert sum(t == int(gguf.TokenType.NORMAL) for t in types) == 383
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = _field(r, "tokenizer.ggml.merges")
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in spec] and merges
    assert _field(r, "tokenizer.ggml.eos_token_id") == eot
    assert _field(r, "tokenizer.ggml.bos_token_id") == eot


def test_vocab_padded_to_the_embedding_rows(tokenizer, tmp_path):
    src = _save(make_llama(vocab=400), tokenizer, tmp_path / "m")
    out = tmp_path / "m.gguf"
    export_gguf(src, out, outtype="f32")
    r, _ = _tensors(out)
    toks, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    assert len(toks) == 400 and toks[399] == "[PAD399]" and types[399] == int(gguf.TokenType.UNUSED)


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0"])
def test_quantised_values_within_their_error(outtype, tokenizer, tmp_path):
    model = make_llama()
    src = _save(model, tokenizer, tmp_path / "m")
    out = tmp_path / f"m-{outtype}.gguf"
    res = export_gguf(src, out, outtype=outtype)
    Q = gguf.GGMLQuantizationType
    want = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[outtype]
    r, ts = _tensors(out)
    for name, a in _expected(model, "llama").items():
        t = ts[name]
        if a.ndim == 1:
            assert t.tensor_type == Q.F32
            np.testing.assert_array_equal(_values(t), a)
            continue
        big = name in ("token_embd.weight", "output.weight")
        assert t.tensor_type == (Q.Q8_0 if outtype == "q4_0" and big else want), name
        got = _values(t)
        # exactly what the gguf package's quantiser gives, and within the format's own error
        np.testing.assert_array_equal(got, gguf.quants.dequantize(gguf.quants.quantize(a, t.tensor_type), t.tensor_type))
        blocks = np.abs(a).reshape(a.shape[0], -1, 32).max(-1, keepdims=True)
        # worst case per 32-value block, relative to its largest |value| (q*: + the f16 scale's rounding)
        rel = {Q.F16: 2.0**-11, Q.BF16: 2.0**-8, Q.Q8_0: 1 / 254 + 2.0**-10, Q.Q4_0: 1 / 8 + 2.0**-10}[t.tensor_type]
        err = np.abs(got - a).reshape(blocks.shape[0], -1, 32)
        assert (err <= blocks * rel + 1e-7).all(), name
    assert _field(r, "general.file_type") == int(gx._file_type(outtype))
    if outtype in ("q8_0", "q4_0"):
        assert _field(r, "general.quantization_version") == gguf.GGML_QUANT_VERSION
    assert res["f16_fallback"] == [] and res["mlp_padded"] == {}


def test_per_block_llama_writes_per_layer_arrays(tokenizer, tmp_path):
    widths = [{"heads": 2, "kv_heads": 1, "intermediate": 96}, {"heads": 4, "kv_heads": 2, "intermediate": 40},
              {"heads": 2, "kv_heads": 2, "intermediate": 128}]  # fmt: skip
    model = _per_block(make_llama(layers=3), widths)
    src = tmp_path / "pb"
    import prunekit as pk

    pk.save_pretrained_atomic(model, tokenizer, src, {})
    assert json.loads((src / "config.json").read_text())["prunekit_block_widths"] == widths
    out = tmp_path / "pb.gguf"
    res = export_gguf(src, out, outtype="f32")
    assert res["architecture"] == "deci" and res["per_layer"]
    r, ts = _tensors(out)
    assert _field(r, "general.architecture") == "deci"
    assert _field(r, "deci.block_count") == 3
    assert _field(r, "deci.attention.head_count") == [2, 4, 2]
    assert _field(r, "deci.attention.head_count_kv") == [1, 2, 2]
    assert _field(r, "deci.feed_forward_length") == [96, 40, 128]
    assert _field(r, "deci.attention.key_length") == 16
    for name, a in _expected(model, "deci").items():
        np.testing.assert_array_equal(_values(ts[name]), a, err_msg=name)
    assert [int(x) for x in ts["blk.0.attn_q.weight"].shape] == [64, 32]
    assert [int(x) for x in ts["blk.1.ffn_down.weight"].shape] == [40, 64]
    info = describe_gguf(out)
    assert info["per_layer"] and info["heads"] == [2, 4, 2] and info["feed_forward"] == [96, 40, 128]


def test_per_block_q8_0_pads_mlp_widths_with_zero_channels(tokenizer, tmp_path):
    widths = [{"heads": 4, "kv_heads": 2, "intermediate": 40}, {"heads": 2, "kv_heads": 1, "intermediate": 128}]
    model = _per_block(make_llama(), widths)
    import prunekit as pk

    src = pk.save_pretrained_atomic(model, tokenizer, tmp_path / "pb", {})
    out = tmp_path / "pb.gguf"
    res = export_gguf(src, out, outtype="q8_0")
    assert res["mlp_padded"] == {"0": [40, 64]} and res["f16_fallback"] == []
    r, ts = _tensors(out)
    assert _field(r, "deci.feed_forward_length") == [64, 128]
    down, gate = _values(ts["blk.0.ffn_down.weight"]), _values(ts["blk.0.ffn_gate.weight"])
    assert down.shape == (64, 64) and gate.shape == (64, 64)
    assert not down[:, 40:].any() and not gate[40:].any() and not _values(ts["blk.0.ffn_up.weight"])[40:].any()
    assert ts["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    # without padding the odd width stays f16 (and is listed)
    res2 = export_gguf(src, tmp_path / "nopad.gguf", outtype="q8_0", pad_mlp=False)
    assert res2["f16_fallback"] == ["blk.0.ffn_down.weight"] and res2["mlp_padded"] == {}
    _, ts2 = _tensors(tmp_path / "nopad.gguf")
    assert ts2["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16


def test_per_block_qwen2_keeps_permuted_biases(tokenizer, tmp_path):
    widths = [{"heads": 2, "kv_heads": 1, "intermediate": 64}, {"heads": 4, "kv_heads": 2, "intermediate": 96}]
    model = _per_block(_qwen2(), widths)
    import prunekit as pk

    src = pk.save_pretrained_atomic(model, tokenizer, tmp_path / "qpb", {})
    out = tmp_path / "qpb.gguf"
    res = export_gguf(src, out, outtype="f32")
    assert res["architecture"] == "deci"
    r, ts = _tensors(out)
    exp = _expected(model, "deci")
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(ts)
    assert set(ts) == set(exp)
    for name, a in exp.items():
        np.testing.assert_array_equal(_values(ts[name]), a, err_msg=name)
    assert _field(r, "deci.rope.freq_base") == pytest.approx(1e6)


def test_uniform_structured_qwen2_is_written_as_llama(tokenizer, tmp_path):
    """llama.cpp's qwen2 wants q/o as wide as the hidden size: fewer heads go to llama (permuted)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512)  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    src = _save(model, tokenizer, tmp_path / "q")
    res = export_gguf(src, tmp_path / "q.gguf", outtype="f32")
    assert res["architecture"] == "llama"
    r, ts = _tensors(tmp_path / "q.gguf")
    assert _field(r, "llama.attention.head_count") == 2 and _field(r, "llama.attention.key_length") == 16
    for name, a in _expected(model, "llama").items():
        np.testing.assert_array_equal(_values(ts[name]), a, err_msg=name)


def _prune_cli(src, method, out, capsys, *extra):
    extra = extra or ("--sparsity", "0.3")
    rc = main(["prune", str(src), "--method", method, "--calib", "builtin", "--nsamples", "2",
               "--seqlen", "32", "--out", str(out), "-q", *extra])  # fmt: skip
    capsys.readouterr()
    assert rc == 0
    return out


@pytest.mark.parametrize("method,arch,blocks", [("cfsp", "deci", 2), ("flap", "llama", 2), ("shortgpt", "llama", 1)])
def test_real_prunekit_outputs_export(method, arch, blocks, tiny_llama_dir, tmp_path, capsys):
    """Per-block widths (CFSP), uniform widths with FLAP's bias compensation, blocks removed."""
    from prunekit.models import load_model

    src = _prune_cli(tiny_llama_dir, method, tmp_path / method, capsys)
    out = tmp_path / f"{method}.gguf"
    rc = main(["export", str(src), "--format", "gguf", "--outtype", "f32", "--out", str(out), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    res = json.loads(lines[-1])
    assert res["architecture"] == arch and res["block_count"] == blocks
    model, _ = load_model(src)
    r, ts = _tensors(out)
    exp = _expected(model, arch)
    assert set(ts) == set(exp)
    for name, a in exp.items():
        np.testing.assert_array_equal(_values(ts[name]), a, err_msg=name)
    assert _field(r, f"{arch}.block_count") == blocks
    if method == "cfsp":
        assert _field(r, "deci.feed_forward_length") == [b.mlp.gate_proj.out_features for b in model.model.layers]
    if method == "flap":
        assert "blk.0.ffn_down.bias" in ts  # the compensation bias, which llama.cpp's llama adds


def test_unstructured_output_is_written_dense_with_its_zeros(tiny_llama_dir, tmp_path, capsys):
    src = _prune_cli(tiny_llama_dir, "magnitude", tmp_path / "mag", capsys, "--pattern", "2:4")
    out = tmp_path / "mag.gguf"
    assert main(["export", str(src), "--out", str(out), "--outtype", "f32", "-q"]) == 0
    capsys.readouterr()
    _, ts = _tensors(out)
    w = _values(ts["blk.0.ffn_up.weight"])
    assert (w.reshape(-1, 4) == 0).sum(-1).min() >= 2


# ---------------------------------------------------------------------------------------------
# CLI, info, bad input


def test_cli_export_and_info(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "m.gguf"
    assert main(["export", str(tiny_llama_dir), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "llama" in text and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "m.gguf"]  # no temp file left
    info = describe_gguf(out)
    assert info["architecture"] == "llama" and info["block_count"] == 2 and info["tokenizer"]["tokens"] == 384
    assert info["tensor_types"]["Q8_0"] == 16 and info["heads"] == [4, 4]
    print_gguf(info)
    shown = capsys.readouterr().out
    assert "GGUF, llama, 2 blocks" in shown and "block   1: heads   4" in shown


def _err(capsys, argv) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_existing_output_needs_overwrite(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), "--out", str(out)])
    assert rc == 2 and err.startswith("prunekit: error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(tiny_llama_dir), "--out", str(out), "--overwrite", "-q"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("flag,value,words", [("--outtype", "q5_k", "--outtype"), ("--format", "onnx", "--format")])
def test_unknown_outtype_or_format_is_one_line(flag, value, words, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), flag, value, "--out", str(out)])
    assert rc == 2 and words in err and len(err.splitlines()) == 1 and not out.exists()


def test_unsupported_family_is_one_line(tokenizer, tmp_path, capsys):
    src = _save(make_opt(), tokenizer, tmp_path / "opt")
    rc, err = _err(capsys, ["export", str(src), "--out", str(tmp_path / "o.gguf")])
    assert rc == 2 and "'opt'" in err and "Llama, Mistral, Qwen2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.gguf").exists()


def test_armor_and_moe_outputs_are_refused(tmp_path, capsys):
    for key, word in (("prunekit_armor", "ARMOR"), ("prunekit_experts", "mixture-of-experts")):
        d = tmp_path / key
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama", key: {"block_size": 16}}))
        rc, err = _err(capsys, ["export", str(d), "--out", str(tmp_path / f"{key}.gguf")])
        assert rc == 2 and word in err and len(err.splitlines()) == 1
    d = tmp_path / "mixtral"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_local_experts": 4}))
    rc, err = _err(capsys, ["export", str(d), "--out", str(tmp_path / "x.gguf")])
    assert rc == 2 and "mixture-of-experts" in err
    assert not list(tmp_path.glob("*.gguf"))


def test_real_armor_output_is_refused(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "armor"
    rc = main(["prune", str(tiny_llama_dir), "--method", "armor", "--pattern", "2:4", "--calib", "builtin",
               "--nsamples", "2", "--seqlen", "32", "--set", "block_size=16", "--set", "iters=1",
               "--out", str(src), "-q"])  # fmt: skip
    capsys.readouterr()
    assert rc == 0
    rc, err = _err(capsys, ["export", str(src), "--out", str(tmp_path / "a.gguf")])
    assert rc == 2 and "ARMOR" in err and "not a llama.cpp architecture" in err


def test_output_into_the_input_or_a_folder_is_refused(tiny_llama_dir, tmp_path, capsys):
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), "--out", str(tmp_path)])
    assert rc == 2 and "folder" in err
    before = (tiny_llama_dir / "config.json").read_bytes()
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), "--out", str(tiny_llama_dir / "config.json"), "--overwrite"])
    assert rc == 2 and "input" in err and len(err.splitlines()) == 1
    assert (tiny_llama_dir / "config.json").read_bytes() == before
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), "--out", str(tiny_llama_dir / "m.gguf")])
    assert rc == 2 and "inside the input folder" in err and not (tiny_llama_dir / "m.gguf").exists()
    rc, err = _err(capsys, ["export", str(tiny_llama_dir), "--out", ""])
    assert rc == 2 and "empty" in err


def test_failure_while_writing_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "new" / "m.gguf"

    def boom(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(gx.OutputError, match="No space left on device"):
        export_gguf(tiny_llama_dir, out, outtype="f16")
    assert not out.exists() and not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.rglob("*") if "tmp-prunekit" in p.name]


def test_not_enough_space_is_refused_before_writing(tiny_llama_dir, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(gx.OutputError, match="not enough space"):
        export_gguf(tiny_llama_dir, tmp_path / "m.gguf", outtype="f32")
    assert not list(tmp_path.iterdir())


def test_unsupported_rope_scaling_is_refused(tokenizer, tmp_path):
    model = make_llama()
    model.config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                    "original_max_position_embeddings": 128}  # fmt: skip
    with pytest.raises(gx.ConfigError, match="rope scaling 'yarn'"):
        gx._rope(model.config)


def test_removed_attention_is_written_without_its_tensors():
    """A block with 0 heads (attention removed whole) is deci's attention-free block."""
    model = _per_block(make_llama(layers=2), [{"heads": 4, "kv_heads": 2, "intermediate": 128},
                                               {"heads": 4, "kv_heads": 2, "intermediate": 128}])  # fmt: skip
    lay = model.model.layers[1].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(lay, name, torch.nn.Linear(64, 0, bias=False))
    lay.o_proj = torch.nn.Linear(0, 64, bias=False)
    arch, widths, items = gx.plan_tensors(model, "f32")
    names = {n for n, _, _ in items}
    assert arch == "deci" and widths[1]["heads"] == 0
    assert "blk.1.attn_q.weight" not in names and "blk.1.attn_norm.weight" not in names
    assert "blk.1.ffn_norm.weight" in names and "blk.0.attn_q.weight" in names

