"""Token pruning inside the model (issue 41): the one hook, FastV, Recoverable Compression, FTP routing.

Golden cases are direct re-implementations: the layers after K are run by hand on the kept rows
(own masks, own rotary tables, own KV cache), FastV's kept set is the top of the attention the
eager model itself returns, and routed blocks are re-run by hand on the routed rows.
"""

from __future__ import annotations

import math

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_llama
from transformers import DynamicCache

import prunekit as pk
from prunekit.errors import ConfigError, DataError


def make_qwen2(layers: int = 4, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def make_llava(image=16, seed: int = 0, impl: str = "sdpa"):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    side = int(math.isqrt(image)) * 8
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=side, patch_size=8, projection_dim=32)  # fmt: skip
    tc = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=512)  # fmt: skip
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=127, image_seq_length=image)
    m = LlavaForConditionalGeneration(cfg).eval()
    m.config._attn_implementation = impl
    m.config.text_config._attn_implementation = impl
    return m


def make_mistral(layers: int = 4, seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                        sliding_window=None, tie_word_embeddings=False)  # fmt: skip
    return MistralForCausalLM(cfg).eval()


def _model(family: str, impl: str):
    m = {"llama": lambda: make_llama(layers=4), "qwen2": make_qwen2, "mistral": make_mistral}[family]()
    m.config._attn_implementation = impl
    return m


def _ids(n=20, b=1, seed=1, vocab=384):
    return torch.randint(3, vocab - 1, (b, n), generator=torch.Generator().manual_seed(seed))


def _greedy(m, **inputs):
    return m.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)


def _causal(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)[None, None]


@torch.no_grad()
def reference(lm, head, emb, K, keep, steps=5, hidden_at_k=None):
    """Layers < K on every row, layers >= K on the kept rows (original positions), then greedy decode.

    ``lm`` is the decoder stack (layers, norm, rotary_emb, embed_tokens), ``emb`` [1, n, D] its input.
    Masks are explicit float masks; the cache is a fresh DynamicCache filled layer by layer.
    """
    layers, n, m = lm.layers, emb.shape[1], keep.numel()
    cache = DynamicCache(config=lm.config)
    pos = torch.arange(n)[None]
    pe = lm.rotary_emb(emb, pos)
    h = emb
    for i in range(K):
        h = layers[i](h, attention_mask=_causal(n), position_ids=pos, position_embeddings=pe, cache=cache, use_cache=True)
    h = hidden_at_k(h) if hidden_at_k is not None else h[:, keep]
    pk_ = keep[None]
    pek = lm.rotary_emb(h, pk_)
    for i in range(K, len(layers)):
        h = layers[i](h, attention_mask=_causal(m), position_ids=pk_, position_embeddings=pek, cache=cache, use_cache=True)
    return _greedy_decode(lm, head, head(lm.norm(h)), cache, n, [n if i < K else m for i in range(len(layers))], steps)


def _greedy_decode(lm, head, logits, cache, n, cached, steps):
    """Greedy steps after a prefill of ``n`` positions whose layer ``i`` cached ``cached[i]`` rows."""
    first, toks = logits, []
    for t in range(steps):
        tok = logits[:, -1].argmax(-1, keepdim=True)
        toks.append(int(tok))
        h = lm.embed_tokens(tok)
        pp = torch.tensor([[n + t]])
        pe = lm.rotary_emb(h, pp)
        for i, layer in enumerate(lm.layers):
            h = layer(h, attention_mask=torch.zeros(1, 1, 1, cached[i] + t + 1), position_ids=pp, position_embeddings=pe,
                      cache=cache, use_cache=True)  # fmt: skip
        logits = head(lm.norm(h))
    return first, toks


