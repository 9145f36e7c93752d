"""Image sizes on the benchmarks' command lines: ``WxH`` or a name of the benchmark's own table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

__all__ = ["parse_size"]


def parse_size(text: str, named: Mapping[str, tuple[int, int]] | None = None, minimum: int = 1
               ) -> tuple[int, int]:
    """(width, height) of ``text``: a key of ``named`` or ``WxH`` with both sides >= ``minimum``
    (argparse.ArgumentTypeError otherwise, naming the text)."""
    named = named or {}
    if text in named:
        return named[text]
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        choices = f" or one of {sorted(named)}" if named else ""
        raise argparse.ArgumentTypeError(f"size {text!r}: use WxH{choices}") from exc
    if width < minimum or height < minimum:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least {minimum}x{minimum}")
    return width, height
