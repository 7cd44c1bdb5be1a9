"""prunekit.load options: MC-MoE dynamic expert skipping switched on at load time."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError


def _tiny_qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, moe_intermediate_size=16,
                         shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=128)  # fmt: skip
    model = Qwen2MoeForCausalLM(cfg).eval()
    with torch.no_grad():  # decisive routing (random init routes almost uniformly)
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(60.0)
    return model


def test_load_with_dynamic_experts_skips_and_a_plain_load_does_not(tmp_path, tokenizer):
    from prunekit.structured.experts import dynamic_skipping_stats

    model = _tiny_qwen2_moe()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.randint(0, 384, (2, 32), generator=torch.Generator().manual_seed(1))
    plain, _ = pk.load(str(tmp_path))
    with torch.no_grad():
        ref = plain(input_ids=ids).logits
    fast, _ = pk.load(str(tmp_path), dynamic_experts=0.9)
    with torch.no_grad():
        got = fast(input_ids=ids).logits
    st = dynamic_skipping_stats(fast)
    assert st["skipped"] > 0 and st["routed"] > st["skipped"]
    assert not torch.equal(got, ref)  # skipping second experts changes the output
    off, _ = pk.load(str(tmp_path), dynamic_experts=0)
    with torch.no_grad():
        torch.testing.assert_close(off(input_ids=ids).logits, ref, rtol=0, atol=0)


def test_dynamic_experts_on_a_dense_model_is_a_config_error(tiny_llama_dir):
    with pytest.raises(ConfigError) as e:
        pk.load(str(tiny_llama_dir), dynamic_experts=0.5)
    assert "\n" not in str(e.value)


def test_eval_dynamic_experts_reports_the_saving(tmp_path, tokenizer, calib_txt, capsys):
    import json

    from prunekit.cli.main import main

    _tiny_qwen2_moe().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    rc = main(["eval", str(tmp_path), "--data", str(calib_txt), "--seqlen", "32", "--max-windows", "2",
               "--dynamic-experts", "0.9", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["dynamic_experts"]["beta"] == 0.9 and 0 < res["dynamic_experts"]["saved_fraction"] < 0.5
    rc = main(["eval", str(tmp_path), "--dynamic-experts", "1.5"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