# --- priority 1: the hook on causal LMs ------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_keep_all_is_bit_identical(family, impl, method):
    m = _model(family, impl)
    ids = _ids(b=2)
    with torch.no_grad():
        ref = m(ids).logits
        g_ref = _greedy(m, input_ids=ids)
        pk.tokens.patch(m, method=method, keep=1.0, layer=2)
        assert torch.equal(m(ids).logits, ref)
        assert torch.equal(_greedy(m, input_ids=ids), g_ref)
    s = pk.tokens.unpatch(m)
    assert s["removed"] == {} and s["token_blocks"] == s["token_blocks_dense"]
    assert "forward" not in m.model.layers[2].__dict__


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_pruned_prefill_then_decode_equals_reference_on_kept_rows(family, impl):
    m = _model(family, impl)
    ids, K = _ids(n=20), 2
    p = pk.tokens.patch(m, method="fastv", keep=0.5, layer=K)
    with torch.no_grad():
        logits = m(ids).logits
        gen = _greedy(m, input_ids=ids)
    keep = p._sess[K].keep[0]
    s = pk.tokens.unpatch(m)
    # the count: 18 candidates (all but first and last), round(0.5*18) = 9 kept -> 9 removed per prefill
    assert keep.numel() == 11 and int(keep[0]) == 0 and int(keep[-1]) == 19
    assert s["removed"] == {K: 18} and s["prefills"] == 2
    L, n = 4, 20
    assert s["token_blocks_dense"] - s["token_blocks"] == 2 * (L - K) * 9
    first, toks = reference(m.model, m.lm_head, m.model.embed_tokens(ids), K, keep)
    assert logits.shape[1] == 11
    assert torch.allclose(logits, first, atol=1e-5)
    assert gen[0, n:].tolist() == toks


def test_fastv_keeps_the_tokens_that_receive_most_attention():
    m = _model("llama", "eager")
    ids, K = _ids(n=24), 2
    with torch.no_grad():
        att = m(ids, output_attentions=True).attentions[K - 1][0]  # [H, n, n] from the eager model itself
    recv = att.mean(0).mean(0)
    cand = torch.arange(1, 23)
    top = cand[recv[1:23].topk(round(0.25 * 22)).indices].sort().values
    expect = torch.cat([torch.tensor([0]), top, torch.tensor([23])])
    p = pk.tokens.patch(m, method="fastv", keep=0.25, layer=K)
    with torch.no_grad():
        m(ids)
    got = p._sel.keep[0]
    pk.tokens.unpatch(m)
    assert got.tolist() == expect.tolist()


def test_batch_rows_prune_independently_and_count():
    m = _model("qwen2", "sdpa")
    ids = _ids(n=16, b=3)
    p = pk.tokens.patch(m, method="fastv", keep=0.5, layer=1)
    with torch.no_grad():
        out = m(ids).logits
        one = [m(ids[i : i + 1]).logits for i in range(3)]
    assert out.shape[:2] == (3, 1 + 7 + 1)
    for i in range(3):
        assert torch.allclose(out[i], one[i][0], atol=1e-5)
    assert pk.tokens.stats(m)["removed"] == {1: 3 * 7 + 3 * 7}
    pk.tokens.unpatch(m)


def test_merge_recovery_averages_dropped_rows_into_nearest_kept():
    m = _model("llama", "sdpa")
    ids, K = _ids(n=20), 2
    p = pk.tokens.patch(m, method="fastv", keep=0.5, layer=K, recovery="merge")
    with torch.no_grad():
        logits = m(ids).logits
    keep = p._sel.keep[0]
    pk.tokens.unpatch(m)
    drop = torch.tensor([j for j in range(20) if j not in set(keep.tolist())])
    cand_kept = torch.tensor([0 < int(j) < 19 for j in keep])

    def merged(h):
        kept, dr = h[0, keep], h[0, drop]
        sim = F.normalize(dr, dim=-1) @ F.normalize(kept, dim=-1).T
        sim[:, ~cand_kept] = float("-inf")
        j = sim.argmax(-1)
        out = kept.clone()
        for r in range(kept.shape[0]):
            out[r] = torch.cat([kept[r : r + 1], dr[j == r]]).mean(0)
        return out[None]

    first, _ = reference(m.model, m.lm_head, m.model.embed_tokens(ids), K, keep, steps=0, hidden_at_k=merged)
    assert torch.allclose(logits, first, atol=1e-5)


