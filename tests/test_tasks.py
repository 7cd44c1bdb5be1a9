"""Zero-shot tasks (prunekit.eval.tasks) and the optional lm-eval integration.

Scores are checked against hand computations with plain forwards on tiny random models, a model
whose predictions are known by construction, and (when lm-eval is installed) lm-eval itself on
local task YAMLs. Task files are tiny synthetic ones written in tmp_path; the shared data is only
loaded when ../shared is present.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED, make_llama, needs_shared
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.eval import evaluate_tasks, parse_task_specs
from prunekit.eval import tasks as T

WORDS = "the a cup water spoon glue paper cut heat cold open close bottle knife fork pour into".split()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


@pytest.fixture
def task_files(tmp_path):
    rng = random.Random(0)
    lam = _jsonl(tmp_path / "lambada.jsonl", [{"text": _sentence(rng, 4, 14)} for _ in range(10)])
    piqa_rows = [
        {"goal": _sentence(rng, 3, 8), "sol1": _sentence(rng, 2, 10), "sol2": _sentence(rng, 2, 10), "label": i % 2}
        for i in range(12)
    ]  # fmt: skip
    piqa = _jsonl(tmp_path / "piqa.jsonl", piqa_rows)
    g = tmp_path / "gsm8k"
    g.mkdir()
    for split, n in (("train", 20), ("test", 4)):
        rows = []
        for i in range(n):
            a, b = rng.randint(1, 900), rng.randint(1, 900)
            rows.append({"question": f"{split} {i}: what is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
        _jsonl(g / f"{split}.jsonl", rows)
    return SimpleNamespace(lambada=lam, piqa=piqa, piqa_rows=piqa_rows, gsm8k=g / "test.jsonl", root=tmp_path)


# ------------------------------------------------------------------------------------- hand math


def _hand_ll(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """Plain unbatched forward over the whole text, full logits (independent of the batched path)."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    logp = F.log_softmax(logits, -1)
    pos = range(len(ctx) - 1, len(whole) - 1)
    ll = sum(logp[i, whole[i + 1]].item() for i in pos)
    greedy = all(int(logp[i].argmax()) == whole[i + 1] for i in pos)
    return ll, greedy


# ---------------------------------------------------------------------------------------- parsing


def test_parse_task_specs_names_paths_and_errors():
    specs = parse_task_specs("lambada, piqa:/x/y.jsonl,GSM8K")
    assert [(s.name, s.path) for s in specs] == [("lambada", None), ("piqa", "/x/y.jsonl"), ("gsm8k", None)]
    assert parse_task_specs(["piqa", "lambada:a.jsonl"])[1].path == "a.jsonl"
    with pytest.raises(ConfigError, match="did you mean 'lambada'") as e:
        parse_task_specs("lambda,piqa")
    assert "\n" not in str(e.value) and "'lambda'" in str(e.value)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_task_specs("piqa,piqa:x")
    with pytest.raises(ConfigError, match="no task"):
        parse_task_specs(" , ")


