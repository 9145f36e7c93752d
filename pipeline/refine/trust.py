"""How far to trust a refined mask, without ground truth.

Re-labelling users have no truth to check a refined mask against, so each output gets measures
the refiner's own inputs and outputs give (:func:`trust_features`), combined into one score by a
small logistic model (:class:`TrustModel`, a JSON file beside the shipped weights with its card):
the estimated probability that the refined mask's mBA beats the coarse mask's. A do-no-harm policy
(:func:`decide`) keeps the coarse mask when the score is below the model's ``min_score``.

The features (``coarse`` = C, the coarse mask resized to the image; ``refined`` = R, the output
at 0.5; the *band*: pixels within ``band`` px of either line; the *line* of a mask: its
4-neighbour pixel pairs on opposite sides, with their RGB contrast as in
:mod:`pipeline.refine.edgecheck`):

- ``shift_px``: changed pixels (C xor R) per pixel of C's line: how far the line moved, on average;
- ``area_change``: (|R| - |C|) / |C|, signed;
- ``thin_share``: share of the changed pixels lying in changes (8-connected) at most 2 px wide (a
  whole line moved by a pixel or two: the refiner's drawing convention, not a correction);
- ``band_uncertainty``: mean of 1 - |2p - 1| over the band (p: the refined probability);
- ``band_spread``: mean over the band of the test-time augmentation passes' standard deviation
  (0 without TTA): the passes disagree where the refiner is unsure;
- ``coarse_edge``: mean contrast of C's line over the mean contrast of every pair in the band
  (a coarse line that already sits on the image's edges is a good one);
- ``edge_gain``: log of the mean contrast of R's line over that of C's line (does the new line sit
  on stronger edges than the old one?);
- ``coarse_detail``: pixels of C that flip when C is blurred (Gaussian, sigma 2 px) and cut at 0.5
  again, per pixel pair of C's line: ~0 for a smooth line (a low-resolution annotation scaled up
  bilinearly), higher for a line with pixel-level detail (drawn at full resolution, where a good
  mask is easily made worse) or a staircase (a label map scaled up by nearest neighbour);
  ``coarse_detail1`` / ``coarse_detail4``: the same at sigma 1 / 4 px (together: the scale below
  which the coarse line has no detail, i.e. the resolution it was drawn at).
- ``coarse_side`` / ``coarse_side2``: which side of C's line the image's edge lies on (the
  annotator's line convention). From the profile p(d), d = -3..3 px, of the mean RGB gradient
  magnitude (Sobel) along C's line moved by d px (> 0: outward; each pixel within 4 px of the line
  weighed by max(0, 1 - |s - d|), s its signed Euclidean distance to the line, as
  :func:`pipeline.train.regions.edge_profile`): ``coarse_side`` = (p(1) - p(-1)) / p(0),
  ``coarse_side2`` = (p(1) + p(2) - p(-1) - p(-2)) / sum(p). < 0 where the edge lies inside the
  line (a line drawn a pixel outside the object, as people draw it), > 0 where it lies outside;
  ``coarse_side`` is clipped to [-3, 3] (on 5,390 BSDS500 outputs it lies in [-1.9, 1.9]).

Pure numpy / OpenCV on the bounding box of the band; cost well under the refiner's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from pipeline.boundary import rgb_gradient, signed_distance

__all__ = ["FEATURES", "model_input", "trust_features", "TrustModel", "load_trust_model",
           "shipped_trust_model_path", "read_model_dict",
           "decide", "Decision", "Outcome", "split_outcome", "TRUST_FIELDS"]

#: manifest fields a trusted refiner adds to each output's row
TRUST_FIELDS = ("trust_score", "accepted", "accepted_share", "line_level")

FEATURES = ("shift_px", "area_change", "thin_share", "band_uncertainty", "band_spread", "coarse_edge",
            "edge_gain", "coarse_detail", "coarse_detail1", "coarse_detail4", "coarse_side", "coarse_side2")
#: the Gaussian sigmas (px) of coarse_detail1, coarse_detail, coarse_detail4
DETAIL_SIGMAS = {"coarse_detail1": 1.0, "coarse_detail": 2.0, "coarse_detail4": 4.0}
_EPS = 1.0  # contrast units (0..441.7): keeps the log ratio finite on flat images


def _line_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal (H, W-1) and vertical (H-1, W) bool arrays: pairs on opposite sides of the line."""
    return mask[:, 1:] != mask[:, :-1], mask[1:] != mask[:-1]