def test_unpatch_restores_and_double_patch_is_refused():
    m = _model("llama", "sdpa")
    ids = _ids()
    with torch.no_grad():
        ref = m(ids).logits
        pk.tokens.patch(m, keep=0.25, layer=1)
        with pytest.raises(ConfigError, match="already has a token patch"):
            pk.tokens.patch(m, keep=0.5, layer=1)
        assert m(ids).logits.shape[1] < 20
        pk.tokens.unpatch(m)
        assert torch.equal(m(ids).logits, ref)
    assert pk.tokens.unpatch(m) == {}


@pytest.mark.parametrize("kw,match", [
    ({"keep": 0.0}, r"keep=0.0 is outside \(0, 1\]"), ({"keep": 1.5}, r"keep=1.5 is outside"),
    ({"keep": -1}, "outside"), ({"keep": True}, "outside"), ({"keep": "half"}, "outside"),
    ({"layer": 4}, "layer=4 is outside the model: it has 4 decoder layers"), ({"layer": -1}, "layer=-1 is outside"),
    ({"layer": 0}, "FastV scores with the attention of layer K-1"),
    ({"method": "recoverable"}, "no image-token span"), ({"tokens": "image"}, "no image-token span"),
    ({"method": "nope"}, "unknown token method 'nope'"), ({"recovery": "glue"}, "recovery='glue'"),
    ({"bogus": 1}, "unknown option 'bogus'"),
])  # fmt: skip
def test_bad_input_is_one_line(kw, match):
    m = _model("llama", "sdpa")
    kw = {"method": "fastv", "keep": 0.25, "layer": 2, **kw}
    with pytest.raises(ConfigError, match=match) as e:
        pk.tokens.patch(m, **kw)
    assert "\n" not in str(e.value)
    assert pk.tokens.get_patch(m) is None


# --- priority 2: LLaVA, visual tokens only ----------------------------------------------------------
def _llava_inputs(image=16, text_before=3, text_after=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(1, 120, (1, text_before), generator=g), torch.full((1, image), 127),
                     torch.randint(1, 120, (1, text_after), generator=g)], 1)  # fmt: skip
    side = int(math.isqrt(image)) * 8
    return ids, torch.randn(1, 3, side, side, generator=g)


@pytest.mark.parametrize("method", ["fastv", "recoverable"])
def test_llava_prunes_only_the_image_span(method):
    m = make_llava()
    ids, px = _llava_inputs()
    with torch.no_grad():
        ref = m(input_ids=ids, pixel_values=px).logits
        pk.tokens.patch(m, method=method, keep=1.0)
        assert torch.equal(m(input_ids=ids, pixel_values=px).logits, ref)
        pk.tokens.unpatch(m)
        p = pk.tokens.patch(m, method=method, keep=0.25)
        out = m(input_ids=ids, pixel_values=px).logits
        gen = _greedy(m, input_ids=ids, pixel_values=px)
    keep = p._sess[p.method.layer].keep[0].tolist()
    s = pk.tokens.unpatch(m)
    K = 2 if method == "fastv" else 0
    assert s["removed"] == {K: 2 * 12}  # 16 image tokens, 4 kept, per prefill (forward + generate)
    assert out.shape[1] == 3 + 4 + 4
    assert [j for j in range(23) if j < 3 or j >= 19] == [j for j in keep if j < 3 or j >= 19]  # all text kept
    assert len([j for j in keep if 3 <= j < 19]) == 4
    assert gen.shape[1] == 23 + 5


