"""Readers for the golden CRM test data (tests/data/golden_crm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden_crm"


def read_golden(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, coarse (H, W) uint8, official prob (H, W) float32)."""
    image = np.array(Image.open(GOLDEN_DIR / f"{name}_im.png").convert("RGB"))
    coarse = np.array(Image.open(GOLDEN_DIR / f"{name}_seg.png").convert("L"))
    prob = np.load(GOLDEN_DIR / f"{name}_prob_official.npz")["prob"]
    return image, coarse, prob
