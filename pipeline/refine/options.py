"""Options of the refinement cascade and its decoding modes / exact optimisations."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["RefineOptions", "DECODE_MODES", "MIN_ENCODER_TILE", "AUTO_PIXELS", "AUTO_TILE",
           "TTA_MODES", "TTA_FLIPS", "PRECISIONS",
           "resolve_precision", "autocast_dtype", "options_for_device", "encoder_tile_pixels"]

DECODE_MODES = ("full", "strided", "bbox", "contour")
# Flips per test-time augmentation mode: (flip rows, flip columns) for each pass.
TTA_FLIPS = {
    "none": ((False, False),),
    "rot180": ((False, False), (True, True)),
    "flip4": ((False, False), (False, True), (True, False), (True, True)),
}
TTA_MODES = tuple(TTA_FLIPS)
PRECISIONS = ("fp32", "bf16", "fp16")
MIN_ENCODER_TILE = 64  # smallest `tile_encoder` side in px
AUTO_PIXELS = 16_000_000  # `tile_encoder: auto` tiles an encoder input above this many pixels
AUTO_TILE = 2048  # ... with owned tiles of this side (px of the encoder input)


def encoder_tile_pixels(tile_encoder: int | str | bool, max_pixels: int) -> int | None:
    """Pixels of one encoder tile when an image of ``max_pixels`` pixels is encoded in tiles
    (``tile_encoder``: ``auto`` tiles above AUTO_PIXELS with AUTO_TILE-px tiles; an int is the
    tile side), else None. What the memory plans count (CPU RAM and GPU memory alike)."""
    if tile_encoder in ("off", False):
        return None
    if tile_encoder == "auto":
        return AUTO_TILE**2 if max_pixels > AUTO_PIXELS else None
    return min(int(tile_encoder) ** 2, max_pixels)


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> bf16 on a CUDA card with native bf16 (compute capability >= 8.0: A100, H100,
    RTX 30xx and newer), fp16 on older cards (V100, T4: ``torch.cuda.is_bf16_supported()`` also
    counts emulation there), fp32 elsewhere; any other value is returned as is."""
    if precision != "auto":
        return precision
    if str(device).startswith("cuda"):
        import torch

        index = torch.device(device).index
        major, _ = torch.cuda.get_device_capability(torch.cuda.current_device() if index is None else index)
        return "bf16" if major >= 8 else "fp16"
    return "fp32"


def autocast_dtype(precision: str):
    """The torch.autocast type of a resolved precision: None for fp32 (no autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def options_for_device(options: dict, device) -> RefineOptions:
    """RefineOptions from a job's keyword arguments, ``precision: auto`` resolved for ``device``."""
    precision = resolve_precision(options.get("precision", "fp32"), device)
    return RefineOptions(**{**options, "precision": precision})


