"""Work with refiner weights files: interpolate two of them (WiSE-FT / model soup).

    samsr weights average BASE.pt TUNED.pt --alpha 0.5 --out OUT.pt --model samsr_v21_mnv2
    python -m jobs.weights average ...

``average`` writes ``(1 - alpha) * BASE + alpha * TUNED`` for every floating-point tensor (integer
counters from TUNED) in the official key format, checks with ``--model`` that the result loads
strictly into that architecture, and prints its sha256 (first 16 hex). Both files must be of one
model and should share an init (a model and its fine-tuned descendant, or two runs from one
init); averaging unrelated weights gives a broken model. Exit status: 0, 2 on a bad argument or
a checkpoint that cannot be read or does not match.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "average", "main"]


def build_parser(prog: str = "samsr weights") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Work with refiner weights files.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("average",
                       help="(1 - alpha) * BASE + alpha * TUNED, tensor by tensor (WiSE-FT / soup)",
                       description="Interpolate two weights files of one model in weight space: "
                       "(1 - alpha) * BASE + alpha * TUNED for every floating-point tensor.")
    a.add_argument("base", metavar="BASE", help="weights file (path or fsspec URL); alpha 0 gives it back")
    a.add_argument("tuned", metavar="TUNED", help="weights file of the same model; alpha 1 gives it back")
    a.add_argument("--alpha", type=float, default=0.5, help="weight of TUNED, in [0, 1] (default 0.5)")
    a.add_argument("--out", required=True, metavar="URI", help="where to write the result (official keys)")
    a.add_argument("--model", metavar="NAME",
                   help="check that the result loads strictly into this registered model "
                   "(e.g. samsr_v21_mnv2)")
    return p


def average(base: str, tuned: str, alpha: float, out: str, model: str | None = None) -> str:
    """Write the interpolation of ``base`` and ``tuned`` to ``out``; returns its sha256 (16 hex).
    Raises CheckpointError (a ValueError) naming the file and key that do not match."""
    from pipeline.io.weights import checkpoint_hash, read_state_dict, save_checkpoint
    from pipeline.models import build_model
    from pipeline.models.checkpoint import interpolate_state_dicts, load_weights

    mixed = interpolate_state_dicts(read_state_dict(base), read_state_dict(tuned), alpha, (base, tuned))
    if model is not None:
        load_weights(build_model(model), mixed, source=f"average of {base} and {tuned}")
    save_checkpoint(mixed, out)
    return checkpoint_hash(out)


def main(argv: Sequence[str] | None = None, prog: str = "samsr weights") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha: must be in [0, 1], got {args.alpha}")
    try:
        digest = average(args.base, args.tuned, args.alpha, args.out, args.model)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: (1 - {args.alpha:g}) * {args.base} + {args.alpha:g} * {args.tuned}, "
          f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
