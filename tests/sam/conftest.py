"""Fixtures for the SAM tests: small random SAMs from segment-anything's real classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.bench.sam import synthetic_image
from pipeline.sam.build import build_sam
from pipeline.sam.synthetic import make_busy


def small_sam(seed: int = 0) -> Sam:
    """The tiny config at a 256-pixel input (16x16 embedding, 64x64 low-res masks): the
    generator's code paths at 1/16 of the upscaling cost. Weights made "busy" so that the
    random model yields many distinct masks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(img_size=256, depth=2, embed_dim=64, num_heads=2, window_size=14,
                                          global_attn_indexes=[1], out_chans=64),
            prompt_encoder=PromptEncoder(embed_dim=64, image_embedding_size=(16, 16),
                                         input_image_size=(256, 256), mask_in_chans=16),
            mask_decoder=MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(
                depth=2, embedding_dim=64, mlp_dim=256, num_heads=8)),
        )
    return make_busy(sam.eval(), iou_bias=0.1)


def decoder_inputs(sam: Sam, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random image features and ``n`` random point prompts for ``sam``'s mask decoder:
    (features, dense positional encoding, sparse, dense prompt embeddings)."""
    torch.manual_seed(seed)
    c, size = sam.prompt_encoder.embed_dim, sam.prompt_encoder.image_embedding_size
    features = torch.randn(1, c, *size)
    points = torch.rand(n, 1, 2, dtype=torch.float64) * sam.image_encoder.img_size
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(points, torch.ones(n, 1, dtype=torch.int)),
                                           boxes=None, masks=None)
        return features, sam.prompt_encoder.get_dense_pe(), sparse, dense


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on this shared 2-core machine, 2 OpenMP threads under load run the
    small models 10x slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sam_small() -> Sam:
    return small_sam()


@pytest.fixture(scope="session")
def sam_tiny() -> Sam:
    """The 'tiny' model of `build_sam` (1024-pixel input), busy weights."""
    return make_busy(build_sam("tiny", seed=0), iou_bias=0.1)


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    """(120, 160, 3) uint8 test image: flat background and 20 coloured rectangles."""
    return synthetic_image(120, 160, 20, seed=1)
