"""Evaluate a refine or relabel job from its outputs: the thesis-style table of coarse vs refined.

    samsr evaluate ./out/demo
    samsr evaluate s3://bucket/runs/big --job-id big-1a2b3c4d --json
    samsr evaluate ./out/coco --coco-gt gt/instances_val.json     # relabel: COCO mask AP before/after
    samsr evaluate ./out/voc --labelmaps                           # relabel: mIoU / mBA before/after
    python -m jobs.evaluate ./out/demo

Uses the latest row per sample (a resumed job counts each sample once). Dataset IoU is total
intersection over total union over all images with ground truth; mBA and Boundary IoU are
means over images (DESIGN 3). Without ground truth it reports the coarse-vs-refined change.
For a relabel job the table is over its objects (instances or classes), not its image rows.
Exit status: 0, 1 when the manifest has no rows, 2 when --coco-gt / --labelmaps cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["build_parser", "run", "main"]


def build_parser(prog: str = "samsr evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Dataset IoU and mean mBA / Boundary IoU of coarse vs refined masks, "
        "from a job's manifest; for relabel jobs also COCO mask AP or mIoU before and after.",
    )
    p.add_argument(
        "prefix", metavar="OUTPUT_PREFIX", help="the job's output prefix (local or fsspec URL)"
    )
    p.add_argument(
        "--job-id", metavar="ID", help="only rows of this job id (default: all rows under the prefix)"
    )
    p.add_argument("--coco-gt", metavar="JSON",
                   help="relabel (COCO) output: mask AP (pycocotools) and instance IoU / mBA / BIoU of the "
                   "input and of the output annotations against this ground truth")
    p.add_argument("--labelmaps", action="store_true",
                   help="relabel (label maps) output: mIoU and mBA of the input and of the output label "
                   "maps against their ground truth (NAME_gt.png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def run(prefix: str, job_id: str | None = None) -> dict:
    """Summary dict of the manifest under ``prefix`` (pipeline.summary.summarize_manifest); for
    a relabel job, of its object rows (instances / classes); ``unit`` says which rows were counted
    (images, instances, classes or objects)."""
    import pyarrow.compute as pc

    from pipeline.io import read_manifest
    from pipeline.summary import summarize_manifest

    table = read_manifest(prefix)
    unit = "images"
    if table.num_rows and pc.any(pc.is_valid(table.column("row_kind"))).as_py():
        table = table.filter(pc.invert(pc.fill_null(pc.equal(table.column("row_kind"), "image"), False)))
        kinds = set(table.column("row_kind").to_pylist()) - {None}
        unit = {frozenset({"instance"}): "instances", frozenset({"class"}): "classes"}.get(
            frozenset(kinds), "objects")
    return {**summarize_manifest(table, job_id=job_id), "unit": unit}


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _format_relabel(extra: dict) -> str:
    lines = []
    if "ap" in extra:
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
        head = f"{'COCO mask':<10}" + "".join(f"{k:>8}" for k in keys)
        lines += [head, "-" * len(head)]
        for tag in ("before", "after"):
            lines.append(f"{tag:<10}" + "".join(f"{_pct(extra['ap'][tag][k]):>8}" for k in keys))
        n = extra["instances"]
        lines += ["", f"{'instances':<10} {'IoU %':>8} {'mBA %':>8} {'BIoU %':>8}   (over {n} with gt)"]
        for tag in ("before", "after"):
            t = extra[tag]
            vals = [None if t[k] is None else 100 * t[k] for k in ("dataset_iou", "mean_mba", "mean_biou")]
            lines.append(f"{tag:<10} " + " ".join(f"{_pct(v):>8}" for v in vals))
        left = extra["left_out"]
        if left["before"] or left["after"]:
            lines.append(f"annotations that could not be decoded: input {left['before']}, "
                         f"output {left['after']}")
    else:
        head = f"{'label maps':<10} {'mIoU %':>8} {'mBA %':>8}   (over {extra['images']} images with gt)"
        lines += [head, "-" * len(head)]
        for tag in ("before", "after"):
            lines.append(f"{tag:<10} {_pct(extra[tag]['miou']):>8} {_pct(extra[tag]['mean_mba']):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "samsr evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    summary = run(args.prefix, args.job_id)
    extra = None
    try:
        if args.coco_gt:
            from pipeline.relabel.quality import coco_quality

            extra = coco_quality(args.prefix, args.coco_gt)
        elif args.labelmaps:
            from pipeline.relabel.quality import labelmap_quality

            extra = labelmap_quality(args.prefix, args.job_id)
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**summary, **({"relabel": extra} if extra else {})}, indent=2, default=str))
    else:
        from pipeline.summary import format_counts, format_quality_table

        errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["error_types"].items())) or "-"
        print(
            format_counts(
                [
                    ("manifest", args.prefix),
                    ("methods", ", ".join(summary["methods"]) or "-"),
                    ("samples", f"{summary['samples']} (ok {summary['ok']}, failed {summary['error']})"),
                    ("failures by type", errors),
                ]
            )
        )
        print()
        print(format_quality_table(summary, unit=summary["unit"]))
        if extra:
            print()
            print(_format_relabel(extra))
    if summary["samples"] == 0:
        print(f"{prog}: no manifest rows under {args.prefix}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
