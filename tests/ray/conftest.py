"""Fixtures for the Ray pipeline tests: tiny random checkpoints of the real model classes and
a local Ray per test module (started in-process, stopped with ray.shutdown)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def crm_checkpoint(tmp_path_factory) -> str:
    """A randomly initialised crm_mnv2 (the real class), saved in the official key format."""
    from pipeline.io.weights import save_checkpoint
    from pipeline.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "crm_mnv2_random.pt"
    save_checkpoint(build_model("crm_mnv2"), str(path))
    return str(path)


@pytest.fixture(scope="session")
def v21_checkpoint(tmp_path_factory) -> str:
    """A randomly initialised samsr_v21_mnv2 (7 input channels)."""
    from pipeline.io.weights import save_checkpoint
    from pipeline.models import build_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "samsr_v21_mnv2_random.pt"
    save_checkpoint(build_model("samsr_v21_mnv2"), str(path))
    return str(path)


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory) -> str:
    """segment-anything's Sam in the tiny configuration, random weights, as a state dict file."""
    from pipeline.sam import build_sam

    path = tmp_path_factory.mktemp("weights") / "sam_tiny_random.pth"
    torch.save(build_sam("tiny", seed=0).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def local_ray(request):
    """A local 2-CPU Ray for the module (S3 variables set first when the module uses S3)."""
    import ray

    if "s3_server" in request.fixturenames or getattr(request.module, "USES_S3", False):
        request.getfixturevalue("s3_server")
    if ray.is_initialized():  # left by another module: start clean
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 * 2**20)
    yield ray
    ray.shutdown()
