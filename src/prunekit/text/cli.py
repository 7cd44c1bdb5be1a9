"""``prunekit segment FILE --unit sentence|topic``: character spans of a UTF-8 text file."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..errors import ConfigError, DataError

PREVIEW = 80
MAX_TOPIC_CHARS = 16_000_000  # topic segmentation reads the whole text (sentences stream)


def register(sub) -> None:
    p = sub.add_parser("segment", help="sentence or topic spans (character offsets) of a text file")
    p.add_argument("file", help="UTF-8 text file")
    p.add_argument("--unit", default="sentence", help="sentence (default) | topic")
    p.add_argument("--method", "-m", default=None,
                   help="sentence: auto (default: sat if installed, else rules) | rules | sat; topic: pairs (default) | tiling")
    p.add_argument("--threshold", type=float_flag(0, 1), default=None,
                   help="sat, pairs: boundary probability at or above which a unit ends (default: the trained head's); tiling: depth score (default mean - std/2)")
    p.add_argument("--k", type=int_flag(1), default=None, help="topic: exactly this many boundaries (top-k) instead of a threshold")
    p.add_argument("--out", "-o", default=None, help="also write the spans as JSON lines to this new file (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print a JSON summary (with the spans unless --out) as the last line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no span lines")
    p.set_defaults(_handler=cmd_segment)


def cmd_segment(args) -> dict[str, Any]:
    from . import SENTENCE_METHODS, TOPIC_METHODS, _unknown, iter_sentences, resolve_method, topics
    from .io import check_file, iter_blocks, read_text

    if args.unit not in ("sentence", "topic"):
        raise ConfigError(f"--unit {args.unit!r}: use sentence or topic")
    if args.unit == "sentence":
        method = resolve_method(args.method or "auto")
        if args.k is not None:
            raise ConfigError("--k applies to --unit topic only")
    else:
        method = args.method or "pairs"
        if method not in TOPIC_METHODS:
            raise _unknown("topic", method, TOPIC_METHODS)
        if args.k is not None and args.threshold is not None:
            raise ConfigError("give --k or --threshold, not both")
    out = None
    if args.out is not None:  # refused before any work: empty, a folder, the input, an existing file
        from ..export.hf import check_output_file

        out = check_output_file(args.out, overwrite=args.overwrite, protect=[args.file])
    n_chars = check_file(args.file)  # one streaming pass: nothing is printed for a bad file
    if args.unit == "topic" and n_chars > MAX_TOPIC_CHARS:
        raise DataError(f"segment: --unit topic reads the whole text and {args.file} has {n_chars:,} characters "
                        f"(limit {MAX_TOPIC_CHARS:,}); split it, or use --unit sentence, which streams")
    t0, c0 = time.perf_counter(), time.process_time()
    progress = not (args.quiet or args.json) and sys.stderr.isatty()
    if args.unit == "sentence":
        if method == "sat":
            from .sat import SatSegmenter

            SatSegmenter.load()  # a missing encoder package fails here, before any output
        spans_iter = iter_sentences(iter_blocks(args.file), method, threshold=args.threshold,
                                    progress=progress, total=n_chars)
    else:
        spans_iter = iter(topics(read_text(args.file), method, threshold=args.threshold, k=args.k, progress=progress))
    show = not (args.quiet or args.json)
    spans, n = [], 0
    preview = _Previewer(args.file) if show else None
    with contextlib.ExitStack() as stack:
        fh = None
        if out is not None:
            from ..export.hf import atomic_file

            fh = stack.enter_context(atomic_file(out))  # renamed into place only if all succeeds
        for s in spans_iter:
            n += 1
            if fh is not None:
                fh.write(json.dumps(s.to_dict()) + "\n")
            elif args.json:
                spans.append(s.to_dict())
            if preview is not None:
                print(f"{s.start}\t{s.end}\t{s.score:.3f}\t{preview.get(s)}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res: dict[str, Any] = {"file": str(args.file), "unit": args.unit, "method": method, "chars": n_chars,
                           "spans_count": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    if out is not None:
        res["out"] = str(out)
    elif args.json:
        res["spans"] = spans
    if not args.json and not args.quiet:
        print(f"{n} {args.unit} spans over {n_chars} characters ({method}, {wall:.2f} s)", file=sys.stderr)
    return res


class _Previewer:
    """The first characters of each span, read from the file as the spans arrive (in order)."""

    def __init__(self, path) -> None:
        from .io import iter_blocks

        self._it = iter_blocks(path)
        self._buf, self._base = "", 0

    def get(self, s) -> str:
        while self._base + len(self._buf) < min(s.end, s.start + PREVIEW):
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._buf += nxt
        a = s.start - self._base
        t = self._buf[a : a + min(PREVIEW, s.end - s.start)]
        cut = max(0, a - 1)
        self._buf, self._base = self._buf[cut:], self._base + cut
        t = t.replace("\n", " ").replace("\t", " ").replace("\r", " ")
        return t + ("..." if s.end - s.start > PREVIEW else "")
