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

Memory: refiner actors ask Ray for the memory an image of ``input.max_pixels`` needs
(:func:`refiner_memory`: with the encoder tiled, the default above 16 MP, a constant plus what the
full-size buffers take), so Ray does not pack more actors on a node than fit; the ask is
capped so that all refiner actors fit in 80% of the cluster's ``memory`` resource (of what is
left without the largest node, counted in proportion to CPUs, on two or more nodes). A capped
plan says so (``memory_capped``): an image near ``input.max_pixels`` may then need more than
its actor asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import RayConfig, RefineJobConfig

__all__ = ["TASK_CPUS", "StagePlan", "plan_stages", "plan_job", "describe_memory", "refiner_memory",
           "CPU_GIB_PER_MEGAPIXEL", "TILED_GIB_PER_MEGAPIXEL"]

TASK_CPUS = 0.25  # logical CPUs per decode / finish task (fractional: no 2-CPU deadlock)
GIB = 1024**3
#: Peak resident memory of a CPU refiner per megapixel of input with the encoder untiled, measured:
#: crm_r50 with the exact optimisations 1.86 / 5.22 / 7.59 GB at 3.1 / 12.6 / 24 MP (docs/benchmarks.md,
#: less ~0.95 GB for Python, torch and the model: 0.29 / 0.34 / 0.28 GB per MP); crm_mnv2 refiner
#: actors 6.4-6.9 GiB on 6000x4000 images (0.27-0.29 GiB per MP with the actor's buffers).
CPU_GIB_PER_MEGAPIXEL = 0.35
#: With the encoder tiled (``refine.options.tile_encoder``; ``auto`` above AUTO_PIXELS) the encoder
#: works on one tile at a time; what grows with the image is the full-size data: measured for a
#: tiled crm_mnv2 refinement 1.8 GiB + 34 bytes per pixel (samsr benchmark memory, 12-48 MP); the
#: stitched levels are 22 B/px for the light encoders, 88 B/px for ResNet-50. Counted here with
#: ~40 B/px more for the actor (test-time augmentation sums, trust features, the decoded image, masks
#: and output), in GiB per megapixel of input, by backbone:
TILED_GIB_PER_MEGAPIXEL = {"mnv2": 0.07, "r50": 0.13}
#: On a GPU the activations live on the card; the actor's host memory holds the decoded image,
#: masks and output (~25 bytes per pixel), counted generously.
GPU_HOST_GIB_PER_MEGAPIXEL = 0.05
BASE_GIB = 1.0  # Python, torch, the model, Ray's worker


def _tile_pixels(tile_encoder: int | str, max_pixels: int) -> int | None:
    """Pixels of one encoder tile when an image of ``max_pixels`` is encoded in tiles, else None."""
    from pipeline.refine.options import AUTO_PIXELS, AUTO_TILE

    if tile_encoder in ("off", False):
        return None
    if tile_encoder == "auto":
        return AUTO_TILE**2 if max_pixels > AUTO_PIXELS else None
    return min(int(tile_encoder) ** 2, max_pixels)


