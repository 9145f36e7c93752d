"""`refine`: the CRM test-time cascade (DESIGN §2.1) with decoding modes and exact optimisations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.crm import CRMNet, make_coord
from pipeline.refine.edgecheck import edge_check
from pipeline.refine.encoder import encode_levels, encode_reduced
from pipeline.refine.heartbeat import tick
from pipeline.refine.inputs import PaddedImage, coarse01_tensor, pad_index, padded_mask
from pipeline.refine.levels import area_level, remap_level
from pipeline.refine.modes import roi_mask, strided_decode
from pipeline.refine.options import TTA_FLIPS, RefineOptions, autocast_dtype
from pipeline.refine.tiles import FullFeatures, StreamFeatures, TileDecoder, fuse_patched, tile_cells

__all__ = ["refine", "refine_detailed", "Refined", "reflect_pad"]


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad (B, C, H, W) by `pad` on every side, as F.pad(mode="reflect") does; sides
    shorter than `pad` + 1 are reflected repeatedly (replicated when of length 1)."""
    remaining = pad
    while remaining > 0:
        h, w = x.shape[-2:]
        if min(h, w) == 1:
            return F.pad(x, (remaining,) * 4, mode="replicate")
        step = min(remaining, h - 1, w - 1)
        x = F.pad(x, (step,) * 4, mode="reflect")
        remaining -= step
    return x


def _describe(array) -> str:
    return f"{type(array).__name__} {getattr(array, 'shape', None)} {getattr(array, 'dtype', None)}"


def _check_inputs(
    model: CRMNet, image: np.ndarray, coarse: np.ndarray, sam_colors: np.ndarray | None
) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {_describe(image)}")
    if not isinstance(coarse, np.ndarray) or coarse.dtype != np.uint8 or coarse.ndim != 2:
        raise ValueError(f"coarse must be (h, w) uint8, got {_describe(coarse)}")
    if min(image.shape[:2]) < 1 or min(coarse.shape) < 1:
        raise ValueError(f"empty image {image.shape} or coarse mask {coarse.shape}")
    needs_colors = model.takes_proposals
    if needs_colors and sam_colors is None:
        raise ValueError("this model takes a SAM colour map (7 input channels): pass sam_colors")
    if not needs_colors and sam_colors is not None:
        raise ValueError(f"this model takes {model.in_channels} input channels: sam_colors must be None")
    if sam_colors is not None and (
        sam_colors.dtype != np.uint8
        or sam_colors.ndim != 3
        or sam_colors.shape[2] != 3
        or min(sam_colors.shape[:2]) < 1
    ):
        raise ValueError(f"sam_colors must be (h, w, 3) uint8, got {sam_colors.shape} {sam_colors.dtype}")


def _from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing ``a``'s memory, or a copy when ``a`` is read-only (e.g. decoded by Pillow)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _scale_probability(
    model: CRMNet, base: PaddedImage, mask_in: Tensor, scale: float, roi: Tensor | None,
    options: RefineOptions,
) -> Tensor:
    """One cascade step: (1, C, Hp, Wp) base input without mask (gathered on demand), (1, 1, Hp, Wp)
    mask in [-1, 1] -> (Hp, Wp) probabilities."""
    hp, wp = base.shape[-2:]
    a = options.align
    size = (max(a, round(hp * scale / a) * a), max(a, round(wp * scale / a) * a))
    official_decoder = not options.factorize_decoder and not options.stream
    if options.stream or options.patched_fusion:
        source = StreamFeatures(model, *encode_reduced(model, base, mask_in, size, options))
        if not options.stream:
            h, w = source.shape
            feat = fuse_patched(source, tile_cells(options.tile, h, hp), tile_cells(options.tile, w, wp))
            source = FullFeatures(feat)
    else:
        x1, x2, x3 = encode_levels(model, base, mask_in, size, options)
        source = FullFeatures(model.aspp_(x1, x2, x3))
        del x1, x2, x3
    if official_decoder:
        decoder = _OfficialDecoder(model, source.feat, hp, wp, options.query_chunk, mask_in[0, 0])
    else:
        cache = options.decode != "full" and options.stream
        prior = (model.mask_prior, mask_in[0, 0]) if model.mask_prior else None
        decoder = TileDecoder(model, source, hp, wp, options.tile, options.factorize_decoder, cache, prior)
    if options.decode == "full":
        out = torch.empty((hp, wp), device=mask_in.device)
        decoder.decode(out)
    elif options.decode == "strided":
        out = strided_decode(decoder.decode, (hp, wp), options.stride, mask_in.device)
    else:
        out = (mask_in[0, 0] + 1) / 2  # the incoming value outside the region
        decoder.decode(out, roi)
    return out


