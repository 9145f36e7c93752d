"""Host-device syncs of SAM's automatic mask generator: a fixed few per prompt batch and per
post-processing chunk, counted with :class:`tests.syncs.SyncCounter` following which tensors
would live on the GPU (``device=[sam]``): host-side index work on values already read back is
free, and is not counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam import FastMaskGenerator
from pipeline.sam.decoder import embed_points
from pipeline.sam.postprocess import pack_masks, shift_pack
from tests.syncs import SyncCounter


def _run(sam, image, monkeypatch, **settings) -> tuple[int, int, int, str, int]:
    """(syncs, prompt batches, post-processing chunks, where the syncs are, masks) of one generate."""
    import pipeline.sam.generator as generator

    monkeypatch.setattr(generator, "pack_masks", shift_pack)  # what a GPU runs (numpy packs on CPU)
    gen = FastMaskGenerator(sam, **settings)
    batches, chunks = [], []
    decode, post = gen._decode, gen._postprocess
    monkeypatch.setattr(gen, "_decode", lambda *a: batches.append(1) or decode(*a))
    monkeypatch.setattr(gen, "_postprocess", lambda *a: chunks.append(1) or post(*a))
    with SyncCounter(device=[sam]) as syncs:
        masks = gen.generate(image)
    return syncs.count, len(batches), len(chunks), syncs.summary(), len(masks)


@pytest.mark.parametrize("settings", [
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.5),
    dict(pred_iou_thresh=0.07, stability_score_thresh=0.7),  # prompts skipped, masks dropped
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, shared_decoder=False),
])
def test_syncs_per_batch_and_chunk_are_few_and_fixed(sam_small, image, monkeypatch, settings):
    """At most 2 per batch (the IoUs read back, one index copy), 3 per chunk (the stability
    scores read back, one index copy, one read-back of the kept masks, boxes and scores) and 2 per
    crop (the image, the prompts' coordinates). Before: ~18 per batch of 4 prompts (the stock
    prompt encoder's boolean-mask assignments, a coordinate copy per batch, boolean-mask selects
    and four read-backs per chunk)."""
    few = _run(sam_small, image, monkeypatch, points_per_side=8, points_per_batch=16, **settings)
    many = _run(sam_small, image, monkeypatch, points_per_side=8, points_per_batch=4, **settings)
    for count, batches, chunks, where, _ in (few, many):
        assert count <= 2 * batches + 3 * chunks + 2, where
    assert many[1] == 4 * few[1] and few[4] == many[4] > 0  # 4x the batches, the same masks
    # every extra batch costs at most its read-back and index copy plus its extra chunks' syncs
    assert many[0] - few[0] <= 2 * (many[1] - few[1]) + 3 * (many[2] - few[2])


def test_the_counter_follows_the_device(sam_small):
    """Reads of device tensors and host data copied over count; host work on read-back values does not."""
    p = next(sam_small.parameters())
    with SyncCounter(device=[sam_small]) as syncs:
        host = (p.flatten()[:8] * 2).cpu()  # 1: a read-back
        host.nonzero(), host.tolist(), bool(host[0] > 0), host[host > 0]  # host work: free
        index = torch.tensor([0, 2]).to(p.device)  # 1: host data to the device
        picked = p.flatten()[index]  # device work: free
        picked.sum().item(), picked[picked > 0]  # 2: a read, a boolean-mask select on the device
        torch.zeros(3, device=p.device) + 1  # made there: free
    assert syncs.count == 4, syncs.summary()


def test_embed_points_equals_the_stock_prompt_encoder(sam_small):
    coords = torch.rand(13, 1, 2, dtype=torch.float64) * sam_small.image_encoder.img_size
    with torch.inference_mode():
        sparse, dense = embed_points(sam_small, coords)
        s0, d0 = sam_small.prompt_encoder(points=(coords, torch.ones(13, 1, dtype=torch.int)), boxes=None,
                                          masks=None)
    assert torch.equal(sparse, s0) and torch.equal(dense, d0)


@pytest.mark.parametrize("k, h, w", [(6, 5, 7), (3, 8, 8), (2, 3, 1), (4, 120, 160), (0, 4, 4)])
def test_pack_masks_equals_numpy_packbits(k, h, w):
    masks = torch.rand(k, h, w, generator=torch.Generator().manual_seed(h * w)) > 0.5
    expected = np.packbits(masks.flatten(1).numpy(), axis=1)
    for pack in (pack_masks, shift_pack):  # numpy on CPU; the torch ops a GPU runs
        packed = pack(masks).numpy()
        assert packed.dtype == np.uint8 and packed.shape == expected.shape
        assert np.array_equal(packed, expected)
