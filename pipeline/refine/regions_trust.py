"""Per-region do-no-harm acceptance (``refine.accept: regions``): keep each change the evidence supports.

The image-level policy (:func:`pipeline.refine.trust.decide`) keeps or drops a refined mask whole;
a rough mask's right corrections and a good mask's harmful line shifts often sit side by side in one
output. Here each *change* is judged on its own: a change is an 8-connected component of
D = refined xor coarse (both binarised as the metrics and the writers do, after the edge check).
Its features (no ground truth; :data:`REGION_FEATURES`):

- ``log_size``: log of its pixel count; ``radius``: its largest inscribed radius (Euclidean
  distance transform, px: 1 for a 1-2 px wide sliver); ``depth``: pixels per pixel of line along it
  (how far it moves the line); ``log_len``: log(1 + that line length); ``share``: its share of all
  changed pixels of the output; ``added``: share of its pixels the refiner added (vs removed);
- edge support, as in :mod:`pipeline.refine.edgecheck` (the component grown by 1 px; the mean RGB
  contrast of the pixel pairs on opposite sides of a line): ``edge_new_old`` = log((new line + 1) /
  (old line + 1)), ``edge_new_any`` / ``edge_old_any`` = the new / old line against every pair there;
- the refiner's doubt: ``spread`` (mean standard deviation of the TTA passes in it), ``spread_ring``
  (the same on the 1-px ring around it), ``margin`` (mean |2p - 1| of the refined probability in it).

A :class:`RegionTrustModel` (logistic, a JSON file beside the weights with its card) adds inputs of
the whole output: its trust features by :func:`pipeline.refine.trust.model_input` name (e.g.
``log_coarse_detail``: the resolution the coarse line was drawn at; ``coarse_side``: which side of
the coarse line the image's edge lies on, i.e. the annotator's line convention, which tells a
1-px correction from a move of a good line to the edge's centre) and ``image_logit``, the logit of
the image-level trust score. It estimates the probability that taking the refined values in the
change makes more of its pixels right; changes scoring at least the model's threshold (one for
thin changes, one for thick ones) take the refined values, the others keep the coarse ones
(:func:`accept_regions`). An output the image-level policy accepts stays whole, one whose image
score is below the model's gate ``min_image_score`` keeps the coarse mask whole
(:func:`decide_regions`).

Pure numpy / OpenCV on the bounding box of the changes; a few hundredths of a second at 481x321.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from pipeline.metrics import binarize
from pipeline.refine.edgecheck import _grown_labels, label_strips, region_line_means
from pipeline.refine.trust import FEATURES, TrustModel, model_input

__all__ = ["REGION_FEATURES", "Changes", "changes_of", "RegionTrustModel", "load_region_model",
           "shipped_region_model_path", "accept_regions", "decide_regions"]

REGION_FEATURES = ("log_size", "radius", "log_len", "depth", "added", "edge_new_old", "edge_new_any",
                   "edge_old_any", "spread", "spread_ring", "margin", "share")
IMAGE_LOGIT = "image_logit"
THIN_RADIUS = 1.5  # px: the inscribed radius of a change 1-3 px wide
_EPS = 1.0  # contrast units, as in pipeline.refine.trust


@dataclass(frozen=True)
class Changes:
    """The changes of one output: ``labels`` (H, W) int32, 0 where refined == coarse, k = 1..n for
    the k-th change; ``features``: name -> (n,) float64 array (:data:`REGION_FEATURES`)."""

    labels: np.ndarray
    features: Mapping[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(next(iter(self.features.values())))


def changes_of(prob: np.ndarray, coarse01: np.ndarray, image: np.ndarray, spread: np.ndarray | None = None,
               grow: int = 1) -> Changes:
    """The changes from ``coarse01`` to ``prob`` ((H, W) float in [0, 1]) and their features
    (module docstring); image (H, W, 3) uint8; spread (H, W) or None (no TTA: 0).

    Memory: besides the returned (H, W) int32 labels, a few bytes per pixel of the changes' bounding
    box (the distance transform, then the grown labels) and arrays over the labelled pixels of a
    strip of rows at a time: the edge support of a pixel is summed from the pixel pairs that touch
    it, gathered for those pixels alone (:func:`pipeline.refine.edgecheck.region_line_means`); the
    per-change sums are added in the order of one pass over the box (the values of a dense
    computation, exactly)."""
    if prob.shape != coarse01.shape or prob.shape != image.shape[:2]:
        raise ValueError(f"changes_of: shapes differ: prob {prob.shape}, coarse {coarse01.shape}, "
                         f"image {image.shape}")
    after, before = binarize(prob), binarize(coarse01)
    changed = after != before
    labels = np.zeros(prob.shape, np.int32)
    if not changed.any():
        return Changes(labels, {f: np.zeros(0) for f in REGION_FEATURES})
    rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
    pad = grow + 2
    r0, c0 = max(0, rows[0] - pad), max(0, cols[0] - pad)
    r1, c1 = min(prob.shape[0], rows[-1] + pad + 1), min(prob.shape[1], cols[-1] + pad + 1)
    box = (slice(r0, r1), slice(c0, c1))
    n, lab = cv2.connectedComponents(changed[box].view(np.uint8), connectivity=8)
    del changed
    labels[box] = lab
    del lab
    lab = labels[box]  # a view: the box's labels are not held twice

    # per change, over its pixels a strip of rows at a time (np.add.at sums in the order of one
    # pass over the box, as np.bincount does): size, added, spread, margin, inscribed radius
    size, added, spread_in, margin, radius = (np.zeros(n) for _ in range(5))
    dist = cv2.distanceTransform((lab > 0).view(np.uint8), cv2.DIST_L2, 5)
    for strip, at in label_strips(lab, (r0, c0)):
        np.add.at(size, strip, 1.0)
        np.add.at(added, strip, after[at].astype(np.float64))
        if spread is not None:
            np.add.at(spread_in, strip, spread[at].astype(np.float64))
        np.add.at(margin, strip, np.abs(2 * prob[at].astype(np.float64) - 1))
        np.maximum.at(radius, strip, dist[at[0] - r0, at[1] - c0])
    del dist

    # every labelled pixel: the changes grown by ``grow`` px, a ring pixel taking a nearby label
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    region = _grown_labels(lab, n, kernel)
    np.copyto(region, lab, where=lab > 0, casting="unsafe")
    (old_mean, new_mean, any_mean), (old_n, new_n, _) = region_line_means(
        image, before, after, region, n, (r0, c0))
    spread_ring, n_ring = np.zeros(n), np.zeros(n)
    np.copyto(region, 0, where=lab > 0)  # the rings alone
    for strip, at in label_strips(region, (r0, c0)):
        np.add.at(n_ring, strip, 1.0)
        if spread is not None:
            np.add.at(spread_ring, strip, spread[at].astype(np.float64))
    del region

    k = slice(1, None)
    line = np.maximum(old_n[k], new_n[k]) / 2  # each pair is credited to both of its pixels
    features = {
        "log_size": np.log(size[k]), "radius": radius[k], "log_len": np.log1p(line),
        "depth": size[k] / np.maximum(1, line), "added": added[k] / size[k],
        "edge_new_old": np.log((new_mean[k] + _EPS) / (old_mean[k] + _EPS)),
        "edge_new_any": np.log((new_mean[k] + _EPS) / (any_mean[k] + _EPS)),
        "edge_old_any": np.log((old_mean[k] + _EPS) / (any_mean[k] + _EPS)),
        "spread": spread_in[k] / size[k], "spread_ring": spread_ring[k] / np.maximum(1, n_ring[k]),
        "margin": margin[k] / size[k], "share": size[k] / size[k].sum(),
    }
    return Changes(labels, features)


def _known_region_input(name: str) -> bool:
    if "*" in name:
        parts = name.split("*")
        return len(parts) == 2 and all(_known_region_input(p) for p in parts)
    return (name in REGION_FEATURES or name == IMAGE_LOGIT or name in FEATURES
            or (name.startswith("log_") and name[4:] in FEATURES))


@dataclass(frozen=True)
class RegionTrustModel(TrustModel):
    """A logistic model (fields as :class:`pipeline.refine.trust.TrustModel`) over the changes of an
    output: inputs are :data:`REGION_FEATURES`, the output's trust features (by
    :func:`pipeline.refine.trust.model_input` name), ``image_logit``, and products of two of these
    (``a*b``: e.g. how a change's width counts depends on how detailed the coarse line is).
    A thin change (inscribed radius <= :data:`THIN_RADIUS` px: a line moved by 1-3 px) takes the
    refined values when it scores at least ``min_score``, a thicker one (a blob added or removed)
    at least ``min_score_thick`` (the two fail differently: a line shift on a good mask, a
    semantic disagreement with the annotator).

    ``large``: a second region model for large images, fitted at their size; on an output whose long
    side is at least ``large_from_side`` px a change is taken when either model takes it (each with
    its own thresholds and gate)."""

    min_score_thick: float = 0.5
    min_image_score: float = 0.0
    large: RegionTrustModel | None = None
    large_from_side: int = 0

    _MAX_MIN_SCORE: ClassVar[float] = 1.01  # 1.01: thin changes are never taken

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.min_score_thick <= 1.01:
            raise ValueError(f"region trust model: min_score_thick {self.min_score_thick} must be in "
                             "[0, 1.01] (1.01: never)")
        if not 0.0 <= self.min_image_score <= 1.0:
            raise ValueError(f"region trust model: min_image_score {self.min_image_score} must be in [0, 1]")
        if self.large is not None and (self.large_from_side < 1 or self.large.large is not None):
            raise ValueError(f"region trust model: large_from_side {self.large_from_side} must be >= 1 "
                             "with a large model, which has no large model of its own")

    def accepts(self, changes: Changes, image_features: Mapping[str, float], image_score: float
                ) -> np.ndarray:
        """(n,) bool: which changes take the refined values; none when the output's image-level
        score is below ``min_image_score`` (the gate: an output the image model doubts keeps its
        coarse mask whole)."""
        if image_score < self.min_image_score:
            out = np.zeros(changes.n, bool)
        else:
            s = self.scores(changes, image_features, image_score)
            thin = changes.features["radius"] <= THIN_RADIUS
            out = s >= np.where(thin, self.min_score, self.min_score_thick)
        if self.large is not None and max(changes.labels.shape) >= self.large_from_side:
            out |= self.large.accepts(changes, image_features, image_score)
        return out

    def to_dict(self) -> dict[str, object]:
        d = {**super().to_dict(), "min_score_thick": self.min_score_thick,
             "min_image_score": self.min_image_score}
        if self.large is not None:
            d.update({"large_from_side": self.large_from_side, "large": self.large.to_dict()})
        return d

    @classmethod
    def _fields_of(cls, d: Mapping[str, object]) -> dict[str, object]:
        large = d.get("large")
        return {**super()._fields_of(d), "min_score_thick": float(d["min_score_thick"]),
                "min_image_score": float(d.get("min_image_score", 0.0)),
                "large": None if large is None else cls(**cls._fields_of(large)),
                "large_from_side": int(d.get("large_from_side", 0))}

    def _check_inputs(self) -> None:
        unknown = [f for f in self.features if not _known_region_input(f)]
        if unknown:
            raise ValueError(f"region trust model: unknown inputs {unknown}; known: {REGION_FEATURES}, "
                             f"{IMAGE_LOGIT}, and the trust features {FEATURES} (or log_<feature>)")

    def scores(self, changes: Changes, image_features: Mapping[str, float], image_score: float) -> np.ndarray:
        """(n,) probabilities, one per change."""
        p = min(max(image_score, 1e-6), 1 - 1e-6)
        logit = math.log(p / (1 - p))

        def value(name: str):
            if name in REGION_FEATURES:
                return changes.features[name]
            return logit if name == IMAGE_LOGIT else model_input(name, image_features)

        z = np.full(changes.n, self.intercept)
        for name, m, s, c in zip(self.features, self.mean, self.scale, self.coef):
            a, _, b = name.partition("*")
            x = value(a) * value(b) if b else value(a)
            z += c * (x - m) / s
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def shipped_region_model_path() -> str:
    """The region model shipped beside the demo weights (``pipeline/weights/trust_regions_v4.json``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights",
                        "trust_regions_v4.json")


def load_region_model(path: str) -> RegionTrustModel:
    """Read a region trust model JSON (local path or fsspec URI; ``"shipped"``: the shipped file)."""
    from pipeline.refine.trust import SHIPPED, read_model_dict

    if path == SHIPPED:
        path = shipped_region_model_path()
    return RegionTrustModel.from_dict(read_model_dict(path, "region trust model"),
                                      source=f"region trust model {os.path.basename(path)}")


def accept_regions(prob: np.ndarray, coarse01: np.ndarray, changes: Changes, accept: np.ndarray
                   ) -> tuple[np.ndarray, float]:
    """(output, share): ``prob`` in the accepted changes (``accept``: (n,) bool), the coarse mask
    (exactly 0/1, as the writers binarise it) everywhere else; ``share``: the accepted changes' share
    of the changed pixels (1.0 when nothing changed)."""
    if len(accept) != changes.n:
        raise ValueError(f"accept_regions: {len(accept)} decisions for {changes.n} changes")
    if changes.n == 0:
        return prob, 1.0  # refined == coarse, binarised
    out = binarize(coarse01).astype(np.float32)
    take = np.concatenate([[False], np.asarray(accept, bool)])[changes.labels]
    np.copyto(out, prob, where=take)
    sizes = np.exp(changes.features["log_size"])
    share = float(sizes[accept].sum() / sizes.sum())
    return out, share


def decide_regions(prob: np.ndarray, coarse01: np.ndarray, image: np.ndarray, spread: np.ndarray | None,
                   image_features: Mapping[str, float], trust_model: TrustModel, model: RegionTrustModel,
                   min_score: float | None = None) -> tuple[np.ndarray, float, float]:
    """The ``regions`` policy for one output: (the output, the accepted share of the changed pixels,
    the image's trust score). An output the image-level policy accepts (``trust_model``'s score >=
    ``min_score``, default its own: :func:`pipeline.refine.trust.decide`) is the refined mask whole;
    otherwise each change takes the refined values when ``model`` accepts it
    (:meth:`RegionTrustModel.accepts`, :func:`accept_regions`)."""
    from pipeline.refine.trust import decide

    d = decide(image_features, trust_model, "score", min_score)
    if d.accepted:
        return prob, 1.0, d.score
    changes = changes_of(prob, coarse01, image, spread)
    accept = model.accepts(changes, image_features, d.score)
    out, share = accept_regions(prob, coarse01, changes, accept)
    return out, share, d.score