class _OfficialDecoder:
    """The official decoder (`CRMNet.query`, grid_sample) over chunks of the query list;
    `mask` (n_rows, n_cols) in [-1, 1] is the incoming mask (the prior of a mask-prior model)."""

    def __init__(self, model: CRMNet, feat: Tensor, n_rows: int, n_cols: int, chunk: int,
                 mask: Tensor) -> None:
        self.model, self.feat, self.chunk = model, feat, chunk
        self.mask = mask.reshape(-1) if model.mask_prior else None
        self.row_coord = make_coord((n_rows,), device=feat.device)[:, 0]
        self.col_coord = make_coord((n_cols,), device=feat.device)[:, 0]
        self.cell = torch.tensor([2 / n_rows, 2 / n_cols], dtype=torch.float32, device=feat.device)

    def decode(self, out: Tensor, mask: Tensor | None = None) -> None:
        n_rows, n_cols = out.shape
        flat = out.view(-1)
        total = n_rows * n_cols
        selected = None if mask is None else mask.view(-1).nonzero()[:, 0]
        count = total if selected is None else selected.numel()
        for start in range(0, count, self.chunk):
            tick()
            stop = min(start + self.chunk, count)
            if selected is None:
                index = torch.arange(start, stop, device=out.device)
            else:
                index = selected[start:stop]
            coord = torch.stack([self.row_coord[index // n_cols], self.col_coord[index % n_cols]], dim=-1)
            cell = self.cell.expand(coord.shape[0], 2)
            prior = None if self.mask is None else self.mask[index][None]
            flat[index] = torch.sigmoid(self.model.query(self.feat, coord[None], cell[None], prior)[0])


@dataclass
class Refined:
    """What one `refine_detailed` call produced.

    prob: (H, W) float32 final probabilities (what `refine` returns);
    coarse01: (H, W) float32 coarse mask in [0, 1], resized to the image as the model saw it;
    spread: (H, W) float32 standard deviation of the test-time augmentation passes' probabilities
        at each pixel (None with ``tta: none``): where the passes disagree, the refiner is unsure;
    threshold: the probability level that was mapped to 0.5 (``options.threshold``; 0.5 = none).
    """

    prob: np.ndarray
    coarse01: np.ndarray
    spread: np.ndarray | None
    threshold: float = 0.5


@torch.inference_mode()
def refine(
    model: CRMNet,
    image: np.ndarray,
    coarse: np.ndarray,
    sam_colors: np.ndarray | None = None,
    *,
    options: RefineOptions = RefineOptions(),
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Refine a coarse mask with CRM / SAM-SR-v2.1 through the official cascade.

    image: (H, W, 3) uint8 RGB; coarse: (h, w) uint8 in 0..255, any size (bilinearly resized
    to (H, W)); sam_colors: (h', w', 3) uint8 proposal colour map (nearest-resized to (H, W)),
    required iff model.takes_proposals (SAM-SR-v2.1). The model must already sit on `device`
    (it runs in eval mode; its mode is restored afterwards); BN folding happens in
    `prepare_model`.
    Returns (H, W) float32 probabilities in [0, 1]; an empty coarse mask ((mask + 1).sum() < 2
    in the [-1, 1] scale) gives all zeros. With ``options.tta`` other than "none", the mean of
    the probabilities over the flipped inputs (each flipped back); then ``options.threshold``
    (the level mapped to 0.5), ``options.gate`` and ``options.edge_check``, when on, apply.
    """
    return refine_detailed(model, image, coarse, sam_colors, options=options, device=device).prob


@torch.inference_mode()
def refine_detailed(
    model: CRMNet,
    image: np.ndarray,
    coarse: np.ndarray,
    sam_colors: np.ndarray | None = None,
    *,
    options: RefineOptions = RefineOptions(),
    device: str | torch.device = "cpu",
) -> Refined:
    """`refine`, also returning the resized coarse mask and the passes' spread (:class:`Refined`):
    what :mod:`pipeline.refine.trust` needs to estimate the output's quality."""
    _check_inputs(model, image, coarse, sam_colors)
    device = torch.device(device)
    weights_device = next(model.parameters()).device
    if weights_device.type != device.type or (device.index is not None and weights_device != device):
        raise ValueError(
            f"model weights are on {weights_device}, refine was asked for {device}: move it first"
        )
    was_training = model.training
    model.eval()
    try:
        total = squares = None
        flips = TTA_FLIPS[options.tta]
        for rows, cols in flips:
            prob = _refine(model, _flip(image, rows, cols), _flip(coarse, rows, cols),
                           None if sam_colors is None else _flip(sam_colors, rows, cols), options, device)
            prob = _flip(prob, rows, cols)
            if len(flips) > 1:
                sq = np.square(prob)
                squares = sq if squares is None else np.add(squares, sq, out=squares)
            total = prob if total is None else np.add(total, prob, out=total)
        spread = None
        if len(flips) > 1:
            total /= len(flips)
            squares /= len(flips)
            spread = np.sqrt(np.maximum(squares - np.square(total), 0, out=squares), out=squares)
        # the coarse mask in [0, 1], resized to the image as `coarse01_tensor` resizes it for the model
        coarse01 = coarse01_tensor(coarse, total.shape, device)[0, 0].cpu().numpy()
        level = 0.5
        if options.threshold != 0.5:
            level = (area_level(total, coarse01, options.area_bounds) if options.threshold == "area"
                     else float(options.threshold))
            remap_level(total, level)
        if options.gate > 0:  # unsure pixels keep the coarse value
            unsure = np.abs(total - 0.5) <= options.gate
            total[unsure] = coarse01[unsure]
        if options.edge_check is not None:
            edge_check(total, coarse01, image, options.edge_check)
        return Refined(total, coarse01, spread, level)
    finally:
        model.train(was_training)


def _flip(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """``a`` flipped along its first (rows) and / or second (columns) axis, C-contiguous."""
    if rows:
        a = a[::-1]
    if cols:
        a = a[:, ::-1]
    return np.ascontiguousarray(a) if rows or cols else a


def _resized_colors(sam_colors: np.ndarray, h: int, w: int) -> np.ndarray:
    """The (h', w', 3) uint8 colour map nearest-resized to (h, w), uint8."""
    if sam_colors.shape[:2] == (h, w):
        return sam_colors
    colors = _from_numpy(sam_colors).permute(2, 0, 1)[None]
    return F.interpolate(colors, size=(h, w), mode="nearest")[0].permute(1, 2, 0).contiguous().numpy()


def _refine(model, image, coarse, sam_colors, options: RefineOptions, device: torch.device) -> np.ndarray:
    h, w = image.shape[:2]
    mask = coarse01_tensor(coarse, (h, w), device)
    if float(mask.sum() * 2) < 2:
        return np.zeros((h, w), dtype=np.float32)
    rows, cols = pad_index(h, w, options.pad, options.align)
    roi = None
    if options.decode in ("bbox", "contour"):
        roi = roi_mask(mask[0, 0], options.decode, options.roi_margin)
        roi = roi[torch.from_numpy(rows).to(device)][:, torch.from_numpy(cols).to(device)]
    inputs = CascadeInputs.of(image, mask, sam_colors, rows, cols, device)
    del mask
    prob = _cascade(model, inputs, roi, options)
    del inputs
    p = options.pad
    prob = prob[p : p + h, p : p + w]
    return prob.clamp_(0, 1).float().cpu().numpy()


@dataclass
class CascadeInputs:
    """What the cascade starts from: the padded base input (RGB [+ colours], gathered on demand from
    the uint8 arrays) and the padded mask in [-1, 1]. :func:`_cascade` takes the mask out, so no
    caller keeps a full-size copy alive through the scales."""

    base: PaddedImage  # (1, 3|6, Hp, Wp)
    mask_in: Tensor | None  # (1, 1, Hp, Wp)

    @classmethod
    def of(cls, image: np.ndarray, mask: Tensor, sam_colors: np.ndarray | None, rows: np.ndarray,
           cols: np.ndarray, device) -> CascadeInputs:
        h, w = image.shape[:2]
        colors = None if sam_colors is None else _resized_colors(sam_colors, h, w)
        base = PaddedImage(image, colors, rows, cols, device)
        return cls(base, padded_mask(mask, base.rows, base.cols))


def _cascade(model, inputs: CascadeInputs, roi: Tensor | None, options: RefineOptions) -> Tensor:
    """(Hp, Wp) float32 probabilities on the inputs' device after every scale of the cascade,
    each under autocast in ``options.precision``. Takes ``inputs.mask_in`` (set to None)."""
    base, mask_in, inputs.mask_in = inputs.base, inputs.mask_in, None
    prob = None
    dtype = autocast_dtype(options.precision)
    for scale in options.scales:
        with torch.autocast(mask_in.device.type, dtype=dtype, enabled=dtype is not None):
            prob = _scale_probability(model, base, mask_in, scale, roi, options).float()
        mask_in = None  # the previous scale's mask is freed before the next one is made
        mask_in = prob.sub(0.5).mul_(2)[None, None]
    return prob
