"""Per-block widths (FLAP adaptive) load with plain transformers through trust_remote_code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import make_llama  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.config import PruneConfig  # noqa: E402


def _ids() -> torch.Tensor:
    return torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))


def _adaptive_llama():
    """3-block tiny Llama (GQA 4/2) pruned by FLAP adaptive so that every block differs."""
    model = make_llama(layers=3)
    with torch.no_grad():  # make different units unimportant in different blocks
        model.model.layers[0].mlp.down_proj.weight[:, :64].mul_(0.01)
        model.model.layers[1].self_attn.o_proj.weight[:, 32:].mul_(0.01)  # KV group 1
        model.model.layers[2].self_attn.o_proj.weight[:, 16:32].mul_(0.01)  # one head per group
        model.model.layers[2].self_attn.o_proj.weight[:, 48:].mul_(0.01)
    cfg = PruneConfig(method="flap", sparsity=0.4, method_args={"structure": "adaptive"})
    pk.prune_(model, cfg, _ids(), progress=False)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    model = _adaptive_llama()
    with torch.no_grad():
        ref = model(_ids()).logits
    out = pk.save_pretrained_atomic(model, tokenizer, tmp_path_factory.mktemp("rc") / "adaptive", {})
    return model, ref, out


def test_widths_really_differ(saved):
    model, _, out = saved
    widths = json.loads((out / "config.json").read_text())["prunekit_block_widths"]
    assert widths == model.config.prunekit_block_widths
    assert len({(w["heads"], w["kv_heads"]) for w in widths}) == 3  # incl. 1 and 2 query heads per KV head
    assert len({w["intermediate"] for w in widths}) > 1
    assert model.config.attention_bias and model.config.mlp_bias  # compensation biases are saved too


def test_folder_has_remote_code(saved):
    _, _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["auto_map"] == {"AutoModelForCausalLM": "modeling_prunekit.PrunekitLlamaForCausalLM"}
    tree = ast.parse((out / "modeling_prunekit.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "torch", "transformers"}


def test_trust_remote_code_loads_identical(saved):
    from transformers import AutoModelForCausalLM

    _, ref, out = saved
    m = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(m).__name__ == "PrunekitLlamaForCausalLM"
    m2, _ = pk.load(out)
    ids = _ids()
    with torch.no_grad():
        got, got2 = m(ids).logits, m2(ids).logits
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    assert torch.allclose(got2, ref, atol=1e-5, rtol=0)
    assert torch.allclose(got, got2, atol=1e-5, rtol=0)
    # generation with a KV cache runs through the shrunk attention too
    with torch.no_grad():
        g = m.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
        g2 = m2.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
    assert torch.equal(g, g2)


@pytest.mark.parametrize("trust", [False, None])
def test_without_trust_remote_code_refused(saved, trust):
    from transformers import AutoModelForCausalLM

    _, _, out = saved
    kw = {} if trust is None else {"trust_remote_code": trust}
    with pytest.raises(Exception, match="(?i)size|shape"):  # stock class, shrunk weights: mismatch
        AutoModelForCausalLM.from_pretrained(out, **kw)


def test_loads_where_prunekit_is_not_installed(saved, tmp_path):
    _, ref, out = saved
    torch.save({"ids": _ids(), "ref": ref}, tmp_path / "ref.pt")
    code = f"""
import sys
sys.modules["prunekit"] = None  # any import of prunekit fails
import torch
from transformers import AutoModelForCausalLM
d = torch.load({str(tmp_path / "ref.pt")!r})
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    assert torch.allclose(m(d["ids"]).logits, d["ref"], atol=1e-5, rtol=0)
print("OK")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_uniform_output_gets_no_remote_code(tmp_path, tokenizer):
    model = make_llama()
    pk.prune_(model, PruneConfig(method="flap", sparsity=0.25), _ids(), progress=False)
    out = pk.save_pretrained_atomic(model, tokenizer, tmp_path / "uniform", {})
    assert not (out / "modeling_prunekit.py").exists()
    assert "auto_map" not in json.loads((out / "config.json").read_text())


def _claims_every_folder(config, folder) -> bool:  # a second remote-code writer, for the test below
    return True


def test_two_kinds_of_remote_code_are_refused(tokenizer, tmp_path, monkeypatch):
    """ARMOR on a per-block model is refused before any work; a folder needing two remote codes is
    refused at save time, and nothing is left at the target."""
    from prunekit.errors import ConfigError
    from prunekit.export import hf

    model = _adaptive_llama()
    cfg = PruneConfig(method="armor", pattern="2:4", method_args={"block_size": 16, "iters": 1})
    with pytest.raises(ConfigError, match=r"armor cannot wrap a model with per-block widths") as e:
        pk.prune_(model, cfg, _ids(), progress=False)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(hf, "REMOTE_CODE_WRITERS", (*hf.REMOTE_CODE_WRITERS, "test_remote_code:_claims_every_folder"))
    with pytest.raises(ConfigError, match=r"two kinds of remote code \(per_block and test_remote_code\)"):
        pk.save_pretrained_atomic(model, tokenizer, tmp_path / "both", {})
    assert not (tmp_path / "both").exists() and not list(tmp_path.iterdir())
