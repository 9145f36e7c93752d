"""A fast automatic mask generator with the results of segment-anything's own.

`FastMaskGenerator` runs the algorithm of `segment_anything.SamAutomaticMaskGenerator`
(grid of point prompts, 3 masks per point, predicted-IoU and stability filtering, box NMS
within each crop, optional crop layers and small-region clean-up) and returns the same masks,
in the same order, with the same scores. What differs is only how the work is done:

- the image is encoded once per crop (with ``crop_n_layers=0``: once), and the dense
  positional encoding once per crop instead of once per batch;
- the mask decoder does the per-image part of its first attention block once per batch, not
  once per prompt, and never copies the image embedding per prompt (`pipeline.sam.decoder`);
- the predicted-IoU filter runs right after the decoder's transformer, on its IoU token (it
  does not depend on the masks): the decoder's costly upscaling of the image tokens and the
  hypernetwork product run only for prompts with at least one passing mask, and the upscaling
  of low-res logits to the image size only for the passing masks (`last_stats` counts them);
- only the rows and columns of the 1024x1024 upscaled logits that survive SAM's un-padding
  crop are computed (bit-identical: the interpolation grid is the same), in chunks that bound
  memory, and the identity resize is skipped when the image is already at SAM's input size;
- masks stay binary torch tensors (cropped to their box until NMS has chosen the survivors):
  no `MaskData` deep copies, no RLE encoding or decoding unless asked for
  (`SamMasks.to_annotations`).

Two options are not exact (opt-in; `samsr benchmark sam --reassociate --precision bf16` times
them against stock and counts the masks matched at IoU >= 0.99 either way):

- ``reassociate=True`` reorders the mask decoder's per-prompt attention products
  (`pipeline.sam.decoder`): the same function up to float rounding (~1e-6 relative), with
  940 -> 410 M multiply-adds per prompt in the decoder's transformer;
- ``precision="bf16"`` (or ``"fp16"``) runs the image encoder under ``torch.autocast`` in that
  type (its embedding is cast back to float32; the prompt encoder, the mask decoder and all
  filtering stay in float32). On a CPU with bfloat16 instructions the encoder runs ~3x faster;
  masks then differ from stock's at a few pixels, and a mask whose score sits on a threshold
  can come or go.

Prompts are batched exactly as in the stock generator (``points_per_batch``), so the mask
decoder sees identical inputs and returns identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import (
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    remove_small_regions,
)
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.refine.options import autocast_dtype
from pipeline.sam.decoder import decode_tokens, embed_points, upscale_masks
from pipeline.sam.postprocess import mask_boxes, pack_masks, upscale_logits

__all__ = ["FastMaskGenerator", "SamMasks", "mask_boxes", "upscale_logits"]

_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class SamMasks:
    """Masks found by `FastMaskGenerator.generate`, in the stock generator's order.

    masks: (N, h, w) bool, at the size of the image given to ``generate``
    scores: (N,) float32, SAM's predicted IoU of each mask
    stability: (N,) float32 stability score in [0, 1]
    areas: (N,) int64 pixel count of each mask
    boxes: (N, 4) int64 XYXY box around each mask (inclusive pixel coordinates, as SAM's)
    points: (N, 2) float64 XY point prompt that produced each mask, in image pixels
    crop_boxes: (N, 4) int64 XYXY crop in which each mask was found
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    crop_boxes: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def to_annotations(self, output_mode: str = "binary_mask") -> list[dict[str, Any]]:
        """The stock generator's list of records (keys ``segmentation``, ``area``, ``bbox``,
        ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``).

        output_mode: "binary_mask" ((h, w) bool arrays), "uncompressed_rle" or "coco_rle"
        (needs pycocotools). RLE is computed here only, never during generation.
        """
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {_OUTPUT_MODES}, got {output_mode!r}")
        if output_mode == "binary_mask":
            segs: list[Any] = list(self.masks)
        else:
            segs = mask_to_rle_pytorch(torch.from_numpy(self.masks)) if len(self) else []
            if output_mode == "coco_rle":
                segs = [coco_encode_rle(rle) for rle in segs]
        return [
            {
                "segmentation": segs[i],
                "area": int(self.areas[i]),
                "bbox": box_xyxy_to_xywh(self.boxes[i].copy()).tolist(),
                "predicted_iou": float(self.scores[i]),
                "point_coords": [self.points[i].tolist()],
                "stability_score": float(self.stability[i]),
                "crop_box": box_xyxy_to_xywh(self.crop_boxes[i].copy()).tolist(),
            }
            for i in range(len(self))
        ]


@dataclass
class _Found:
    """Masks of one crop before the final assembly (all on CPU).

    packed: (K, ceil(ch * cw / 8)) uint8, each (ch, cw) crop-size mask bit-packed (np.packbits)
    boxes: (K, 4) int64 XYXY in crop coordinates; scores, stability: (K,) float32;
    points: (K, 2) float64 in crop coordinates.
    """

    packed: np.ndarray
    boxes: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: torch.Tensor) -> _Found:
        keep = keep.cpu()
        idx = keep.numpy() if keep.dtype == torch.bool else keep.long().numpy()
        return _Found(self.packed[idx], self.boxes[keep], self.scores[keep], self.stability[keep],
                      self.points[keep])


