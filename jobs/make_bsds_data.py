"""Hand-drawn object masks of real photographs from BSDS500's human segmentations.

    python -m jobs.make_bsds_data --bsds /path/to/BSDS500/data --split test --out B/test

BSDS500 (Arbelaez, Maire, Fowlkes, Malik, TPAMI 2011; a mirror is github.com/BIDS/BSDS500) has
500 photographs (481x321) with about five hand-drawn segmentations each, split train 200 / val
100 / test 200. For each photo of ``--split`` this writes the regions most annotators agree on
(:func:`pipeline.train.consensus.consensus_objects`) in the prefix layout: ``NAME_im.jpg`` (the
original JPEG, byte for byte), ``NAME_gt.png`` (the object, 0/255) and ``NAME_seg.png`` (the
benchmark's 8x low-resolution annotation of the truth), plus ``OUT/objects.json`` (photo,
annotator, agreement, area, share of the image border covered, and ``human_mba``: the mean mBA of
the other annotators' agreeing drawings of the object scored against it, i.e. how far people's own
lines lie apart — the floor under which no refiner's mBA on this judge means much).
``--max-frame 0.1`` keeps objects only (no sky, ground or water). Use it as the judge of
``samsr benchmark quality`` (choose on val, report on test). BSDS500 is distributed by Berkeley
for research use; nothing of it is committed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.bench.quality import make_coarse
from pipeline.metrics import mba
from pipeline.train.consensus import consensus_objects, other_drawings

__all__ = ["read_segmentations", "frame_share", "write_split", "main"]

SPLITS = ("train", "val", "test")


def read_segmentations(path: str) -> list[np.ndarray]:
    """The human segmentations (label maps, (H, W) uint16) stored in one BSDS500 groundTruth .mat."""
    import scipy.io

    try:
        cells = scipy.io.loadmat(path)["groundTruth"][0]
        return [np.asarray(c["Segmentation"][0][0]) for c in cells]
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a BSDS500 groundTruth file ({e})") from e


def frame_share(mask: np.ndarray) -> float:
    """The share of the image's outermost pixel ring that ``mask`` ((H, W) bool) covers: 0 for an
    object inside the photo, large for sky, ground or water."""
    ring = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(ring.mean())


def write_split(bsds: str, split: str, out: str, *, min_iou: float = 0.9, max_objects: int = 2,
                max_frame: float = 1.0, limit: int | None = None) -> list[dict]:
    """Write ``split``'s consensus objects under ``out`` (those covering at most ``max_frame`` of the
    image's border, :func:`frame_share`); returns the objects.json records."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    gt_dir, im_dir = os.path.join(bsds, "groundTruth", split), os.path.join(bsds, "images", split)
    if not os.path.isdir(gt_dir) or not os.path.isdir(im_dir):
        raise FileNotFoundError(f"--bsds {bsds}: no groundTruth/{split} and images/{split} under it")
    os.makedirs(out, exist_ok=True)
    records = []
    for name in sorted(os.listdir(gt_dir))[:limit]:
        if not name.endswith(".mat"):
            continue
        photo = name[:-4]
        image = os.path.join(im_dir, photo + ".jpg")
        segs = read_segmentations(os.path.join(gt_dir, name))
        for i, obj in enumerate(consensus_objects(segs, min_iou=min_iou, max_objects=max_objects)):
            frame = frame_share(obj.mask)
            if frame > max_frame:
                continue
            key = f"bsds_{split}_{photo}_{i}"
            gt = np.where(obj.mask, 255, 0).astype(np.uint8)
            others = [mba(d, obj.mask) for d in other_drawings(obj, segs, min_iou)]
            shutil.copyfile(image, os.path.join(out, key + "_im.jpg"))
            cv2.imwrite(os.path.join(out, key + "_gt.png"), gt)
            cv2.imwrite(os.path.join(out, key + "_seg.png"), make_coarse(gt, "lowres8", key))
            records.append({"key": key, "photo": photo, "split": split, "annotator": obj.annotator,
                            "annotators": len(segs), "agreement": round(obj.agreement, 4),
                            "agreeing": obj.agreeing, "area": round(float(obj.mask.mean()), 4),
                            "frame": round(frame, 4),
                            "human_mba": round(100 * float(np.mean(others)), 2) if others else None})
    with open(os.path.join(out, "objects.json"), "w") as f:
        json.dump(records, f, indent=1)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.make_bsds_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bsds", required=True, help="BSDS500's data folder (holding images/ and groundTruth/)")
    ap.add_argument("--split", required=True, choices=SPLITS)
    ap.add_argument("--out", required=True, help="output folder (prefix layout)")
    ap.add_argument("--min-iou", type=float, default=0.9,
                    help="IoU another annotator's region must reach to count as agreeing (default 0.9)")
    ap.add_argument("--max-objects", type=int, default=2, help="objects per photo at most (default 2)")
    ap.add_argument("--max-frame", type=float, default=1.0,
                    help="keep regions covering at most this share of the image border (default 1: all; "
                    "0.1 keeps objects and drops sky, ground and water)")
    ap.add_argument("--limit", type=int, default=None, help="first N photos only")
    args = ap.parse_args(argv)
    records = write_split(args.bsds, args.split, args.out, min_iou=args.min_iou,
                          max_objects=args.max_objects, max_frame=args.max_frame, limit=args.limit)
    floor = [r["human_mba"] for r in records if r["human_mba"] is not None]
    print(f"{len(records)} objects from {len({r['photo'] for r in records})} photos -> {args.out}"
          + (f"; other annotators' mBA against them: mean {np.mean(floor):.2f}" if floor else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