@dataclass(frozen=True)
class RefineOptions:
    """How `refine` runs. Defaults: the official cascade with every exact optimisation on.

    Cascade: reflect-pad by `pad`, then for each scale s in `scales` encode the padded image
    resized by s and decode full-resolution pixels; the soft output feeds the next scale.

    `align` (1 = official): when > 1, the padded input is further reflect-padded at the bottom
    and right to a multiple of `align`, and every scale's encoder input size is rounded to a
    multiple of it, so that the encoder's stride-2/4/8 maps tile the input exactly (with an odd
    size, ceil-sized feature maps cover one pixel more than the image and shift the decoded
    mask by up to a pixel). The extra padding is cropped with the rest.

    Decoding (`decode`):
      "full"     every padded full-resolution pixel (the official behaviour);
      "strided"  every `stride`-th pixel (plus the last row/column); a pixel in between keeps
                 the bilinear blend of its 4 decoded neighbours when they agree (binary at
                 0.5) and is decoded when they disagree;
      "bbox"     only inside the box of the coarse mask padded by `roi_margin` pixels;
      "contour"  only within `roi_margin` pixels of the coarse mask's contour;
      ROI modes keep the incoming value (coarse, then the previous scale's output) elsewhere.
      `roi_margin=None` picks max(16, 3% of the long side).

    Exact optimisations (each switchable; all off = the official-style computation):
      skip_layer4        do not run the encoder's layer4 (its result is unused);
      layer1_strips      run the ResNet encoder's max-pool + layer1 (its memory peak) in row
                         strips with a 4-row halo (exact);
      fold_bn            fold BatchNorm into the preceding convolution; takes effect in
                         `prepare_model` (refine runs whatever model it is given);
      factorize_decoder  split the decoder's first linear layer into a feature part computed
                         once per feature cell and a 6-value coordinate part per query;
      patched_fusion     run upsample + concat + last_conv over tiles with a 1-cell halo;
      stream             compute fusion and decoding tile by tile, so the full-resolution
                         feature map is never held (implies patched fusion);
      tile               tile side in full-resolution query pixels (a tile holds about
                         tile * h_F / H feature cells per side, at least 4);
      query_chunk        queries per decoder call in the official-style decoder.

    Tiled encoding (`tile_encoder`, exact up to float rounding; `pipeline.refine.tiled`): the
    encoder runs over tiles of the scaled input with a halo covering its receptive field and the
    level maps are stitched, so its working memory is bounded by a tile, not the image.
      "auto"     tile (2048 px) where a scale's encoder input exceeds 16 MP (the default);
      "off"      never tile (also YAML's bare ``off``, which it reads as false);
      an int     tile side in px of the encoder input (>= 64; rounded up to the encoder's
                 stride), wherever the input is larger than one tile.

    Precision (`precision`): "fp32" (default), or "bf16" / "fp16": the encoder, fusion and the
    decoder's MLP run under torch.autocast in that type, while the LIIF coordinate terms (relative
    offsets, query coordinates, cells: added to the first layer's feature part in float32; the
    non-factorised decoders run their whole first layer in float32), the ensemble weights, the
    mask prior and the sigmoid stay float32. Not exact: see the parity
    tests and `samsr benchmark gpu`.

    Test-time augmentation (`tta`, not exact: it changes the result):
      "none"     one pass (the official behaviour);
      "rot180"   the mean of the probabilities of the input and of its 180-degree rotation
                 (rotated back): a boundary shift the model makes in one direction (e.g. from
                 how feature maps align with the pixel grid) cancels; 2x the cost;
      "flip4"    the mean over the input and its horizontal, vertical and both flips; 4x the cost.

    Confidence gate (`gate`, not exact; 0 = off, the official behaviour): output pixels whose
    final probability is within `gate` of 0.5 (the refiner is unsure) keep the coarse mask's
    value (resized to the image like the model's input), so a refiner changes a mask only
    where it is confident. Applied once, after the cascade and any test-time augmentation.

    Line level (`threshold`, not exact; 0.5 = the official behaviour): the probability level that
    becomes the mask's line, mapped to 0.5 before the gate and the edge check; ``"area"`` picks,
    per output, the level within `area_bounds` at which the refined mask keeps the coarse mask's
    area (`pipeline.refine.levels`).

    Edge check (`edge_check`, not exact; None = off, the official behaviour): a margin m >= 0.
    Each connected change the refiner made (pixels added, or removed, vs the coarse mask) is kept
    only when the refined line around it crosses a mean colour contrast at least (1 + m) times that of
    the coarse line there; other changes take the coarse values back
    (`pipeline.refine.edgecheck`). Applied after the gate.
    """

    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    pad: int = 32
    align: int = 1
    decode: str = "full"
    stride: int = 4
    roi_margin: int | None = None
    skip_layer4: bool = True
    layer1_strips: bool = True
    fold_bn: bool = True
    factorize_decoder: bool = True
    patched_fusion: bool = True
    stream: bool = True
    tile: int = 256
    query_chunk: int = 1 << 16
    tile_encoder: int | str = "auto"
    tta: str = "none"
    precision: str = "fp32"
    gate: float = 0.0
    edge_check: float | None = None
    threshold: float | str = 0.5
    area_bounds: tuple[float, float] = (0.25, 0.75)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"RefineOptions.decode={self.decode!r}; expected one of {DECODE_MODES}")
        if not self.scales or any(not 0 < s <= 4 for s in self.scales):
            raise ValueError(f"RefineOptions.scales={self.scales!r}; each must be in (0, 4]")
        if self.pad < 0:
            raise ValueError(f"RefineOptions.pad={self.pad}; must be >= 0")
        if self.align < 1:
            raise ValueError(f"RefineOptions.align={self.align}; must be >= 1")
        if self.stride < 1:
            raise ValueError(f"RefineOptions.stride={self.stride}; must be >= 1")
        if self.tile < 4:
            raise ValueError(f"RefineOptions.tile={self.tile}; must be >= 4")
        if self.tile_encoder is False:  # YAML 1.1 reads a bare `off` as false
            object.__setattr__(self, "tile_encoder", "off")
        if not (self.tile_encoder in ("off", "auto") or (
                isinstance(self.tile_encoder, int) and not isinstance(self.tile_encoder, bool)
                and self.tile_encoder >= MIN_ENCODER_TILE)):
            raise ValueError(f"RefineOptions.tile_encoder={self.tile_encoder!r}; expected 'off', 'auto' or a "
                             f"tile side in px >= {MIN_ENCODER_TILE}")
        if self.query_chunk < 1:
            raise ValueError(f"RefineOptions.query_chunk={self.query_chunk}; must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"RefineOptions.precision={self.precision!r}; expected one of {PRECISIONS}")
        if not 0.0 <= self.gate < 0.5:
            raise ValueError(f"RefineOptions.gate={self.gate}; must be in [0, 0.5)")
        if self.edge_check is not None and not 0.0 <= self.edge_check <= 10.0:
            raise ValueError(f"RefineOptions.edge_check={self.edge_check}; must be None (off) or in [0, 10]")
        if isinstance(self.threshold, str):
            if self.threshold != "area":
                raise ValueError(f"RefineOptions.threshold={self.threshold!r}; expected a number in (0, 1) "
                                 "or 'area'")
        elif not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"RefineOptions.threshold={self.threshold}; must be in (0, 1) or 'area'")
        lo, hi = self.area_bounds
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"RefineOptions.area_bounds={self.area_bounds}; need 0 < low <= high < 1")
        if self.tta not in TTA_MODES:
            raise ValueError(f"RefineOptions.tta={self.tta!r}; expected one of {TTA_MODES}")
        if self.roi_margin is not None and self.roi_margin < 0:
            raise ValueError(f"RefineOptions.roi_margin={self.roi_margin}; must be >= 0")

    @classmethod
    def official(cls, **overrides) -> RefineOptions:
        """The official-style computation: layer4 run, BN kept, whole-map fusion, grid_sample
        decoding of every pixel at every scale (in query chunks)."""
        base = cls(
            skip_layer4=False,
            layer1_strips=False,
            fold_bn=False,
            factorize_decoder=False,
            patched_fusion=False,
            stream=False,
        )
        return replace(base, **overrides)