def test_bad_inputs_give_one_line_errors(tmp_path, tokenizer, task_files):
    m = make_llama()
    cases = [
        (f"lambada:{tmp_path / 'nope.jsonl'}", {}, DataError, "nope.jsonl.*not found.*'text' field"),
        ("piqa", {"limit": 0}, ConfigError, "limit must be"),
        ("piqa", {"limit": 2.5}, ConfigError, "limit must be"),
        (f"piqa:{task_files.piqa}", {"num_shots": 3}, ConfigError, "did you mean 'num_fewshot'"),
        (f"gsm8k:{task_files.gsm8k}", {"fewshot_path": str(task_files.gsm8k)}, ConfigError, "evaluated file"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b c"}\n{"text": oops}\n')
    cases.append((f"lambada:{bad}", {}, DataError, r"bad.jsonl:2 is not valid JSON"))
    nofield = _jsonl(tmp_path / "nofield.jsonl", [{"goal": "g", "sol1": "a"}])
    cases.append((f"piqa:{nofield}", {}, DataError, "no string field 'sol2'"))
    nolabel = _jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
    cases.append((f"piqa:{nolabel}", {}, DataError, "valid-labels.lst"))
    oneword = _jsonl(tmp_path / "oneword.jsonl", [{"text": "word"}])
    cases.append((f"lambada:{oneword}", {}, DataError, "no last word"))
    for spec, kw, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as e:
            evaluate_tasks(m, tokenizer, spec, progress=False, **kw)
        assert "\n" not in str(e.value), spec
    (tmp_path / "valid-labels.lst").write_text("1\n")  # 1 label for 2 records
    with pytest.raises(DataError, match="1 labels for 2 records"):
        evaluate_tasks(m, tokenizer, f"piqa:{nolabel}", progress=False)
    (tmp_path / "valid-labels.lst").write_text("1\n2\n")
    with pytest.raises(DataError, match="label '2' is not 0 or 1"):
        evaluate_tasks(m, tokenizer, f"piqa:{nolabel}", progress=False)


def test_missing_default_data_names_the_path(monkeypatch, tmp_path, tokenizer):
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere/gsm8k/test.jsonl.*pass gsm8k:PATH"):
        evaluate_tasks(make_llama(), tokenizer, "gsm8k", progress=False)


# --------------------------------------------------------------------------------------- scoring


def test_encode_pair_moves_trailing_space_and_splits_whole(tokenizer):
    ctx, cont = T.encode_pair(tokenizer, "the cup  ", "water")
    whole = tokenizer("the cup  water")["input_ids"]
    assert ctx == tokenizer("the cup")["input_ids"] and ctx + cont == whole


@pytest.mark.parametrize("batch_tokens", [24, 100_000])
def test_piqa_matches_hand_computed_argmax(tokenizer, task_files, batch_tokens):
    torch.manual_seed(0)
    m = make_llama(seed=3)
    res = evaluate_tasks(m, tokenizer, f"piqa:{task_files.piqa}", progress=False, batch_tokens=batch_tokens)["piqa"]
    acc, acc_norm = [], []
    for r in task_files.piqa_rows:
        ctx = f"Question: {r['goal']}\nAnswer:"
        lls = [_hand_ll(m, tokenizer, ctx, " " + r[k])[0] for k in ("sol1", "sol2")]
        norm = [ll / len(r[k]) for ll, k in zip(lls, ("sol1", "sol2"))]
        acc.append(float(lls.index(max(lls)) == r["label"]))
        acc_norm.append(float(norm.index(max(norm)) == r["label"]))
    n = len(acc)
    assert res["n"] == n
    assert res["metrics"]["acc"] == pytest.approx(sum(acc) / n)
    assert res["metrics"]["acc_norm"] == pytest.approx(sum(acc_norm) / n)
    p = sum(acc) / n
    assert res["stderr"]["acc"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n))
    assert res["seconds"] >= 0 and res["path"] == str(task_files.piqa)


def test_loglikelihoods_batched_equal_unbatched(tokenizer):
    m = make_llama(seed=5)
    rng = random.Random(1)
    pairs = [(_sentence(rng, 2, 12), " " + _sentence(rng, 1, 4)) for _ in range(9)]
    reqs = [T.encode_pair(tokenizer, c, x) for c, x in pairs]
    got = T.loglikelihoods(m, reqs, batch_tokens=40)
    for (c, x), (ll, greedy) in zip(pairs, got):
        h_ll, h_greedy = _hand_ll(m, tokenizer, c, x)
        assert ll == pytest.approx(h_ll, abs=1e-4) and greedy == h_greedy


def test_lambada_matches_hand_computation_on_tiny_llama(tokenizer, task_files):
    m = make_llama(seed=2)
    res = evaluate_tasks(m, tokenizer, f"lambada:{task_files.lambada}", progress=False, batch_tokens=50)["lambada"]
    lls, hits = [], []
    for line in task_files.lambada.read_text().splitlines():
        text = json.loads(line)["text"]
        ctx, word = text.rsplit(" ", 1)
        ll, greedy = _hand_ll(m, tokenizer, ctx, " " + word)
        lls.append(ll)
        hits.append(float(greedy))
    assert res["metrics"]["acc"] == pytest.approx(sum(hits) / len(hits))
    assert res["metrics"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-5)


class _Memorizer(nn.Module):
    """At position i, logit ``scale`` for ``seq[i + 1]`` and 0 elsewhere; full logits only (so the
    evaluator's fallback for models without a boolean ``logits_to_keep`` runs too)."""

    def __init__(self, seq: list[int], vocab: int, scale: float = 6.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=512)
        self.seq, self.vocab, self.scale = seq, vocab, scale

    def forward(self, input_ids, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for i in range(min(input_ids.shape[1], len(self.seq) - 1)):
            logits[:, i, self.seq[i + 1]] = self.scale
        return SimpleNamespace(logits=logits)


def test_lambada_known_answer_model(tokenizer, tmp_path):
    right = "the water is cold so close the bottle"
    wrong = "the water is cold so close the knife"
    path = _jsonl(tmp_path / "l.jsonl", [{"text": right}, {"text": wrong}, {"text": right}])
    head, word = right.rsplit(" ", 1)
    ctx, cont = T.encode_pair(tokenizer, head, " " + word)
    seq = ctx + cont
    V, s = len(tokenizer), 6.0
    m = _Memorizer(seq, V, s)
    res = evaluate_tasks(m, tokenizer, f"lambada:{path}", progress=False)["lambada"]
    assert res["metrics"]["acc"] == pytest.approx(2 / 3)
    log_z = math.log(math.exp(s) + V - 1)

    def ll(text):
        c, x = T.encode_pair(tokenizer, text.rsplit(" ", 1)[0], " " + text.rsplit(" ", 1)[1])
        full = c + x
        total = 0.0
        for i in range(len(c) - 1, len(full) - 1):
            if i + 1 < len(seq):  # the model predicts seq[i + 1]
                total += (s if seq[i + 1] == full[i + 1] else 0.0) - log_z
            else:  # past the memorized sequence: uniform
                total -= math.log(V)
        return total

    assert ll(right) == pytest.approx(len(cont) * (s - log_z))
    want = math.exp(-(2 * ll(right) + ll(wrong)) / 3)
    # The evaluator's log-probabilities are float32 (log_softmax of float32 logits): each token's is
    # within a few ulps of |log Z| (about 1e-6 here), and which ulps depends on the CPU's vector width
    # (AVX-512 vs AVX2 sum the softmax in another order: off by 4.3e-6 relative on an AMD EPYC). The
    # perplexity exp(mean NLL) is then within (ulps x eps32 x log Z) relative; 16 ulps is the promise.
    assert res["metrics"]["perplexity"] == pytest.approx(want, rel=16 * 2**-23 * log_z)
    assert evaluate_tasks(m, tokenizer, f"lambada:{path}", limit=1, progress=False)["lambada"]["metrics"]["acc"] == 1.0


# ----------------------------------------------------------------------------------------- gsm8k


def test_gsm8k_answer_extraction_rules():
    out = "She has 3 + 15 = 18 eggs.\n#### 18\n\nmore 7"
    assert T.strict_extract(out) == "18" and T.flexible_extract(out) == "7"
    assert T.strict_extract("#### -1,234.5 and #### 9") == "-1,234.5"
    assert T.strict_extract("the answer is 12") == T.INVALID
    assert T.flexible_extract("no digits here") == T.INVALID
    assert T.flexible_extract("costs $1,200.") == "$1,200."
    assert T.normalize_answer("$1,200.") == "1200"
    assert T.normalize_answer("Work 2+2=4\n#### 1,000") == "1000"
    assert T.gsm8k_match("$1,200.", "x = 1200\n#### 1,200")
    assert T.gsm8k_match(T.flexible_extract("so 5"), "#### 5")  # one digit: the second group
    assert not T.gsm8k_match("18", "#### 81") and not T.gsm8k_match(T.INVALID, "#### 1")


def test_gsm8k_prompt_layout():
    shots = [T.Gsm8kDoc("q1?", "a1\n#### 1"), T.Gsm8kDoc("q2?", "#### 2")]
    p = T.gsm8k_prompt(T.Gsm8kDoc("q?", "#### 3"), shots)
    assert p == "Question: q1?\nAnswer: a1\n#### 1\n\nQuestion: q2?\nAnswer: #### 2\n\nQuestion: q?\nAnswer:"


def test_gsm8k_scoring_shots_and_seed(monkeypatch, tokenizer, task_files):
    test_rows = [json.loads(x) for x in task_files.gsm8k.read_text().splitlines()]
    train_q = {json.loads(x)["question"] for x in (task_files.gsm8k.parent / "train.jsonl").read_text().splitlines()}
    answers = {r["question"]: r["answer"].split("#### ")[1] for r in test_rows}
    replies = [
        lambda a: f"so\n#### {a}",  # both right
        lambda a: f"The answer is {a}.",  # flexible only
        lambda a: "#### 1\nno, it is 2",  # both wrong
        lambda a: f"#### {a}0 then {a}",  # strict wrong, flexible right
    ]
    prompts: list[str] = []

    def fake_generate(model, tok, prompt, **kw):
        prompts.append(prompt)
        q = prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
        return replies[len(prompts) - 1 - 4 * (len(prompts) > 4)](answers[q])

    monkeypatch.setattr(T, "greedy_generate", fake_generate)
    res = evaluate_tasks(make_llama(), tokenizer, f"gsm8k:{task_files.gsm8k}", progress=False, num_fewshot=3)["gsm8k"]
    assert res["metrics"] == {"exact_match_strict": 0.25, "exact_match_flexible": 0.75}
    assert res["n"] == 4 and res["num_fewshot"] == 3
    for p in prompts:
        shot_qs = [b.split("\nAnswer:")[0] for b in p.split("Question: ")[1:-1]]
        assert len(shot_qs) == 3 and set(shot_qs) <= train_q
    first = list(prompts)
    prompts.clear()
    evaluate_tasks(make_llama(), tokenizer, f"gsm8k:{task_files.gsm8k}", progress=False, num_fewshot=3)
    assert prompts == first  # fixed seed
    prompts.clear()
    evaluate_tasks(make_llama(), tokenizer, f"gsm8k:{task_files.gsm8k}", progress=False, num_fewshot=3, fewshot_seed=7)
    assert prompts != first


def test_greedy_generate_matches_transformers_generate(tokenizer):
    m = make_llama(seed=4)
    prompt = "Question: what is the water?\nAnswer:"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    ref = m.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    want = tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert T.greedy_generate(m, tokenizer, prompt, until=(), max_gen_toks=10) == want
    stop = want[3:6]
    if stop.strip():
        assert T.greedy_generate(m, tokenizer, prompt, until=(stop,), max_gen_toks=10) == want.split(stop)[0]


# ---------------------------------------------------------------------------------- shared data


@needs_shared
def test_shared_task_files_load_and_run(tokenizer):
    assert len(T.load_lambada(SHARED / "lambada" / "lambada_test.jsonl")) == 5153
    piqa = T.load_piqa(SHARED / "piqa" / "valid.jsonl")
    assert len(piqa) == 1838 and {d.label for d in piqa} == {0, 1}
    assert len(T.load_gsm8k(SHARED / "gsm8k" / "test.jsonl")) == 1319
    res = evaluate_tasks(make_llama(), tokenizer, ["lambada", "piqa", "gsm8k"], limit=2, progress=False,
                         max_gen_toks=4, num_fewshot=2)  # fmt: skip
    assert set(res) == {"lambada", "piqa", "gsm8k"} and all(r["n"] == 2 for r in res.values())
    assert res["lambada"]["metrics"]["perplexity"] > 1


# ------------------------------------------------------------------------------ lm-eval parity


def _lm_eval_or_skip():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install prunekit[lmeval])")
    from prunekit.eval.lmeval import run_lm_eval

    return run_lm_eval


def _yaml(root: Path, name: str, body: str) -> None:
    (root / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\n{body}")


def test_lm_eval_missing_is_one_line(monkeypatch):
    import builtins

    from prunekit.eval import lmeval

    real = builtins.__import__

    def no_lm_eval(name, *a, **k):
        if name.startswith("lm_eval"):
            raise ImportError("No module named 'lm_eval'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(ConfigError, match=r"pip install prunekit\[lmeval\]") as e:
        lmeval.run_lm_eval(make_llama(), None, "piqa")
    assert "\n" not in str(e.value)


def test_piqa_and_lambada_equal_lm_eval(tokenizer, task_files):
    run_lm_eval = _lm_eval_or_skip()
    root = task_files.root
    cache = root / "hf-cache"
    _yaml(root, "tiny_piqa", f"""dataset_kwargs:
  data_files: {{validation: {task_files.piqa}}}
  cache_dir: {cache}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
""")
    _yaml(root, "tiny_lambada", f"""dataset_kwargs:
  data_files: {{test: {task_files.lambada}}}
  cache_dir: {cache}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - {{metric: perplexity, aggregation: perplexity, higher_is_better: false}}
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
""")
    m = make_llama(seed=1)
    ours = evaluate_tasks(m, tokenizer, f"piqa:{task_files.piqa},lambada:{task_files.lambada}", progress=False)
    theirs = run_lm_eval(m, tokenizer, ["tiny_piqa", "tiny_lambada"], include_path=str(root),
                         log_samples=True, bootstrap_iters=20)  # fmt: skip
    for metric in ("acc", "acc_norm"):
        assert ours["piqa"]["metrics"][metric] == theirs["tasks"]["tiny_piqa"]["metrics"][metric]
        assert ours["piqa"]["stderr"][metric] == pytest.approx(theirs["tasks"]["tiny_piqa"]["stderr"][metric])
    lam = theirs["tasks"]["tiny_lambada"]["metrics"]
    assert ours["lambada"]["metrics"]["acc"] == lam["acc"]
    assert ours["lambada"]["metrics"]["perplexity"] == pytest.approx(lam["perplexity"], rel=1e-5)
    # per-request log-likelihoods, not just the argmax
    docs = T.load_piqa(task_files.piqa)
    reqs = [T.encode_pair(tokenizer, d.context, " " + c) for d in docs for c in d.choices]
    mine = [ll for ll, _ in T.loglikelihoods(m, reqs)]
    samples = sorted(theirs["samples"]["tiny_piqa"], key=lambda s: s["doc_id"])
    lm = [r[0][0] for s in samples for r in s["resps"]]
    assert mine == pytest.approx(lm, abs=1e-4)


def test_gsm8k_prompts_and_generations_equal_lm_eval(monkeypatch, tokenizer, task_files):
    run_lm_eval = _lm_eval_or_skip()
    root, g = task_files.root, task_files.gsm8k.parent
    _yaml(root, "tiny_gsm8k", f"""dataset_kwargs:
  data_files: {{train: {g / "train.jsonl"}, test: {g / "test.jsonl"}}}
  cache_dir: {root / "hf-cache"}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs: {{until: ["Question:", "</s>", "<|im_end|>"], do_sample: false, max_gen_toks: 8}}
num_fewshot: 3
filter_list:
  - name: strict-match
    filter: [{{function: regex, regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"}}, {{function: take_first}}]
  - name: flexible-extract
    filter: [{{function: regex, group_select: -1, regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"}}, {{function: take_first}}]
""")
    m = make_llama(seed=1)
    seen: list[tuple[str, str]] = []
    real = T.greedy_generate

    def spy(model, tok, prompt, **kw):
        out = real(model, tok, prompt, **kw)
        seen.append((prompt, out))
        return out

    monkeypatch.setattr(T, "greedy_generate", spy)
    ours = evaluate_tasks(m, tokenizer, f"gsm8k:{task_files.gsm8k}", progress=False, num_fewshot=3, max_gen_toks=8)
    theirs = run_lm_eval(m, tokenizer, ["tiny_gsm8k"], include_path=str(root), log_samples=True)
    samples = sorted((s for s in theirs["samples"]["tiny_gsm8k"] if s["filter"] == "strict-match"),
                     key=lambda s: s["doc_id"])  # fmt: skip
    assert len(samples) == len(seen) == 4
    assert [s["arguments"][0][0] for s in samples] == [p for p, _ in seen]
    assert [s["resps"][0][0] for s in samples] == [o for _, o in seen]
    lm = theirs["tasks"]["tiny_gsm8k"]["metrics"]
    assert ours["gsm8k"]["metrics"]["exact_match_strict"] == lm["exact_match,strict-match"]
    assert ours["gsm8k"]["metrics"]["exact_match_flexible"] == lm["exact_match,flexible-extract"]


def test_long_inputs_are_cut_from_the_left_like_lm_eval(tokenizer):
    m = make_llama(seed=6)
    ctx = tokenizer(" ".join(WORDS * 6))["input_ids"]
    cont = tokenizer(" the cup")["input_ids"]
    (ll, _), = T.loglikelihoods(m, [(ctx, cont)], max_length=32)
    inp = (ctx + cont)[-33:]  # (ctx + cont)[-(L + 1):], the last token is only a target
    with torch.no_grad():
        logp = F.log_softmax(m(input_ids=torch.tensor([inp[:-1]])).logits[0].float(), -1)
    want = sum(logp[i, inp[i + 1]].item() for i in range(len(inp) - 1 - len(cont), len(inp) - 1))
    assert len(ctx) > 40 and ll == pytest.approx(want, abs=1e-4)
    with pytest.raises(DataError, match="does not fit the model window of 1"):
        T.loglikelihoods(m, [(ctx, cont)], max_length=1)


def test_gsm8k_answer_nlls_score_only_the_answer_tokens(tmp_path, tokenizer):
    """D-Pruner's / PASER's domain metric: the answer's NLL given the question, nothing else."""
    import torch

    from conftest import make_llama
    from prunekit.eval.perplexity import gsm8k_answer_nlls

    recs = [{"question": "How many legs have 2 cats?", "answer": "2 * 4 = 8\n#### 8"},
            {"question": "What is 3 + 4?", "answer": "3 + 4 = 7\n#### 7"}]  # fmt: skip
    f = tmp_path / "test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    model = make_llama()
    got = gsm8k_answer_nlls(model, tokenizer, f, n=1)
    assert len(got) == 1
    got = gsm8k_answer_nlls(model, tokenizer, f)
    for (nll, count), r in zip(got, recs):
        ctx = tokenizer(f"Question: {r['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        ans = tokenizer(f" {r['answer']}", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + ans])
        labels = ids.clone()
        labels[0, : len(ctx)] = -100  # the context is not scored
        with torch.no_grad():
            mean = model(input_ids=ids, labels=labels).loss.item()
        assert count == len(ans) and nll == pytest.approx(mean * count, rel=1e-5)
