"""A mask's line against its image: two measures shared by the trust features (inference) and the
training data (real-edge regions, coarse-mask synthesis), and one way to redraw the line with
another convention (benchmarks' ``--truth-offset``, training's ``p_truth_offset``). Pure numpy / OpenCV.

- :func:`signed_distance`: each pixel's signed Euclidean distance to a mask's boundary;
- :func:`rgb_gradient`: the Sobel gradient magnitude of an RGB image, linear in the colour values;
- :func:`move_line`: a mask with its line moved by whole pixels (another annotation convention).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["signed_distance", "rgb_gradient", "move_line"]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 signed Euclidean distance of each pixel centre to the boundary of ``mask``
    ((H, W), foreground > 128 or bool): the boundary lies half-way between the last pixels inside
    (-0.5) and the first outside (+0.5); negative inside. ``signed_distance(m) < t`` moves the
    boundary outward by t pixels (inward for t < 0)."""
    m = (mask if mask.dtype == bool else mask > 128).astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(m > 0, 0.5 - inside, outside - 0.5).astype(np.float32)


def rgb_gradient(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 Sobel magnitude of the RGB values as floats (linear: a symmetric edge gives a
    symmetric profile)."""
    rgb = image.astype(np.float32)
    gx, gy = cv2.Sobel(rgb, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(rgb, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt((gx * gx + gy * gy).reshape(*image.shape[:2], -1).sum(-1))


def move_line(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` ((H, W) uint8) with its line moved ``px`` pixels outward (> 0: dilated, < 0: eroded,
    by a 3x3 cross per pixel): the same object drawn with another line convention (people draw
    about a pixel outside the image's edge). Used on truths by the benchmarks (``--truth-offset``)
    and by training (``optim.p_truth_offset``)."""
    if px == 0:
        return mask
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    op = cv2.dilate if px > 0 else cv2.erode
    return op(mask, cross, iterations=abs(px))
