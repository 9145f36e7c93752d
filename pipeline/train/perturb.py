"""Coarse-mask synthesis and crop augmentation for training (CRM / CascadePSP style). Pure numpy/cv2.

- :func:`resample_contours`: redraw each contour from a random subset of its points, jittered
  (polygon re-sampling of the boundary), holes kept.
- :func:`perturb_until`: random dilations / erosions on random sub-boxes until IoU with the
  ground truth falls below a target (CascadePSP's ``perturb_seg``).
- :func:`signed_distance` (:mod:`pipeline.boundary`): signed distance to a mask's boundary (0 between
  the two pixels, negative inside).
- :func:`jitter_boundary`: move a mask's boundary by a smooth random field of about +-1 px, the way a
  person's line wanders around an image edge (applied to training truths: ``p_truth_jitter``).
- :func:`lowres_degrade`: downsample by 4-16x and upsample bilinearly (a low-resolution annotation).
- :func:`synth_coarse`: identity / low-resolution annotation / CRM-style perturbed coarse masks.
- :func:`augment_crop`: 224x224 random crop, flips, colour jitter and random grey on (image, gt).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.boundary import signed_distance

__all__ = [
    "mask_iou",
    "resample_contours",
    "perturb_until",
    "signed_distance",
    "jitter_boundary",
    "lowres_degrade",
    "synth_coarse",
    "COARSE_KINDS",
    "augment_crop",
]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) masks: uint8 binarised at > 128, or bool (1.0 when both are empty)."""
    a, b = (m if m.dtype == bool else m > 128 for m in (a, b))
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def resample_contours(mask: np.ndarray, rng: np.random.Generator, keep_rate: tuple[float, float] = (0.1, 0.5),
                      jitter: float = 0.01) -> np.ndarray:
    """Polygon re-sampling of every contour of ``mask`` ((H, W) uint8 {0, 255}).

    Each contour keeps a random fraction (U(keep_rate)) of its points in order (at least 3), each
    moved by N(0, jitter * min(H, W)) px, and is refilled (outer contours 255, holes 0).
    Returns (H, W) uint8 {0, 255}.
    """
    h, w = mask.shape
    binary = (mask > 128).astype(np.uint8)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    if not contours:
        return out
    rate = rng.uniform(*keep_rate)
    sd = jitter * min(h, w) * rng.uniform(0.0, 1.0)
    order = sorted(range(len(contours)), key=lambda i: hierarchy[0][i][3] >= 0)  # outer ones first
    for i in order:
        c = contours[i][:, 0, :].astype(np.float32)
        if len(c) >= 6:
            n_keep = max(3, int(len(c) * rate))
            idx = np.sort(rng.choice(len(c), size=n_keep, replace=False))
            c = c[idx] + rng.normal(0.0, sd, size=(n_keep, 2)).astype(np.float32)
        value = 0 if hierarchy[0][i][3] >= 0 else 255
        cv2.fillPoly(out, [np.round(c).astype(np.int32)], value)
    return out


def _random_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    shape = (cv2.MORPH_RECT, cv2.MORPH_ELLIPSE, cv2.MORPH_CROSS)[int(rng.integers(3))]
    return cv2.getStructuringElement(shape, (size, size))