def test_llava_fastv_equals_reference_on_kept_rows():
    m = make_llava(impl="eager")
    ids, px = _llava_inputs()
    lm = m.model.language_model
    got = {}
    def grab(mod, a, kw):
        got.setdefault("emb", kw["inputs_embeds"])

    h = lm.register_forward_pre_hook(grab, with_kwargs=True)
    p = pk.tokens.patch(m, method="fastv", keep=0.25, layer=2)
    with torch.no_grad():
        gen = _greedy(m, input_ids=ids, pixel_values=px)
    keep = p._sess[2].keep[0]
    pk.tokens.unpatch(m)
    h.remove()
    _, toks = reference(lm, m.lm_head, got["emb"], 2, keep)
    assert gen[0, 23:].tolist() == toks


def test_recoverable_keeps_cls_outliers_first():
    m = make_llava(image=36)
    ids, px = _llava_inputs(image=36)
    p = pk.tokens.patch(m, method="recoverable", keep=0.25)
    cls = {}
    vis = p.method.vision_attn
    def grab(mod, a, kw):
        cls.setdefault("a", pk.tokens.scorers.cls_attention(mod, kw["hidden_states"])[0, 1:])

    hk = vis.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        m(input_ids=ids, pixel_values=px)
    hk.remove()
    keep = p._sel.keep[0].tolist()
    pk.tokens.unpatch(m)
    a = cls["a"]
    q1, q3 = torch.quantile(a, 0.25), torch.quantile(a, 0.75)
    outliers = [3 + j for j in (a > q3 + 1.5 * (q3 - q1)).nonzero()[:, 0].tolist()]
    kept_img = [j for j in keep if 3 <= j < 39]
    assert len(kept_img) == 9
    top = sorted(outliers, key=lambda j: -float(a[j - 3]))[:9]
    assert set(top) <= set(kept_img)


def test_visual_method_without_image_tokens_is_one_line():
    m = make_llava()
    ids = torch.randint(1, 120, (1, 10))
    pk.tokens.patch(m, method="fastv", keep=0.5)
    with pytest.raises(DataError, match="the prompt has no image token") as e, torch.no_grad():
        m(input_ids=ids)
    assert "\n" not in str(e.value)
    pk.tokens.unpatch(m)


# --- priority 3: FTP routing (and its baselines) on the same hook ------------------------------------
@pytest.fixture(scope="module")
def ftp_setup():
    from prunekit.tokens import ftp

    m = make_llama(layers=4)
    calib = torch.randint(0, 384, (4, 64), generator=torch.Generator().manual_seed(0))
    return m, ftp.train(m, calib, ftp.FTPConfig(sparsity=0.3, steps=30)), calib


@torch.no_grad()
def route_reference(m, ids, keeps, steps=4):
    """Block i runs on rows keeps[i] (None: all) with its own causal mask and rotary rows; the others pass."""
    lm, n = m.model, ids.shape[1]
    cache = DynamicCache(config=m.config)
    h = lm.embed_tokens(ids)
    pos = torch.arange(n)[None]
    for i, layer in enumerate(lm.layers):
        k = torch.arange(n) if keeps[i] is None else keeps[i]
        out = h.clone()
        if k.numel():
            x = h[:, k]
            y = layer(x, attention_mask=_causal(k.numel()), position_ids=k[None], position_embeddings=lm.rotary_emb(x, k[None]),
                      cache=cache, use_cache=True)  # fmt: skip
            out[:, k] = y
        h = out
    cached = [n if k is None else k.numel() for k in keeps]
    return _greedy_decode(lm, m.lm_head, m.lm_head(lm.norm(h)), cache, n, cached, steps)


