"""Multi-worker training (DDP) of every model, on CPU with gloo: 2 processes, 3 steps each.

The ResNet-50 models hold a ``layer4`` that training never runs; DDP waits for the gradients of
every parameter that requires one, so without :func:`pipeline.train.loop.freeze_unused` the
second step fails ("Expected to have finished reduction in the prior iteration")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init: str, name: str, freeze: bool, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.models import build_model
    from pipeline.train.loop import freeze_unused
    from pipeline.train.step import train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(name)
        frozen = freeze_unused(model) if freeze else []
        ddp = DistributedDataParallel(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(rank)
        s = 32
        gt = torch.zeros(1, 1, s, s)
        gt[..., 8:24, 8:24] = 1
        batch = {"image": torch.rand(1, 3, s, s, generator=g), "coarse": gt.roll(2, -1), "gt": gt}
        if model.takes_proposals:
            batch["sam"] = torch.rand(1, 3, s, s, generator=g)
        losses = [train_step(ddp, opt, batch, rng=np.random.default_rng(rank))["total"] for _ in range(3)]
        probe = next(p for p in model.parameters() if p.requires_grad).detach().flatten()[:4].tolist()
        torch.save({"losses": losses, "frozen": frozen, "probe": probe}, f"{out}.{rank}")
    except Exception as e:  # noqa: BLE001 - reported to the test through the file
        torch.save({"error": f"{type(e).__name__}: {e}"}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _run(tmp_path, name: str, freeze: bool) -> list[dict]:
    init = f"file://{tmp_path}/store-{name}-{freeze}"
    out = str(tmp_path / f"result-{name}-{freeze}")
    mp.spawn(_worker, args=(2, init, name, freeze, out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize("name", ["crm_r50", "samsr_v21_r50", "samsr_v21_mnv2"])
def test_two_worker_ddp_training_runs_and_keeps_replicas_equal(tmp_path, name):
    results = _run(tmp_path, name, freeze=True)
    for r in results:
        assert "error" not in r, r.get("error")
        assert len(r["losses"]) == 3 and all(np.isfinite(r["losses"]))
    assert results[0]["probe"] == results[1]["probe"]  # gradients were averaged: one model
    if name.endswith("r50"):
        assert len(results[0]["frozen"]) == 30 and all(".layer4." in f".{n}" for n in results[0]["frozen"])
    else:
        assert results[0]["frozen"] == []


def test_without_freezing_layer4_ddp_fails_on_the_resnet(tmp_path):
    """The failure the fix removes (so the test above would catch its return)."""
    results = _run(tmp_path, "crm_r50", freeze=False)
    assert any("error" in r and "reduction" in r["error"] for r in results), results


def test_the_training_loop_freezes_before_ddp():
    import inspect

    from pipeline.train import loop

    src = inspect.getsource(loop.train_loop)
    assert src.index("freeze_unused(model)") < src.index("model = workers.wrap(model)")
