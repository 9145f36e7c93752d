"""GPU memory of the refine stage: what each actor needs of a card, how the actors share cards,
reading a card's size, and keeping the cache tidy.

Pure arithmetic apart from :func:`card_memory_bytes` (runs ``nvidia-smi``) and
:class:`CacheTrimmer` (calls torch). Numbers, estimates not yet measured on a card:

- Refiner, encoder untiled: the streamed cascade's peak grows with the image: ~0.28 GiB per
  megapixel in float32 (the CPU refiner's measured activations, 0.28-0.34 GB/MP with crm_r50,
  ``pipeline.runner.plan``; the same tensors live on the card: ~17 GiB at 60 MP), plus the
  model and CUDA's context. Under bf16 / fp16 autocast the encoder's and fusion's activations
  halve while the decoder's coordinate terms and outputs stay float32: ~0.6x.
- Refiner, encoder tiled (``refine.options.tile_encoder``: ``auto``, the default, tiles an
  image above 16 MP on any device): that rate for one tile (the encoder's working set) plus
  what grows with the image, the stitched levels and full-size buffers, counted as on the CPU
  (TILED_GIB_PER_MEGAPIXEL, float32 whatever the precision).
- SAM's automatic mask generator (fp32, 64 prompts per batch, 1024 px working size): the
  published ~7-8 GB for ViT-H, ~4 GB for ViT-B; ``tiny`` is a test model.

:func:`gpu_shares` gives the two actors their Ray ``num_gpus`` so that any packing Ray picks
fits the card (module docstring of ``pipeline.runner.plan``), and raises a ValueError naming the
key to change when they cannot fit.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass

from pipeline.refine.options import encoder_tile_pixels

__all__ = ["GIB", "GPU_ACTOR_ENV", "HEADROOM", "REFINER_GIB_PER_MEGAPIXEL", "TILED_GIB_PER_MEGAPIXEL",
           "SAM_GIB", "GpuShares", "CacheTrimmer", "refiner_gpu_bytes", "sam_gpu_bytes", "gpu_shares",
           "card_memory_bytes"]

GIB = 1024**3
REFINER_GIB_PER_MEGAPIXEL = {"fp32": 0.28, "bf16": 0.17, "fp16": 0.17}
REFINER_BASE_GIB = 1.0  # CUDA context, cuBLAS / cuDNN workspaces, the model
#: With the encoder tiled (``refine.options.tile_encoder``; ``auto`` above AUTO_PIXELS) the encoder
#: works on one tile at a time; what grows with the image is the full-size data: measured for a
#: tiled crm_mnv2 refinement 1.8 GiB + 34 bytes per pixel (samsr benchmark memory, 12-48 MP); the
#: stitched levels are 22 B/px for the light encoders, 88 B/px for ResNet-50. Counted here with
#: ~40 B/px more for the actor (test-time augmentation sums, trust features, the decoded image, masks
#: and output), in GiB per megapixel of input, by backbone (CPU RAM and GPU memory alike):
TILED_GIB_PER_MEGAPIXEL = {"mnv2": 0.07, "r50": 0.13}
SAM_GIB = {"vit_h": 8.0, "vit_l": 6.0, "vit_b": 4.0, "tiny": 0.5}
HEADROOM = 0.9  # of the card: the allocator's fragmentation, other processes
#: For every GPU actor: the caching allocator grows segments instead of fragmenting the card
#: when image sizes vary (set before CUDA starts, i.e. in the actor's runtime_env).
GPU_ACTOR_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def refiner_gpu_bytes(max_pixels: int, precision: str, backbone: str = "r50",
                      tile_encoder: int | str = "off") -> int:
    """Bytes of GPU memory the refiner needs for an image of ``max_pixels`` pixels: untiled,
    REFINER_GIB_PER_MEGAPIXEL[precision] of the image; with the encoder tiled, that rate for one
    tile plus TILED_GIB_PER_MEGAPIXEL[backbone] of the image; plus REFINER_BASE_GIB."""
    if precision not in REFINER_GIB_PER_MEGAPIXEL:
        raise ValueError(f"refine.precision: {precision!r} is not one of {sorted(REFINER_GIB_PER_MEGAPIXEL)}")
    rate, mp = REFINER_GIB_PER_MEGAPIXEL[precision], max_pixels / 1e6
    tile = encoder_tile_pixels(tile_encoder, max_pixels)
    if tile is None:
        return int((REFINER_BASE_GIB + rate * mp) * GIB)
    full = TILED_GIB_PER_MEGAPIXEL.get(backbone, max(TILED_GIB_PER_MEGAPIXEL.values()))
    return int((REFINER_BASE_GIB + rate * tile / 1e6 + full * mp) * GIB)


def sam_gpu_bytes(model_type: str) -> int:
    """Bytes of GPU memory SAM's automatic mask generator needs."""
    if model_type not in SAM_GIB:
        raise ValueError(f"sam.model_type: {model_type!r} is not one of {sorted(SAM_GIB)}")
    return int(SAM_GIB[model_type] * GIB)