def test_ftp_routes_by_its_routers_and_counts(ftp_setup):
    from prunekit.tokens import ftp
    from prunekit.tokens.scorers import attention_probs, attention_received

    m, routers, _ = ftp_setup
    ids = _ids(n=40)
    p = pk.tokens.patch(m, method="ftp", routers=routers)
    with torch.no_grad():
        logits = m(ids).logits
        gen = _greedy(m, input_ids=ids)[0, 40:].tolist()
    keeps = [None] + [p._sess[i].keep[0] for i in (1, 2, 3)]
    s = pk.tokens.unpatch(m)
    assert s["removed"] == {1: 32, 2: 32, 3: 32}  # round(0.4 * 40) = 16 per block, two prefills
    assert s["token_blocks"] == 2 * (40 + 3 * 24) + 4 * 4  # two prefills + 4 decode steps through 4 blocks
    # the router's choice, recomputed by hand from the four features
    lm = m.model
    with torch.no_grad():
        h0 = lm.embed_tokens(ids)
        pe = lm.rotary_emb(h0, torch.arange(40)[None])
        att0 = attention_received(attention_probs(lm.layers[0].self_attn, lm.layers[0].input_layernorm(h0), pe, None, m.config))
        h = lm.layers[0](h0, attention_mask=_causal(40), position_ids=torch.arange(40)[None], position_embeddings=pe)
        z = routers.routers[1](ftp.features(h, h, att0))[0]
    expect = torch.cat([torch.tensor([0]), (z[1:].topk(24 - 1).indices + 1)]).sort().values
    assert keeps[1].tolist() == expect.tolist()
    first, toks = route_reference(m, ids, keeps, steps=5)
    assert torch.allclose(logits, first, atol=1e-5)
    assert gen == toks


def test_ftp_zero_sparsity_and_random_zero_are_bit_identical(ftp_setup):
    from prunekit.tokens import ftp

    m, _, calib = ftp_setup
    ids = _ids(n=30)
    with torch.no_grad():
        ref = m(ids).logits
        r0 = ftp.train(m, calib[:1], ftp.FTPConfig(sparsity=0.0, steps=1))
        for method, kw in [("ftp", {"routers": r0}), ("random-route", {"sparsity": 0.0}), ("block-skip", {"blocks": []})]:
            pk.tokens.patch(m, method=method, **kw)
            assert torch.equal(m(ids).logits, ref), method
            assert pk.tokens.unpatch(m)["removed"] == {}


def test_routers_save_and_reload_to_the_same_logits(ftp_setup, tmp_path):
    from prunekit.tokens import ftp

    m, routers, _ = ftp_setup
    ids = _ids(n=32)
    f = tmp_path / "routers.safetensors"
    with open(f, "wb") as fh:
        routers.save(fh)
    with torch.no_grad():
        pk.tokens.patch(m, method="ftp", routers=routers)
        a = m(ids).logits
        pk.tokens.unpatch(m)
        pk.tokens.patch(m, method="ftp", routers=str(f))
        b = m(ids).logits
        pk.tokens.unpatch(m)
    assert torch.equal(a, b)
    other = make_llama(layers=2)
    with pytest.raises(ConfigError, match="was trained for another model .*num_hidden_layers 4 vs 2") as e:
        pk.tokens.patch(other, method="ftp", routers=str(f))
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(DataError, match="not a safetensors file"):
        ftp.Routers.load(junk)
    with pytest.raises(DataError, match="does not exist"):
        ftp.Routers.load(tmp_path / "missing")


def test_block_skip_and_attn_drop_are_exact_and_counted():
    m = _model("llama", "eager")
    ids = _ids(n=20)
    pk.tokens.patch(m, method="block-skip", blocks=[1, 3])
    with torch.no_grad():
        logits = m(ids).logits
        gen = _greedy(m, input_ids=ids)[0, 20:24]
    assert pk.tokens.unpatch(m)["removed"] == {1: 40, 3: 40}
    e = torch.tensor([], dtype=torch.long)
    first, toks = route_reference(m, ids, [None, e, None, e])
    assert torch.allclose(logits, first, atol=1e-5) and gen.tolist() == toks
    p = pk.tokens.patch(m, method="attn-drop", keep=0.5, layer=2)
    with torch.no_grad():
        logits = m(ids).logits
    k = p._sess[2].keep[0]
    assert p._sess[3].keep[0].tolist() == k.tolist() and k.numel() == 10 and int(k[0]) == 0
    assert pk.tokens.unpatch(m)["removed"] == {2: 10, 3: 10}
    first, _ = route_reference(m, ids, [None, None, k, k], steps=0)
    assert torch.allclose(logits, first, atol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"method": "ftp"}, "needs routers="), ({"method": "random-route", "sparsity": 0.9}, r"sparsity=0.9 is outside"),
    ({"method": "block-skip", "blocks": [7]}, r"blocks=\[7\] are outside the model"),
    ({"method": "attn-drop", "layer": 9}, "layer=9 is outside the model"),
    ({"method": "random-route", "nope": 1}, "unknown option 'nope'"),
])  # fmt: skip
def test_routing_bad_input_is_one_line(kw, match):
    m = _model("llama", "sdpa")
    with pytest.raises(ConfigError, match=match) as e:
        pk.tokens.patch(m, **kw)
    assert "\n" not in str(e.value)