def refiner_memory(max_pixels: int, on_gpu: bool, backbone: str = "r50",
                   tile_encoder: int | str = "off") -> float:
    """Bytes of host memory a refiner actor needs for one image of ``max_pixels`` pixels: on a GPU
    the host buffers; on CPU untiled CPU_GIB_PER_MEGAPIXEL of the image; tiled, that rate for one
    tile (the encoder's working set) plus TILED_GIB_PER_MEGAPIXEL[backbone] of the image."""
    mp = max_pixels / 1e6
    if on_gpu:
        return (BASE_GIB + GPU_HOST_GIB_PER_MEGAPIXEL * mp) * GIB
    tile = _tile_pixels(tile_encoder, max_pixels)
    if tile is None:
        return (BASE_GIB + CPU_GIB_PER_MEGAPIXEL * mp) * GIB
    per = TILED_GIB_PER_MEGAPIXEL.get(backbone, max(TILED_GIB_PER_MEGAPIXEL.values()))
    return (BASE_GIB + CPU_GIB_PER_MEGAPIXEL * tile / 1e6 + per * mp) * GIB


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
    refine_memory: float = 0.0  # bytes of Ray's memory resource per refiner actor (0: none asked)
    memory_wanted: float = 0.0  # bytes an image of input.max_pixels needs (or ray.refine_actor_memory_gb)

    @property
    def memory_capped(self) -> bool:
        """The memory ask is below what an image of input.max_pixels needs."""
        return 0 < self.refine_memory < self.memory_wanted


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
    memory: float = 0.0,
    actor_memory: float = 0.0,
    memory_set: bool = False,
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
    ``memory``: the cluster's ``memory`` resource in bytes (0: unknown, no memory is asked);
    ``actor_memory``: bytes a refiner actor wants (:func:`refiner_memory`), capped to fit
    (module docstring); with ``memory_set`` (``ray.refine_actor_memory_gb`` given) it is asked
    as is, and a plan whose refiner actors cannot fit is an error naming that key.
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
    refine_memory = 0.0
    if memory_set:
        refine_memory = actor_memory
        if memory > 0 and refine * actor_memory > memory:
            raise ValueError(f"ray.refine_actor_memory_gb: {refine} refiner actors x "
                             f"{actor_memory / GIB:.1f} GiB do not fit in the cluster's "
                             f"{memory / GIB:.1f} GiB of memory; ask less or use fewer actors "
                             "(ray.refine_actors)")
    elif memory > 0 and actor_memory > 0:
        fit = 0.8 * memory * (budget / cpus) / refine
        refine_memory = min(actor_memory, fit)
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
        refine_memory=refine_memory,
        memory_wanted=actor_memory if refine_memory else 0.0,
    )


def plan_job(
    cfg: RefineJobConfig, resources: dict[str, float], nodes: Sequence[tuple[float, float]]
) -> StagePlan:
    """The plan of a refine / relabel job on a cluster with ``resources`` (``ray.cluster_resources()``)
    and alive ``nodes``: :func:`plan_stages` with the job's proposals, threads, actor memory and
    ``refine.device``: ``cpu`` plans CPU actors even where the cluster has GPUs (none reserved);
    ``cuda`` on a cluster without GPUs is a ValueError naming the key; ``auto`` uses GPUs if any."""
    gpus = resources.get("GPU", 0.0)
    device = cfg.refine.device
    if device == "cuda" and gpus <= 0:
        raise ValueError("refine.device: 'cuda' but the Ray cluster has no GPUs (use auto or cpu, or add "
                         "GPU nodes)")
    if device == "cpu":
        gpus = 0.0
        nodes = [(c, 0.0) for c, _ in nodes]
    on_gpu = gpus > 0
    set_gb = cfg.ray.refine_actor_memory_gb
    if set_gb is not None:
        wanted = set_gb * GIB
    else:
        from pipeline.models.registry import SPECS

        spec = SPECS.get(cfg.model.name)
        wanted = refiner_memory(cfg.input.max_pixels, on_gpu, spec.backbone if spec else "r50",
                                cfg.refine.options.get("tile_encoder", "auto"))
    return plan_stages(
        resources.get("CPU", 0.0), gpus, cfg.uses_sam, cfg.ray, cfg.refine.threads, nodes=nodes,
        sam_on_gpu=cfg.sam.proposals == "sam", memory=resources.get("memory", 0.0), actor_memory=wanted,
        memory_set=set_gb is not None,
    )


def describe_memory(plan: StagePlan, max_pixels: int) -> str:
    """The refiner actors' memory ask for the run summary (says when it is capped)."""
    if not plan.refine_memory:
        return f"{plan.refine_actors} (no memory asked: the cluster reports none)"
    text = f"{plan.refine_actors} x {plan.refine_memory / GIB:.1f} GiB memory"
    if plan.memory_capped:
        text += (f" (all that fits; an image near input.max_pixels = {max_pixels / 1e6:g} MP may need "
                 f"{plan.memory_wanted / GIB:.1f} GiB)")
    return text
