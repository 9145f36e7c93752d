"""Composite images with exact ground truth: a region of one photo, cut by a shape, pasted onto another.

Pure numpy / OpenCV / PIL (no I/O besides reading font files). The alpha matte is rendered at a
supersampled resolution and area-averaged down, so boundaries are anti-aliased; the ground truth is
the same shape binarised at 128 (``gt = alpha * 255 > 128``... rounded, see :func:`alpha_to_gt`).
Noise, blur and JPEG-like softness are applied to the *whole* composite after pasting, so the
seam carries the same statistics as the rest of the picture and is not a trivial cue.

Shapes (``SHAPE_KINDS``): smooth blobs, thin branching structures, blobs with holes, font glyph
outlines, and unions of these.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "SHAPE_KINDS",
    "Composite",
    "alpha_to_gt",
    "find_fonts",
    "random_alpha",
    "paste",
    "random_crop_resize",
    "make_composite",
]

SHAPE_KINDS = ("blob", "branches", "holes", "glyph", "mixed")
_GLYPH_CHARS = "ABDEGHKMNPQRSWXYZabdegkmpqswxyz0123456789&@%#?$§ß"


@dataclass
class Composite:
    """A generated sample.

    image: (H, W, 3) uint8 RGB (after matched noise/blur); gt: (H, W) uint8 in {0, 255};
    alpha: (H, W) float32 in [0, 1] (the anti-aliased matte); kind: shape kind used.
    """

    image: np.ndarray
    gt: np.ndarray
    alpha: np.ndarray
    kind: str


def find_fonts(dirs: tuple[str, ...] = ("/usr/share/fonts",)) -> list[str]:
    """Return the sorted TrueType/OpenType font files found under ``dirs`` (may be empty)."""
    out: list[str] = []
    for d in dirs:
        for ext in ("ttf", "otf", "TTF", "OTF"):
            out.extend(glob.glob(os.path.join(d, "**", f"*.{ext}"), recursive=True))
    return sorted(set(out))


def alpha_to_gt(alpha: np.ndarray) -> np.ndarray:
    """Binarise a matte: alpha (H, W) float in [0, 1] -> (H, W) uint8 {0, 255}, 8-bit value > 128."""
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255)
    return np.where(a8 > 128, 255, 0).astype(np.uint8)


def _smooth_polygon(rng: np.random.Generator, cx: float, cy: float, r0: float, n_harm: int,
                    roughness: float, n_pts: int = 360) -> np.ndarray:
    """Closed star-shaped curve r(t) = r0 (1 + sum a_k cos(k t + p_k)); returns (n_pts, 2) float xy."""
    t = np.linspace(0, 2 * np.pi, n_pts, endpoint=False)
    r = np.ones_like(t)
    for k in range(1, n_harm + 1):
        r += rng.normal(0, roughness / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = r0 * np.clip(r, 0.15, 3.0)
    sx, sy = rng.uniform(0.6, 1.4, size=2)
    return np.stack([cx + sx * r * np.cos(t), cy + sy * r * np.sin(t)], axis=1)


def _fill(canvas: np.ndarray, poly: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], int(value), lineType=cv2.LINE_8)


def _draw_blob(canvas: np.ndarray, rng: np.random.Generator, value: int = 255,
               scale: float = 1.0) -> None:
    h, w = canvas.shape
    m = min(h, w)
    r0 = rng.uniform(0.18, 0.38) * m * scale
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    _fill(canvas, _smooth_polygon(rng, cx, cy, r0, int(rng.integers(3, 9)), rng.uniform(0.1, 0.45)), value)


def _draw_branches(canvas: np.ndarray, rng: np.random.Generator, thin_px: float) -> None:
    """Random tree of thick-to-thin line segments; ``thin_px`` is the thinnest width on this canvas."""
    h, w = canvas.shape
    m = min(h, w)
    stack = [(rng.uniform(0.3, 0.7) * w, rng.uniform(0.55, 0.95) * h, -np.pi / 2 + rng.normal(0, 0.3),
              rng.uniform(0.25, 0.45) * m, thin_px * rng.uniform(4, 12), 0)]
    n_seg = 0
    while stack and n_seg < 400:
        x, y, ang, length, width, depth = stack.pop()
        pts = [(x, y)]
        for _ in range(6):  # a slightly curved limb
            ang += rng.normal(0, 0.15)
            x += np.cos(ang) * length / 6
            y += np.sin(ang) * length / 6
            pts.append((x, y))
        cv2.polylines(canvas, [np.round(np.array(pts)).astype(np.int32)], False, 255,
                      thickness=max(1, int(round(width))), lineType=cv2.LINE_8)
        n_seg += 1
        if depth < 5 and length > 0.02 * m:
            for _ in range(int(rng.integers(2, 4))):
                stack.append((x, y, ang + rng.uniform(-0.9, 0.9), length * rng.uniform(0.5, 0.8),
                              max(thin_px, width * rng.uniform(0.5, 0.8)), depth + 1))


def _draw_holes(canvas: np.ndarray, rng: np.random.Generator) -> None:
    _draw_blob(canvas, rng, 255, scale=1.3)
    ys, xs = np.nonzero(canvas)
    if len(xs) == 0:
        return
    m = min(canvas.shape)
    for _ in range(int(rng.integers(1, 6))):
        i = int(rng.integers(len(xs)))
        r0 = rng.uniform(0.02, 0.08) * m
        _fill(canvas, _smooth_polygon(rng, xs[i], ys[i], r0, 4, rng.uniform(0.05, 0.3)), 0)
    for _ in range(int(rng.integers(0, 4))):  # ring-shaped cuts
        i = int(rng.integers(len(xs)))
        cv2.ellipse(canvas, (int(xs[i]), int(ys[i])), (int(rng.uniform(0.03, 0.1) * m),) * 2, 0, 0,
                    float(rng.uniform(90, 300)), 0, thickness=max(1, int(0.008 * m)))


def _draw_glyph(canvas: np.ndarray, rng: np.random.Generator, fonts: list[str]) -> None:
    h, w = canvas.shape
    if not fonts:
        _draw_holes(canvas, rng)
        return
    text = "".join(rng.choice(list(_GLYPH_CHARS), size=int(rng.integers(1, 4))))
    size = int(min(h, w) * rng.uniform(0.35, 0.8) / max(1, len(text)) * 1.6)
    font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size=max(8, size))
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (w - (right - left)) / 2 - left + rng.uniform(-0.15, 0.15) * w
    y = (h - (bottom - top)) / 2 - top + rng.uniform(-0.15, 0.15) * h
    draw.text((x, y), text, fill=255, font=font)
    glyph = np.asarray(img)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-35, 35)), 1.0)
    glyph = cv2.warpAffine(glyph, rot, (w, h), flags=cv2.INTER_NEAREST)
    np.maximum(canvas, np.where(glyph > 127, 255, 0).astype(np.uint8), out=canvas)


def _draw(kind: str, canvas: np.ndarray, rng: np.random.Generator, fonts: list[str], thin_px: float) -> None:
    if kind == "blob":
        _draw_blob(canvas, rng)
    elif kind == "branches":
        _draw_branches(canvas, rng, thin_px)
        _draw_blob(canvas, rng, scale=rng.uniform(0.2, 0.5))
    elif kind == "holes":
        _draw_holes(canvas, rng)
    else:
        _draw_glyph(canvas, rng, fonts)


def random_alpha(rng: np.random.Generator, height: int, width: int, kind: str | None = None,
                 fonts: list[str] | None = None, supersample: int | None = None) -> tuple[np.ndarray, str]:
    """Render a random shape with anti-aliased edges.

    Returns (alpha (height, width) float32 in [0, 1], kind). The shape is drawn binary at
    ``supersample`` x the size (default 4, less for very large outputs) and area-averaged down,
    so boundary pixels take fractional coverage values.
    """
    if height < 8 or width < 8:
        raise ValueError(f"random_alpha: size {height}x{width} too small (min 8x8)")
    kind = kind or str(rng.choice(SHAPE_KINDS))
    if kind not in SHAPE_KINDS:
        raise ValueError(f"random_alpha: unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    ss = supersample or max(2, min(4, 12000 // max(height, width)))
    canvas = np.zeros((height * ss, width * ss), np.uint8)
    fonts = fonts if fonts is not None else find_fonts()
    kinds = [kind] if kind != "mixed" else [str(k) for k in rng.choice(
        ["blob", "branches", "holes", "glyph"], size=2, replace=False)]
    for k in kinds:  # mixed: union of two different kinds
        _draw(k, canvas, rng, fonts, thin_px=ss * rng.uniform(1.0, 3.0) * max(1.0, min(height, width) / 800))
    alpha = cv2.resize(canvas.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32), kind


def random_crop_resize(rng: np.random.Generator, photo: np.ndarray, height: int, width: int,
                       min_frac: float = 0.5) -> np.ndarray:
    """Random crop of ``photo`` (h, w, 3) uint8 with the target aspect, resized to (height, width)."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    frac = rng.uniform(min_frac, 1.0)
    ch = int(min(ph, pw / aspect) * frac)
    cw = max(1, int(round(ch * aspect)))
    ch = max(1, min(ch, ph))
    cw = min(cw, pw)
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if ch > height else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interp)