class _BandPairs:
    """The 4-neighbour pixel pairs with both pixels in the band (``in_band``, (H, W) bool), their RGB
    contrast (Euclidean distance, float32), computed for those pairs only (a band, not the box)."""

    def __init__(self, image: np.ndarray, in_band: np.ndarray) -> None:
        self.h = np.nonzero(in_band[:, 1:] & in_band[:, :-1])
        self.v = np.nonzero(in_band[1:] & in_band[:-1])
        y, x = self.h
        self.ch = np.sqrt(np.square(image[y, x + 1].astype(np.float32) - image[y, x]).sum(-1))
        y, x = self.v
        self.cv = np.sqrt(np.square(image[y + 1, x].astype(np.float32) - image[y, x]).sum(-1))

    def crossing(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which band pairs lie on opposite sides of ``mask``'s line (a mask's line pairs are
        always band pairs: the band holds both pixels of each)."""
        y, x = self.h
        sel_h = mask[y, x] != mask[y, x + 1]
        y, x = self.v
        return sel_h, mask[y, x] != mask[y + 1, x]

    def mean(self, sel_h: np.ndarray | None = None, sel_v: np.ndarray | None = None) -> tuple[float, int]:
        """(mean contrast, count) of the selected band pairs (None: all of them)."""
        ch = self.ch if sel_h is None else self.ch[sel_h]
        cv = self.cv if sel_v is None else self.cv[sel_v]
        n = len(ch) + len(cv)
        if n == 0:
            return 0.0, 0
        return float(ch.sum() + cv.sum()) / n, n


_STRIP_ROWS = 1024  # rows of the box blurred at a time for coarse_detail
_BLUR_HALO = 40  # rows above and below a strip: > OpenCV's float32 Gaussian radius at sigma 4 (16)


def _detail_counts(c: np.ndarray) -> dict[str, int]:
    """Per :data:`DETAIL_SIGMAS` name: the pixels of the (H, W) bool mask ``c`` whose value changes
    when it is blurred with that sigma (border replicated) and thresholded at 0.5; blurred in strips
    of rows with a halo (the same values as one blur of the whole mask, in float32 of a strip)."""
    h = c.shape[0]
    counts = dict.fromkeys(DETAIL_SIGMAS, 0)
    for s0 in range(0, h, _STRIP_ROWS):
        s1 = min(h, s0 + _STRIP_ROWS)
        h0, h1 = max(0, s0 - _BLUR_HALO), min(h, s1 + _BLUR_HALO)
        c32 = c[h0:h1].astype(np.float32)
        for name, sigma in DETAIL_SIGMAS.items():
            blurred = cv2.GaussianBlur(c32, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
            counts[name] += int(np.count_nonzero((blurred[s0 - h0 : s1 - h0] > 0.5) != c[s0:s1]))
    return counts


_PROFILE_RADIUS = 3  # px: coarse_side's profile runs over d = -3..3
_SIDE_LIMIT = 3.0  # |coarse_side| at most: a line on flat ground beside an edge (p(0) ~ 0) stays finite
_PROFILE_ROWS = 128  # rows of the box whose gradient and distances are computed at a time


def _line_profile(image: np.ndarray, c_full: np.ndarray, box: tuple[slice, slice],
                  radius: int = _PROFILE_RADIUS) -> np.ndarray:
    """(2 * radius + 1,) the profile p(d) of ``coarse_side`` (module docstring) of the (H, W) bool
    mask ``c_full`` whose line lies inside ``box`` (with ``radius`` + 1 px to spare), 0 where no pixel
    is that far from the line. The values of :func:`pipeline.train.regions.edge_profile` times the
    image's mean gradient: :func:`pipeline.boundary.rgb_gradient` of a strip of rows (with one row and
    column of the image around it, so its border is the image's), its
    :func:`pipeline.boundary.signed_distance` with ``radius`` + 2 rows above and below (every distance
    below ``radius`` + 1 is exact)."""
    h, w = c_full.shape
    ys, xs = box
    gx0, gx1 = max(0, xs.start - 1), min(w, xs.stop + 1)
    halo = radius + 2
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    num, den = np.zeros(len(d)), np.zeros(len(d))
    for s0 in range(ys.start, ys.stop, _PROFILE_ROWS):
        s1 = min(ys.stop, s0 + _PROFILE_ROWS)
        h0, h1 = max(0, s0 - halo), min(h, s1 + halo)
        dist = signed_distance(c_full[h0:h1, xs])[s0 - h0 : s1 - h0]
        near = np.nonzero(np.abs(dist) < radius + 1)
        if near[0].size == 0:
            continue
        g0, g1 = max(0, s0 - 1), min(h, s1 + 1)
        grad = rgb_gradient(image[g0:g1, gx0:gx1])
        g = grad[near[0] + (s0 - g0), near[1] + (xs.start - gx0)].astype(np.float64)
        s = dist[near]
        wts = np.maximum(0.0, 1.0 - np.abs(s[None, :] - d[:, None])).astype(np.float64)
        num += wts @ g
        den += wts.sum(1)
    return np.divide(num, den, out=np.zeros(len(d)), where=den > 0)


def _band_box(c: np.ndarray, r: np.ndarray, band: int) -> tuple[slice, slice] | None:
    lines = np.zeros(c.shape, bool)
    for m in (c, r):
        h, v = _line_pairs(m)
        lines[:, 1:] |= h
        lines[:, :-1] |= h
        lines[1:] |= v
        lines[:-1] |= v
    rows, cols = np.nonzero(lines.any(1))[0], np.nonzero(lines.any(0))[0]
    if rows.size == 0:
        return None
    pad = max(band + 2, 13)  # room for the sigma 4 blur of coarse_detail4 (3 sigma) inside the box
    return (slice(max(0, rows[0] - pad), min(c.shape[0], rows[-1] + pad + 1)),
            slice(max(0, cols[0] - pad), min(c.shape[1], cols[-1] + pad + 1)))


def trust_features(prob: np.ndarray, coarse01: np.ndarray, image: np.ndarray,
                   spread: np.ndarray | None = None, band: int = 3) -> dict[str, float]:
    """The features of the module docstring for one output. prob, coarse01: (H, W) float in [0, 1];
    image: (H, W, 3) uint8; spread: (H, W) float or None."""
    if prob.shape != coarse01.shape or prob.shape != image.shape[:2]:
        raise ValueError(f"trust_features: shapes differ: prob {prob.shape}, coarse {coarse01.shape}, "
                         f"image {image.shape}")
    c_full, r_full = coarse01 > 0.5, prob > 0.5
    c_area = int(np.count_nonzero(c_full))
    r_area = int(np.count_nonzero(r_full))
    out = dict.fromkeys(FEATURES, 0.0)
    out["coarse_edge"] = 1.0
    out["area_change"] = (r_area - c_area) / c_area if c_area else (0.0 if not r_area else 1.0)
    box = _band_box(c_full, r_full, band)
    if box is None or min(box[0].stop - box[0].start, box[1].stop - box[1].start) < 2:
        return out
    c, r, p = c_full[box], r_full[box], prob[box]
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    lines = np.zeros(c.shape, np.uint8)
    for m in (c, r):
        m8 = m.astype(np.uint8)
        lines |= cv2.dilate(m8, kernel) ^ cv2.erode(m8, kernel)
    in_band = lines.astype(bool)
    out["band_uncertainty"] = float(np.mean(1 - np.abs(2 * p[in_band] - 1))) if in_band.any() else 0.0
    if spread is not None:
        out["band_spread"] = float(np.mean(spread[box][in_band])) if in_band.any() else 0.0

    pairs = _BandPairs(image[box], in_band)
    del in_band
    old, n_old = pairs.mean(*pairs.crossing(c))
    new, _ = pairs.mean(*pairs.crossing(r))
    every, _ = pairs.mean()
    del pairs
    out["coarse_edge"] = (old + _EPS) / (every + _EPS)
    out["edge_gain"] = math.log((new + _EPS) / (old + _EPS))

    changed = c != r
    n_changed = int(np.count_nonzero(changed))
    out["shift_px"] = n_changed / max(1, n_old)
    for name, count in _detail_counts(c).items():
        out[name] = count / max(1, n_old)
    p = _line_profile(image, c_full, box)
    mid = _PROFILE_RADIUS
    side = (p[mid + 1] - p[mid - 1]) / max(p[mid], 1e-6)
    out["coarse_side"] = float(np.clip(side, -_SIDE_LIMIT, _SIDE_LIMIT))
    out["coarse_side2"] = float((p[mid + 1] + p[mid + 2] - p[mid - 1] - p[mid - 2]) / max(p.sum(), 1e-6))
    if n_changed:
        # thickness: chessboard distance to the nearest unchanged pixel; a change at most 2 px wide
        # has no pixel farther than 1 from an unchanged one
        dist = cv2.distanceTransform(changed.astype(np.uint8), cv2.DIST_C, 3)
        n, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
        where = np.flatnonzero(changed)  # the labelled pixels (label 0, the rest, is not used)
        thickest = np.zeros(n, np.float32)
        np.maximum.at(thickest, labels.ravel()[where], dist.ravel()[where])
        sizes = np.bincount(labels.ravel()[where], minlength=n)
        thin = (thickest <= 1.0)
        thin[0] = False
        out["thin_share"] = float(sizes[thin].sum()) / n_changed
    return out


LOG_EPS = 0.01


def model_input(name: str, features: Mapping[str, float]) -> float:
    """The value of a model input: a feature of :data:`FEATURES` by name, or ``log_<feature>`` =
    log(feature + 0.01) (for the heavy-tailed, non-negative ones: shift_px, coarse_detail)."""
    if name.startswith("log_"):
        return math.log(max(0.0, float(features[name[4:]])) + LOG_EPS)
    return float(features[name])


def _known_input(name: str) -> bool:
    return name in FEATURES or (name.startswith("log_") and name[4:] in FEATURES)


@dataclass(frozen=True)
class TrustModel:
    """A logistic model over inputs named by :data:`FEATURES` (or ``log_<feature>``,
    :func:`model_input`): score = sigmoid(intercept + sum(coef * (x - mean) / scale)), the estimated
    probability that the refined mask beats the coarse one (mBA). ``min_score``: the acceptance
    threshold of :func:`decide` chosen with the model."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    min_score: float
    meta: Mapping[str, object]

    _MAX_MIN_SCORE: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        self._check_inputs()
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError(f"trust model: {n} features but {len(self.mean)} means, {len(self.scale)} "
                             f"scales, {len(self.coef)} coefficients")
        if any(s <= 0 for s in self.scale):
            raise ValueError("trust model: every scale must be > 0")
        if not 0.0 <= self.min_score <= self._MAX_MIN_SCORE:
            raise ValueError(f"trust model: min_score {self.min_score} must be in "
                             f"[0, {self._MAX_MIN_SCORE:g}]")

    def _check_inputs(self) -> None:
        unknown = [f for f in self.features if not _known_input(f)]
        if unknown:
            raise ValueError(f"trust model: unknown features {unknown}; known: {FEATURES}")

    def score(self, features: Mapping[str, float]) -> float:
        z = self.intercept
        for name, m, s, c in zip(self.features, self.mean, self.scale, self.coef):
            z += c * (model_input(name, features) - m) / s
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_dict(self) -> dict[str, object]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "min_score": self.min_score,
                "meta": dict(self.meta)}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def from_dict(cls, d: Mapping[str, object], source: str = "trust model") -> TrustModel:
        try:
            return cls(**cls._fields_of(d))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a trust model ({e})") from e

    @classmethod
    def _fields_of(cls, d: Mapping[str, object]) -> dict[str, object]:
        return {"features": tuple(d["features"]), "mean": tuple(float(v) for v in d["mean"]),
                "scale": tuple(float(v) for v in d["scale"]), "coef": tuple(float(v) for v in d["coef"]),
                "intercept": float(d["intercept"]), "min_score": float(d["min_score"]),
                "meta": dict(d.get("meta", {}))}


