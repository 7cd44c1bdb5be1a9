"""Text sources for calibration and evaluation.

SOURCE may be:

* ``builtin`` — CPython's ``pydoc_data.topics`` (~465k characters of English that every Python
  ships). Topics are sorted by name and split in two halves by characters: the first half is
  used only for calibration, the second only for evaluation.
* a ``.txt`` / ``.raw`` file (one text);
* a ``.jsonl`` / ``.jsonl.gz`` file with a ``text`` field per line (C4 layout; one document each);
* a folder: every ``.txt``/``.jsonl``/``.jsonl.gz`` below it, sorted (sub-folders whose name
  mentions ``valid``/``validation``/``test`` are skipped so that a C4 sample folder never
  calibrates on held-out data);
* ``wikitext2:PATH`` — a raw WikiText-2 file read with the standard protocol: each line with its
  trailing newline is a row and rows are joined with ``"\\n\\n"``;
* ``wikitext2`` / ``c4`` — the Hugging Face datasets, through ``datasets`` (needs a network).

Calibration draws ``nsamples`` random windows of ``seqlen`` tokens with a seed (from documents
longer than ``seqlen`` tokens when the source has documents, as SparseGPT's C4 loader does).
Evaluation tokenizes the joined text once and uses non-overlapping windows.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..errors import DataError

Purpose = Literal["calib", "eval"]
SOURCE_KINDS = {
    "builtin": "offline English from CPython's pydoc_data.topics (calib/eval halves)",
    "FILE.txt|FILE.raw": "one plain-text file",
    "FILE.jsonl[.gz]": "documents from a 'text' field per line (C4 layout)",
    "FOLDER": "all .txt/.jsonl files below it (valid/test sub-folders skipped)",
    "wikitext2:PATH": "raw WikiText-2 file, rows joined with '\\n\\n' (standard protocol)",
    "wikitext2": "WikiText-2 raw via `datasets` (network)",
    "c4": "C4 en via `datasets` (network; calibration from train shard 0)",
}
_HELDOUT = ("valid", "validation", "test")


@dataclass
class TextSource:
    """Loaded text: one or more documents, plus a description for reports."""

    spec: str
    documents: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def joined(self) -> str:
        return "\n\n".join(self.documents)

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def gsm8k_documents(path: str | Path, limit: int | None = None) -> list[str]:
    """``Question: …\nAnswer: …`` documents of a question/answer JSON Lines file (GSM8K layout),
    at most ``limit``; a missing file, a bad line or no records is a one-line DataError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"gsm8k file {p} does not exist: pass gsm8k:PATH/train.jsonl")
    docs = []
    for rec in _jsonl_records(p, ("question", "answer"), "GSM8K"):
        docs.append(f"Question: {rec['question']}\nAnswer: {rec['answer']}")
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise DataError(f"gsm8k file {p} holds no records")
    return docs