# --- CLI -----------------------------------------------------------------------------------------------
def _cli(capsys, argv):
    import json

    from prunekit.cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return rc, (json.loads(last) if rc == 0 and last.startswith("{") else None), err


def test_cli_tokens_prompt_and_check(capsys, tiny_llama_dir):
    rc, res, err = _cli(capsys, ["tokens", tiny_llama_dir, "--method", "fastv", "--layer", "1", "--keep", "0.5",
                                 "--prompt", "The water of the river", "--max-new-tokens", "3", "--check", "--json"])  # fmt: skip
    assert rc == 0, err
    n = res["prompt_tokens"]
    assert res["stats"]["removed"] == {"1": 2 * round(0.5 * (n - 2))}  # two prefills (the --check timing one too)
    assert len(res["ids"]) == 3 and "identical_to_unpatched" in res
    rc, res, err = _cli(capsys, ["tokens", tiny_llama_dir, "--keep", "1", "--layer", "1", "--prompt", "The water",
                                 "--max-new-tokens", "3", "--check", "--json"])  # fmt: skip
    assert rc == 0 and res["identical_to_unpatched"] is True and "removed nothing" in err


def test_cli_ftp_train_then_route(capsys, tiny_llama_dir, calib_txt, tmp_path):
    f = tmp_path / "r.safetensors"
    rc, res, err = _cli(capsys, ["ftp-train", tiny_llama_dir, "--calib", calib_txt, "--nsamples", "2", "--seqlen", "32",
                                 "--steps", "5", "-q", "--out", f, "--json"])  # fmt: skip
    assert rc == 0 and f.is_file(), err
    rc, res, err = _cli(capsys, ["tokens", tiny_llama_dir, "--method", "ftp", "--routers", f, "--data", calib_txt,
                                 "--seqlen", "32", "--max-windows", "2", "--check", "--json"])  # fmt: skip
    assert rc == 0, err
    assert res["patched"]["windows"] == 2 and res["dense"]["perplexity"] > 0
    assert res["stats"]["token_blocks"] == 2 * (32 + 32 - round(0.6 * 32))  # 2 blocks, block 1 at 0.6
    rc, res, err = _cli(capsys, ["tokens", tiny_llama_dir, "--method", "ftp", "--routers", f, "--kv", "keep",
                                 "--data", calib_txt, "--seqlen", "32", "--max-windows", "1", "--json"])  # fmt: skip
    assert rc == 0 and res["stats"]["removed"] == {"1": round(0.6 * 32)}, err
    rc, _, err = _cli(capsys, ["ftp-train", tiny_llama_dir, "--calib", calib_txt, "--nsamples", "2", "--seqlen", "32",
                               "-q", "--out", f])  # fmt: skip
    assert rc == 2 and "exists" in err


@pytest.mark.parametrize("extra,match", [
    (["--keep", "0"], "out of range"), (["--layer", "7"], "layer=7 is outside the model"),
    (["--method", "ftp"], "needs --routers"), (["--method", "recoverable"], "no image-token span"),
    (["--method", "block-skip"], "needs --blocks"), (["--routers", "x"], "--routers is for --method ftp"),
])  # fmt: skip
def test_cli_bad_input_is_one_line(capsys, tiny_llama_dir, extra, match):
    rc, _, err = _cli(capsys, ["tokens", tiny_llama_dir, "--prompt", "The water", "--layer", "1", *extra])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and match in lines[0], err


