"""Decoding room: tree verification returns exactly plain greedy's tokens (tiny Llama/Qwen2/Mistral built in code)."""

from __future__ import annotations

import random

import pytest
import torch

import prunekit.decoding as D
from prunekit.decoding.tree import Tree, Trie
from prunekit.errors import ConfigError, DataError

from conftest import make_llama


def make_qwen2(vocab: int = 384, layers: int = 2, seed: int = 0, attn: str = "sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        attn_implementation=attn,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def make_mistral(vocab: int = 384, layers: int = 2, seed: int = 0, attn: str = "sdpa"):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        sliding_window=256, attn_implementation=attn,
    )  # fmt: skip
    return MistralForCausalLM(cfg).eval()


def make_target(family: str, attn: str = "sdpa", seed: int = 0):
    if family == "llama":
        m = make_llama(seed=seed)
        m.config._attn_implementation = attn
        return m
    return {"qwen2": make_qwen2, "mistral": make_mistral}[family](seed=seed, attn=attn)


def perturbed(model, scale: float, seed: int):
    """A copy of ``model`` with noise: a draft that agrees often, not always (partial accepts)."""
    import copy

    d = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp_min(1e-3))
    return d


class OracleTree(D.Drafter):
    """Test drafter: the reference continuation hidden at random places among random siblings."""

    name = "oracle"

    def __init__(self, prompt_len: int, ref: list[int], seed: int, vocab: int = 384):
        self.prompt_len, self.ref, self.rng, self.vocab = prompt_len, ref, random.Random(seed), vocab

    def propose(self, ids, budget):
        trie = Trie(ids[-1])
        done = len(ids) - self.prompt_len
        truth = self.ref[done:done + self.rng.randint(0, 6)]
        if truth and self.rng.random() < 0.3:  # a wrong token somewhere on the true path
            k = self.rng.randrange(len(truth))
            truth = truth[:k] + [(truth[k] + 1) % self.vocab]
        for _ in range(self.rng.randint(0, 4)):  # junk branches first: the true path is not node 1
            trie.insert([self.rng.randrange(self.vocab) for _ in range(self.rng.randint(1, 3))], [1.0] * 3)
        trie.insert(truth, [0.5] * len(truth))
        for _ in range(self.rng.randint(0, 3)):  # and junk siblings hanging off the true path
            if len(truth) > 1:
                j = self.rng.randrange(1, len(truth))
                trie.insert(truth[:j] + [self.rng.randrange(self.vocab)], [0.5] * (j + 1))
        return trie


def _prompts(n: int, seed: int, vocab: int = 384) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        base = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 24))]
        if rng.random() < 0.5:  # repeats: prompt lookup finds matches
            base = base + base[: rng.randint(1, len(base))]
        out.append(base)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_greedy_identical_every_drafter(family):
    torch.manual_seed(0)
    target = make_target(family)
    drafts = {
        "prompt_lookup": lambda: D.prompt_lookup(2, 10),
        "model": lambda: D.model(perturbed(target, 0.3, 1), max_depth=6, confidence=0.0),
        "self": lambda: D.model(target, max_depth=8, confidence=0.0),
        "rasd": lambda: D.rasd(D.prompt_lookup(1, 8), perturbed(target, 0.3, 2), prune=0.0, extend_after=None),
        "rasd-self": lambda: D.rasd(D.prompt_lookup(2, 8), target, prune=0.05, retrieval_weight=0.0),
        "rasd-skip": lambda: D.rasd(D.prompt_lookup(1, 8), perturbed(target, 0.1, 3), extend_after=2),
    }
    accepted, n = 0, 0
    for i, p in enumerate(_prompts(12, seed=hash(family) % 1000)):
        new = [1, 7, 24, 40][i % 4]
        ref = D.plain_greedy(target, p, new)
        for name, mk in drafts.items():
            for budget in (1, 4, 16):
                r = D.generate(target, None, p, draft=mk(), max_new_tokens=new, tree_budget=budget)
                assert r.ids == ref, (family, name, budget, p)
                accepted += r.stats.accepted_draft_tokens
                n += 1
        r = D.generate(target, None, p, draft=OracleTree(len(p), ref, seed=i), max_new_tokens=new, tree_budget=12)
        assert r.ids == ref, (family, "oracle", p)
        accepted += r.stats.accepted_draft_tokens
    assert accepted > 100  # the trees were accepted, not only the bonus tokens


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_identical_attention_implementations(attn):
    target = make_target("llama", attn=attn, seed=3)
    for i, p in enumerate(_prompts(6, seed=5)):
        ref = D.plain_greedy(target, p, 30)
        r = D.generate(target, None, p, draft=OracleTree(len(p), ref, seed=i), max_new_tokens=30, tree_budget=10)
        assert r.ids == ref
        assert r.stats.target_forwards < 30