def json_lines(path: str | Path, opener: Callable = open) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` of every non-empty line of a JSON Lines file (``.gz`` with
    ``opener=gzip.open``). Bytes that are not UTF-8, a line that is not JSON, or a truncated/corrupt
    ``.gz`` is a one-line DataError naming the file and line. The one JSON Lines reader of every
    room's data files (calibration sources, prompts, passages, reasoning questions)."""
    path = Path(path)
    ln = 0
    try:
        with opener(path, "rb") as f:
            for ln, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{ln} is not UTF-8 text ({raw[e.start:e.start + 1]!r} at column {e.start + 1}): "
                                    f"re-encode the file as UTF-8") from None  # fmt: skip
                if not line.strip():
                    continue
                try:
                    yield ln, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{ln} is not valid JSON ({e.msg}); expected JSON Lines") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path} is a truncated or corrupt gzip file after line {ln} ({_reason(e)}): "
                        f"download or compress it again") from None  # fmt: skip


def _jsonl_records(path: Path, fields: tuple[str, ...], layout: str, opener: Callable = open) -> Iterator[dict]:
    """The records of a JSON Lines file that carry string ``fields`` (see :func:`json_lines`)."""
    for ln, rec in json_lines(path, opener):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in fields):
            names = " and ".join(repr(k) for k in fields)
            raise DataError(f"{path}:{ln} has no string {names} field{'s' if len(fields) > 1 else ''} "
                            f"({layout} layout expected)")  # fmt: skip
        yield rec


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_jsonl(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    return [rec["text"] for rec in _jsonl_records(path, ("text",), "C4", opener)]


def _read_file(path: Path) -> list[str]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        return _read_jsonl(path)
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None


def _regular_file(p: Path, spec: str) -> None:
    """A FIFO, socket or device would block or never end: only regular files (and folders) are sources."""
    if not p.is_file():
        raise DataError(f"data source {spec!r} is not a regular file (a pipe, socket or device): "
                        f"write the text to a file first")  # fmt: skip


def _builtin(purpose: Purpose) -> TextSource:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    total = sum(len(t) for t in texts)
    acc, cut = 0, len(texts)
    for i, t in enumerate(texts):
        if acc >= total / 2:
            cut = i
            break
        acc += len(t)
    half = texts[:cut] if purpose == "calib" else texts[cut:]
    which = "first" if purpose == "calib" else "second"
    return TextSource("builtin", half, f"builtin (pydoc_data.topics, {which} half, {len(half)} topics)")


def _wikitext_file(spec: str) -> TextSource:
    if not spec.strip():
        raise DataError("wikitext2: needs the raw file's path after the colon, e.g. wikitext2:wikitext-2-raw/wiki.test.raw")
    path = Path(spec.strip()).expanduser()
    if path.is_dir():
        raws = sorted(q.name for q in path.glob("*.raw"))
        hint = f" (it holds {', '.join(raws)})" if raws else ""
        raise DataError(f"wikitext2:{spec} is a folder{hint}: give the file, e.g. wikitext2:{path / 'wiki.test.raw'}")
    if not path.exists():
        raise DataError(f"wikitext2 file {path} does not exist")
    _regular_file(path, f"wikitext2:{spec}")
    try:
        rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as e:
        raise DataError(f"wikitext2 file {path} is not UTF-8 text (byte {e.start}): re-encode it as UTF-8") from None
    # The standard protocol is "\n\n".join(rows): keep it as one document.
    return TextSource(f"wikitext2:{path}", ["\n\n".join(rows)], f"WikiText-2 raw {path.name} (rows joined with \\n\\n)")


def _hf_dataset(name: str, purpose: Purpose) -> TextSource:
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise DataError(
            f"source {name!r} needs the 'datasets' package and a network: pip install datasets, "
            f"or pass a local file (e.g. wikitext2:PATH/wiki.test.raw)"
        ) from None
    try:
        if name == "wikitext2":
            split = "test" if purpose == "eval" else "train"
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return TextSource(name, ["\n\n".join(ds["text"])], f"WikiText-2 raw {split} (datasets)")
        split = "validation" if purpose == "eval" else "train"
        fname = "en/c4-validation.00000-of-00008.json.gz" if purpose == "eval" else "en/c4-train.00000-of-01024.json.gz"
        ds = load_dataset("allenai/c4", data_files={split: fname}, split=split)
        return TextSource(name, list(ds["text"]), f"C4 en {split} ({fname}, datasets)")
    except Exception as e:
        raise DataError(
            f"could not load {name!r} with datasets ({str(e).splitlines()[0][:200]}); offline, pass "
            f"a local file instead"
        ) from None


def load_source(spec: str, purpose: Purpose = "calib") -> TextSource:
    """Load the documents of a SOURCE (see the module docstring)."""
    s = str(spec).strip()
    if not s:
        raise DataError(
            "data source is empty: use 'builtin', a .txt/.raw/.jsonl file, a folder, "
            "'wikitext2:PATH', 'wikitext2' or 'c4'"
        )
    if s == "builtin":
        src = _builtin(purpose)
    elif s.lower().startswith("wikitext2:"):
        src = _wikitext_file(s.split(":", 1)[1])
    elif s.lower() in ("wikitext2", "c4"):
        src = _hf_dataset(s.lower(), purpose)
    else:
        p = Path(s).expanduser()
        if not p.exists():
            raise DataError(
                f"data source {s!r} not found: use 'builtin', a .txt/.raw/.jsonl file, a folder, "
                f"'wikitext2:PATH', 'wikitext2' or 'c4'"
            )
        if not p.is_dir():
            _regular_file(p, s)
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.name.lower().endswith((".txt", ".raw", ".jsonl", ".jsonl.gz"))
                and not any(h in part.lower() for part in f.relative_to(p).parts[:-1] for h in _HELDOUT)
            )  # fmt: skip
            if not files:
                raise DataError(f"folder {p} holds no .txt/.raw/.jsonl files")
            docs = [d for f in files for d in _read_file(f)]
            src = TextSource(s, docs, f"{p} ({len(files)} files, {len(docs)} documents)")
        else:
            docs = _read_file(p)
            src = TextSource(s, docs, f"{p.name} ({len(docs)} document{'s' if len(docs) != 1 else ''})")
    src.documents = [d for d in src.documents if d.strip()]
    if not src.documents:
        raise DataError(f"data source {s!r} is empty: give a source with text in it")
    return src


def _encode(tokenizer, text: str) -> list[int]:
    # One tokenization of the whole text, as the SparseGPT/Wanda protocol does; silence the
    # "sequence longer than model max length" warning, which does not apply to windowing.
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def calibration_windows(
    source: str | TextSource,
    tokenizer,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
) -> Tensor:
    """Draw ``nsamples`` random windows of ``seqlen`` tokens: LongTensor ``[nsamples, seqlen]``.

    With several documents, windows come from documents longer than ``seqlen`` tokens (a random
    document, then a random start inside it). With one text (or when no document is long
    enough, e.g. short C4 documents at seqlen 2048 — they are then joined with blank lines), a
    random start in the whole token stream.
    """
    if nsamples < 1 or seqlen < 2:
        raise DataError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    src = load_source(source, "calib") if isinstance(source, str) else source
    rng = random.Random(seed)
    streams: list[list[int]] = []
    if len(src.documents) > 1:
        encoded = [_encode(tokenizer, d) for d in src.documents]
        streams = [ids for ids in encoded if len(ids) > seqlen]
    if not streams:
        ids = _encode(tokenizer, src.joined)
        if len(ids) <= seqlen:
            raise DataError(
                f"calibration source {src.spec!r} has only {len(ids)} tokens; need more than "
                f"--seqlen {seqlen}: use a larger source or a smaller --seqlen"
            )
        streams = [ids]
    out = torch.empty(nsamples, seqlen, dtype=torch.long)
    for i in range(nsamples):
        ids = streams[rng.randrange(len(streams))]
        start = rng.randrange(len(ids) - seqlen)  # reference loaders: randint(0, len - seqlen - 1)
        out[i] = torch.tensor(ids[start : start + seqlen])
    return out


def eval_token_ids(source: str | TextSource, tokenizer) -> Tensor:
    """Tokenize the joined evaluation text once: LongTensor ``[1, N]``."""
    src = load_source(source, "eval") if isinstance(source, str) else source
    ids = tokenizer(src.joined, verbose=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long)

