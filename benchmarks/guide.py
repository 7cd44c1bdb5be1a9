"""Regenerate the method guide's numbers: ``src/prunekit/guide_data.json`` and the generated
sections of ``docs/METHODS.md``, both from ``benchmarks/results/`` and the method registry.

    python benchmarks/guide.py           # rewrite both
    python benchmarks/guide.py --check   # exit 1 if either is stale (what tests/test_guide.py checks)

Only text between ``<!-- generated:NAME -->`` and ``<!-- /generated -->`` is rewritten; the
hand-written prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from prunekit import guide as G  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "METHODS.md"
DATA = G.DATA_FILE
BENCH = "../BENCHMARKS.md"
SPEEDUP_ANCHOR = f"{BENCH}#structured-pruning-speedup-on-larger-shapes"
MARK = re.compile(r"(<!-- generated:(?P<name>[\w:-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _anchor(pid: str) -> str:
    return f"{BENCH}#protocol-{pid.lower()}"


def _ppl(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 10000 else f"{x:.2f}"


def _num(x: float | None, nd: int = 0) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def _kind(P: dict) -> str:
    return "routine" if P["routine"] else "reduced"


def _proto_label(P: dict) -> str:
    return f"[{_kind(P)}]({_anchor(P['id'])})"


def _protocols_line(data: dict) -> str:
    models = ", ".join(f"`{m}`" for m in sorted({str(P["model"]) for P in data["protocols"]}))
    each = "; ".join(f"**{_kind(P)}** — calibration {P['calibration']}, evaluation {P['evaluation']}"
                     for P in data["protocols"])  # fmt: skip
    return f"Protocols (model {models}): {each}."


def methods_section() -> str:
    """The taxonomy table: one row per registered method (``prunekit ls``)."""
    L = ["| name | kind | speedup (survey) | removes | when | criterion | statistics | "
         "runs fast on | paper |", "|---|---|---|---|---|---|---|---|---|"]
    for m in G.taxonomy():
        kind = "structured" if m.structured else "unstructured, N:M"
        L.append(f"| `{m.name}` | {kind} | {m.speedup} | {_md(m.granularity)} | {_md(m.when)} | "
                 f"{_md(m.criterion)} | {_md(m.statistics)} | {_md(m.runs_fast_on)} | {_md(m.paper)} |")
    missing = [m.name for m in G.taxonomy() if not m.has_entry]
    if missing:
        L += ["", "Registered without a guide entry yet (taxonomy derived from the registry): "
                  + ", ".join(f"`{n}`" for n in missing) + "."]
    return "\n".join(L)


def _rows_table(data: dict, pattern: str, with_speed: bool = False) -> list[str]:
    names = set(G.registered_methods())
    head = "| protocol | method | sparsity | perplexity | dense | prune s | peak RSS MB |"
    sep = "|---|---|---|---|---|---|---|"
    if with_speed:
        head += " params M | prefill speedup | decode speedup |"
        sep += "---|---|---|"
    L = [_protocols_line(data), "", head, sep]
    for P in data["protocols"]:
        rows = sorted((r for r in P["rows"] if r["pattern"] == pattern and r["method"] in names),
                      key=lambda r: (r["sparsity"], r["perplexity"] if r["perplexity"] is not None else 1e99))
        for r in rows:
            line = (f"| {_proto_label(P)} | `{r['method']}` | {r['sparsity'] * 100:g}% | "
                    f"{_ppl(r['perplexity'])} | {_ppl(P['dense_perplexity'])} | {_num(r['prune_s'])} | "
                    f"{_num(r['peak_rss_mb'])} |")
            if with_speed:
                s = r.get("speedup")
                pre = " / ".join(f"{k.split('_')[1]}: {v:.2f}×" for k, v in s.items()
                                 if k.startswith("prefill_") and v) if s and s["paired"] else "–"
                dec = f"{s['decode']:.2f}×" if s and s["paired"] and s.get("decode") else "–"
                line += f" {_num(r['params_m'], 1)} | {pre} | {dec} |"
            L.append(line)
    return L


def quality_section(data: dict) -> str:
    return "\n".join(_rows_table(data, "unstructured"))


def two_four_section(data: dict) -> str:
    return "\n".join(_rows_table(data, "2:4"))


def speed_section(data: dict) -> str:
    L = _rows_table(data, "structured", with_speed=True)
    L += ["", "Speedups in this table only where the pruned and dense models were timed in turns in "
              "one job (paired); unpaired timings (±30% on a shared machine) are in BENCHMARKS.md.",
          "", f"Paired speedups on published shapes ([BENCHMARKS.md]({SPEEDUP_ANCHOR})):", "",
          "| shapes | device | method | sparsity | params M | prefill speedup | decode speedup |",
          "|---|---|---|---|---|---|---|"]
    for e in data["structured_speedup"]:
        for r in e["rows"]:
            pre = " / ".join(f"{n}: {v:.2f}×" for n, v in r["prefill"].items())
            dec = f"{r['decode']:.2f}×" if r["decode"] is not None else "–"
            L.append(f"| {e['arch']} (`{e['source']}`) | {e['device']}, {e['threads']} thread, "
                     f"{e['runs']} runs, {e['date']} | `{r['method']}` | {r['sparsity'] * 100:g}% | "
                     f"{_num(r['params_m'], 1)} | {pre} | {dec} |")
    return "\n".join(L)


def recommendations_section(data: dict) -> str:
    L = ["| goal | `prunekit recommend` picks | because | run |", "|---|---|---|---|"]
    for g in G.GOALS:
        r = G.recommend(g, data=data)
        pat = r.pattern if r.pattern != "structured" else f"structured {r.sparsity * 100:g}%"
        L.append(f"| `{g}` | `{r.method}` ({_md(pat)}) | {_md(r.summary)} | `{_md(r.command)}` |")
    return "\n".join(L)


def sections(data: dict | None = None) -> dict[str, str]:
    """Every generated section of docs/METHODS.md, by marker name."""
    data = G.build_data(RESULTS) if data is None else data
    return {"methods": methods_section(), "recommendations": recommendations_section(data),
            "quality": quality_section(data), "2:4": two_four_section(data),
            "speed": speed_section(data)}


def apply_sections(text: str, secs: dict[str, str]) -> str:
    """``text`` with every marked section's body replaced; unknown markers are an error."""

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in secs:
            raise SystemExit(f"docs/METHODS.md has an unknown generated section {name!r}; "
                             f"known: {', '.join(secs)}")
        return f"{m.group(1)}{secs[name].rstrip()}\n{m.group(4)}"

    return MARK.sub(sub, text)


def extract_sections(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body").rstrip() for m in MARK.finditer(text)}


def data_text(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report whether the outputs are stale")
    a = ap.parse_args(argv)
    data = G.build_data(RESULTS)
    new_data = data_text(data)
    doc = DOC.read_text()
    new_doc = apply_sections(doc, sections(data))
    old_data = DATA.read_text() if DATA.exists() else ""
    pairs = ((DATA, old_data, new_data), (DOC, doc, new_doc))
    stale = [str(p.relative_to(REPO)) for p, old, new in pairs if old != new]
    if a.check:
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    DATA.write_text(new_data)
    DOC.write_text(new_doc)
    print(f"wrote {DATA.relative_to(REPO)} ({len(data['protocols'])} protocols) and {DOC.relative_to(REPO)}"
          + (f" (changed: {', '.join(stale)})" if stale else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
