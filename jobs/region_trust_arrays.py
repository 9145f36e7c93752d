"""The arrays of ``python -m jobs.fit_region_trust``: refine a set once per coarse kind and save
them (:func:`refine_set`), then, per output, its final mask, trust features and image score, its
changes with their features and, from the truth, their labels, cached per folder in
``FOLDER/changes.pkl`` (:func:`load_outputs`, :func:`load_sets`). The fitting and the report
are in :mod:`jobs.fit_region_trust`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.bench.trust import TRUST_KINDS
from pipeline.metrics import binarize
from pipeline.refine.regions_trust import changes_of

__all__ = ["refine_set", "photo_of", "sample_sources", "load_outputs", "load_sets"]

#: FOLDER/SOURCES of a refine folder: key -> the photo its truth's edges come from (folds by photo)
SOURCES = "sources.json"


# ---------------------------------------------------------------------------------------------------
# refine once, save the arrays


def refine_set(
    data: str,
    out: str,
    config: str,
    shuffle: bool,
    reverse: bool,
    truth_offset: int = 0,
    max_side: int | None = None,
) -> None:
    import dataclasses

    from pipeline.bench.quality import _shrink, make_coarse
    from pipeline.boundary import move_line
    from pipeline.config import load_config
    from pipeline.io import list_samples, load_sample
    from pipeline.io.keys import safe_key
    from pipeline.refine.cascade import refine_detailed
    from pipeline.refine.loaded import LoadedRefiner, refine_options
    from pipeline.runner.workers import ProposalWorker, proposal_kwargs
    from pipeline.sam import propose

    cfg = load_config(config, [])
    refiner = LoadedRefiner(
        cfg.model.name,
        cfg.model.checkpoint,
        refine_options(cfg),
        "cpu",
        1,
        {"policy": "none", "trust_model": None},
    )
    options = dataclasses.replace(refiner.options, edge_check=None)  # applied again offline
    kw = proposal_kwargs(cfg, 1, v1=False)
    kw["device"] = "cpu"
    proposer = ProposalWorker(**kw).generator
    refs = list_samples(data, "prefix", mask_suffix="_gt.png")
    if shuffle:
        refs = sorted(refs, key=lambda r: hashlib.sha256(str(r).encode()).hexdigest())
    if reverse:
        refs = refs[::-1]
    os.makedirs(out, exist_ok=True)
    sources = sample_sources(data)
    keys = {r.key for r in refs}
    if sources.keys() & keys:
        with open(os.path.join(out, SOURCES), "w") as f:
            json.dump({k: v for k, v in sorted(sources.items()) if k in keys}, f, indent=0)
    t_all = time.time()
    for i, ref in enumerate(refs):
        s = load_sample(ref, load_gt=False)
        path = os.path.join(out, safe_key(s.key) + ".npz")
        if os.path.exists(path):
            continue
        image, truth = _shrink(s.image, s.coarse, max_side)
        truth = move_line(truth, truth_offset)
        props = propose(proposer, image, s.key, working_size=cfg.sam.working_size, seed=cfg.sam.seed)
        arrays: dict[str, Any] = {"image": image, "truth": truth, "key": np.array(s.key)}
        for kind in TRUST_KINDS:
            coarse = make_coarse(truth, kind, s.key, 0)
            t0 = time.perf_counter()
            r = refine_detailed(refiner.model, image, coarse, props.colour_map, options=options, device="cpu")
            arrays.update(
                {
                    f"{kind}_c01": r.coarse01.astype(np.float16),
                    f"{kind}_pre": r.prob,
                    f"{kind}_spread": r.spread.astype(np.float16),
                    f"{kind}_refine_s": np.array(time.perf_counter() - t0),
                }
            )
        np.savez_compressed(path + ".tmp.npz", **arrays)
        os.replace(path + ".tmp.npz", path)
        print(f"[{i + 1}/{len(refs)}] {s.key} {time.time() - t_all:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------------
# per output: final mask, trust features, changes and their labels (cached)


def _output_arrays(z, kind: str, margin: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coarse01, the refined probabilities after the edge check as the refiner applies it, the TTA
    spread) of one coarse kind of a saved sample."""
    from pipeline.refine.edgecheck import edge_check

    c01, final = z[f"{kind}_c01"].astype(np.float32), z[f"{kind}_pre"].copy()
    if margin is not None:
        edge_check(final, c01, z["image"], margin)
    return c01, final, z[f"{kind}_spread"].astype(np.float32)