class FastMaskGenerator:
    """Automatic mask generation with `SamAutomaticMaskGenerator`'s results, faster on CPU.

    The arguments mean what they mean for `SamAutomaticMaskGenerator` (same defaults: the
    thesis's settings). ``postprocess_chunk`` (masks upscaled at once) bounds memory only and
    does not change results. ``shared_decoder`` runs the mask decoder with the per-image work
    done once per batch instead of once per prompt (`pipeline.sam.decoder`); False calls
    ``sam.mask_decoder`` as the stock generator does. ``points_per_batch`` must equal the stock
    generator's for bit-identical decoder outputs (other batch sizes can change the last float
    bits). ``precision``: "fp32" (exact, default), "bf16" or "fp16" (the image encoder under
    autocast); ``reassociate``: the decoder's reordered products (module docstring; needs
    ``shared_decoder``).
    """

    def __init__(
        self,
        sam: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        postprocess_chunk: int = 32,
        shared_decoder: bool = True,
        precision: str = "fp32",
        reassociate: bool = False,
    ) -> None:
        if not isinstance(sam, Sam):
            raise ValueError(f"FastMaskGenerator needs a segment_anything Sam, got {type(sam).__name__}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        assert point_grids is not None
        if len(point_grids) < crop_n_layers + 1:
            raise ValueError(f"need {crop_n_layers + 1} point grids, got {len(point_grids)}")
        if points_per_batch < 1 or postprocess_chunk < 1:
            raise ValueError("points_per_batch and postprocess_chunk must be >= 1")
        encoder_dtype = autocast_dtype(precision)  # raises on an unknown precision
        self.predictor = SamPredictor(sam)
        self.point_grids = point_grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.postprocess_chunk = postprocess_chunk
        self.shared_decoder = shared_decoder
        self.precision, self.encoder_dtype = precision, encoder_dtype
        if reassociate and not shared_decoder:
            raise ValueError("reassociate needs shared_decoder=True")
        self.reassociate = reassociate
        # counts of the last `generate` call: point prompts decoded, prompts whose low-res
        # masks were upscaled by the mask decoder (3 masks each), masks passing the IoU filter
        self.last_stats: dict[str, int] = {}

    @property
    def sam(self) -> Sam:
        return self.predictor.model

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> SamMasks:
        """Find the masks of ``image``: (h, w, 3) uint8 RGB. Masks come back at (h, w).

        Resize large images to SAM's working size first (see `pipeline.sam.propose`): masks
        are held at the size of the image given here.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
        self.last_stats = dict.fromkeys(("prompts", "prompts_upscaled", "masks_passing_iou"), 0)
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes((orig_h, orig_w), self.crop_n_layers,
                                                     self.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer, (orig_h, orig_w))
                 for box, layer in zip(crop_boxes, layer_idxs)]
        shifts = [torch.tensor([b[0], b[1], b[0], b[1]]) for b in crop_boxes]
        boxes = torch.cat([p.boxes + s for p, s in zip(parts, shifts)])  # uncrop_boxes_xyxy
        scores = torch.cat([p.scores for p in parts])
        stability = torch.cat([p.stability for p in parts])
        points = torch.cat([p.points + s[:2] for p, s in zip(parts, shifts)])  # uncrop_points
        crops_of = torch.tensor([b for p, b in zip(parts, crop_boxes) for _ in range(len(p))],
                                dtype=torch.int64).reshape(-1, 4)
        origin = [(i, r) for i, p in enumerate(parts) for r in range(len(p))]
        keep = torch.arange(len(boxes))
        if len(crop_boxes) > 1 and len(boxes):
            # Remove duplicates between crops, preferring masks from smaller crops.
            keep = batched_nms(boxes.float(), 1 / box_area(crops_of), torch.zeros(len(boxes)),
                               iou_threshold=self.crop_nms_thresh)
        masks = torch.zeros((len(keep), orig_h, orig_w), dtype=torch.bool)
        for m, k in zip(masks, keep.tolist()):  # unpack the survivors only (uncrop_masks)
            i, r = origin[k]
            x0, y0, x1, y1 = crop_boxes[i]
            m[y0:y1, x0:x1] = _unpack(parts[i].packed[r], (y1 - y0, x1 - x0))
        boxes, scores, stability = boxes[keep], scores[keep], stability[keep]
        points, crops_of = points[keep], crops_of[keep]
        if self.min_mask_region_area > 0 and len(masks):
            keep, masks, boxes = self._remove_small_regions(masks)
            masks, boxes, scores, stability = masks[keep], boxes[keep], scores[keep], stability[keep]
            points, crops_of = points[keep], crops_of[keep]
        return SamMasks(
            masks=masks.numpy(),
            scores=scores.numpy().astype(np.float32),
            stability=stability.numpy().astype(np.float32),
            areas=masks.flatten(1).sum(1).numpy().astype(np.int64),
            boxes=boxes.numpy().astype(np.int64),
            points=points.numpy().astype(np.float64),
            crop_boxes=crops_of.numpy(),
        )

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                      orig_size: tuple[int, int]) -> _Found:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        im_size = cropped.shape[:2]
        self._encode(cropped)  # the one image-encoder call for this crop
        features = self.predictor.features
        input_size = self.predictor.input_size
        sam = self.sam
        dense_pe = sam.prompt_encoder.get_dense_pe()
        points_for_image = self.point_grids[layer_idx] * np.array(im_size)[None, ::-1]
        orig_box = [0, 0, orig_size[1], orig_size[0]]
        out: list[_Found] = []
        # every prompt of the crop goes to the device at once (one copy, not one per batch)
        all_points = torch.as_tensor(self.predictor.transform.apply_coords(points_for_image, im_size),
                                     device=sam.device)
        for start in range(0, len(points_for_image), self.points_per_batch):
            points = points_for_image[start:start + self.points_per_batch]
            sparse, dense = embed_points(sam, all_points[start:start + self.points_per_batch, None, :])
            low_res, iou_preds, idx, rows = self._decode(features, dense_pe, sparse, dense)
            self.last_stats["prompts"] += len(points)
            self.last_stats["masks_passing_iou"] += len(idx)
            pts = torch.as_tensor(points.repeat(3, axis=0))
            for c in range(0, len(idx), self.postprocess_chunk):
                sel, rsel = idx[c:c + self.postprocess_chunk], rows[c:c + self.postprocess_chunk]
                ok, packed, boxes, stability = self._postprocess(low_res[rsel], input_size, im_size)
                sel = sel[ok]
                found = _Found(packed, boxes, iou_preds[sel], stability, pts[sel])
                edge = is_box_near_crop_edge(found.boxes, crop_box, orig_box)
                if bool(edge.any()):
                    found = found.select(~edge)
                out.append(found)
        self.predictor.reset_image()
        found = _cat(out, (len(cropped[0]) * len(cropped) + 7) // 8)
        if len(found):
            keep = batched_nms(found.boxes.float(), found.scores, torch.zeros(len(found.boxes)),
                               iou_threshold=self.box_nms_thresh)
            found = found.select(keep)
        return found

    def _encode(self, image: np.ndarray) -> None:
        """``predictor.set_image``, under autocast when ``precision`` asks for it (the features
        are float32 either way)."""
        if self.encoder_dtype is None:
            self.predictor.set_image(image)
            return
        with torch.autocast(self.sam.device.type, dtype=self.encoder_dtype):
            self.predictor.set_image(image)
        self.predictor.features = self.predictor.features.float()

    def _decode(self, features: torch.Tensor, dense_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode one batch of B prompts and apply the predicted-IoU filter.

        Returns low-res logits (R, 256, 256), all B * 3 predicted IoUs (CPU), the flat indices
        (prompt * 3 + output) of the masks that pass the filter, increasing (CPU), and for each
        of them its row in the logits (on the logits' device). With the shared decoder only the
        prompts with a passing mask are upscaled (the filter needs the IoU token only), so
        R <= B * 3. Host-device syncs: the IoUs' read-back and at most one index copy.
        """
        sam = self.sam
        if self.shared_decoder:
            decoded = decode_tokens(sam, features, dense_pe, sparse, dense, reassociate=self.reassociate)
            iou_preds = decoded.iou_pred.flatten(0, 1).cpu()
        else:
            low_res, iou_preds = sam.mask_decoder(
                image_embeddings=features, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True,
            )
            iou_preds = iou_preds.flatten(0, 1).cpu()
        if self.pred_iou_thresh > 0.0:  # filter before upscaling: the filter ignores masks
            idx = torch.nonzero(iou_preds > self.pred_iou_thresh).flatten()
        else:
            idx = torch.arange(len(iou_preds))
        if not self.shared_decoder:
            self.last_stats["prompts_upscaled"] += low_res.shape[0]
            return low_res.flatten(0, 1), iou_preds, idx, idx.to(low_res.device)
        n_out = decoded.iou_pred.shape[1]
        prompts = torch.unique(idx // n_out)  # sorted
        self.last_stats["prompts_upscaled"] += len(prompts)
        rows = torch.searchsorted(prompts, idx // n_out) * n_out + idx % n_out
        if len(prompts) == decoded.iou_pred.shape[0]:  # nothing to skip: no index copy
            low_res = upscale_masks(sam, decoded).flatten(0, 1)
            return low_res, iou_preds, idx, rows.to(low_res.device)
        # the upscaled prompts and the logit rows of the passing masks go over in one copy
        index = torch.cat([prompts, rows]).to(features.device)
        low_res = upscale_masks(sam, decoded, index[:len(prompts)]).flatten(0, 1)
        return low_res, iou_preds, idx, index[len(prompts):]

    def _postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int], im_size: tuple[int, int]
                     ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
        """Upscale a chunk of low-res logits like `Sam.postprocess_masks`, filter on stability,
        threshold and box them.

        low_res: (K, 256, 256) float logits. Returns the indices kept (into the chunk), the
        kept masks bit-packed ((K', ceil(h * w / 8)) uint8), their (K', 4) int64 XYXY boxes and
        their (K',) stability scores, all on CPU. Host-device syncs: the stability scores'
        read-back, at most one index copy, and one read-back of everything kept."""
        sam = self.sam
        logits = upscale_logits(low_res[:, None], sam.image_encoder.img_size, input_size, im_size)[:, 0]
        stability = calculate_stability_score(logits, sam.mask_threshold, self.stability_score_offset)
        idx = torch.arange(len(logits))
        if self.stability_score_thresh > 0.0:
            host = stability.cpu()
            ok = host >= self.stability_score_thresh
            idx = idx[ok]
            if len(idx) < len(logits):  # keep the stable ones (an index copy, not a boolean mask)
                kept = idx.to(logits.device)
                logits, stability = logits[kept], stability[kept]
        masks = logits > sam.mask_threshold
        # boxes, stability and the bit-packed masks come back in one copy
        k, p = len(masks), -(-im_size[0] * im_size[1] // 8)
        both = torch.cat([pack_masks(masks), mask_boxes(masks).view(torch.uint8),
                          stability.float().reshape(k, 1).view(torch.uint8)], dim=1).cpu()
        boxes = both[:, p:p + 32].reshape(-1).view(torch.int64).reshape(k, 4)
        stability = both[:, p + 32:].reshape(-1).view(torch.float32)
        return idx, both[:, :p].numpy(), boxes, stability

    def _remove_small_regions(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`SamAutomaticMaskGenerator.postprocess_small_regions` on binary masks (no RLE)."""
        new_masks, scores = [], []
        for m in masks.numpy():
            m2, changed_holes = remove_small_regions(m, self.min_mask_region_area, mode="holes")
            m2, changed_islands = remove_small_regions(m2, self.min_mask_region_area, mode="islands")
            new_masks.append(torch.as_tensor(m2))
            scores.append(float(not (changed_holes or changed_islands)))
        new = torch.stack(new_masks)
        boxes = batched_mask_to_box(new)
        keep = batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)),
                           iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh))
        return keep, new, boxes


def _unpack(packed: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool tensor from one np.packbits row."""
    bits = np.unpackbits(packed, count=size[0] * size[1])
    return torch.from_numpy(bits.view(np.bool_).reshape(size))


def _cat(parts: list[_Found], packed_len: int) -> _Found:
    if not parts:
        return _Found(np.zeros((0, packed_len), np.uint8), torch.zeros((0, 4), dtype=torch.int64),
                      torch.zeros(0), torch.zeros(0), torch.zeros((0, 2), dtype=torch.float64))
    return _Found(np.concatenate([p.packed for p in parts]), torch.cat([p.boxes for p in parts]),
                  torch.cat([p.scores for p in parts]), torch.cat([p.stability for p in parts]),
                  torch.cat([p.points for p in parts]))
