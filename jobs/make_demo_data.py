"""Build the training / held-out / demo data from Debian wallpaper photographs, reproducibly.

    python -m jobs.make_demo_data --cache /work/cache/wallpapers --out /work/cache/demo_data \\
        --train-count 800 --holdout-count 12 --demo-dir samples/demo

Steps: ``apt-get download`` the wallpaper packages into ``CACHE/debs`` (skipped when present),
``dpkg-deb -x`` them into ``CACHE/x/<package>``, pick one file per picture (largest variant,
de-duplicated by content), read each file's copyright and licence from the package's DEP-5
``copyright`` file, split the photos BY FILE into train / held-out (seeded), then write
composites (:mod:`pipeline.train.composites`) in the prefix layout ``NAME_im.jpg`` /
``NAME_seg.png`` (8x-downsampled ground truth) / ``NAME_gt.png``:

- ``OUT/train``: ``--train-count`` composites at 0.5-1.5k px from the train photos;
- ``OUT/holdout``: ``--holdout-count`` composites at 2k-4k px from the held-out photos only;
- ``--demo-dir``: 3 small samples (1600x1200, JPEG q85) from held-out photos;
- ``OUT/train_regions`` / ``OUT/holdout_regions``: real-edge samples, an unaltered photo with one
  object-sized region found by Felzenszwalb segmentation + colour merging as truth
  (:mod:`pipeline.train.regions`), 0.64-1.28k px from train photos / 2k-3k px from held-out photos;
- ``--full-size-train C R``: only ``OUT/train_full`` / ``OUT/train_regions_full``, C composites and
  R real-edge samples at 2k-3k px from the train photos (fitting the trust models at full size).

``OUT/photos.json`` records every photo (package, path, size, sha256, copyright, licence, split)
and ``OUT/LICENSES.md`` is the same as a table. Photos themselves are never committed.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from pipeline.train.composites import find_fonts, make_composite
from pipeline.train.regions import SNAPS, region_masks, snap_region

__all__ = ["PACKAGES", "fetch_packages", "parse_dep5", "collect_photos", "split_photos", "write_sets",
           "write_full_size_train", "snap_region_folder", "main"]

PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers", "lomiri-wallpapers",
            "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
_EXTS = (".jpg", ".jpeg", ".png", ".webp")
#: key -> source photo(s) maps written beside the sets (composites: {foreground, background}; regions: path)
COMPOSITES_JSON, REGIONS_JSON = "composites.json", "regions.json"
COMPOSITES_FULL_JSON, REGIONS_FULL_JSON = "composites_full.json", "regions_full.json"
SOURCE_MAPS = (COMPOSITES_JSON, REGIONS_JSON, COMPOSITES_FULL_JSON, REGIONS_FULL_JSON)
Image.MAX_IMAGE_PIXELS = 60_000_000


def fetch_packages(cache: str, packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """apt-get download + dpkg-deb -x each package into ``cache``; returns {package: extracted root}."""
    debs, xdir = os.path.join(cache, "debs"), os.path.join(cache, "x")
    os.makedirs(debs, exist_ok=True)
    roots = {}
    for pkg in packages:
        root = os.path.join(xdir, pkg)
        if not os.path.isdir(os.path.join(root, "usr")):
            have = [f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb")]
            if not have:
                subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
                have = [f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb")]
            if not have:
                raise ValueError(f"apt-get download {pkg}: no .deb appeared in {debs}")
            os.makedirs(root, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", os.path.join(debs, sorted(have)[-1]), root], check=True)
        roots[pkg] = root
    return roots


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Parse a DEP-5 copyright file into file stanzas [{files, copyright, license}] (file order)."""
    stanzas, cur, field = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if "files" in cur:
                stanzas.append(cur)
            cur, field = {}, None
            continue
        m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
        if m and not line.startswith((" ", "\t")):
            field = m.group(1).lower()
            cur[field] = m.group(2).strip()
        elif field in ("files", "copyright"):
            cur[field] = (cur[field] + " " + line.strip()).strip()
    for s in stanzas:
        s["license"] = s.get("license", "").split("\n")[0].strip()
    return stanzas


def _licence_for(path: str, stanzas: list[dict[str, str]]) -> tuple[str, str]:
    """(copyright, licence) of the last stanza whose pattern matches the path or its basename."""
    found = ("", "")
    base = os.path.basename(path)
    for s in stanzas:
        for pat in s["files"].split():
            if pat.startswith("debian/"):
                continue
            if pat == "*" or fnmatch.fnmatch(path, "*" + pat) or fnmatch.fnmatch(base, os.path.basename(pat)):
                found = (s.get("copyright", ""), s.get("license", ""))
    return found


