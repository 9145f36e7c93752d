"""The ``samsr`` command: one subcommand per job, each also runnable as ``python -m jobs.X``.

    samsr refine --config configs/demo.yaml      # refine a dataset on Ray (jobs.refine)
    samsr relabel --coco a.json --images DIR --output OUT   # re-label COCO / label maps (jobs.relabel)
    samsr evaluate ./out/demo                    # coarse vs refined table (jobs.evaluate)
    samsr query ./out/demo --summary             # SQL over manifests (jobs.query)
    samsr report ./out/demo                      # HTML report with overlays (jobs.report)
    samsr benchmark refiner                      # benchmarks (jobs.benchmark)
    samsr train --help                           # train the refiner (jobs.train)
    samsr weights average A.pt B.pt --out C.pt   # interpolate two weights files (jobs.weights)
    samsr review export OUT --to label-studio --worst 50 --dest DIR   # human review (jobs.review)

``samsr COMMAND --help`` shows each command's options.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "refine": ("jobs.refine", "refine coarse masks on Ray: masks + Parquet manifest, resumable"),
    "relabel": ("jobs.relabel", "re-label COCO instances or label maps at full resolution on Ray"),
    "evaluate": ("jobs.evaluate", "dataset IoU / mBA of coarse vs refined masks from a manifest"),
    "query": ("jobs.query", "SQL over manifests with DuckDB (--summary, --worst N, --failures)"),
    "report": ("jobs.report", "static HTML report: overlays, plots, worst/best samples, failures"),
    "benchmark": ("jobs.benchmark", "benchmarks: 'samsr benchmark refiner' or 'samsr benchmark sam'"),
    "train": ("jobs.train", "train the refiner (Ray Train)"),
    "weights": ("jobs.weights", "weights files: 'samsr weights average' (WiSE-FT / model soup)"),
    "review": ("jobs.review", "human review in Label Studio: export tasks, import the corrected masks"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="samsr",
        description="SAM-guided refinement of high-resolution segmentation masks,\n"
        "as a batch pipeline on Ray.",
        epilog="Run 'samsr COMMAND --help' for a command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, or an error naming the valid commands
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        if "prog" in inspect.signature(module.main).parameters:
            code = module.main(argv[1:], prog=f"samsr {argv[0]}")
        else:
            code = module.main(argv[1:])
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): quiet, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
