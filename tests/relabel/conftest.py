"""Fixtures shared with the Ray pipeline tests (tiny checkpoints of the real classes, a local Ray)."""

from tests.ray.conftest import local_ray, v21_checkpoint  # noqa: F401
