"""prunekit.prompts: scoring exactness, caching/counting, PromptQuine finds a known best mask,
ClaPS greedy = brute force over its probed tokens, mask round-trip, one-line bad inputs."""

import json

import pytest
import torch
from conftest import SHARED, make_llama, needs_shared

from prunekit.errors import ConfigError, DataError
from prunekit.prompts import PrunedPrompt, Score, Scorer, SearchConfig, Task, load_task, search
from prunekit.prompts import claps as CL
from prunekit.prompts.promptquine import mutate


def _words(tokenizer, n):
    out = []
    for w in ("the", "is", "of", "and", "to", "in", "a", "for", "be", "not", "as", "if"):
        if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            out.append(w)
    assert len(out) >= n
    return out[:n]


def _task(tokenizer, n_labels=2):
    labels = _words(tokenizer, n_labels)
    xs = ["water is wet", "the list of items", "a class method", "for each loop", "raise an error",
          "import the module", "return a value", "the string is empty"]  # fmt: skip
    rows = [(x, i % n_labels) for i, x in enumerate(xs)]
    return Task("stub", "Label:", labels, rows[:4], rows[4:], rows[2:6])


@pytest.fixture(scope="module")
def model():
    return make_llama(layers=2)


def test_scorer_equals_plain_forward_and_caches(model, tokenizer):
    task = _task(tokenizer)
    sc = Scorer(model, tokenizer, task, batch_size=3)  # 4 dev queries: two batches
    prompt = sc.encode(task.demo(*task.train[0]))
    lp = sc.logprobs(prompt, sc.queries["dev"])
    with torch.no_grad():
        for i, q in enumerate(sc.queries["dev"]):
            z = model(torch.tensor([prompt + q])).logits[0, -1].float()
            ref = torch.log_softmax(z, -1)[sc.label_ids]
            torch.testing.assert_close(lp[i], ref, atol=1e-4, rtol=1e-4)
        z = model(torch.tensor([sc.queries["dev"][0]])).logits[0, -1].float()  # empty prompt: no cache
        torch.testing.assert_close(sc.logprobs([], sc.queries["dev"][:1])[0], torch.log_softmax(z, -1)[sc.label_ids],
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    a = sc(prompt, "dev")
    assert (sc.calls, sc.hits) == (1, 0)
    assert sc(prompt, "dev") == a and (sc.calls, sc.hits) == (1, 1)
    sc(prompt, "dev", 2), sc(prompt, "train"), sc(prompt[1:], "dev")
    assert (sc.calls, sc.hits) == (4, 1)
    gold = sc.gold["dev"]
    assert a.accuracy == float((lp.argmax(-1) == gold).float().mean())


class _Target(Scorer):
    """Fitness that is best exactly at one known mask of the start prompt (no LM)."""

    target: set

    def _score(self, prompt, queries, gold):
        p = set(prompt)
        good = len(p & self.target) / len(self.target)
        junk = len(p - self.target) / max(1, len(self.full - self.target))
        return Score(good - 0.5 * junk, 0.0)


def test_promptquine_finds_known_mask_within_budget(model, tokenizer):
    task = _task(tokenizer)
    cfg = SearchConfig(k=1, population=6, survivors=2)
    sc = _Target(model, tokenizer, task)
    # the start prompt is demo(train[i]) for the first index the seed draws; make the target a
    # set of its distinct token ids (every 3rd position)
    import random

    from prunekit.prompts.promptquine import icl_prompt

    x = icl_prompt(task, 1, random.Random(21), sc.encode)
    sc.full = set(x)
    sc.target = {t for j, t in enumerate(x) if j % 3 == 0} - {t for j, t in enumerate(x) if j % 3}
    assert sc.target
    r = search(model, tokenizer, task, "promptquine", budget=400, seed=21, config=cfg, scorer=sc, test=False)
    kept = set(PrunedPrompt.from_dict(r.mask, tokenizer).ids)
    assert kept == sc.target and r.dev_accuracy == 1.0
    assert r.extra["search_calls"] <= 400 and r.curve[-1][1] == 1.0
    assert [c for c, _ in r.curve] == sorted(c for c, _ in r.curve)
    sc2 = _Target(model, tokenizer, task)
    sc2.full, sc2.target = sc.full, sc.target
    r3 = search(model, tokenizer, task, "promptquine", budget=5, seed=21, config=cfg, scorer=sc2, test=False)
    assert r3.extra["search_calls"] == 5  # the budget is a hard cap on uncached calls


def test_claps_greedy_is_brute_force_for_one_token(model, tokenizer):
    task = _task(tokenizer)
    cfg = SearchConfig(clusters=12, keep_fraction=1.0, length=1)
    r = search(model, tokenizer, task, "claps-greedy", budget=10_000, seed=13, config=cfg)
    sc = Scorer(model, tokenizer, task)
    E = model.get_input_embeddings().weight
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i not in special for i in range(E.shape[0])])
    reps = CL.representatives(E, CL.kmeans(E, 12, 13), allowed)
    assert r.extra["probed"] == len(reps) == r.extra["pruned_vocab"]
    cands = [()] + [(t,) for t in reps]
    best = min(cands, key=lambda z: sc(list(z), "dev").fitness)
    assert r.dev_accuracy == sc(list(best), "dev").accuracy
    assert r.prompt == tokenizer.decode(list(best))
    g = search(model, tokenizer, task, "claps-genetic", budget=40, seed=13,
               config=SearchConfig(clusters=12, length=3, population=4, survivors=2))  # fmt: skip
    assert g.extra["search_calls"] <= 40 and g.prompt_tokens == 3 and g.test_accuracy is not None


