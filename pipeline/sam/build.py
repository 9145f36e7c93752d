"""Build SAM models: the official ViT-H/L/B shapes and a tiny one for tests.

One small builder per variant over segment-anything's own classes (as in
`segment_anything/build_sam.py`), registered in `SAM_BUILDERS`. Weights are never loaded by
segment-anything's ``torch.load`` (it has no ``map_location``): the model is built empty, then
the state dict is read on CPU with ``weights_only=True``, checked and loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

__all__ = ["SAM_BUILDERS", "build_sam", "build_sam_tiny", "build_sam_vit"]


def build_sam_vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: list[int]) -> Sam:
    """The official SAM architecture (as `segment_anything.build_sam._build_sam`), random weights."""
    prompt_embed_dim, image_size, patch = 256, 1024, 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn_indexes,
            window_size=14, out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim, image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam_tiny() -> Sam:
    """A 655k-parameter SAM from the real classes (~0.3 s per image on CPU), for tests."""
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=64, num_heads=2, window_size=14,
                                      global_attn_indexes=[1], out_chans=64),
        prompt_encoder=PromptEncoder(embed_dim=64, image_embedding_size=(64, 64),
                                     input_image_size=(1024, 1024), mask_in_chans=16),
        mask_decoder=MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(
            depth=2, embedding_dim=64, mlp_dim=256, num_heads=8)),
    )


SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_h": partial(build_sam_vit, 1280, 32, 16, [7, 15, 23, 31]),
    "vit_l": partial(build_sam_vit, 1024, 24, 16, [5, 11, 17, 23]),
    "vit_b": partial(build_sam_vit, 768, 12, 12, [2, 5, 8, 11]),
    "tiny": build_sam_tiny,
}


def build_sam(
    model_type: str | Sam,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    cache_dir: str | Path | None = None,
) -> Sam:
    """A SAM in eval mode on ``device``.

    model_type: "vit_h", "vit_l", "vit_b", "tiny", or a `Sam` instance (used as is).
    checkpoint: a path or fsspec URL of a state dict in segment-anything's key naming (remote
        files are cached, see `pipeline.io.weights`); None keeps random weights.
    seed: seeds the random initialisation (without touching the global torch RNG).
    Raises ValueError for an unknown model type, and for a missing, corrupt or mismatched
    checkpoint (naming the file and the problem) before any image is seen.
    """
    if isinstance(model_type, Sam):
        sam = model_type
    elif model_type in SAM_BUILDERS:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            sam = SAM_BUILDERS[model_type]()
    else:
        raise ValueError(f"unknown SAM model type {model_type!r}; known: {sorted(SAM_BUILDERS)}")
    if checkpoint is not None:
        from pipeline.io.weights import read_state_dict  # the one reader (remote files cached)
        from pipeline.models.checkpoint import load_weights

        uri = str(checkpoint)
        cache = cache_dir if cache_dir is not None else True
        state = read_state_dict(uri, cache=cache, what="SAM checkpoint")
        load_weights(sam, state, uri, what="SAM checkpoint")
    return sam.eval().to(device)
