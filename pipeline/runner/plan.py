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

GPU memory: on GPUs each model actor's ``num_gpus`` comes from what it needs of a card
(``pipeline.refine.gpu_memory.gpu_shares``: the refiner for an image of ``input.max_pixels`` at
``refine.precision``, following ``refine.options.tile_encoder`` as on the CPU; SAM by
``sam.model_type``), for cards of ``ray.gpu_memory_gb`` (unset: read from the GPU nodes by the
runner). Ray packs fractional GPU asks freely (two SAM actors may share a card while two
refiners share another), so half a card each is given only when any two actors fit one card;
otherwise a whole card each, or, on a one-card cluster, shares in proportion to the needs. A
job that cannot fit is a ValueError naming the key before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import RayConfig, RefineJobConfig
from pipeline.refine.gpu_memory import TILED_GIB_PER_MEGAPIXEL, GpuShares, gpu_shares
from pipeline.refine.options import encoder_tile_pixels

__all__ = ["TASK_CPUS", "StagePlan", "plan_stages", "plan_job", "gpu_plan", "describe_memory",
           "refiner_memory", "CPU_GIB_PER_MEGAPIXEL", "TILED_GIB_PER_MEGAPIXEL"]

TASK_CPUS = 0.25  # logical CPUs per decode / finish task (fractional: no 2-CPU deadlock)
GIB = 1024**3
#: Peak resident memory of a CPU refiner per megapixel of input with the encoder untiled, measured:
#: crm_r50 with the exact optimisations 1.86 / 5.22 / 7.59 GB at 3.1 / 12.6 / 24 MP (docs/benchmarks.md,
#: less ~0.95 GB for Python, torch and the model: 0.29 / 0.34 / 0.28 GB per MP); crm_mnv2 refiner
#: actors 6.4-6.9 GiB on 6000x4000 images (0.27-0.29 GiB per MP with the actor's buffers).
CPU_GIB_PER_MEGAPIXEL = 0.35
#: On a GPU the activations live on the card; the actor's host memory holds the decoded image,
#: masks and output (~25 bytes per pixel), counted generously.
GPU_HOST_GIB_PER_MEGAPIXEL = 0.05
BASE_GIB = 1.0  # Python, torch, the model, Ray's worker


