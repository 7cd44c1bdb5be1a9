"""``prunekit eval MODEL --tasks xquad-rag --context-prune METHOD``: the full and the pruned
readings side by side, tokens counted with the reader's tokenizer, SQuAD metrics, one-line errors."""

from __future__ import annotations

import json

import pytest

from prunekit.context import rag

COLOURS = "red blue green amber violet ochre teal coral ivory olive".split()


def _xquad(path):
    """26 one-paragraph articles (24 train, 2 test); each paragraph names its own rare word, and its
    question asks about that word, so BM25 must put the gold paragraph first."""
    arts = []
    for i in range(26):
        word = f"zork{i}qua"
        ctx = (f"The {word} lives near the river. It is {COLOURS[i % 10]} in colour. "
               f"Many people walk there in the morning. The town has a market.")
        ans = COLOURS[i % 10]
        qas = [{"id": f"q{i}", "question": f"What colour is the {word}?",
                "answers": [{"text": ans, "answer_start": ctx.index(ans)}]}]  # fmt: skip
        arts.append({"title": f"a{i}", "paragraphs": [{"context": ctx, "qas": qas}]})
    path.write_text(json.dumps({"data": arts}))
    return path


def test_squad_metrics_normalise_like_the_official_script():
    assert rag.normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert rag.exact_match("the Red", ["red", "blue"]) == 1.0
    assert rag.f1("red car", ["a red bus"]) == pytest.approx(0.5)
    assert rag.f1("", ["red"]) == 0.0


def test_retrieval_puts_the_gold_paragraph_in_the_top_k(tmp_path):
    qs, recall = rag.rag_questions(_xquad(tmp_path / "x.json"), k=1)
    assert len(qs) == 2 and recall == 1.0
    assert all(q["answers"][0] in q["passages"][0] and len(q["passages"]) == 1 for q in qs)


def _cli(capsys, argv):
    from prunekit.cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return rc, (json.loads(last) if rc == 0 and last.startswith("{") else None), err


def test_cli_reads_full_and_pruned_contexts_side_by_side(capsys, tiny_llama_dir, tmp_path, tokenizer):
    x = _xquad(tmp_path / "x.json")
    rc, res, err = _cli(capsys, ["eval", tiny_llama_dir, "--tasks", f"xquad-rag:{x}", "--context-prune", "bm25:rate=0.5",
                                 "--json", "-q"])  # fmt: skip
    assert rc == 0, err
    r = res["tasks"]["xquad-rag"]
    assert r["n"] == 2 and r["recall_at_k"] == 1.0
    pr = r["pruned"]
    # the tokens counted are the reader's: the full contexts joined as the reader sees them
    qs, _ = rag.rag_questions(x, k=5)
    from prunekit.context.core import prune

    want = [prune(q["question"], q["passages"], method="bm25", rate=0.5, reader_tokenizer=tokenizer) for q in qs]
    assert pr["tokens_before"] == sum(w.tokens_before for w in want)
    assert pr["tokens_after"] == sum(w.tokens_after for w in want) < pr["tokens_before"]
    assert pr["metrics"]["prefill_tokens"] < r["metrics"]["prefill_tokens"]
    assert set(r["metrics"]) == set(pr["metrics"]) >= {"em", "f1", "gold_ll", "prefill_tokens"}
    rc, res, _ = _cli(capsys, ["eval", tiny_llama_dir, "--tasks", f"xquad-rag:{x}", "--json", "-q", "--limit", "1"])
    assert rc == 0 and "pruned" not in res["tasks"]["xquad-rag"] and res["tasks"]["xquad-rag"]["n"] == 1


@pytest.mark.parametrize("extra, msg", [
    (["--tasks", "piqa", "--context-prune", "bm25"], "--context-prune applies to --tasks xquad-rag"),
    (["--context-prune", "nope"], "unknown method 'nope'"),
    (["--context-prune", "bm25:rate=half"], "is not a number"),
    (["--context-prune", "bm25:k=3"], "is not rate=R or threshold=T"),
    (["--context-prune", "bm25:rate=1.5"], "rate"),
])  # fmt: skip
def test_cli_bad_context_prune_is_one_line(capsys, tiny_llama_dir, tmp_path, extra, msg):
    x = _xquad(tmp_path / "x.json")
    argv = ["eval", tiny_llama_dir, "-q"] + (["--tasks", f"xquad-rag:{x}"] if "--tasks" not in extra else []) + extra
    rc, _, err = _cli(capsys, argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, err


def test_cli_missing_xquad_file_is_one_line(capsys, tiny_llama_dir, tmp_path):
    rc, _, err = _cli(capsys, ["eval", tiny_llama_dir, "--tasks", f"xquad-rag:{tmp_path / 'none.json'}", "-q"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not found" in err, err


@pytest.mark.parametrize("spec, msg", [
    ("bm25:rate=1.5", "rate 1.5 is out of range"),
    ("bm25:rate=0", "rate 0.0 is out of range"),
    ("provence:threshold=2", "threshold 2.0 is out of range"),
    ("bm25:threshold=0.1", "no probability scores to threshold"),
    ("bm25:rate=0.5,threshold=0.1", "not both"),
])  # fmt: skip
def test_out_of_range_budget_is_refused_before_any_model_loads(capsys, monkeypatch, tiny_llama_dir, tmp_path, spec, msg):
    import prunekit.models as M

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the spec was checked")

    monkeypatch.setattr(M, "load_model", no_load)
    x = _xquad(tmp_path / "x.json")
    rc, _, err = _cli(capsys, ["eval", tiny_llama_dir, "--tasks", f"xquad-rag:{x}", "--context-prune", spec, "-q"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
