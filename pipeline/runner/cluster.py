"""Reaching Ray: start or join a cluster (with a reaper for a local one), the Ray Data settings
every job uses, and what a worker knows about itself (node, GPUs). The only module of samsr that
calls ``ray.init``.
"""

from __future__ import annotations

import logging
import os

from pipeline.config import RayConfig

__all__ = ["init_ray", "shutdown_ray", "quiet_ray_notices", "alive_nodes", "cluster_resources",
           "configure_data_context", "ray_node_id", "ray_gpu_ids", "ray_is_initialized", "gpu_card_bytes"]


class _DropNotices(logging.Filter):
    """Drops log records whose message starts with one of ``starts`` (Ray's notices about
    choices this job made on purpose, which users took for errors)."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# the local Ray we start keeps token auth on (Ray's default) and we show our own progress bar
_QUIET = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators disabled"),
}


def quiet_ray_notices() -> None:
    """Silence the notices of `_QUIET` (idempotent); every other Ray message still shows."""
    for name, starts in _QUIET.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in log.filters):
            log.addFilter(_DropNotices(*starts))


_REAPER = None  # pipeline.runner.reaper sentinel of the local Ray this process started


def init_ray(cfg: RayConfig) -> bool:
    """The one way jobs reach Ray: an already initialised Ray, ``ray.address`` / $RAY_ADDRESS,
    or a local Ray started in-process (with a `pipeline.runner.reaper` sentinel that stops it if
    this process dies without `shutdown_ray`). Returns True when this call started or joined it;
    the caller then calls ``shutdown_ray(started)``."""
    global _REAPER
    import ray

    quiet_ray_notices()
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        from pipeline.runner.reaper import watch

        ray.init(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_memory,
            include_dashboard=False,
        )
        _REAPER = watch()
    return True


def shutdown_ray(started: bool) -> None:
    """Disconnect (and stop the local Ray) if ``init_ray`` returned True."""
    global _REAPER
    if not started:
        return
    import ray

    if _REAPER is not None:
        _REAPER.close()
        _REAPER = None
    ray.shutdown()


def ray_is_initialized() -> bool:
    import ray

    return ray.is_initialized()


def cluster_resources() -> dict[str, float]:
    """The connected cluster's total resources (``ray.cluster_resources()``)."""
    import ray

    return ray.cluster_resources()


def alive_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node."""
    import ray

    return [(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
            for n in ray.nodes() if n.get("Alive")]


def gpu_card_bytes(timeout_s: float = 120.0) -> int | None:
    """The memory of the smallest GPU on the alive GPU nodes: ``nvidia-smi`` on each, in a
    0-CPU task pinned to the node (no CUDA context is created anywhere). None when there is no
    GPU node or one of them cannot tell within ``timeout_s``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.refine.gpu_memory import card_memory_bytes

    probe = ray.remote(num_cpus=0, max_retries=0)(card_memory_bytes)
    pinned = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
              for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    refs = [probe.options(scheduling_strategy=where).remote() for where in pinned]
    if not refs:
        return None
    try:
        found = ray.get(refs, timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return None
    return None if None in found else min(found)


def configure_data_context(actor_start_timeout_s: float) -> None:
    """Ray Data settings of every job: no Ray progress bars (the driver shows its own); start
    processing only when every pool actor is up (else the first actor may take all the work
    before the others exist), and a pool that cannot start in time fails clearly."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.wait_for_min_actors_s = int(actor_start_timeout_s)


def ray_gpu_ids() -> list:
    """The GPUs Ray gave this worker ([] outside Ray)."""
    import ray

    return ray.get_gpu_ids() if ray.is_initialized() else []


def ray_node_id() -> str | None:
    """This worker's node id (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
