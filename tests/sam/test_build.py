"""build_sam: official shapes, the tiny model, checkpoints from paths and fsspec URLs."""

from __future__ import annotations

import fsspec
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from pipeline.sam.build import SAM_BUILDERS, build_sam


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_official_shapes(model_type):
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = SAM_BUILDERS[model_type]()
        official = sam_model_registry[model_type]()
    assert _shapes(ours) == _shapes(official)


def test_tiny_builds_and_is_seeded():
    a, b = build_sam("tiny", seed=3), build_sam("tiny", seed=3)
    assert isinstance(a, Sam) and not a.training
    n = sum(p.numel() for p in a.parameters())
    assert 500_000 < n < 800_000
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_sam("tiny", seed=4)
    assert not torch.equal(a.mask_decoder.iou_token.weight, c.mask_decoder.iou_token.weight)


def test_accepts_sam_instance_and_rejects_unknown():
    sam = build_sam("tiny", seed=0)
    assert build_sam(sam) is sam
    with pytest.raises(ValueError, match="unknown SAM model type 'vit_x'"):
        build_sam("vit_x")


def test_checkpoint_roundtrip_local(tmp_path):
    src = build_sam("tiny", seed=1)
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    loaded = build_sam("tiny", str(path), seed=2)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_from_fsspec_url_is_cached(tmp_path):
    src = build_sam("tiny", seed=1)
    url = "memory://samsr-test/weights/tiny.pth"
    with fsspec.open(url, "wb") as f:
        torch.save(src.state_dict(), f)
    cache = tmp_path / "cache"
    loaded = build_sam("tiny", url, cache_dir=cache)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, src.mask_decoder.iou_token.weight)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("-tiny.pth")
    fsspec.filesystem("memory").rm("/samsr-test", recursive=True)  # now only the cache has it
    again = build_sam("tiny", url, cache_dir=cache)
    assert torch.equal(again.mask_decoder.iou_token.weight, src.mask_decoder.iou_token.weight)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(build_sam("tiny", seed=0).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"broken\.pth: cannot be read, truncated or not a torch state dict"):
        build_sam("tiny", str(path))


def test_wrong_keys_and_shapes_are_clear_errors(tmp_path):
    state = build_sam("tiny", seed=0).state_dict()
    wrapped = tmp_path / "dataparallel.pth"  # the one reader strips DataParallel's "module."
    torch.save({("module." + k): v for k, v in state.items()}, wrapped)
    loaded = build_sam("tiny", str(wrapped)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    renamed = {("sam." + k): v for k, v in state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"renamed\.pth: missing key .*wrong model type"):
        build_sam("tiny", str(path))
    path = tmp_path / "tiny_for_vitb.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"tiny_for_vitb\.pth: key '.*' has shape"):
        # same key names, other shapes: the tiny checkpoint given to a small ViT-shaped model
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

        other = Sam(
            image_encoder=ImageEncoderViT(depth=2, embed_dim=32, num_heads=2, window_size=14,
                                          global_attn_indexes=[1], out_chans=64),
            prompt_encoder=PromptEncoder(embed_dim=64, image_embedding_size=(64, 64),
                                         input_image_size=(1024, 1024), mask_in_chans=16),
            mask_decoder=MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(
                depth=2, embedding_dim=64, mlp_dim=256, num_heads=8)),
        )
        build_sam(other, str(path))


def test_missing_and_non_state_dict_checkpoints(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.pth: file not found"):
        build_sam("tiny", str(tmp_path / "nothere.pth"))
    with pytest.raises(ValueError, match=r"file not found"):
        build_sam("tiny", "memory://samsr-test-missing/none.pth", cache_dir=tmp_path)
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list\.pth: expected a non-empty state dict"):
        build_sam("tiny", str(path))
    path = tmp_path / "code.pth"
    torch.save({"x": object()}, path)  # needs unpickling arbitrary objects: refused
    with pytest.raises(ValueError, match=r"code\.pth: cannot be read"):
        build_sam("tiny", str(path))