def perturb_until(coarse: np.ndarray, gt: np.ndarray, iou_target: float, rng: np.random.Generator,
                  max_iters: int = 250) -> np.ndarray:
    """Dilate/erode random sub-boxes of ``coarse`` until IoU(coarse, gt) < ``iou_target``.

    coarse, gt: (H, W) uint8 {0, 255}. Kernel sizes scale with the image (3 .. ~min(H, W)/20 px);
    occasionally a single pixel is flipped at a box centre so dilation can grow new blobs/holes.
    Stops after ``max_iters`` rounds even if the target is not reached. Returns (H, W) uint8 {0, 255}.
    """
    h, w = coarse.shape
    seg = np.where(coarse > 128, 255, 0).astype(np.uint8)
    if h <= 2 or w <= 2 or mask_iou(seg, gt) < iou_target:
        return seg
    kmax = max(3, min(h, w) // 20)
    for _ in range(max_iters):
        for _ in range(4):
            lx, ly = int(rng.integers(w)), int(rng.integers(h))
            rx, ry = int(rng.integers(lx + 1, w + 1)), int(rng.integers(ly + 1, h + 1))
            if rng.random() < 0.25:
                seg[(ly + ry) // 2, (lx + rx) // 2] = int(rng.integers(2)) * 255
            kernel = _random_kernel(rng, int(rng.integers(3, kmax + 1)))
            op = cv2.dilate if rng.random() < 0.5 else cv2.erode
            seg[ly:ry, lx:rx] = op(seg[ly:ry, lx:rx], kernel)
        if mask_iou(seg, gt) < iou_target:
            break
    return seg


def jitter_boundary(mask: np.ndarray, rng: np.random.Generator, amplitude: tuple[float, float] = (0.3, 1.2),
                    smooth: tuple[float, float] = (2.0, 8.0)) -> np.ndarray:
    """Move the boundary of ``mask`` ((H, W) uint8, > 128 = inside) by a smooth random field: white
    noise blurred with a Gaussian of sigma U(``smooth``) px, scaled to a standard deviation of
    U(``amplitude``) px and clipped to 3 of those, moves the boundary outward by that many pixels
    (``signed_distance < noise``). A hand-drawn line wanders about an image edge like this, by
    about a pixel with a correlation length of a few pixels; a mask drawn that way is what a good
    coarse mask looks like (the identity case). Pixels farther than 3
    amplitudes from the boundary keep their value. Returns (H, W) uint8 {0, 255}.
    """
    inside = mask > 128
    if inside.all() or not inside.any():
        return np.where(inside, 255, 0).astype(np.uint8)
    sigma = float(rng.uniform(*smooth))
    noise = cv2.GaussianBlur(rng.standard_normal(mask.shape).astype(np.float32), (0, 0), sigma)
    amp = float(rng.uniform(*amplitude))
    noise = np.clip(noise * (amp / max(float(noise.std()), 1e-6)), -3 * amp, 3 * amp)
    return np.where(signed_distance(inside) < noise, 255, 0).astype(np.uint8)


def lowres_degrade(mask: np.ndarray, rng: np.random.Generator, factor_range: tuple[float, float] = (4, 16),
                   factor: float | None = None) -> np.ndarray:
    """Downsample (area) by a factor in ``factor_range`` (or ``factor``) and upsample bilinearly.

    mask: (H, W) uint8 -> (H, W) uint8 soft values in [0, 255].
    """
    h, w = mask.shape
    f = float(factor) if factor is not None else float(rng.uniform(*factor_range))
    sh, sw = max(1, int(round(h / f))), max(1, int(round(w / f)))
    small = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


COARSE_KINDS = ("identity", "annotation", "perturbed")


def coarse_kind(u: float, p_identity: float = 0.1, p_annotation: float = 0.35) -> str:
    """Which kind of coarse mask :func:`synth_coarse` makes for the uniform draw ``u`` in [0, 1)."""
    if u < p_identity:
        return "identity"
    return "annotation" if u < p_identity + p_annotation else "perturbed"


def synth_coarse(gt: np.ndarray, rng: np.random.Generator, iou_range: tuple[float, float] = (0.75, 1.0),
                 p_resample: float = 0.5, p_lowres: float = 0.3, p_annotation: float = 0.35,
                 p_identity: float = 0.1, kind_draw: float | None = None) -> np.ndarray:
    """A synthetic coarse mask for ``gt`` ((H, W) uint8 {0, 255}), of one of three kinds:

    - "identity" (probability ``p_identity``): the truth itself (half of the time) or the truth
      with a few dilations/erosions (target IoU U(0.97, 1); one round of box operations may
      overshoot a little) — a good mask must stay good;
    - "annotation" (``p_annotation``): a low-resolution annotation, the truth downsampled 4-16x
      (area) and upsampled bilinearly, thresholded at 128 half of the time (as a binary mask
      drawn at low resolution), else left soft;
    - "perturbed" (the rest; CRM / CascadePSP style): with probability ``p_resample`` re-sample
      the contour polygons (kept only if the IoU stays within 0.1 below the target), then perturb
      sub-boxes until the IoU with gt is below a target drawn from U(iou_range), then with
      probability ``p_lowres`` degrade the resolution by 4-16x (soft).

    The kind follows :func:`coarse_kind` of a uniform draw taken from ``rng`` first, or of
    ``kind_draw`` when the caller drew it already (to know the kind beforehand).
    Returns (H, W) uint8 in [0, 255].
    """
    seg = np.where(gt > 128, 255, 0).astype(np.uint8)
    kind = coarse_kind(rng.random() if kind_draw is None else kind_draw, p_identity, p_annotation)
    if kind == "identity":
        if rng.random() < 0.5:
            return seg
        return perturb_until(seg, gt, float(rng.uniform(0.97, 1.0)), rng)
    if kind == "annotation":
        soft = lowres_degrade(seg, rng)
        return np.where(soft > 128, 255, 0).astype(np.uint8) if rng.random() < 0.5 else soft
    target = float(rng.uniform(*iou_range))
    if rng.random() < p_resample:
        resampled = resample_contours(seg, rng)
        if mask_iou(resampled, gt) >= target - 0.1:  # re-sampling may wreck thin shapes: keep it bounded
            seg = resampled
    seg = perturb_until(seg, gt, target, rng)
    if rng.random() < p_lowres:
        seg = lowres_degrade(seg, rng)
    return seg


def augment_crop(image: np.ndarray, gt: np.ndarray, rng: np.random.Generator, size: int = 224,
                 jitter: float = 0.2, p_grey: float = 0.1,
                 extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random crop (``size`` x ``size``), flips, brightness/contrast/saturation jitter, random grey.

    image: (H, W, 3) uint8; gt: (H, W) uint8; extra: optional (H, W, C) uint8 aligned map (e.g. SAM
    colours) cropped/flipped alike but never colour-jittered. Images smaller than ``size`` are
    upscaled first. The crop prefers windows that contain the boundary (up to 5 tries).
    Returns (image (size, size, 3) uint8, gt (size, size) uint8, extra or None).
    """
    h, w = gt.shape
    if min(h, w) < size:
        s = size / min(h, w)
        nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        gt = cv2.resize(gt, (nw, nh), interpolation=cv2.INTER_NEAREST)
        if extra is not None:
            extra = cv2.resize(extra, (nw, nh), interpolation=cv2.INTER_NEAREST)
        h, w = nh, nw
    for _ in range(5):
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        frac = (gt[y0:y0 + size, x0:x0 + size] > 128).mean()
        if 0.02 < frac < 0.98:
            break
    sl = (slice(y0, y0 + size), slice(x0, x0 + size))
    im, g = image[sl].astype(np.float32), gt[sl].copy()
    ex = extra[sl].copy() if extra is not None else None
    if rng.random() < 0.5:
        im, g = im[:, ::-1], g[:, ::-1]
        ex = ex[:, ::-1] if ex is not None else None
    if rng.random() < 0.2:
        im, g = im[::-1], g[::-1]
        ex = ex[::-1] if ex is not None else None
    b, c, s = (1 + rng.uniform(-jitter, jitter) for _ in range(3))
    grey = im.mean(axis=2, keepdims=True)
    im = grey + (im - grey) * s
    im = (im - im.mean()) * c + im.mean() * b
    if rng.random() < p_grey:
        im = np.repeat(im.mean(axis=2, keepdims=True), 3, axis=2)
    im = np.clip(np.rint(im), 0, 255).astype(np.uint8)
    return (np.ascontiguousarray(im), np.ascontiguousarray(g),
            np.ascontiguousarray(ex) if ex is not None else None)
