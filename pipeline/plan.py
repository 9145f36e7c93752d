"""How many tasks and actors each stage of the refine pipeline gets, from the cluster's resources.

Pure arithmetic (no Ray), so the sizing can be checked for any cluster shape. The rule that
matters on small machines: everything asked for must fit at once, or Ray Data waits forever
(2 CPUs with two 1-CPU actors plus a 1-CPU task hangs), so tasks and actors ask for fractions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import RayConfig

__all__ = ["TASK_CPUS", "StagePlan", "plan_stages"]

TASK_CPUS = 0.25  # logical CPUs per decode / finish task (fractional: no 2-CPU deadlock)


@dataclass(frozen=True)
class StagePlan:
    """Resources of each stage (Ray logical units)."""

    decode_tasks: int
    finish_tasks: int
    task_cpus: float
    sam_actors: int
    refine_actors: int
    actor_cpus: float
    sam_gpus: float
    refine_gpus: float
    torch_threads: int
    tasks_per_actor: int = 1


def plan_stages(
    cpus: float, gpus: float, uses_sam: bool, cfg: RayConfig, threads: int | None = None
) -> StagePlan:
    """Size the stages from the cluster's CPUs/GPUs so that everything fits at once.

    Tasks ask for TASK_CPUS each; model actors share what the task pools leave. Without
    GPUs a model actor asks for ``cfg.cpus_per_actor`` (default 1, 2 on >= 8 CPUs), shrunk to
    a fraction when the pools would not otherwise fit (2 CPUs with SAM: 0.75 each). With
    GPUs each refiner actor gets a GPU (half a GPU each for SAM and refiner actors).
    """
    if cpus <= 0:
        raise ValueError(f"cluster has no CPUs ({cpus})")
    decode = cfg.decode_tasks or max(1, min(8, int(cpus // 2)))
    finish = max(1, min(decode, 4))
    task_cpus = min(TASK_CPUS, cpus / (4 * (decode + finish)))  # tasks take at most a quarter
    avail = cpus - task_cpus * (decode + finish)
    sam_gpus = refine_gpus = 0.0
    if gpus > 0:
        per = cfg.gpus_per_actor or (0.5 if uses_sam else 1.0)
        slots = max(1, int(gpus / per + 1e-9)) if per > 0 else 1
        sam = (cfg.sam_actors or max(1, slots // 2)) if uses_sam else 0
        refine = cfg.refine_actors or max(1, slots - sam)
        sam_gpus = per if uses_sam else 0.0
        refine_gpus = per
        want = cfg.cpus_per_actor or 1.0
    else:
        want = cfg.cpus_per_actor or (2.0 if cpus >= 8 else 1.0)
        total = max(1, int(avail // want))
        sam = (cfg.sam_actors or max(1, total // 2)) if uses_sam else 0
        refine = cfg.refine_actors or max(1, total - sam)
    n = sam + refine
    actor_cpus = want if n * want <= avail + 1e-9 else math.floor(avail / n * 20) / 20
    if actor_cpus <= 0:
        raise ValueError(f"ray.refine_actors: {n} model actors do not fit in {cpus} CPUs; use fewer")
    return StagePlan(
        decode_tasks=decode,
        finish_tasks=finish,
        task_cpus=task_cpus,
        sam_actors=sam,
        refine_actors=refine,
        actor_cpus=actor_cpus,
        sam_gpus=sam_gpus,
        refine_gpus=refine_gpus,
        torch_threads=threads or max(1, int(actor_cpus)),
        tasks_per_actor=2 if gpus > 0 else 1,
    )
