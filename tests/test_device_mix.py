"""No CPU/CUDA mix in the refine cascade, SAM decoding and the training step, at every precision.

Runs on fake CUDA tensors (`tests.fake_cuda`): any op mixing a CUDA tensor with a CPU one
raises, as on a card. Fake tensors hold no values, so the parts that read values back to the
host run on the CPU beforehand: the tile geometry (`owned_bounds`, computed from the same
integer sizes), the patch origins of a training step, the predicted-IoU / stability filters
of the SAM generator, segment-anything's prompt encoder (it indexes with a boolean mask) and
everything after `.cpu()`. Only ``decode: full`` is covered here
(strided and ROI decoding pick pixels from values).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, unset_fake_temporarily

from pipeline.models import build_model
from pipeline.refine import RefineOptions, prepare_model
from pipeline.refine import tiles as tiles_module
from pipeline.refine.cascade import CascadeInputs, _cascade, _resized_colors
from pipeline.refine.geometry import axis_table
from pipeline.refine.inputs import coarse01_tensor, pad_index
from pipeline.refine.tiles import owned_bounds
from pipeline.sam.decoder import decode_tokens, upscale_masks
from pipeline.sam.postprocess import mask_boxes, upscale_logits
from pipeline.train.loss import refine_loss_terms
from pipeline.train.step import forward_crops, patch_origins
from tests.fake_cuda import fake_cuda
from tests.sam.conftest import small_sam

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def test_fake_cuda_raises_on_a_mix():
    with fake_cuda():
        a = torch.ones(4, 4, device="cuda")
        with pytest.raises(FakeTensorDeviceMismatchError):
            a + torch.ones(4, 4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert (a @ a).dtype == torch.bfloat16 and (a @ a).device.type == "cuda"


def _bounds_from_the_host(table, step):
    """`owned_bounds` of the same axis computed on the CPU (fake tensors hold no values)."""
    with unset_fake_temporarily():
        return owned_bounds(axis_table(table.coord.shape[0], table.n_feat, "cpu"), step)


def _case(h: int, w: int, colours: bool):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coarse = np.zeros((h, w), np.uint8)
    coarse[h // 4 :, : w // 2] = 255
    return image, coarse, (rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8) if colours else None)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("name, options", [
    ("crm_r50", RefineOptions(tile=32, scales=(0.25, 1.0))),  # the default streamed decoder
    ("samsr_v21_mnv2", RefineOptions(tile=32, scales=(0.25, 1.0), stream=False, align=8)),  # patched fusion
    ("samsr_v21_r50", RefineOptions(tile=32, scales=(0.25, 1.0), factorize_decoder=False)),
    ("crm_mnv2", RefineOptions.official(scales=(0.25, 1.0), query_chunk=2048)),
], ids=["streamed", "patched", "unfactorised", "official"])
def test_refine_cascade_stays_on_the_card(monkeypatch, name, options, precision):
    options = RefineOptions(**{**options.__dict__, "precision": precision})
    model = prepare_model(build_model(name), options)
    image, coarse, colours = _case(40, 52, model.takes_proposals)
    if colours is not None:  # resized on the host (numpy), before the device part
        colours = _resized_colors(colours, *image.shape[:2])
    monkeypatch.setattr(tiles_module, "owned_bounds", _bounds_from_the_host)
    with fake_cuda():
        model.to("cuda")
        mask = coarse01_tensor(coarse, image.shape[:2], "cuda")
        rows, cols = pad_index(*image.shape[:2], options.pad, options.align)
        inputs = CascadeInputs.of(image, mask, colours, rows, cols, "cuda")
        prob = _cascade(model, inputs, None, options)
    assert prob.device.type == "cuda" and prob.dtype == torch.float32
    assert tuple(prob.shape) == (rows.size, cols.size) and inputs.mask_in is None


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("reassociate", [False, True])
def test_sam_decoding_stays_on_the_card(precision, reassociate):
    sam = small_sam()
    dtype = DTYPES[precision]
    n = 6
    with torch.no_grad():  # segment-anything's prompt encoder indexes with a boolean mask
        labels = torch.ones(n, 1, dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(torch.rand(n, 1, 2) * 256, labels), boxes=None, masks=None)
    with fake_cuda():
        sam.to("cuda")
        sparse, dense = sparse.to("cuda"), dense.to("cuda")
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):  # as the generator encodes
            features = sam.image_encoder(sam.preprocess(torch.zeros(1, 3, 256, 256, device="cuda"))).float()
        pe = sam.prompt_encoder.get_dense_pe()
        decoded = decode_tokens(sam, features, pe, sparse, dense, reassociate=reassociate)
        low_res = upscale_masks(sam, decoded, torch.tensor([1, 4], device="cuda")).flatten(0, 1)
        stock, iou = sam.mask_decoder(image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=True)
        logits = upscale_logits(low_res[:, None], 256, (256, 192), (100, 75))[:, 0]
        boxes = mask_boxes(logits > sam.mask_threshold)
    for t in (decoded.iou_pred, low_res, stock, iou, logits, boxes):
        assert t.device.type == "cuda"
    assert tuple(low_res.shape) == (6, 64, 64) and tuple(logits.shape) == (6, 100, 75)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("name, patch", [("crm_r50", 8), ("samsr_v21_mnv2", 0)])
def test_training_step_stays_on_the_card(name, patch, precision):
    """Forward, loss and an Adam step (training runs fp32; bf16 / fp16 check autocast). The
    backward pass cannot run on fake CUDA tensors (autograd's engine asks the driver)."""
    torch.manual_seed(0)
    model = build_model(name).train()
    s = 24
    gt = (torch.rand(2, 1, s, s) > 0.5).float()
    origins = patch_origins(gt, patch, 2, np.random.default_rng(0)) if patch else None  # host side
    dtype = DTYPES[precision]
    with fake_cuda():
        model.to("cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = {k: torch.rand(2, c, s, s).to("cuda") for k, c in (("image", 3), ("coarse", 1), ("sam", 3))}
        target = gt.to("cuda")
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = forward_crops(model, batch, 0.75, origins, patch)
        if patch:
            target = torch.stack([target[i, :, y:y + patch, c:c + patch]
                                  for i in range(2) for y, c in origins[i]])
        total, parts = refine_loss_terms(logits.float(), target)
        for p in model.parameters():  # autograd's engine needs a real card: gradients stand in
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert total.device.type == "cuda" and parts.device.type == "cuda" and total.requires_grad
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(v.device.type == "cuda" for state in optimizer.state.values() for k, v in state.items()
               if k != "step")
