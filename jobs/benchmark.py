"""Benchmarks: the refiner's decoding modes and optimisations, the SAM stage, refinement quality.

    samsr benchmark refiner --help
    samsr benchmark sam --help
    samsr benchmark quality --help
    samsr benchmark proposals --help
    samsr benchmark relabel --help
    samsr benchmark pipeline --help
    samsr benchmark gpu --help
    samsr benchmark memory --help
    python -m jobs.benchmark refiner [ARGS...]

Dispatches to ``pipeline.bench.refiner.main(argv)`` and ``pipeline.bench.sam.main(argv)``,
which own their arguments and output.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = {
    "refiner": ("pipeline.bench.refiner", "refiner speed/memory/accuracy per decoding mode and optimisation"),
    "sam": ("pipeline.bench.sam", "SAM automatic mask generation: stock vs fast generator"),
    "proposals": ("pipeline.bench.proposals", "regions proposals vs the refiner's time on the same images"),
    "quality": ("pipeline.bench.quality", "coarse vs refined IoU/mBA/BIoU per coarse kind on held-out data"),
    "trust": ("pipeline.bench.trust", "does the trust score rank refined masks; does do-no-harm hold"),
    "relabel": ("pipeline.bench.relabel", "relabel at scale: planning a 10k-image COCO file, worker memory"),
    "pipeline": ("pipeline.bench.pipeline", "the Ray pipeline vs a bare loop of its stages; 1 vs 2 workers"),
    "gpu": ("pipeline.bench.gpu", "one card: refiner fp32 vs bf16, SAM stock vs fast, the whole pipeline"),
    "memory": ("pipeline.bench.memory", "one refinement's peak RSS and time, tiled vs untiled encoder"),
}


def build_parser(prog: str = "samsr benchmark") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run a benchmark. Arguments after the name go to the benchmark; "
        f"'{prog} NAME --help' shows them.",
        epilog="\n".join(f"  {k:<8} {v[1]}" for k, v in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    return p


def main(argv: list[str] | None = None, prog: str = "samsr benchmark") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BENCHMARKS:  # pass everything after the name through, --help included
        name, rest = argv[0], argv[1:]
    else:
        args = build_parser(prog).parse_args(argv)
        name, rest = args.name, args.args
    module = importlib.import_module(BENCHMARKS[name][0])
    code = module.main(rest)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
