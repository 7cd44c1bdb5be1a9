"""Tree rejection sampling keeps the target's distribution (chi-square, 20k samples); the CLI's decode."""

from __future__ import annotations

import json
import math

import pytest
import torch

import prunekit.decoding as D
from prunekit.decoding.tree import Tree
from prunekit.decoding.verify import target_probs

from conftest import make_llama


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value, rare bins pooled (Wilson-Hilferty approximation of the tail)."""
    n = float(counts.sum())
    exp = probs.double() * n
    big = exp >= min_expected
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    ex = torch.cat([exp[big], exp[~big].sum()[None]])
    keep = ex > 0
    obs, ex = obs[keep], ex[keep]
    x = float(((obs - ex) ** 2 / ex).sum())
    k = len(ex) - 1
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_tree_rejection_sampling_matches_target_distribution():
    model = make_llama(seed=11)
    runner = D.TreeModel(model)
    prefix = [17, 40, 99, 5, 230]
    runner.prefill(prefix[:-1])
    with torch.inference_mode():
        base = runner.model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
    p0 = target_probs(base, 0.05)
    top = torch.topk(p0, 4).indices.tolist()
    # root -> 4 children (the likeliest first, a rare token, two more); the first child has 3 children of its own
    tree = Tree([prefix[-1], top[0], 7, top[1], top[2], 0, 0, 0], [-1, 0, 0, 0, 0, 1, 1, 1])
    past = runner.past
    logits = runner.forward_tree(tree)
    runner.keep(past, [0])
    p1 = target_probs(logits[1], 0.05)
    tree.tokens[5:8] = torch.topk(p1, 3).indices.tolist()
    probs = target_probs(logits, 0.05)
    assert torch.allclose(probs[0], p0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    first = torch.zeros(len(p0))
    second = torch.zeros(len(p0))
    accepted = 0
    for _ in range(n):
        path, bonus = D.accept_sample(tree, probs, g)
        toks = [tree.tokens[i] for i in path[1:]] + [bonus]
        first[toks[0]] += 1
        accepted += len(path) - 1
        if toks[0] == top[0]:
            second[toks[1]] += 1
    assert accepted > n * 0.3  # the tree was used, not only the bonus draw
    assert _chi2_pvalue(first, p0) > 1e-3
    assert second.sum() > 2000
    assert _chi2_pvalue(second, p1) > 1e-3
    # the test has power: the draft's own (wrong) distribution is rejected
    wrong = p0.clone()
    wrong[top[0]] *= 1.25
    assert _chi2_pvalue(first, wrong / wrong.sum()) < 1e-3


def test_sampling_generate_seeded_and_uses_tree():
    model = make_llama(seed=12)
    p = [5, 6, 7, 8]
    a = D.generate(model, None, p, draft=D.model(model, confidence=0.0), max_new_tokens=20, do_sample=True,
                   temperature=0.05, seed=3)  # fmt: skip
    b = D.generate(model, None, p, draft=D.model(model, confidence=0.0), max_new_tokens=20, do_sample=True,
                   temperature=0.05, seed=3)  # fmt: skip
    assert a.ids == b.ids and len(a.ids) == 20
    assert a.stats.tokens_per_forward > 1.2


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("dec")
    make_llama(seed=0).save_pretrained(d / "target")
    tokenizer.save_pretrained(d / "target")
    make_llama(layers=1, seed=0).save_pretrained(d / "draft")
    tokenizer.save_pretrained(d / "draft")
    return d


def _cli(capsys, *argv):
    from prunekit.cli.main import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_decode_json_identical(tiny_pair, capsys, tmp_path):
    t, d = str(tiny_pair / "target"), str(tiny_pair / "draft")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The string type has some methods"}) + "\n" + json.dumps("Names are bound") + "\n")
    rc, out, err = _cli(capsys, "decode", t, "--draft", d, "--lookup", "2:6", "--tree", "8", "--prompts",
                        str(prompts), "--max-new-tokens", "12", "--check", "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["prompts"] == 2 and res["identical"] == 2 and res["draft"].startswith("rasd(")
    assert res["new_tokens"] == 24 and 0 < res["forwards_per_token"] <= 1
    rc, out, err = _cli(capsys, "decode", t, "--lookup", "1:4", "--prompt", "a b a b a b", "--max-new-tokens", "5", "--json")
    assert rc == 0 and json.loads(out.strip().splitlines()[-1])["draft"] == "prompt_lookup(1:4)"


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--tree", "0", "--prompt", "x"], "out of range"),
        (["--prompt", "  "], "empty"),
        (["--datastore", "/nonexistent/ds.txt", "--prompt", "x"], "does not exist"),
        (["--prompts", "/nonexistent/p.jsonl"], "does not exist"),
        (["--lookup", "2-10", "--prompt", "x"], "NGRAM:MAX"),
        (["--prompt", "x " * 600], "context window"),
    ],
)
def test_cli_decode_bad_input(tiny_pair, capsys, args, msg):
    rc, out, err = _cli(capsys, "decode", str(tiny_pair / "target"), *args)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_cli_decode_tokenizer_mismatch(tiny_pair, capsys, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    other = tmp_path / "other"
    make_llama(vocab=384, layers=1).save_pretrained(other)
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(other)
    rc, out, err = _cli(capsys, "decode", str(tiny_pair / "target"), "--draft", str(other), "--prompt", "a b")
    assert rc == 2 and "different tokenizer vocabularies" in err and str(other) in err
