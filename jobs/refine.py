"""Refine a dataset of coarse masks on Ray: masks plus a Parquet manifest under the output prefix.

The README's demo (bundled samples, local Ray started in-process, local files)::

    samsr refine --config configs/demo.yaml

Any input/output fsspec URL, overrides on the command line::

    samsr refine --config configs/default.yaml --input s3://bucket/big/test --output s3://bucket/runs/big \\
        --checkpoint s3://bucket/weights/crm.pth --set refine.decode=strided --set refine.stride=4
    python -m jobs.refine --config configs/demo.yaml --method crm

On a cluster (the job's driver connects through RAY_ADDRESS, which ``ray job submit`` sets)::

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m jobs.refine --config configs/x.yaml

Rerunning the same command resumes: samples with an ``ok`` row are skipped.
Exit status: 0 when the job finished (with or without error rows; see --fail-on-error),
2 for a bad configuration or an input that cannot be listed (nothing was processed), 3 with
--fail-on-error and error rows, 4 when the job stalled (no sample finished for
ray.stall_timeout_s; finished rows are written, a rerun resumes), 143 after SIGTERM (rows the
driver held are written first).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["build_parser", "config_from_args", "run", "main"]

# flag -> config key path
_FLAG_KEYS = {
    "input": "input.uri",
    "layout": "input.layout",
    "limit": "input.limit",
    "output": "output.prefix",
    "method": "method",
    "model": "model.name",
    "checkpoint": "model.checkpoint",
    "sam_model": "sam.model_type",
    "sam_checkpoint": "sam.checkpoint",
    "proposals": "sam.proposals",
    "decode": "refine.decode",
    "stride": "refine.stride",
    "device": "refine.device",
    "address": "ray.address",
    "job_id": "job_id",
}


def build_parser(prog: str = "samsr refine") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Refine coarse masks with CRM / SAM-SR on Ray. Writes <output>/masks/*.png and the\n"
        "Parquet manifest <output>/manifest/part-*.parquet, then prints a summary.\n"
        "Rerunning the same job resumes: samples with an ok row are skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Keys of the config file are documented in configs/default.yaml. Flags override the file, "
        "--set overrides both.\n\nExit status: 0 finished (error rows included, see --fail-on-error); 2 bad "
        "config or unlistable input; 3 error rows with --fail-on-error; 4 stalled (no sample finished for "
        "ray.stall_timeout_s; rows written, rerun resumes); 143 SIGTERM (rows written first).",
    )
    p.add_argument("--config", "-c", metavar="YAML", help="job config file (path or fsspec URL)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set refine.decode=strided (value parsed as YAML); repeatable",
    )
    p.add_argument("--input", metavar="URI", help="input samples (input.uri)")
    p.add_argument("--layout", choices=["prefix", "webdataset", "list"], help="input layout (input.layout)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N listed samples (input.limit)")
    p.add_argument("--output", metavar="PREFIX", help="output prefix for masks and manifest (output.prefix)")
    p.add_argument("--soft", action="store_true", default=None, help="also write soft masks (output.soft)")
    p.add_argument("--method", choices=["crm", "samsr-v1", "samsr-v2.1"], help="refinement method")
    p.add_argument("--model", metavar="NAME", help="refiner registry name (model.name)")
    p.add_argument("--checkpoint", metavar="URI", help="refiner checkpoint (model.checkpoint)")
    p.add_argument("--sam-model", metavar="TYPE", help="SAM type: vit_h, vit_l, vit_b, tiny (sam.model_type)")
    p.add_argument("--sam-checkpoint", metavar="URI", help="SAM checkpoint (sam.checkpoint)")
    p.add_argument("--proposals", choices=["sam", "regions"],
                   help="proposal source of the samsr methods (sam.proposals): sam needs --sam-checkpoint; "
                   "regions (a classical segmentation, no weights) is the default without one")
    p.add_argument(
        "--decode", choices=["full", "strided", "bbox", "contour"], help="decoding mode (refine.decode)"
    )
    p.add_argument("--stride", type=int, metavar="N", help="stride for --decode strided (refine.stride)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="refiner/SAM device (refine.device)")
    p.add_argument(
        "--address", metavar="ADDR", help="Ray address (ray.address; default $RAY_ADDRESS or local)"
    )
    p.add_argument(
        "--job-id", metavar="ID", help="job id recorded in the manifest (default: from the output)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--fail-on-error", action="store_true", help="exit with status 3 if any sample failed")
    p.add_argument("--report", action="store_true",
                   help="at the end, write the HTML report (samsr report) to OUTPUT/report")
    return p


def config_from_args(args: argparse.Namespace):
    """Config file + flags + --set overrides -> validated RefineJobConfig (ValueError names the key)."""
    from pipeline.config import load_config
    from pipeline.config.typed import parse_override

    overrides: list[tuple[list[str], Any]] = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key.split("."), value))
    if args.soft:
        overrides.append((["output", "soft"], True))
    if args.no_progress:
        overrides.append((["ray", "progress"], False))
    overrides.extend(parse_override(text) for text in args.overrides)
    return load_config(args.config, overrides)


def run(cfg):
    """Check what the job needs, then run it; returns pipeline.runner.refine.RunResult. Raises
    ValueError (bad config, unlistable input: nothing processed) or JobStalledError."""
    from pipeline.config.preflight import check_runtime
    from pipeline.runner.refine import run_refine

    check_runtime(cfg)
    return run_refine(cfg)


def main(argv: list[str] | None = None, prog: str = "samsr refine") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.print_config:
            from pipeline.config import config_to_dict

            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        from pipeline.config.preflight import check_runtime

        check_runtime(cfg)
    except ValueError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    from pipeline.runner.progress import JobStalledError
    from pipeline.runner.refine import format_run

    try:
        result = run(cfg)
    except ValueError as e:  # the input could not be listed: nothing was processed
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except JobStalledError as e:  # finished rows are flushed; a rerun resumes
        print(f"{prog}: error: job stalled: {e}", file=sys.stderr)
        return 4
    print(format_run(result))
    if args.report:
        from pipeline.report import build_report

        print(f"report: {build_report(cfg.output.prefix, progress=cfg.ray.progress)}")
    return 3 if args.fail_on_error and result.summary["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