def test_cli_data_needs_a_routing_method(capsys, tiny_llama_dir, calib_txt):
    rc, _, err = _cli(capsys, ["tokens", tiny_llama_dir, "--data", calib_txt, "--method", "fastv"])
    assert rc == 2 and "needs every position's logits" in err


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_kv_keep_rows_equal_the_dense_block_and_skipped_rows_pass(impl):
    """kv='keep': a skipped token stays a key/value (from its unchanged input), so every kept row's
    output is the dense block's output at that row, and every skipped row is its input."""
    from transformers.masking_utils import create_causal_mask

    from prunekit.tokens.hook import partial_block

    m = _model("qwen2", impl)
    ids = _ids(n=20, b=2)
    keep = torch.tensor([[0, 3, 4, 9, 19], [0, 1, 2, 5, 7]])
    with torch.no_grad():
        h = m.model.embed_tokens(ids)
        pos = torch.arange(20)[None]
        pe = m.model.rotary_emb(h, pos)
        mask = create_causal_mask(config=m.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=pos)
        full = m.model.layers[1](h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        y = partial_block(m.model.layers[1], h, keep, {"attention_mask": mask, "position_embeddings": pe}, None)
        assert torch.allclose(y, pk.tokens.hook.take(full, keep), atol=1e-5)
        p = pk.tokens.patch(m, method="random-route", sparsity=0.3, kv="keep")
        logits = m(ids).logits
        gen = _greedy(m, input_ids=ids)
    s = pk.tokens.unpatch(m)
    assert s["removed"] == {i: 2 * 2 * round(0.4 * 20) for i in (1, 2, 3)} and logits.shape[1] == 20
    assert gen.shape == (2, 25) and p.method.kv == "keep"
    with pytest.raises(ConfigError, match="kv='both'"):
        pk.tokens.patch(m, method="random-route", kv="both")


# --- prunekit eval --token-prune -------------------------------------------------------------------
def _eval(capsys, *argv):
    from prunekit.cli.main import main

    rc = main(["eval", *map(str, argv), "--seqlen", "32", "--max-windows", "3", "--json", "-q"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err


def test_eval_token_prune_reports_token_blocks_and_keep_all_is_dense(tiny_llama_dir, calib_txt, capsys):
    rc, dense, err = _eval(capsys, tiny_llama_dir, "--data", calib_txt)
    assert rc == 0, err
    rc, none, err = _eval(capsys, tiny_llama_dir, "--data", calib_txt, "--token-prune", "random-route:sparsity=0")
    assert rc == 0, err
    assert none["perplexity"] == dense["perplexity"] and none["token_prune"]["token_block_sparsity"] == 0.0
    rc, half, err = _eval(capsys, tiny_llama_dir, "--data", calib_txt, "--token-prune", "block-skip:blocks=1")
    assert rc == 0, err
    tp = half["token_prune"]
    assert tp["token_blocks_dense"] == 3 * 32 * 2 and tp["token_blocks"] == 3 * 32  # 3 windows x 32 tokens x 2 blocks
    assert half["perplexity"] != dense["perplexity"]


@pytest.mark.parametrize("spec,words", [("fastv", "removes positions"), ("nope:x=1", "unknown method"),
                                        ("random-route:sparsity", "not KEY=VALUE"), (":x=1", "names no method")])
def test_eval_token_prune_bad_spec_is_one_line(spec, words, tiny_llama_dir, calib_txt, capsys):
    rc, _, err = _eval(capsys, tiny_llama_dir, "--data", calib_txt, "--token-prune", spec)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_torch_free_method_names_match_the_classes():
    from prunekit.tokens import names
    from prunekit.tokens.api import ROUTE_METHODS
    from prunekit.tokens.methods import METHODS

    assert tuple(METHODS) == names.SHORTEN and ROUTE_METHODS == names.ROUTE
