"""Re-label multi-object annotations at full resolution on Ray: COCO instances or label maps.

COCO instances (polygons / RLE, possibly drawn on a smaller copy of each image)::

    samsr relabel --coco s3://bucket/ann/instances_val.json --images s3://bucket/val2017 \\
        --output s3://bucket/relabeled/val
    # -> s3://bucket/relabeled/val/instances_val.json (segmentation = refined compressed RLE)

Semantic label maps (NAME_im.jpg + NAME_seg.png of class ids; palette PNGs keep their palette)::

    samsr relabel --labelmaps s3://bucket/voc-style --output s3://bucket/relabeled/voc
    # -> s3://bucket/relabeled/voc/labels/NAME.png at the image's full size

Without --config the defaults are configs/relabel.yaml (the shipped SAM-SR-v2.1 weights with
regions proposals). Rerunning the same command resumes (images with an ok row are skipped).
Exit status as for samsr refine: 0 done, 2 bad config / unreadable annotation file, 3 with
--fail-on-error and failed images or objects, 4 stalled, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "config_from_args", "run", "main", "DEFAULT_CONFIG"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "relabel.yaml"

_FLAG_KEYS = {
    "coco": "relabel.coco",
    "images": "input.uri",
    "labelmaps": "input.uri",
    "gt_coco": "relabel.gt_coco",
    "scale": "relabel.scale",
    "output_name": "relabel.output_name",
    "output": "output.prefix",
    "limit": "input.limit",
    "method": "method",
    "model": "model.name",
    "checkpoint": "model.checkpoint",
    "proposals": "sam.proposals",
    "sam_model": "sam.model_type",
    "sam_checkpoint": "sam.checkpoint",
    "device": "refine.device",
    "address": "ray.address",
    "job_id": "job_id",
}


def build_parser(prog: str = "samsr relabel") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Re-label COCO instances or semantic label maps at full resolution: each object is\n"
        "refined in a window around it (proposals once per image) and written back in the input's\n"
        "format. Manifest rows: one per object plus one per image, under OUTPUT/manifest.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --config the defaults come from configs/relabel.yaml; keys are documented in "
        "configs/default.yaml (section relabel). Rerunning resumes per image.",
    )
    p.add_argument("--config", "-c", metavar="YAML", help="job config file (default configs/relabel.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set relabel.min_size=384; repeatable")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--coco", metavar="JSON", help="COCO instances file to re-label (relabel.coco)")
    src.add_argument("--images", metavar="URI",
                     help="with --coco: prefix the images' file_name is relative to")
    src.add_argument("--labelmaps", metavar="URI",
                     help="label maps in the prefix layout: NAME_im.jpg, NAME_seg.png (class ids), "
                     "NAME_gt.png")
    p.add_argument("--gt-coco", metavar="JSON",
                   help="ground truth COCO (same annotation ids): per-instance metrics")
    p.add_argument("--scale", type=float, metavar="S",
                   help="full size / annotation size (default: from each image record's width/height)")
    p.add_argument("--output", metavar="PREFIX", help="output prefix (output.prefix)")
    p.add_argument("--output-name", metavar="NAME", help="output COCO file name (default: the input's)")
    p.add_argument("--limit", type=int, metavar="N", help="label maps: only the first N samples")
    p.add_argument("--method", choices=["crm", "samsr-v2.1"], help="refinement method")
    p.add_argument("--model", metavar="NAME", help="refiner registry name (model.name)")
    p.add_argument("--checkpoint", metavar="URI", help="refiner checkpoint (model.checkpoint)")
    p.add_argument("--proposals", choices=["sam", "regions"], help="proposal source of samsr-v2.1")
    p.add_argument("--sam-model", metavar="TYPE", help="SAM type (sam.model_type)")
    p.add_argument("--sam-checkpoint", metavar="URI", help="SAM checkpoint (sam.checkpoint)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="refiner/SAM device (refine.device)")
    p.add_argument("--address", metavar="ADDR", help="Ray address (default $RAY_ADDRESS or a local Ray)")
    p.add_argument("--job-id", metavar="ID",
                   help="job id recorded in the manifest (default: from the output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--fail-on-error", action="store_true", help="exit 3 if any image or object failed")
    return p


def config_from_args(args: argparse.Namespace):
    """Config file (default configs/relabel.yaml) + flags + --set -> validated config."""
    from pipeline.config import load_config
    from pipeline.config.typed import parse_override

    if args.coco and args.labelmaps:
        raise ValueError("--coco and --labelmaps: give one input kind")
    if args.images and not args.coco:
        raise ValueError("--images: only with --coco (label maps take --labelmaps)")
    overrides: list[tuple[list[str], Any]] = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key.split("."), value))
    if args.no_progress:
        overrides.append((["ray", "progress"], False))
    overrides.extend(parse_override(text) for text in args.overrides)
    cfg = load_config(args.config or str(DEFAULT_CONFIG), overrides)
    ckpt = cfg.model.checkpoint
    relative = bool(ckpt) and "://" not in ckpt and not os.path.isabs(ckpt)
    if args.config is None and relative and not os.path.exists(ckpt):
        # the default config's shipped weights, wherever the command runs from
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(ROOT / ckpt)))
    return cfg


def run(cfg):
    """Check, then run; returns pipeline.runner.relabel.RelabelResult."""
    from pipeline.config.preflight import check_relabel
    from pipeline.runner.relabel import run_relabel

    check_relabel(cfg)
    return run_relabel(cfg)


def main(argv: list[str] | None = None, prog: str = "samsr relabel") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.print_config:
            from pipeline.config import config_to_dict

            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        from pipeline.config.preflight import check_relabel

        check_relabel(cfg)
    except ValueError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    from pipeline.runner.progress import JobStalledError
    from pipeline.runner.relabel import format_relabel, run_relabel

    try:
        result = run_relabel(cfg)
    except ValueError as e:  # the annotation file or input could not be read: nothing processed
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except JobStalledError as e:
        print(f"{prog}: error: job stalled: {e}", file=sys.stderr)
        return 4
    print(format_relabel(result))
    failed = result.summary["error"] or result.error
    return 3 if args.fail_on_error and failed else 0


if __name__ == "__main__":
    sys.exit(main())
