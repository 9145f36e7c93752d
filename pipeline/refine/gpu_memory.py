"""GPU memory of the refine stage: what each actor asks of a card, and keeping the cache tidy.

Pure arithmetic apart from :class:`CacheTrimmer` (which calls torch). Numbers:

- Refiner: the streamed cascade's peak grows with the image: ~0.28 GiB per megapixel in float32
  (the CPU refiner's measured activations, 0.28-0.34 GB/MP with crm_r50, `pipeline.runner.plan`; the
  same tensors live on the card: ~17 GiB at 60 MP), plus the model and CUDA's context. Under
  bf16 / fp16 autocast the encoder's and fusion's activations halve while the decoder's
  coordinate terms and outputs stay float32: ~0.6x. Estimates, not yet measured on a card.
- SAM's automatic mask generator (fp32, 64 prompts per batch, 1024 px working size): the
  published ~7-8 GB for ViT-H, ~4 GB for ViT-B; ``tiny`` is a test model.

:func:`gpu_shares` sizes the two actors that share a card (Ray's fractional ``num_gpus``) by these
asks, and raises a ValueError naming the key to change when they cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GIB", "GPU_ACTOR_ENV", "REFINER_GIB_PER_MEGAPIXEL", "SAM_GIB", "GpuShares", "CacheTrimmer",
           "refiner_gpu_bytes", "sam_gpu_bytes", "gpu_shares"]

GIB = 1024**3
REFINER_GIB_PER_MEGAPIXEL = {"fp32": 0.28, "bf16": 0.17, "fp16": 0.17}
REFINER_BASE_GIB = 1.0  # CUDA context, cuBLAS / cuDNN workspaces, the model
SAM_GIB = {"vit_h": 8.0, "vit_l": 6.0, "vit_b": 4.0, "tiny": 0.5}
HEADROOM = 0.9  # of the card: the allocator's fragmentation, other processes
#: For every GPU actor: the caching allocator grows segments instead of fragmenting the card
#: when image sizes vary (set before CUDA starts, i.e. in the actor's runtime_env).
GPU_ACTOR_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def refiner_gpu_bytes(max_pixels: int, precision: str) -> int:
    """Bytes of GPU memory the refiner needs for an image of ``max_pixels`` pixels."""
    if precision not in REFINER_GIB_PER_MEGAPIXEL:
        raise ValueError(f"refine.precision: {precision!r} is not one of {sorted(REFINER_GIB_PER_MEGAPIXEL)}")
    return int((REFINER_BASE_GIB + REFINER_GIB_PER_MEGAPIXEL[precision] * max_pixels / 1e6) * GIB)


def sam_gpu_bytes(model_type: str) -> int:
    """Bytes of GPU memory SAM's automatic mask generator needs."""
    if model_type not in SAM_GIB:
        raise ValueError(f"sam.model_type: {model_type!r} is not one of {sorted(SAM_GIB)}")
    return int(SAM_GIB[model_type] * GIB)


@dataclass(frozen=True)
class GpuShares:
    """Ray ``num_gpus`` of the refiner and SAM actors on one card, and the bytes each needs."""

    refine: float
    sam: float
    refine_bytes: int
    sam_bytes: int


def gpu_shares(card_bytes: int, max_pixels: int, precision: str, sam_model: str | None) -> GpuShares:
    """Shares of one card of ``card_bytes`` for a refiner (images up to ``max_pixels``, ``precision``)
    and, with ``sam_model``, a SAM actor beside it: each share is its need over the card, the spare
    memory split in the same proportion. Raises ValueError naming ``input.max_pixels`` /
    ``refine.precision`` when the two do not fit in 90% of the card."""
    refine = refiner_gpu_bytes(max_pixels, precision)
    sam = sam_gpu_bytes(sam_model) if sam_model else 0
    usable = card_bytes * HEADROOM
    if refine + sam > usable:
        with_sam = f" beside SAM {sam_model} (~{sam / GIB:.1f} GiB)" if sam_model else ""
        raise ValueError(
            f"input.max_pixels: an image of {max_pixels / 1e6:.0f} MP needs ~{refine / GIB:.1f} GiB of GPU "
            f"memory for the refiner in {precision}{with_sam}; the card has {card_bytes / GIB:.1f} GiB "
            f"({HEADROOM:.0%} usable). Lower input.max_pixels"
            + (", or use refine.precision: bf16" if precision == "fp32" else ""))
    if not sam_model:
        return GpuShares(1.0, 0.0, refine, 0)
    share = round(refine / (refine + sam), 2)
    share = min(max(share, 0.05), 0.95)
    return GpuShares(share, round(1.0 - share, 2), refine, sam)


class CacheTrimmer:
    """Empties CUDA's cache when the images get much smaller than the largest since the last trim,
    so one large image does not keep its blocks reserved (and the card looking full) for the small
    ones after it. Call ``after_image(pixels)`` after each image; a no-op off CUDA."""

    def __init__(self, device, factor: float = 4.0) -> None:
        self.device, self.factor, self.largest = str(device), factor, 0

    def after_image(self, pixels: int) -> bool:
        """True when a trim was due (the cache is emptied on CUDA)."""
        trim = self.largest > 0 and pixels * self.factor <= self.largest
        self.largest = pixels if trim else max(self.largest, pixels)
        if trim and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        return trim
