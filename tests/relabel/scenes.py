"""Multi-object scenes with exact truth, written as a COCO dataset (annotations made at a lower
resolution, like real low-res labels) and as label maps. Shared by the relabel tests."""

from __future__ import annotations

import json

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from tests.helpers import encode_image, put

CATEGORIES = [{"id": 1, "name": "disk", "supercategory": "shape"},
              {"id": 2, "name": "box", "supercategory": "shape"},
              {"id": 3, "name": "blob", "supercategory": "shape"}]


def make_scene(seed: int, height: int = 256, width: int = 320):
    """(image (H, W, 3) uint8, [(category id, truth (H, W) bool), ...]): three objects of
    different colours on a smooth textured background; objects may touch but do not overlap
    (later objects are cut by earlier ones)."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 6)
    bg = (0.5 * bg + 40).astype(np.uint8)
    image = bg.copy()
    taken = np.zeros((height, width), bool)
    objects = []
    specs = [(1, "disk"), (2, "box"), (3, "blob")]
    for k, (cat, kind) in enumerate(specs):
        m = np.zeros((height, width), np.uint8)
        cx, cy = int(width * (0.25 + 0.25 * k)), int(height * rng.uniform(0.35, 0.65))
        r = int(min(height, width) * rng.uniform(0.12, 0.18))
        if kind == "disk":
            cv2.circle(m, (cx, cy), r, 255, -1)
        elif kind == "box":
            cv2.rectangle(m, (cx - r, cy - int(0.7 * r)), (cx + r, cy + int(0.7 * r)), 255, -1)
        else:
            pts = [(cx + int(r * (0.8 + 0.4 * rng.random()) * np.cos(t)),
                    cy + int(r * (0.8 + 0.4 * rng.random()) * np.sin(t))) for t in np.linspace(0, 6.2, 9)]
            cv2.fillPoly(m, [np.array(pts, np.int32)], 255)
        truth = (m > 0) & ~taken
        taken |= truth
        colour = np.array([(200, 60, 50), (40, 190, 80), (60, 80, 210)][k], np.uint8)
        image[truth] = colour
        objects.append((cat, truth))
    return image, objects


def polygons_of(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, last, run = [], 0, 0
    for v in flat:
        if v != last:
            counts.append(run)
            run, last = 0, v
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def write_coco_dataset(root: str, n_images: int = 2, *, height: int = 256, width: int = 320,
                       factor: int = 8, crowd: bool = True) -> dict:
    """Images under ``root/images``, ``root/coarse.json`` (annotations drawn at 1/factor size:
    polygons, compressed and uncompressed RLE in turn, plus one crowd region) and
    ``root/gt.json`` (full-size RLE truth, same annotation ids). Returns the URIs and truths."""
    lh, lw = height // factor, width // factor
    images, coarse_anns, gt_anns, truths = [], [], [], {}
    aid = 100
    for i in range(n_images):
        image, objects = make_scene(i, height, width)
        name = f"sub dir/img {i}.jpg"  # a space and a folder: keys are escaped on output
        put(f"{root}/images/{name}", encode_image(image, "jpg", 97))
        image_id = 10 + i
        images.append({"id": image_id, "file_name": name, "width": lw, "height": lh, "license": 1})
        for k, (cat, truth) in enumerate(objects):
            aid += 1
            small = cv2.resize(truth.astype(np.uint8) * 255, (lw, lh), interpolation=cv2.INTER_AREA) > 127
            form = (i + k) % 3
            seg = [polygons_of, rle_str, uncompressed_rle][form](small)
            coarse_anns.append({"id": aid, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                                "segmentation": seg, "area": float(small.sum()),
                                "bbox": [0, 0, 1, 1], "extra_field": f"keep-{aid}"})
            full = rle_str(truth)
            gt_anns.append({"id": aid, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                            "segmentation": full, "area": float(truth.sum()),
                            "bbox": [float(v) for v in mask_utils.toBbox(full)]})
            truths[aid] = truth
        if crowd:
            aid += 1
            crowd_low = np.zeros((lh, lw), bool)
            crowd_low[1:4, 1:6] = True
            coarse_anns.append({"id": aid, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                                "segmentation": uncompressed_rle(crowd_low), "area": 15.0,
                                "bbox": [1, 1, 5, 3]})
    doc = {"info": {"description": "samsr relabel test"}, "licenses": [{"id": 1, "name": "CC0"}],
           "images": images, "annotations": coarse_anns, "categories": CATEGORIES}
    full_images = [dict(r, width=width, height=height) for r in images]
    gt = {"images": full_images, "annotations": gt_anns, "categories": CATEGORIES}
    put(f"{root}/coarse.json", json.dumps(doc).encode())
    put(f"{root}/gt.json", json.dumps(gt).encode())
    return {"images": f"{root}/images", "coco": f"{root}/coarse.json", "gt": f"{root}/gt.json",
            "doc": doc, "gt_doc": gt, "truths": truths}


PALETTE = bytes([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192])


def label_truth(objects: list, shape: tuple[int, int], ignore_band: bool) -> np.ndarray:
    """(H, W) uint8 class ids: 0 background, the objects' category ids, and (``ignore_band``) a
    VOC-style 255 outline two pixels wide around the first object."""
    labels = np.zeros(shape, np.uint8)
    for cat, truth in objects:
        labels[truth] = cat
    if ignore_band:
        m = objects[0][1].astype(np.uint8)
        ring = cv2.dilate(m, np.ones((5, 5), np.uint8)) - cv2.erode(m, np.ones((3, 3), np.uint8))
        labels[ring > 0] = 255
    return labels


def write_labelmap_dataset(root: str, n_images: int = 2, *, height: int = 256, width: int = 320,
                           factor: int = 8, mode: str = "P") -> dict:
    """The prefix layout under ``root``: NAME_im.jpg, NAME_seg.png (class ids at 1/factor size,
    nearest downsampling, palette PNG when mode "P") and NAME_gt.png (full size, same mode).
    Returns {"uri", "truths": {name: (H, W) uint8}}."""
    from PIL import Image

    truths = {}
    for i in range(n_images):
        image, objects = make_scene(100 + i, height, width)
        labels = label_truth(objects, (height, width), ignore_band=True)
        small = cv2.resize(labels, (width // factor, height // factor), interpolation=cv2.INTER_NEAREST)
        name = f"scene{i}"
        put(f"{root}/{name}_im.jpg", encode_image(image, "jpg", 97))
        for suffix, arr in (("_seg.png", small), ("_gt.png", labels)):
            im = Image.fromarray(arr, mode="L")
            if mode == "P":
                im = im.convert("P")
                im.putpalette(PALETTE)
            import io

            buf = io.BytesIO()
            im.save(buf, format="PNG")
            put(f"{root}/{name}{suffix}", buf.getvalue())
        truths[name] = labels
    return {"uri": root, "truths": truths}