def _group(pkg: str, rel: str) -> str:
    if pkg == "plasma-workspace-wallpapers":
        return pkg + ":" + rel.split("/")[3]  # usr/share/wallpapers/<Theme>/...
    return pkg + ":" + re.sub(r"_\d+x\d+$", "", os.path.splitext(os.path.basename(rel))[0])


def collect_photos(roots: dict[str, str], min_side: int = 1000) -> list[dict]:
    """One record per distinct picture: the largest variant, deduplicated by sha256, with licence."""
    best: dict[str, dict] = {}
    seen: set[str] = set()
    for pkg, root in sorted(roots.items()):
        cfile = os.path.join(root, "usr/share/doc", pkg, "copyright")
        stanzas = []
        if os.path.exists(cfile):
            stanzas = parse_dep5(open(cfile, encoding="utf-8", errors="replace").read())
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if not name.lower().endswith(_EXTS) or "screenshot" in name or "images_dark" in rel:
                    continue
                if not rel.startswith("usr/share/"):
                    continue
                full = os.path.join(root, rel)
                if os.path.islink(full):
                    continue
                with Image.open(full) as im:
                    w, h = im.size
                if min(w, h) < min_side:
                    continue
                sha = hashlib.sha256(open(full, "rb").read()).hexdigest()
                if sha in seen:
                    continue
                seen.add(sha)
                copyright_, licence = _licence_for(rel, stanzas)
                rec = {"package": pkg, "path": rel, "file": full, "width": w, "height": h, "sha256": sha,
                       "copyright": copyright_, "license": licence or "see package copyright"}
                g = _group(pkg, rel)
                if g not in best or w * h > best[g]["width"] * best[g]["height"]:
                    best[g] = rec
    return sorted(best.values(), key=lambda r: (r["package"], r["path"]))


def split_photos(photos: list[dict], holdout_fraction: float, seed: int,
                 min_holdout_side: int = 2000) -> None:
    """Mark each record ``split`` = "train" / "holdout" (held-out photos have short side >= 2000)."""
    rng = np.random.default_rng(seed)
    eligible = [i for i, p in enumerate(photos) if min(p["width"], p["height"]) >= min_holdout_side]
    n = max(2, int(round(len(photos) * holdout_fraction)))
    hold = set(rng.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())
    for i, p in enumerate(photos):
        p["split"] = "holdout" if i in hold else "train"


def _load(path: str, max_side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        s = max_side / max(im.size)
        if s < 1:
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.LANCZOS)
        return np.asarray(im)