@dataclass(frozen=True)
class GpuShares:
    """Ray ``num_gpus`` of each refiner and SAM actor, and the bytes each needs of a card of
    ``card_bytes``."""

    refine: float
    sam: float
    refine_bytes: int
    sam_bytes: int
    card_bytes: int


def gpu_shares(card_bytes: int, max_pixels: int, precision: str, sam_model: str | None, *,
               backbone: str = "r50", tile_encoder: int | str = "off", cards: float = 1.0,
               per_actor: float | None = None) -> GpuShares:
    """``num_gpus`` of a refiner (images up to ``max_pixels``, ``precision``, ``backbone``,
    ``tile_encoder``) and, with ``sam_model``, of a SAM actor, on ``cards`` cards of ``card_bytes``
    each, such that whatever actors Ray puts on one card fit in HEADROOM of it:

    - ``per_actor`` (``ray.gpus_per_actor``) given: every actor asks it; up to ``1 // per_actor``
      actors may share a card, so that many of the larger need must fit;
    - no SAM: a card per refiner;
    - SAM: half a card each when any two actors fit one card (Ray may pair two SAMs or two
      refiners on a card, not only a SAM with a refiner); else, with one card, shares in
      proportion to the needs (the only packing is the pair); else a whole card each.

    Raises ValueError naming the key to change (``input.max_pixels``, ``sam.model_type``,
    ``ray.gpus_per_actor``) when they cannot fit; the card's size is ``ray.gpu_memory_gb``."""
    refine = refiner_gpu_bytes(max_pixels, precision, backbone, tile_encoder)
    sam = sam_gpu_bytes(sam_model) if sam_model else 0
    usable = card_bytes * HEADROOM
    card = f"a card of {card_bytes / GIB:.1f} GiB ({HEADROOM:.0%} usable; ray.gpu_memory_gb)"

    def too_large(what: str) -> ValueError:
        return ValueError(
            f"input.max_pixels: an image of {max_pixels / 1e6:.0f} MP needs ~{refine / GIB:.1f} GiB of GPU "
            f"memory for the refiner in {precision}{what}; {card} cannot hold it. Lower input.max_pixels"
            + (", or use refine.precision: bf16" if precision == "fp32" else "") + ", or use larger cards")

    if refine > usable:
        raise too_large("")
    if sam > usable:
        raise ValueError(f"sam.model_type: SAM {sam_model} needs ~{sam / GIB:.1f} GiB of GPU memory; {card} "
                         "cannot hold it. Use a smaller model or larger cards")
    if per_actor:
        k = max(1, math.floor(1 / per_actor + 1e-9))
        need = max(refine, sam)
        if k * need > usable:
            raise ValueError(f"ray.gpus_per_actor: {per_actor:g} lets {k} actors share a card, each "
                             f"needing up to ~{need / GIB:.1f} GiB; {card} holds {int(usable // need)}. Ask "
                             "a larger share (or leave it unset)")
        return GpuShares(per_actor, per_actor if sam_model else 0.0, refine, sam, card_bytes)
    if not sam_model:
        return GpuShares(1.0, 0.0, refine, 0, card_bytes)
    if 2 * max(refine, sam) <= usable:
        return GpuShares(0.5, 0.5, refine, sam, card_bytes)
    if cards >= 2:
        return GpuShares(1.0, 1.0, refine, sam, card_bytes)
    if refine + sam > usable:
        raise too_large(f" beside SAM {sam_model} (~{sam / GIB:.1f} GiB) on the cluster's one card")
    share = min(max(math.floor(100 * refine / (refine + sam)) / 100, 0.05), 0.95)
    return GpuShares(share, round(1.0 - share, 2), refine, sam, card_bytes)


def card_memory_bytes(exe: str = "nvidia-smi") -> int | None:
    """Total memory of the smallest NVIDIA GPU of this machine, read with ``nvidia-smi`` (no CUDA
    context is created); None where there is no ``nvidia-smi`` or it reports no GPU."""
    path = shutil.which(exe)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        mib = [float(line) for line in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return int(min(mib) * 2**20) if mib else None


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
