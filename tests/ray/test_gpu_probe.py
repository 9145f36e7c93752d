"""The runner reads the GPU nodes' card memory with nvidia-smi in a task pinned to each GPU node
(a local Ray with one logical GPU and a fake ``nvidia-smi`` on the PATH its workers inherit)."""

from __future__ import annotations

import pytest

GIB = 1024**3


@pytest.fixture
def gpu_ray(tmp_path, monkeypatch):
    import ray

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '24576\\n'\n")  # one 24 GiB card, in MiB like nvidia-smi
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 2**20)
    yield smi
    ray.shutdown()


def test_card_memory_is_read_on_the_gpu_nodes_and_planned(gpu_ray):
    from pipeline.config import config_from_dict
    from pipeline.runner.cluster import alive_nodes, cluster_resources, gpu_card_bytes
    from pipeline.runner.plan import plan_job

    card = gpu_card_bytes()
    assert card == 24 * GIB
    cfg = config_from_dict({"input": {"uri": "/data", "max_pixels": 60_000_000}, "output": {"prefix": "/out"},
                            "method": "crm", "model": {"name": "crm_r50"},
                            "refine": {"precision": "fp32", "options": {"tile_encoder": "off"}}})
    plan = plan_job(cfg, cluster_resources(), alive_nodes(), card)
    assert plan.refine_gpus == 1.0 and plan.gpu.card_bytes == 24 * GIB  # 17.8 GiB fits 21.6 usable
    gpu_ray.write_text("#!/bin/sh\nexit 9\n")  # a node that cannot tell: unknown, the plan names the key
    assert gpu_card_bytes() is None
    with pytest.raises(ValueError, match="^ray.gpu_memory_gb: "):
        plan_job(cfg, cluster_resources(), alive_nodes(), None)


def test_a_refine_job_on_gpu_nodes_plans_with_the_card_it_read(gpu_ray, tmp_path, crm_checkpoint):
    """``samsr refine`` with ``ray.gpu_memory_gb`` unset on a cluster with a (logical) GPU: the
    runner reads the card, the refiner actor asks a whole GPU, the summary names the card. (The
    actor itself runs on CPU here: no CUDA device is visible to torch.)"""
    from pipeline.config import config_from_dict
    from pipeline.runner.refine import format_run, run_refine
    from tests.helpers import make_samples, write_prefix_layout

    uri = write_prefix_layout(str(tmp_path / "in"), make_samples(2))
    cfg = config_from_dict({"input": {"uri": uri}, "output": {"prefix": str(tmp_path / "out")},
                            "model": {"name": "crm_mnv2", "checkpoint": crm_checkpoint},
                            "ray": {"progress": False}})
    result = run_refine(cfg)
    assert result.ok == 2 and result.plan.refine_gpus == 1.0 and result.plan.gpu.card_bytes == 24 * GIB
    # host: 1 + 0.05 GiB/MP x 60 MP; card: auto = bf16, crm_mnv2 tiled above 16 MP: 1 + 0.17 x 4.2 + 0.07 x 60
    line = "refiner actors          1 x 4.0 GiB memory, 1 GPU each (~5.9 GiB of a 24 GiB card)"
    assert line in format_run(result)
