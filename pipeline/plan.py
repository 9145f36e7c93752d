"""How many tasks and actors each stage of the refine pipeline gets, from the cluster's resources.

Pure arithmetic (no Ray), so the sizing can be checked for any cluster shape. Two rules:

- everything asked for must fit at once, or Ray Data waits forever (2 CPUs with two 1-CPU
  actors plus a 1-CPU task hangs), so tasks and actors ask for fractions;
- on two or more nodes, everything asked for must also fit on the nodes left after losing the
  largest one. A lost node's model actors are restarted by Ray Data on the survivors (their
  in-flight batches wait for that restart) and its decode/finish outputs are recomputed there,
  so the CPU logical asks are sized for the cluster minus its largest node: model actors can
  never take the CPU share that decode/finish tasks need, and a restarted actor always finds
  room. Logical CPUs only place work: an actor's real threads (``torch_threads``) still come
  from the whole cluster's share. GPU actors keep their GPU share (fractional GPUs would let
  two actors share one card while another idles): a lost GPU node stalls until a GPU frees up,
  which the job's progress watchdog reports (``ray.stall_timeout_s``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    survives_node_loss: bool = False  # sized to fit the cluster minus its largest node


def _floor(x: float, step: float = 0.01) -> float:
    return math.floor(x / step + 1e-9) * step


def plan_stages(
    cpus: float,
    gpus: float,
    uses_sam: bool,
    cfg: RayConfig,
    threads: int | None = None,
    nodes: Sequence[tuple[float, float]] = (),
    sam_on_gpu: bool = True,
) -> StagePlan:
    """Size the stages from the cluster's CPUs/GPUs so that everything fits at once.

    Tasks ask for TASK_CPUS each; model actors share what the task pools leave. Without
    GPUs a model actor asks for ``cfg.cpus_per_actor`` (default 1, 2 on >= 8 CPUs), shrunk to
    a fraction when the pools would not otherwise fit (2 CPUs with SAM: 0.75 each). With
    GPUs each refiner actor gets a GPU (half a GPU each for SAM and refiner actors).
    ``nodes``: (CPUs, GPUs) of each alive node; with two or more, the CPU asks fit the cluster
    minus its largest node (module docstring), and the plan says ``survives_node_loss``.
    ``sam_on_gpu=False`` (the ``regions`` proposals, CPU only): proposal actors take no GPU and
    every GPU slot goes to a refiner.
    """
    if cpus <= 0:
        raise ValueError(f"cluster has no CPUs ({cpus})")
    decode = cfg.decode_tasks or max(1, min(8, int(cpus // 2)))
    finish = max(1, min(decode, 4))
    spare = cpus - max(c for c, _ in nodes) if len(nodes) >= 2 else 0.0
    tolerant = spare > 0
    budget = spare if tolerant else cpus  # what the logical CPU asks must fit in
    task_cpus = min(TASK_CPUS, budget / (4 * (decode + finish)))  # tasks take at most a quarter
    avail = cpus - min(TASK_CPUS, cpus / (4 * (decode + finish))) * (decode + finish)
    avail_budget = budget - task_cpus * (decode + finish)
    sam_gpus = refine_gpus = 0.0
    if gpus > 0:
        gpu_sam = uses_sam and sam_on_gpu
        per = cfg.gpus_per_actor or (0.5 if gpu_sam else 1.0)
        slots = max(1, int(gpus / per + 1e-9)) if per > 0 else 1
        if gpu_sam:
            sam = cfg.sam_actors or max(1, slots // 2)
            refine = cfg.refine_actors or max(1, slots - sam)
        else:
            refine = cfg.refine_actors or slots
            sam = (cfg.sam_actors or refine) if uses_sam else 0
        sam_gpus = per if gpu_sam else 0.0
        refine_gpus = per
        want = cfg.cpus_per_actor or 1.0
    else:
        want = cfg.cpus_per_actor or (2.0 if cpus >= 8 else 1.0)
        total = max(1, int(avail // want))
        sam = (cfg.sam_actors or max(1, total // 2)) if uses_sam else 0
        refine = cfg.refine_actors or max(1, total - sam)
    n = sam + refine
    share = want if n * want <= avail + 1e-9 else _floor(avail / n, 0.05)  # real CPUs per actor
    actor_cpus = want if n * want <= avail_budget + 1e-9 else _floor(avail_budget / n)
    if share <= 0 or actor_cpus <= 0:
        where = f"{budget:g} CPUs left after losing the largest node" if tolerant else f"{cpus:g} CPUs"
        raise ValueError(f"ray.refine_actors: {n} model actors do not fit in {where}; use fewer")
    return StagePlan(
        decode_tasks=decode,
        finish_tasks=finish,
        task_cpus=task_cpus,
        sam_actors=sam,
        refine_actors=refine,
        actor_cpus=actor_cpus,
        sam_gpus=sam_gpus,
        refine_gpus=refine_gpus,
        torch_threads=threads or max(1, int(share)),
        tasks_per_actor=2 if gpus > 0 else 1,
        survives_node_loss=tolerant,
    )
