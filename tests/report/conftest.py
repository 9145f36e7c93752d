"""The report tests build a real refine output: the Ray fixtures of tests/ray."""

from tests.ray.conftest import crm_checkpoint, local_ray  # noqa: F401