SHIPPED = "shipped"  # the config value naming the file beside the shipped weights


def shipped_trust_model_path() -> str:
    """The trust model shipped beside the demo weights (``pipeline/weights/trust_v1.json``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights",
                        "trust_v1.json")


def load_trust_model(path: str) -> TrustModel:
    """Read a trust model JSON (local path or fsspec URI; ``"shipped"``: the shipped file)."""
    if path == SHIPPED:
        path = shipped_trust_model_path()
    return TrustModel.from_dict(read_model_dict(path), source=f"trust model {os.path.basename(path)}")


def read_model_dict(path: str, what: str = "trust model") -> dict:
    """The JSON object of a model file (local path or fsspec URI); errors name ``what`` and the path."""
    from pipeline.io.fs import read_bytes

    try:
        return json.loads(read_bytes(path).decode())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {path}: not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path}: not JSON ({e})") from e


@dataclass(frozen=True)
class Decision:
    """One output's trust: ``score`` (None without a model), ``accepted`` (the refined mask is
    the output; False: the coarse mask is) and the ``features``."""

    score: float | None
    accepted: bool
    features: Mapping[str, float]


def decide(features: Mapping[str, float], model: TrustModel | None, policy: str = "score",
           min_score: float | None = None) -> Decision:
    """The do-no-harm decision. ``policy``: ``none`` (always the refined mask; the score is still
    reported when there is a model) or ``score`` (the refined mask when score >= ``min_score``,
    default the model's own; else the coarse mask)."""
    if policy not in ("none", "score"):
        raise ValueError(f"accept policy {policy!r}; expected 'none' or 'score'")
    score = None if model is None else model.score(features)
    if policy == "none":
        return Decision(score, True, dict(features))
    if model is None:
        raise ValueError("accept policy 'score' needs a trust model")
    threshold = model.min_score if min_score is None else min_score
    return Decision(score, score >= threshold, dict(features))


@dataclass(frozen=True)
class Outcome:
    """What a trusted refiner returns for one output: ``prob`` (H, W) float32 in [0, 1], the
    output (the coarse mask when not accepted); ``info``: manifest fields (:data:`TRUST_FIELDS`);
    ``candidate``: the refined probabilities when they were not accepted (else None), kept so
    that people can look at what was turned down."""

    prob: np.ndarray
    info: Mapping[str, object]
    candidate: np.ndarray | None = None


def split_outcome(result) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """(prob, info, candidate) of a refine function's result: an :class:`Outcome` or plain
    probabilities (a refiner without trust: no info, no candidate)."""
    if isinstance(result, Outcome):
        return result.prob, dict(result.info), result.candidate
    return result, {}, None