def test_mask_round_trip(tokenizer):
    text = "Input: the list of items\nLabel: is\n\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = PrunedPrompt.full(ids)
    assert full.text(tokenizer) == text and full.mask() == [1] * len(ids)
    p = PrunedPrompt(tuple(ids), (0, 2, 3, len(ids) - 1))
    d = json.loads(json.dumps(p.to_dict(tokenizer)))
    q = PrunedPrompt.from_dict(d, tokenizer)
    assert q == p and q.ids == [ids[i] for i in (0, 2, 3, len(ids) - 1)] and sum(q.mask()) == 4
    z = tuple(range(10))
    import random

    rng = random.Random(0)
    for _ in range(50):
        c = mutate(z, rng)
        assert c is not None and 6 <= len(c) <= 9 and set(c) < set(z) and list(c) == sorted(c)
    assert mutate((3,), rng) is None  # one token always stays


def test_bad_inputs_one_line(model, tokenizer, tmp_path):
    task = _task(tokenizer)
    with pytest.raises(ConfigError, match="unknown task 'nope'; choose one of"):
        load_task("nope")
    with pytest.raises(ConfigError, match="task seed 7 has no split"):
        load_task("sst-2", 7)
    bad = Task("stub", "Label:", task.labels[:1], task.train, task.dev)  # labels 0/1, one word
    with pytest.raises(DataError, match="label 1 but only 1 label words"):
        search(model, tokenizer, bad, budget=5)
    with pytest.raises(ConfigError, match="budget=0: give at least 1 LM call"):
        search(model, tokenizer, task, budget=0)
    with pytest.raises(ConfigError, match="k=5 demonstrations but the train split has 4"):
        search(model, tokenizer, task, budget=5, config=SearchConfig(k=5))
    with pytest.raises(ConfigError, match="unknown prompt-search method"):
        search(model, tokenizer, task, method="ape", budget=5)
    multi = Task("stub", "Label:", ["zyzzyvaquux", task.labels[1]], task.train, task.dev)
    with pytest.raises(DataError, match="label word 'zyzzyvaquux' is .* tokens"):  # rejected, not truncated
        search(model, tokenizer, multi, budget=5)
    with pytest.raises(DataError, match="not found; set PRUNEKIT_FEWSHOT_DATA"):
        load_task("sst-2", 13, root=tmp_path)


@needs_shared
def test_load_real_splits():
    if not (SHARED / "fewshot-classification").is_dir():
        pytest.skip("no fewshot-classification data")
    for name, n_cls in (("sst-2", 2), ("agnews", 4), ("subj", 2), ("trec", 6)):
        t = load_task(name, 13, test_limit=50)
        assert len(t.train) == len(t.dev) == 16 * n_cls and len(t.test) == 50
        assert {y for _, y in t.train} == set(range(n_cls)) and len(t.labels) == n_cls


def test_cli_runs_on_a_tiny_model(tokenizer, tmp_path, capsys):
    from prunekit.cli.main import main

    d = tmp_path / "m"
    make_llama(layers=1).save_pretrained(d)
    tokenizer.save_pretrained(d)
    task = _task(tokenizer)
    data = tmp_path / "fs" / "sst-2"
    (data / "16-13").mkdir(parents=True)
    for name, rows in (("16-13/train.tsv", task.train), ("16-13/dev.tsv", task.dev), ("test.tsv", task.test)):
        (data / name).write_text("sentence\tlabel\n" + "".join(f"{x}\t{y}\n" for x, y in rows))
    import prunekit.prompts.tasks as T

    old = T.TASKS["sst-2"]
    T.TASKS["sst-2"] = T.TaskSpec("sst-2", "Label:", tuple(task.labels), "")
    try:
        rc = main(["prompt-search", str(d), "--task", "sst-2", "--budget", "6", "--k", "2", "--data",
                   str(tmp_path / "fs"), "--json"])  # fmt: skip
    finally:
        T.TASKS["sst-2"] = old
    out = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(out)
    assert rc in (0, None) and res["method"] == "promptquine" and res["extra"]["search_calls"] <= 6
    assert res["mask"]["keep"] and res["test_accuracy"] is not None