def paste(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, blur_sigma: float = 0.0,
          noise_sigma: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Alpha-composite fg over bg, then blur and noise the WHOLE image alike.

    fg, bg: (H, W, 3) uint8; alpha: (H, W) float in [0, 1]. With blur_sigma = noise_sigma = 0 the
    result is exactly fg where alpha == 1 and bg where alpha == 0. Returns (H, W, 3) uint8.
    """
    if fg.shape != bg.shape or fg.shape[:2] != alpha.shape:
        raise ValueError(f"paste: shapes differ fg={fg.shape} bg={bg.shape} alpha={alpha.shape}")
    a = alpha[..., None].astype(np.float32)
    out = a * fg.astype(np.float32) + (1.0 - a) * bg.astype(np.float32)
    if blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    if noise_sigma > 0:
        rng = rng or np.random.default_rng()
        out = out + rng.normal(0.0, noise_sigma, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_composite(rng: np.random.Generator, fg_photo: np.ndarray, bg_photo: np.ndarray, height: int,
                   width: int, kind: str | None = None, fonts: list[str] | None = None) -> Composite:
    """One composite of size (height, width) from two photos (h, w, 3) uint8 RGB.

    The foreground region is re-coloured slightly toward the background's mean sometimes (so colour
    alone does not separate them); blur sigma U(0, 1.2) px and noise sigma U(0, 4) grey levels are
    applied to the whole image.
    """
    alpha, kind = random_alpha(rng, height, width, kind, fonts)
    fg = random_crop_resize(rng, fg_photo, height, width).astype(np.float32)
    bg = random_crop_resize(rng, bg_photo, height, width)
    if rng.random() < 0.3:  # pull foreground statistics toward background's: a harder, lower-contrast seam
        t = rng.uniform(0.2, 0.6)
        fg = fg * (1 - t) + t * (fg - fg.mean((0, 1)) + bg.reshape(-1, 3).mean(0))
    fg = np.clip(fg, 0, 255).astype(np.uint8)
    img = paste(fg, bg, alpha, blur_sigma=float(rng.uniform(0.0, 1.2)), noise_sigma=float(rng.uniform(0, 4)),
                rng=rng)
    return Composite(image=img, gt=alpha_to_gt(alpha), alpha=alpha, kind=kind)
