"""The human review loop with Label Studio (no Ray; details in docs/review.md).

    samsr review export OUT --to label-studio --worst 50 --dest review/
    samsr review export OUT --to label-studio --sample 200 --seed 1 --dest review/
    samsr review export OUT --to label-studio --where "category_id = 3" --dest review/
    samsr review export OUT --to fiftyone --worst 200 --dest review-fo/
    samsr review import OUT --from label-studio review/export.json
    LABEL_STUDIO_API_KEY=... samsr review import OUT --from label-studio \\
        http://localhost:8080/api/projects/1/export?exportType=JSON

``export`` writes DEST/tasks.json (one task per object: the image URL, the coarse and refined
masks as pre-annotations, the manifest keys) and DEST/config.xml (the labeling config), or with
``--to fiftyone`` a FiftyOne dataset directory (samples.json, metadata.json, masks/).
``import`` replaces the refined masks by the reviewers' (masks, COCO annotations, label maps)
and appends manifest rows with source = human; a bad task is named and the others go on
(exit status 1 when any task failed).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def build_parser(prog: str = "samsr review") -> argparse.ArgumentParser:
    from pipeline.query import WORST_BY
    from pipeline.review.loop import TOOLS

    p = argparse.ArgumentParser(prog=prog, description="Send the least-trusted masks of a finished job to "
                                "Label Studio and bring the reviewers' corrections back.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write Label Studio tasks (and the labeling config) or a FiftyOne "
                       "dataset for chosen objects")
    e.add_argument("prefix", metavar="OUT", help="the job's output prefix (samsr refine or samsr relabel)")
    e.add_argument("--to", choices=list(TOOLS), required=True,
                   help="label-studio: tasks with pre-annotations; fiftyone: a dataset to sort and filter "
                   "in its app")
    e.add_argument("--dest", required=True, metavar="DIR",
                   help="where to write tasks.json and config.xml (label-studio) or the dataset (fiftyone)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--worst", type=int, metavar="N", help="the N worst objects (see --by)")
    g.add_argument("--sample", type=int, metavar="N", help="N objects drawn at random (see --seed)")
    g.add_argument("--where", metavar="SQL", help="objects whose latest manifest row matches a SQL condition")
    e.add_argument("--by", choices=["auto", *sorted(WORST_BY)], default="auto",
                   help="ranking for --worst (auto: trust score if any, else mBA gain with ground truth, "
                   "else change: the most changed first)")
    e.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    e.add_argument("--local-root", default="/", metavar="DIR",
                   help="local images become /data/local-files/?d=<path under DIR>: Label Studio's "
                   "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default /)")
    e.add_argument("--presign", type=int, metavar="SECONDS",
                   help="S3 images as presigned HTTPS URLs valid this long (default: s3:// URIs as they are, "
                   "for a project with S3 storage)")
    i = sub.add_parser("import", help="replace refined masks by the reviewers' from a Label Studio export")
    i.add_argument("prefix", metavar="OUT", help="the job's output prefix")
    i.add_argument("--from", dest="source_tool", choices=["label-studio"], required=True,
                   help="the annotation tool")
    i.add_argument("export", metavar="EXPORT_JSON_OR_URL",
                   help="a JSON export file, or the project's export URL "
                   "(http://HOST/api/projects/ID/export?exportType=JSON; key in LABEL_STUDIO_API_KEY)")
    i.add_argument("--reviewer", help="name the reviewer (default: the annotation's user in Label Studio)")
    return p


def main(argv: list[str] | None = None, prog: str = "samsr review") -> int:
    args = build_parser(prog).parse_args(argv)
    from pipeline.review import export_review, import_review

    try:
        if args.action == "export":
            res = export_review(args.prefix, args.dest, to=args.to, worst=args.worst, by=args.by,
                                sample=args.sample, seed=args.seed, where=args.where,
                                local_root=args.local_root, presign_seconds=args.presign)
            for line in res.skipped:
                print(f"{prog}: left out {line}", file=sys.stderr)
            items, extra = ("samples", "metadata") if args.to == "fiftyone" else ("tasks", "labeling config")
            print(f"{res.tasks} {items} ({res.chosen}) -> {res.items_uri}\n{extra} -> {res.config_uri}")
            return 0
        res = import_review(args.prefix, args.export, api_key=os.environ.get("LABEL_STUDIO_API_KEY"),
                            reviewer=args.reviewer)
    except Exception as e:  # noqa: BLE001 - storage, SQL and HTTP errors are user-facing here
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for line in res.errors:
        print(f"{prog}: {line}", file=sys.stderr)
    print(f"{len(res.corrected)} corrected, {len(res.errors)} failed, {res.unreviewed} not reviewed"
          + (f"; manifest rows -> {res.manifest_part}" if res.manifest_part else ""))
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
