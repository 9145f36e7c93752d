"""The runner reads the GPU nodes' card memory with nvidia-smi in a task pinned to each GPU node
(a local Ray with one logical GPU and a fake ``nvidia-smi`` on the PATH its workers inherit)."""

from __future__ import annotations

import pytest

GIB = 1024**3


GOOD = "#!/bin/sh\nprintf '24576\\n'\n"  # one 24 GiB card, in MiB like nvidia-smi


@pytest.fixture(scope="module")
def _ray_with_a_gpu(tmp_path_factory):
    """A local Ray with one logical GPU whose workers find a fake ``nvidia-smi`` on their PATH."""
    import os

    import ray

    bin_dir = tmp_path_factory.mktemp("bin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 2**20)
        yield bin_dir / "nvidia-smi"
        ray.shutdown()


@pytest.fixture
def gpu_ray(_ray_with_a_gpu):
    """The module's Ray, its fake ``nvidia-smi`` reporting a 24 GiB card."""
    _ray_with_a_gpu.write_text(GOOD)
    _ray_with_a_gpu.chmod(0o755)
    return _ray_with_a_gpu


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
    cfg = config_from_dict({"input": {"uri": uri, "max_pixels": 60_000_000},
                            "output": {"prefix": str(tmp_path / "out")},
                            "model": {"name": "crm_mnv2", "checkpoint": crm_checkpoint},
                            "ray": {"progress": False}})
    result = run_refine(cfg)
    assert result.ok == 2 and result.plan.refine_gpus == 1.0 and result.plan.gpu.card_bytes == 24 * GIB
    # host: 1 + 0.05 GiB/MP x 60 MP; card: auto = bf16, crm_mnv2 tiled above 16 MP: 1 + 0.17 x 4.2 + 0.07 x 60
    line = "refiner actors          1 x 4.0 GiB memory, 1 GPU each (~5.9 GiB of a 24 GiB card)"
    assert line in format_run(result)


def test_gpu_actors_start_with_expandable_segments(gpu_ray):
    """The remote args every GPU stage gets (``gpu_env``) start its workers with CUDA's expandable
    segments; CPU stages get none."""
    import os

    import ray

    from pipeline.runner.job import gpu_env

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self) -> str | None:
            return os.environ.get("PYTORCH_CUDA_ALLOC_CONF")

    gpu_actor = Probe.options(num_gpus=0.5, **gpu_env(0.5)).remote()
    assert ray.get(gpu_actor.env.remote(), timeout=120) == "expandable_segments:True"
    assert gpu_env(0.0) == {}
