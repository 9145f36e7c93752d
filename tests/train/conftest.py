"""One local Ray (2 CPUs, no dashboard) shared by the Ray Train tests of this folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