def _extract(npz: str, model, margin: float | None) -> tuple[str, dict[str, Any]]:
    from pipeline.metrics import image_metrics
    from pipeline.refine.trust import trust_features

    z = np.load(npz)
    image, truth = z["image"], z["truth"]
    t = binarize(truth)
    per: dict[str, Any] = {"truth": t}
    for kind in TRUST_KINDS:
        c01, final, spread = _output_arrays(z, kind, margin)
        t0 = time.perf_counter()
        feats = trust_features(final, c01, image, spread)
        t1 = time.perf_counter()
        ch = changes_of(final, c01, image, spread)
        t2 = time.perf_counter()
        flat = ch.labels.ravel()
        right = np.bincount(
            flat, weights=(binarize(final) == t).ravel().astype(np.float64), minlength=ch.n + 1
        )
        size = np.bincount(flat, minlength=ch.n + 1).astype(np.float64)
        per[kind] = {
            "feats": feats,
            "score": model.score(feats),
            "n": ch.n,
            "rf": dict(ch.features),
            "size": size[1:],
            "gain_px": 2 * right[1:] - size[1:],
            "coarse": binarize(c01),
            "labels": ch.labels.astype(np.int32),
            "mba_coarse": image_metrics(c01, truth)["mba"],
            "mba_refined": image_metrics(final, truth)["mba"],
            "refine_s": float(z[f"{kind}_refine_s"]),
            "trust_s": t1 - t0,
            "regions_s": t2 - t1,
        }
    return str(z["key"]), per


def _update_features(npz: str, per: dict[str, Any], margin: float | None) -> bool:
    """Add the trust features a cache written before them lacks (only those: the rest stays as cached);
    True when anything was added."""
    from pipeline.refine.trust import FEATURES, trust_features

    if all(set(FEATURES) <= set(per[kind]["feats"]) for kind in TRUST_KINDS):
        return False
    z = np.load(npz)
    for kind in TRUST_KINDS:
        c01, final, spread = _output_arrays(z, kind, margin)
        per[kind]["feats"] = {**trust_features(final, c01, z["image"], spread), **per[kind]["feats"]}
    return True


def photo_of(key: str, sources: dict[str, str] | None = None) -> str:
    """The photo a sample key comes from, for folds by photo: the one ``sources`` names
    (:func:`sample_sources`); else ``<photo>_<n>`` (BSDS500 regions, ``bsds_val_101085_1``) ->
    ``<photo>``; any other key (``train_full00021``) is its own photo."""
    if sources and key in sources:
        return sources[key]
    head, _, tail = key.rpartition("_")
    return head if head and tail.isdigit() else key


def sample_sources(data: str) -> dict[str, str]:
    """key -> the photo whose edges its truth follows, from the maps :mod:`jobs.make_demo_data`
    writes beside the folder ``data`` (its ``SOURCE_MAPS``; a composite's is its foreground photo, a
    real-edge sample's its photo: a set larger than its photo pool draws some photos twice); {} when
    there are none."""
    from jobs.make_demo_data import SOURCE_MAPS

    root = os.path.dirname(os.path.normpath(data))
    out: dict[str, str] = {}
    for name in SOURCE_MAPS:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path) as f:
                for key, v in json.load(f).items():
                    out[key] = v["foreground"] if isinstance(v, dict) else v
    return out


def load_outputs(folder: str, config: str) -> list[dict[str, Any]]:
    """One dict per (sample, kind) of a ``refine`` folder (refined with ``config``, whose edge check
    is applied here); extracted once into FOLDER/changes.pkl."""
    from pipeline.config import load_config
    from pipeline.refine.trust import load_trust_model

    margin = load_config(config, []).refine.options.get("edge_check")

    cache = os.path.join(folder, "changes.pkl")
    done: dict[str, Any] = {}
    if os.path.exists(cache):
        with open(cache, "rb") as f:
            done = pickle.load(f)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".npz") and not f.endswith(".tmp.npz"))
    model = load_trust_model("shipped")
    new = False
    for name in files:
        if name not in done:
            done[name] = _extract(os.path.join(folder, name), model, margin)
            new = True
        elif _update_features(os.path.join(folder, name), done[name][1], margin):
            new = True
    if new:
        with open(cache + ".tmp", "wb") as f:
            pickle.dump(done, f)
        os.replace(cache + ".tmp", cache)
    sources: dict[str, str] = {}
    if os.path.exists(os.path.join(folder, SOURCES)):
        with open(os.path.join(folder, SOURCES)) as f:
            sources = json.load(f)
    outs = []
    for name in files:
        key, per = done[name]
        for kind in TRUST_KINDS:
            outs.append(
                {
                    "key": key,
                    "photo": photo_of(key, sources),
                    "kind": kind,
                    "truth": per["truth"],
                    "npz": os.path.join(folder, name),
                    **per[kind],
                }
            )
    return outs


def load_sets(folders: Sequence[str], config: str) -> list[dict[str, Any]]:
    """:func:`load_outputs` of each folder, each output tagged with its set (the folder's name)."""
    outs = []
    for folder in folders:
        name = os.path.basename(os.path.normpath(folder))
        outs += [{**o, "set": name} for o in load_outputs(folder, config)]
    return outs
