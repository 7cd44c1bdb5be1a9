"""argparse value types that range-check numbers, shared by every subcommand (one line on error)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

MAX_COUNT = 1 << 20  # nsamples / seqlen / windows: far beyond any real value, catches typos


def note(msg: str) -> None:
    """A ``prunekit: note: ...`` line on stderr (not an error)."""
    print(f"prunekit: note: {msg}", file=sys.stderr, flush=True)


def int_flag(lo: int, hi: int = MAX_COUNT) -> Any:
    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range: it must be an integer from {lo} to {hi}")
        return v

    parse.__name__ = "integer"
    return parse


def float_flag(lo: float, hi: float, *, lo_open: bool = True) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            side = ">" if lo_open else ">="
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be a number {side} {lo:g} and <= {hi:g}")
        return v

    parse.__name__ = "number"
    return parse
