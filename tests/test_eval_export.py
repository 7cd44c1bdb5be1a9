import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import prunekit as pk
from prunekit.errors import DataError, ModelLoadError, OutputError


def test_perplexity_equals_exp_mean_token_nll(tiny_llama):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 384, (1, 5 * 32 + 7), generator=g)
    res = pk.perplexity(tiny_llama, ids, seqlen=32)
    assert res["windows"] == 5 and res["tokens"] == 160 and res["seqlen"] == 32
    # independent computation: all windows in one batch, sum of token NLLs / number of predictions
    x = ids[0, :160].reshape(5, 32)
    with torch.no_grad():
        logits = tiny_llama(x).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 384), x[:, 1:].reshape(-1), reduction="sum")
    assert math.isclose(res["perplexity"], math.exp(nll.item() / (5 * 31)), rel_tol=1e-5)
    assert pk.perplexity(tiny_llama, ids, seqlen=32, max_windows=2)["windows"] == 2
    with pytest.raises(DataError, match="fewer than one window"):
        pk.perplexity(tiny_llama, ids[:, :10], seqlen=32)


def test_save_reload_logits_equal(tmp_path, tiny_llama, tokenizer, calib_ids):
    rep = pk.prune_(tiny_llama, pk.PruneConfig(method="wanda", pattern="2:4"), calib_ids, progress=False)
    out = pk.save_pretrained_atomic(tiny_llama, tokenizer, tmp_path / "o", rep.to_dict())
    assert (out / "model.safetensors").is_file() and (out / "prunekit.json").is_file()
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["method"] == "wanda" and abs(meta["sparsity"] - 0.5) < 1e-9
    m2 = AutoModelForCausalLM.from_pretrained(out)
    x = calib_ids[:2]
    with torch.no_grad():
        assert torch.equal(m2(x).logits, tiny_llama(x).logits)
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temp folders left behind


def test_output_folder_rules(tmp_path, tiny_llama, tokenizer):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        pk.save_pretrained_atomic(tiny_llama, tokenizer, out)
    assert (out / "keep.txt").read_text() == "mine"
    pk.save_pretrained_atomic(tiny_llama, tokenizer, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    with pytest.raises(OutputError, match="is a file"):
        pk.save_pretrained_atomic(tiny_llama, tokenizer, out / "config.json")


def test_failed_overwrite_restores_the_old_folder(tmp_path, tiny_llama, tokenizer, monkeypatch):
    import prunekit.export.hf as hf

    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    real_rename = hf.os.rename

    def flaky(src, dst):  # the final rename of the finished temp folder fails (e.g. disk quota)
        if Path(dst) == out and ".tmp-" in Path(src).name:
            raise OSError("simulated rename failure")
        return real_rename(src, dst)

    monkeypatch.setattr(hf.os, "rename", flaky)
    with pytest.raises(OSError, match="simulated"):
        pk.save_pretrained_atomic(tiny_llama, tokenizer, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temp or old folders left


def test_load_folder_and_errors(tmp_path, tiny_llama_dir):
    model, tok = pk.load_model(str(tiny_llama_dir))
    assert model.config.model_type == "llama" and tok("hello")["input_ids"]
    with pytest.raises(ModelLoadError, match="does not exist"):
        pk.load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        pk.load_model(str(tmp_path / "empty"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(ModelLoadError, match="could not load"):
        pk.load_model(str(junk))
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(ModelLoadError, match="is not a model"):
        pk.load_model(str(txt))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not load"):
        pk.load_model(str(bad))


def test_resolve_hub_id_and_alias():
    assert pk.resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    with pytest.raises(ModelLoadError):
        pk.resolve_model("./nope/model")


def test_sparsity_summary(tiny_llama, calib_ids):
    pk.prune_(tiny_llama, pk.PruneConfig(method="magnitude", sparsity=0.25), calib_ids, progress=False)
    s = pk.sparsity_summary(tiny_llama)
    assert abs(s["block_linear_sparsity"] - 0.25) < 0.005
    assert s["linear_sparsity"] < s["block_linear_sparsity"]  # lm_head untouched
    assert s["parameters"] == sum(p.numel() for p in tiny_llama.parameters())