def test_self_draft_accepts_everything_and_counts():
    target = make_target("llama", seed=4)
    p = list(range(10, 30))
    r = D.generate(target, None, p, draft=D.model(target, max_depth=8, confidence=0.0), max_new_tokens=36,
                   tree_budget=8)  # fmt: skip
    assert r.ids == D.plain_greedy(target, p, 36)
    s = r.stats
    assert s.new_tokens == 36 and s.target_forwards == 4  # 8 drafted + 1 bonus per forward
    assert s.tokens_per_forward == 9 and s.forwards_per_token == pytest.approx(4 / 36)
    d = s.to_dict()
    for k in ("tokens_per_forward", "forwards_per_token", "draft_seconds", "verify_seconds", "tokens_per_second"):
        assert k in d


def test_eos_inside_accepted_path_stops_there():
    target = make_target("qwen2", seed=2)
    p = [5, 9, 13, 17, 21]
    ref = D.plain_greedy(target, p, 30)
    eos = ref[6]  # a token greedy makes mid-way: decoding must stop right after its first occurrence
    ref_eos = D.plain_greedy(target, p, 30, eos_token_id=eos)
    assert ref_eos[-1] == eos and len(ref_eos) <= 7
    r = D.generate(target, None, p, draft=D.model(target, confidence=0.0), max_new_tokens=30, tree_budget=16,
                   eos_token_id=eos)  # fmt: skip
    assert r.ids == ref_eos and r.stats.stop == "eos"


def test_cache_gather_after_sibling_accept():
    """The accepted child is not the first node: the cache must hold the accepted path, in order."""
    target = make_target("llama", seed=6)
    p = [11, 12, 13]
    ref = D.plain_greedy(target, p, 3)
    runner = D.TreeModel(target)
    runner.prefill(p[:-1])
    wrong = (ref[0] + 1) % 384
    tree = Tree([p[-1], wrong, ref[0], wrong, ref[1]], [-1, 0, 0, 1, 2])
    path, bonus = D.accept_greedy(tree, runner.forward_tree(tree))
    assert path == [0, 2, 4] and bonus == ref[2]
    runner.keep(len(p) - 1, path)
    assert runner.past == len(p) + 2
    nxt = runner.prefill([bonus])[-1].argmax().item()
    assert [ref[0], ref[1], bonus, nxt] == D.plain_greedy(target, p, 4)


def test_trie_select_budget_and_closure():
    t = Trie(0)
    t.insert([1, 2, 3], [0.9, 0.8, 0.1])
    t.insert([1, 4], [0.9, 0.7])
    t.insert([5], [0.95])
    tree = t.select(3)
    assert len(tree) == 4 and tree.tokens[0] == 0
    assert sorted(tree.tokens[1:]) == [1, 2, 5]
    for i in range(1, len(tree)):
        assert tree.parents[i] < i
    m = tree.ancestors_mask()
    assert m.diagonal().all() and m[:, 0].all()


def test_prompt_lookup_and_datastore(tmp_path, tokenizer):
    pl = D.prompt_lookup(2, 5)
    tree = pl.propose([1, 2, 3, 4, 5, 9, 1, 2], 16).select(16)
    assert tree.tokens[1:4] == [3, 4, 5]
    f = tmp_path / "wiki.valid.raw"  # WikiText-2 raw files end in .raw
    f.write_text("the cat sat on the mat and the cat sat on the hat\n\nanother document here")
    ds = D.datastore(f, ngram=3, max=4)
    ds.bind(None, tokenizer)
    ids = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    tree = ds.propose(ids, 16).select(16)
    assert len(tree) > 1
    want = tokenizer(" on the", add_special_tokens=False)["input_ids"]
    assert tree.tokens[1] == want[0]


def test_datastore_with_target_exact(tmp_path):
    target = make_target("mistral", seed=1)
    p = _prompts(1, seed=9)[0]
    ref = D.plain_greedy(target, p, 40)

    class IdTok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(t) for t in text.split()]}

    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, p + ref)))
    ds = D.datastore(f, ngram=2, max=8)
    ds.bind(target, IdTok())
    r = D.generate(target, None, p, draft=ds, max_new_tokens=40, tree_budget=8)
    assert r.ids == ref and r.stats.accepted_draft_tokens > 10


def test_bad_input(tmp_path, tokenizer):
    target = make_target("llama")
    with pytest.raises(ConfigError, match="tree_budget"):
        D.generate(target, tokenizer, "hello", tree_budget=0)
    with pytest.raises(DataError, match="empty"):
        D.generate(target, tokenizer, "   ")
    with pytest.raises(DataError, match="context window"):
        D.generate(target, None, [5] * 600)
    with pytest.raises(DataError, match="does not exist"):
        D.datastore(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no text"):
        D.datastore(tmp_path / "empty.txt").bind(target, tokenizer)
    other = make_target("llama")
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tok2 = type("T", (), {"get_vocab": lambda self: {"a": 0}})()
    with pytest.raises(ConfigError, match="different tokenizer vocabularies"):
        D.generate(target, tokenizer, "hello", draft=D.model(other, tok2))
    m = make_mistral(attn="sdpa")
    with pytest.raises(ConfigError, match="sliding window"):
        D.generate(m, None, [5] * 200, max_new_tokens=100)