def refiner_memory(max_pixels: int, on_gpu: bool, backbone: str = "r50",
                   tile_encoder: int | str = "off") -> float:
    """Bytes of host memory a refiner actor needs for one image of ``max_pixels`` pixels: on a GPU
    the host buffers; on CPU untiled CPU_GIB_PER_MEGAPIXEL of the image; tiled, that rate for one
    tile (the encoder's working set) plus TILED_GIB_PER_MEGAPIXEL[backbone] of the image."""
    mp = max_pixels / 1e6
    if on_gpu:
        return (BASE_GIB + GPU_HOST_GIB_PER_MEGAPIXEL * mp) * GIB
    tile = encoder_tile_pixels(tile_encoder, max_pixels)
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
    gpu: GpuShares | None = None  # GPU memory of a card and what each GPU actor needs of it (on GPUs)

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
    gpu: GpuShares | None = None,
) -> StagePlan:
    """Size the stages from the cluster's CPUs/GPUs so that everything fits at once.

    Tasks ask for TASK_CPUS each; model actors share what the task pools leave. Without
    GPUs a model actor asks for ``cfg.cpus_per_actor`` (default 1, 2 on >= 8 CPUs), shrunk to
    a fraction when the pools would not otherwise fit (2 CPUs with SAM: 0.75 each). With
    GPUs each model actor gets its share of a card (``gpu``, below).
    ``nodes``: (CPUs, GPUs) of each alive node; with two or more, the CPU asks fit the cluster
    minus its largest node (module docstring), and the plan says ``survives_node_loss``.
    ``sam_on_gpu=False`` (the ``regions`` proposals, CPU only): proposal actors take no GPU and
    every GPU slot goes to a refiner.
    ``memory``: the cluster's ``memory`` resource in bytes (0: unknown, no memory is asked);
    ``actor_memory``: bytes a refiner actor wants (:func:`refiner_memory`), capped to fit
    (module docstring); with ``memory_set`` (``ray.refine_actor_memory_gb`` given) it is asked
    as is, and a plan whose refiner actors cannot fit is an error naming that key.
    ``gpu``: the GPU shares of the actors by their memory needs (:func:`plan_job`); None: half a
    GPU each for SAM and refiner actors, a GPU per refiner without SAM (``cfg.gpus_per_actor``
    overrides both). The GPU asks must fit the cluster's GPUs at once, or it is an error naming
    ``ray.refine_actors``.
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
        if gpu is not None:
            refine_gpus, sam_gpus = gpu.refine, gpu.sam if gpu_sam else 0.0
        else:
            refine_gpus = cfg.gpus_per_actor or (0.5 if gpu_sam else 1.0)
            sam_gpus = refine_gpus if gpu_sam else 0.0
        if gpu_sam and sam_gpus != refine_gpus:  # unequal shares: a SAM and a refiner per card
            pairs = max(1, int(gpus / (sam_gpus + refine_gpus) + 1e-9))
            sam, refine = cfg.sam_actors or pairs, cfg.refine_actors or pairs
        else:
            slots = max(1, int(gpus / refine_gpus + 1e-9))
            if gpu_sam:
                sam = cfg.sam_actors or max(1, slots // 2)
                refine = cfg.refine_actors or max(1, slots - sam)
            else:
                refine = cfg.refine_actors or slots
                sam = (cfg.sam_actors or refine) if uses_sam else 0
        asked = refine * refine_gpus + sam * sam_gpus
        if asked > gpus + 1e-9:
            with_sam = f" and {sam} SAM actors x {sam_gpus:g}" if sam_gpus else ""
            raise ValueError(f"ray.refine_actors: {refine} refiner actors x {refine_gpus:g} GPU{with_sam} "
                             f"do not fit in the cluster's {gpus:g} GPUs; use fewer (ray.refine_actors, "
                             "ray.sam_actors)")
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
        gpu=gpu if gpus > 0 else None,
    )


def plan_job(
    cfg: RefineJobConfig, resources: dict[str, float], nodes: Sequence[tuple[float, float]],
    card_bytes: float | None = None,
) -> StagePlan:
    """The plan of a refine / relabel job on a cluster with ``resources`` (``ray.cluster_resources()``)
    and alive ``nodes``: :func:`plan_stages` with the job's proposals, threads, actor memory and
    ``refine.device``: ``cpu`` plans CPU actors even where the cluster has GPUs (none reserved);
    ``cuda`` on a cluster without GPUs is a ValueError naming the key; ``auto`` uses GPUs if any.
    On GPUs the actors' GPU shares follow their memory needs (:func:`gpu_plan`) on cards of
    ``ray.gpu_memory_gb``, else ``card_bytes`` (the smallest card, read by the runner; None:
    unknown, a ValueError naming ``ray.gpu_memory_gb``)."""
    gpus = resources.get("GPU", 0.0)
    device = cfg.refine.device
    if device == "cuda" and gpus <= 0:
        raise ValueError("refine.device: 'cuda' but the Ray cluster has no GPUs (use auto or cpu, or add "
                         "GPU nodes)")
    if device == "cpu":
        gpus = 0.0
        nodes = [(c, 0.0) for c, _ in nodes]
    on_gpu = gpus > 0
    from pipeline.models.registry import SPECS

    spec = SPECS.get(cfg.model.name)
    backbone = spec.backbone if spec else "r50"
    tile_encoder = cfg.refine.options.get("tile_encoder", "auto")
    set_gb = cfg.ray.refine_actor_memory_gb
    if set_gb is not None:
        wanted = set_gb * GIB
    else:
        wanted = refiner_memory(cfg.input.max_pixels, on_gpu, backbone, tile_encoder)
    gpu = gpu_plan(cfg, gpus, card_bytes, backbone, tile_encoder) if on_gpu else None
    return plan_stages(
        resources.get("CPU", 0.0), gpus, cfg.uses_sam, cfg.ray, cfg.refine.threads, nodes=nodes,
        sam_on_gpu=cfg.sam.proposals == "sam", memory=resources.get("memory", 0.0), actor_memory=wanted,
        memory_set=set_gb is not None, gpu=gpu,
    )


def gpu_plan(cfg: RefineJobConfig, gpus: float, card_bytes: float | None, backbone: str,
             tile_encoder: int | str) -> GpuShares:
    """The GPU shares of a job's actors on ``gpus`` cards of ``ray.gpu_memory_gb`` (else
    ``card_bytes``): the refiner (``backbone``) for ``input.max_pixels`` at ``refine.precision``
    (``auto`` on a card is bf16 or fp16, both counted at the half-precision rate) with
    ``tile_encoder``; SAM's ``sam.model_type`` when the proposals are SAM's."""
    if cfg.ray.gpu_memory_gb is not None:
        card_bytes = cfg.ray.gpu_memory_gb * GIB
    if not card_bytes:
        raise ValueError("ray.gpu_memory_gb: the memory of the cluster's GPUs could not be read (no "
                         "nvidia-smi on the GPU nodes?); set it to the smallest card's memory in GiB, "
                         "e.g. 80")
    precision = cfg.refine.precision if cfg.refine.precision != "auto" else "bf16"
    sam_model = cfg.sam.model_type if cfg.uses_sam and cfg.sam.proposals == "sam" else None
    return gpu_shares(int(card_bytes), cfg.input.max_pixels, precision, sam_model, backbone=backbone,
                      tile_encoder=tile_encoder, cards=gpus,
                      per_actor=cfg.ray.gpus_per_actor or None)


def describe_memory(plan: StagePlan, max_pixels: int) -> str:
    """The refiner actors' memory ask for the run summary (says when it is capped), and on GPUs
    their GPU share and what they need of a card."""
    if not plan.refine_memory:
        text = f"{plan.refine_actors} (no memory asked: the cluster reports none)"
    else:
        text = f"{plan.refine_actors} x {plan.refine_memory / GIB:.1f} GiB memory"
        if plan.memory_capped:
            text += (f" (all that fits; an image near input.max_pixels = {max_pixels / 1e6:g} MP may need "
                     f"{plan.memory_wanted / GIB:.1f} GiB)")
    if plan.gpu is not None:
        g = plan.gpu
        text += (f", {plan.refine_gpus:g} GPU each (~{g.refine_bytes / GIB:.1f} GiB of a "
                 f"{g.card_bytes / GIB:.0f} GiB card")
        text += f"; SAM actors {plan.sam_gpus:g} GPU, ~{g.sam_bytes / GIB:.1f} GiB)" if plan.sam_gpus else ")"
    return text
