"""GGUF export of SentencePiece tokenizers (Llama-2, Mistral, TinyLlama style; issue 42).

A tiny SentencePiece BPE model with byte fallback is trained here on generated syllable text,
turned into a Hugging Face tokenizer and exported. The check that matters is llama.cpp's: its
``llama`` vocabulary re-tokenizes text by merging the adjacent pair whose concatenation is the
highest-scoring piece, with byte pieces for what the vocabulary lacks. ``_llama_cpp_spm`` is a
direct re-implementation of that algorithm (``llm_tokenizer_spm``) reading only the GGUF's fields;
it must give the Hugging Face tokenizer's ids, both when the scores come from ``tokenizer.model``
and when a saved folder keeps only ``tokenizer.json`` (scores from the merge ranks).
"""

from __future__ import annotations

import io
import random
import shutil

import pytest

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")  # transformers needs it to read tokenizer.model

from conftest import make_llama  # noqa: E402

from prunekit.export.gguf import export_gguf  # noqa: E402

SYL = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "qu", "ze", "an", "or", "el", "is", "um"]


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYL) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice(".!?,") for _ in range(n)]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_lines(0, 3000)), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False,  # as Llama-2's tokenizer.model
    )  # fmt: skip
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    return d


def _texts() -> list[str]:
    rng = random.Random(7)
    extra = ["  double  spaces", "Ünïcode 你好 ✓", "x", "tab\there", "new\nline", "UPPER lower 123"]
    return _lines(1, 40) + [rng.choice(_lines(2, 20)) + " " + e for e in extra] + extra


def _field(reader, key):
    return reader.fields[key].contents()


def _llama_cpp_spm(text: str, tokens: list[str], scores: list[float], types: list[int], space_prefix: bool):
    """llama.cpp's SentencePiece tokenization from the GGUF's fields alone (no special-token parsing)."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] != int(gguf.TokenType.BYTE)}
    byte = {t: i for i, t in enumerate(tokens) if types[i] == int(gguf.TokenType.BYTE)}
    text = ((" " if space_prefix else "") + text).replace(" ", "\u2581")
    sym = list(text)  # UTF-8 characters
    while True:
        best = None
        for j in range(len(sym) - 1):
            i = ids.get(sym[j] + sym[j + 1])
            if i is not None and (best is None or scores[i] > best[0]):  # ties: the leftmost pair
                best = (scores[i], j)
        if best is None:
            break
        j = best[1]
        sym[j : j + 2] = [sym[j] + sym[j + 1]]
    out = []
    for s in sym:
        if s in ids:
            out.append(ids[s])
        else:
            out.extend(byte[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return out


def _export(model_dir, tok, tmp_path, name):
    src = tmp_path / name
    make_llama(vocab=400).save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / f"{name}.gguf"
    info = export_gguf(src, out, outtype="f32")
    return gguf.GGUFReader(str(out)), info, src


@pytest.mark.parametrize("keep_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json-only"])
def test_spm_vocab_tokenizes_like_the_hf_tokenizer_in_llama_cpps_algorithm(keep_model_file, spm_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spm_dir, add_bos_token=True)  # as Llama-2's tokenizer_config says
    assert tok("ka").input_ids[0] == 1
    r, info, src = _export(spm_dir, tok, tmp_path, "m")
    if keep_model_file:  # a Llama-2 folder as published keeps tokenizer.model beside tokenizer.json
        shutil.copy(spm_dir / "tokenizer.model", src / "tokenizer.model")
        (tmp_path / "m.gguf").unlink()
        info = export_gguf(src, tmp_path / "m.gguf", outtype="f32")
        r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    else:
        assert not (src / "tokenizer.model").exists()
    assert _field(r, "tokenizer.ggml.model") == "llama" and "tokenizer.ggml.merges" not in r.fields
    tokens, scores = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.scores")
    types = _field(r, "tokenizer.ggml.token_type")
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    assert tokens == [sp.IdToPiece(i) for i in range(400)]
    assert types[0] == int(gguf.TokenType.UNKNOWN) and types[1] == types[2] == int(gguf.TokenType.CONTROL)
    assert sum(t == int(gguf.TokenType.BYTE) for t in types) == 256
    if keep_model_file:
        assert scores == pytest.approx([sp.GetScore(i) for i in range(400)])
    assert _field(r, "tokenizer.ggml.bos_token_id") == 1 and _field(r, "tokenizer.ggml.eos_token_id") == 2
    assert _field(r, "tokenizer.ggml.add_bos_token") is True and _field(r, "tokenizer.ggml.add_eos_token") is False
    prefix = _field(r, "tokenizer.ggml.add_space_prefix")
    assert prefix is True
    for text in _texts():
        want = tok(text, add_special_tokens=False).input_ids
        assert _llama_cpp_spm(text, tokens, scores, types, prefix) == want, text
        assert want == sp.encode(text)  # and the HF tokenizer is SentencePiece's own


def test_spm_tokens_and_types_match_gguf_converters_vocab(spm_dir, tmp_path):
    """Golden: the token list and types equal what llama.cpp's converter (gguf's LlamaHfVocab) reads."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spm_dir)
    r, _, src = _export(spm_dir, tok, tmp_path, "g")
    ref = list(gguf.vocab.LlamaHfVocab(src).all_tokens())
    assert _field(r, "tokenizer.ggml.tokens") == [t.decode() for t, _, _ in ref]
    ref_types = [int(ty) for _, _, ty in ref]
    ref_types[0] = int(gguf.TokenType.UNKNOWN)  # LlamaHfVocab calls <unk> CONTROL; SentencePiece says UNKNOWN
    assert _field(r, "tokenizer.ggml.token_type") == ref_types