def _write_sample(out_dir: str, key: str, img: np.ndarray, gt: np.ndarray, quality: int) -> None:
    h, w = gt.shape
    seg = cv2.resize(gt, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(os.path.join(out_dir, f"{key}_im.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    cv2.imwrite(os.path.join(out_dir, f"{key}_seg.png"), seg)
    cv2.imwrite(os.path.join(out_dir, f"{key}_gt.png"), gt)


def _write_composites(pool: list[dict], d: str, name: str, count: int, sides: tuple[int, int], max_side: int,
                      quality: int, stream: list[int], fonts) -> dict[str, dict[str, str]]:
    """``count`` composites ``NAME00000``.. of two photos of ``pool`` each, long side in ``sides``,
    into folder ``d`` (kept where they exist); sample i draws from the seed sequence ``stream + [i]``.
    Returns key -> its photos."""
    os.makedirs(d, exist_ok=True)
    sources: dict[str, dict[str, str]] = {}
    cache: dict[str, np.ndarray] = {}
    lo, hi = sides
    for i in range(count):
        key = f"{name}{i:05d}"
        rng = np.random.default_rng([*stream, i])
        a, b = rng.choice(len(pool), size=2, replace=False)
        sources[key] = {"foreground": pool[a]["path"], "background": pool[b]["path"]}
        if os.path.exists(os.path.join(d, f"{key}_gt.png")):
            continue  # rerun: keep what exists
        for j in (a, b):
            if pool[j]["file"] not in cache:
                cache[pool[j]["file"]] = _load(pool[j]["file"], max_side)
        fg, bg = cache[pool[a]["file"]], cache[pool[b]["file"]]
        long = int(rng.integers(lo, hi + 1))
        short = int(long * rng.uniform(0.6, 0.8))
        h, w = (short, long) if bg.shape[1] >= bg.shape[0] else (long, short)
        h, w = min(h, max(bg.shape[0], lo)), min(w, max(bg.shape[1], lo))
        c = make_composite(rng, fg, bg, h, w, fonts=fonts)
        _write_sample(d, key, c.image, c.gt, quality)
    print(f"{name}: {count} composites in {d}", flush=True)
    return sources


def write_sets(photos: list[dict], out: str, train_count: int, holdout_count: int, demo_dir: str | None,
               seed: int) -> None:
    """Write train / holdout composites (and the demo samples) in the prefix layout."""
    fonts = find_fonts()
    train = [p for p in photos if p["split"] == "train"]
    hold = [p for p in photos if p["split"] == "holdout"]
    if len(train) < 2 or len(hold) < 2:
        raise ValueError(f"need >= 2 photos per split, got train={len(train)} holdout={len(hold)}")
    sources: dict[str, dict[str, str]] = {}
    jobs = [("train", train, train_count, (512, 1536), 1536, 92, 0),
            ("holdout", hold, holdout_count, (2048, 4096), 4096, 95, 1)]
    for name, pool, count, sides, max_side, q, stream in jobs:
        sources.update(_write_composites(pool, os.path.join(out, name), name, count, sides, max_side, q,
                                         [seed, stream], fonts))
    if demo_dir:
        os.makedirs(demo_dir, exist_ok=True)
        credits: list[str] = []
        order = np.random.default_rng([seed, 2]).permutation(len(hold))  # 6 distinct photos
        for i, kind in enumerate(("branches", "glyph", "holes")):
            rng = np.random.default_rng([seed, 2, i])
            pair = [hold[order[(2 * i + k) % len(hold)]] for k in (0, 1)]
            fg, bg = (_load(p["file"], 2400) for p in pair)
            c = make_composite(rng, fg, bg, 1200, 1600, kind=kind, fonts=fonts)
            _write_sample(demo_dir, f"demo{i}", c.image, c.gt, 85)
            fg_s, bg_s = (f"`{p['path']}` ({p['copyright']}, {p['license']}, Debian package {p['package']})"
                          for p in pair)
            credits.append(f"- `demo{i}_*`: shape `{kind}`; foreground from {fg_s}; background from {bg_s}.")
        with open(os.path.join(demo_dir, "SOURCES.md"), "w") as f:
            f.write("# Demo samples: sources and licences\n\n"
                    "Composites made by `python -m jobs.make_demo_data` (seed 0): a region of one photo, "
                    "cut by a synthetic shape, pasted onto another; `_gt.png` is the exact shape, `_seg.png` "
                    "the ground truth downsampled 8x (the coarse input). Both photographs of each sample are "
                    "held-out photos (never used for training) from Debian wallpaper packages:\n\n"
                    + "\n".join(credits) + "\n")
        print(f"demo: 3 samples in {demo_dir}", flush=True)
    with open(os.path.join(out, COMPOSITES_JSON), "w") as f:
        json.dump(sources, f, indent=1)


#: _write_regions gives up after this many draws of every photo of its pool in a row without a region
MAX_REGION_MISSES = 3


def _write_regions(pool: list[dict], d: str, name: str, count: int, sides: tuple[int, int], quality: int,
                   per: int, stream: list[int], snap: str, fill_weak: bool) -> dict[str, str]:
    """``count`` real-edge samples ``NAME00000``.. into folder ``d`` (kept where they exist): photo j
    of ``pool`` (in turn) at a long side in ``sides`` drawn from the seed sequence ``stream + [j]``,
    ``per`` regions of it (a photo without a region that passes :func:`region_masks`'s checks gives
    none: the next photo goes on with the same keys). ``d/draws.json`` records each key's j, so that a
    rerun after a sample was deleted redraws it from its own photo and seed (sets written without
    it: the next j). Returns key -> its photo."""
    os.makedirs(d, exist_ok=True)
    draws_path = os.path.join(d, "draws.json")
    draws: dict[str, int] = {}
    if os.path.exists(draws_path):
        with open(draws_path) as f:
            draws = json.load(f)
    sources: dict[str, str] = {}
    i, j, misses = 0, 0, 0
    lo, hi = sides
    while i < count:
        keys = [f"{name}{k:05d}" for k in range(i, min(i + per, count))]
        j = draws.get(keys[0], j)
        photo = pool[j % len(pool)]
        if all(os.path.exists(os.path.join(d, f"{k}_gt.png")) for k in keys):
            sources.update({k: photo["path"] for k in keys if k in draws})
            i, j = i + len(keys), j + 1  # rerun: keep what exists
            continue
        rng = np.random.default_rng([*stream, j])
        img = _load(photo["file"], int(rng.integers(lo, hi + 1)))
        found = region_masks(img, rng, len(keys), snap=snap, fill_weak=fill_weak)
        for key, gt in zip(keys, found):
            sources[key] = photo["path"]
            draws[key] = j
            _write_sample(d, key, img, gt, quality)
            i += 1
        misses = 0 if found else misses + 1
        if misses >= MAX_REGION_MISSES * len(pool):
            raise ValueError(f"{name}: no region of the last {misses} draws ({len(pool)} photos, "
                             f"each {MAX_REGION_MISSES} times) passes region_masks' checks; "
                             f"{i} of {count} written")
        j += 1
        with open(draws_path + ".tmp", "w") as f:
            json.dump(draws, f, indent=0)
        os.replace(draws_path + ".tmp", draws_path)
    print(f"{name}: {count} real-edge region samples in {d}", flush=True)
    return sources


def write_full_size_train(photos: list[dict], out: str, composites: int, regions: int, seed: int,
                          snap: str = "local", fill_weak: bool = False) -> None:
    """A training split at the held-out sets' sizes, for what is fitted at full size (the trust
    models): ``OUT/train_full`` (composites, long side 2k-3k px) and ``OUT/train_regions_full``
    (real-edge samples, one region per photo at a long side drawn in 2k-3k px, a smaller photo at its
    own size), from the train photos only, on their own seed streams (5, 6), beside
    ``OUT/composites_full.json`` / ``OUT/regions_full.json``."""
    train = [p for p in photos if p["split"] == "train"]
    c = _write_composites(train, os.path.join(out, "train_full"), "train_full", composites, (2048, 3072),
                          3072, 92, [seed, 5], find_fonts())
    r = _write_regions(train, os.path.join(out, "train_regions_full"), "train_regions_full", regions,
                       (2048, 3072), 92, 1, [seed, 6], snap, fill_weak)
    for name, sources in ((COMPOSITES_FULL_JSON, c), (REGIONS_FULL_JSON, r)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(sources, f, indent=1)


def write_region_sets(photos: list[dict], out: str, train_count: int, holdout_count: int, seed: int,
                      per_image: int = 4, snap: str = "local", fill_weak: bool = False) -> None:
    """Write real-edge samples (:mod:`pipeline.train.regions`): an unaltered photo and one
    object-sized region of it as truth. ``OUT/train_regions``: photos at 0.64-1.28k px (long side)
    from the train photos, ``per_image`` regions per segmentation; ``OUT/holdout_regions``: one
    region per held-out photo at 2k-3k px. ``snap``: how the truth is moved onto the photo's edges;
    ``fill_weak``: also fill holes with weak boundaries (:func:`pipeline.train.regions.region_masks`)."""
    sources: dict[str, str] = {}
    jobs = [("train_regions", "train", train_count, (640, 1280), 92, per_image, 3),
            ("holdout_regions", "holdout", holdout_count, (2048, 3072), 95, 1, 4)]
    for name, split, count, sides, q, per, stream in jobs:
        pool = [p for p in photos if p["split"] == split]
        sources.update(_write_regions(pool, os.path.join(out, name), name, count, sides, q, per,
                                      [seed, stream], snap, fill_weak))
    with open(os.path.join(out, REGIONS_JSON), "w") as f:
        json.dump(sources, f, indent=1)


def snap_region_folder(src: str, dst: str, max_offset: float = 0.5, snap: str = "local") -> dict[str, int]:
    """Real-edge samples of ``src`` (prefix layout) with their truth snapped to the image's edges
    (``snap``: ``local``, :func:`pipeline.train.regions.snap_locally`, or ``global``,
    :func:`pipeline.train.regions.snap_to_edge`) into ``dst``: the image file is linked (never
    re-encoded), ``_gt.png`` / ``_seg.png`` are rewritten; a sample whose boundary is still more
    than ``max_offset`` px off the edge centre on average is left out. Returns counts."""
    import glob
    import shutil

    if snap not in SNAPS:
        raise ValueError(f"snap_region_folder: snap must be one of {tuple(SNAPS)}, got {snap!r}")
    os.makedirs(dst, exist_ok=True)
    counts = {"kept": 0, "moved": 0, "dropped": 0}
    for gt_path in sorted(glob.glob(os.path.join(src, "*_gt.png"))):
        key = os.path.basename(gt_path)[: -len("_gt.png")]
        im_path = os.path.join(src, f"{key}_im.jpg")
        img = cv2.imread(im_path, cv2.IMREAD_COLOR)
        gt = cv2.imread(gt_path, cv2.IMREAD_GRAYSCALE)
        if img is None or gt is None:
            raise ValueError(f"snap_region_folder: cannot read sample {key!r} in {src}")
        snapped, left = snap_region(np.ascontiguousarray(img[..., ::-1]), gt, snap)
        if not abs(left) <= max_offset:
            counts["dropped"] += 1
            continue
        counts["moved"] += int(not np.array_equal(snapped, np.where(gt > 128, 255, 0)))
        counts["kept"] += 1
        out_im = os.path.join(dst, f"{key}_im.jpg")
        if not os.path.exists(out_im):
            try:
                os.link(im_path, out_im)
            except OSError:
                shutil.copyfile(im_path, out_im)
        h, w = snapped.shape
        cv2.imwrite(os.path.join(dst, f"{key}_seg.png"),
                    cv2.resize(snapped, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA))
        cv2.imwrite(os.path.join(dst, f"{key}_gt.png"), snapped)
    print(f"snapped {src} -> {dst}: {counts}", flush=True)
    return counts


def _write_licences(photos: list[dict], out: str) -> None:
    with open(os.path.join(out, "photos.json"), "w") as f:
        json.dump([{k: v for k, v in p.items() if k != "file"} for p in photos], f, indent=1)
    lines = ["| split | package | file | size | copyright | licence |", "|---|---|---|---|---|---|"]
    for p in photos:
        lines.append(f"| {p['split']} | {p['package']} | {p['path']} | {p['width']}x{p['height']} | "
                     f"{p['copyright'].replace('|', '/')} | {p['license']} |")
    open(os.path.join(out, "LICENSES.md"), "w").write("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.make_demo_data", description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/cache/wallpapers", help="where .debs are downloaded/extracted")
    ap.add_argument("--out", default="/work/cache/demo_data", help="output folder for composites + licences")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES), help="Debian wallpaper packages")
    ap.add_argument("--train-count", type=int, default=800, help="training composites (0.5-1.5k px)")
    ap.add_argument("--holdout-count", type=int, default=12, help="held-out composites (2k-4k px)")
    ap.add_argument("--train-regions", type=int, default=600,
                    help="real-edge region samples from train photos (0.64-1.28k px)")
    ap.add_argument("--holdout-regions", type=int, default=12,
                    help="real-edge region samples from held-out photos (2k-3k px)")
    ap.add_argument("--holdout-fraction", type=float, default=0.2, help="fraction of photos held out")
    ap.add_argument("--demo-dir", default=None, help="also write 3 demo samples here (e.g. samples/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snap", default="local", choices=list(SNAPS),
                    help="how region truth is moved onto the photo's edges: local (each boundary stretch "
                    "onto its own edge; default) or global (the whole boundary by one mean offset; "
                    "older sets)")
    ap.add_argument("--fill-weak-holes", action="store_true",
                    help="also fill a region's holes whose own boundary is weak (texture patches the merge "
                    "skipped); off by default (model card: measured, no evidence for or against it)")
    ap.add_argument("--full-size-train", nargs=2, type=int, metavar=("COMPOSITES", "REGIONS"), default=None,
                    help="only write a train split at the held-out sizes (2k-3k px) into OUT/train_full and "
                    "OUT/train_regions_full (for fitting the trust models at full size), and exit")
    ap.add_argument("--snap-folder", nargs=2, metavar=("SRC", "DST"), default=None,
                    help="only snap the real-edge samples of SRC to the image edges into DST, and exit")
    args = ap.parse_args(argv)
    if args.snap_folder:
        snap_region_folder(*args.snap_folder, snap=args.snap)
        return 0
    photos = collect_photos(fetch_packages(args.cache, args.packages))
    split_photos(photos, args.holdout_fraction, args.seed)
    os.makedirs(args.out, exist_ok=True)
    _write_licences(photos, args.out)
    if args.full_size_train:
        write_full_size_train(photos, args.out, *args.full_size_train, args.seed, snap=args.snap,
                              fill_weak=args.fill_weak_holes)
        return 0
    print(f"{len(photos)} photos: {sum(p['split'] == 'train' for p in photos)} train, "
          f"{sum(p['split'] == 'holdout' for p in photos)} held out", flush=True)
    write_sets(photos, args.out, args.train_count, args.holdout_count, args.demo_dir, args.seed)
    write_region_sets(photos, args.out, args.train_regions, args.holdout_regions, args.seed,
                      snap=args.snap, fill_weak=args.fill_weak_holes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
