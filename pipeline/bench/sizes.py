"""Image sizes on the benchmarks' command lines: ``WxH`` or a name of the benchmark's own table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

__all__ = ["parse_size", "LARGE_SIZES"]

#: The memory benchmarks' sizes (``samsr benchmark memory``, its ``--stages``): 4:3 images of 3 to
#: 192 MP (16k = 16000x12000, the default ``input.max_pixels``).
LARGE_SIZES = {"2k": (2000, 1500), "4k": (4000, 3000), "8k": (8000, 6000), "16k": (16000, 12000)}


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
