"""Train the refiner (CRM or SAM-SR-v2.1) with Ray Train, resuming from the last checkpoint.

    python -m jobs.train --data /data/big/train --checkpoint-dir s3://bucket/runs/crm_mnv2 \\
        --model crm_mnv2 --pretrained-backbone --steps 2000 --export pipeline/weights/crm_mnv2.pt

    # SAM-SR-v2.1 from a CRM checkpoint: SAM colour maps are precomputed once (Ray job) and cached
    python -m jobs.train --data /data/big/train --model samsr_v21_mnv2 \\
        --init-checkpoint pipeline/weights/crm_mnv2.pt --sam-model-type vit_b \\
        --sam-checkpoint /weights/sam_vit_b.pth --sam-cache s3://bucket/sam_cache --checkpoint-dir ...

Data: ``--data URI`` (repeatable) in any pipeline input layout with ground truth, and/or
``--photos DIR_OR_GLOB`` for composites generated on the fly (exact ground truth). Training runs
as a Ray Train ``TorchTrainer`` (DDP, gloo on CPU / nccl on GPU; ``--num-workers``) on a local
Ray (default) or ``--address`` / ``RAY_ADDRESS``; ``--no-ray`` runs the same loop in this process.
Re-running the same command after a kill resumes from the newest checkpoint in
``--checkpoint-dir`` (any fsspec URL).
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Sequence

from pipeline.train.loop import TrainConfig, train_loop
from pipeline.train.loss import LossWeights

__all__ = ["build_parser", "config_from_args", "build_source", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="samsr train", description="Train the refiner with Ray Train "
                                 "(CRM recipe: L1 + MSE + Sobel-gradient L1, Adam, step decay).")
    d = ap.add_argument_group("data")
    d.add_argument("--data", action="append", default=[], metavar="URI",
                   help="input dataset with ground truth (repeatable); any fsspec URI")
    d.add_argument("--layout", default="prefix", choices=["prefix", "webdataset", "list"],
                   help="input layout of --data (default: prefix, NAME_im.jpg/NAME_seg.png/NAME_gt.png)")
    d.add_argument("--image-suffix", default=None, help="override the layout's image suffix")
    d.add_argument("--gt-suffix", default=None, help="override the layout's ground-truth suffix")
    d.add_argument("--photos", default=None, metavar="DIR_OR_GLOB",
                   help="photographs for composites generated on the fly (pasted shapes, exact gt)")
    d.add_argument("--composites", type=int, default=2000, help="number of on-the-fly composites per epoch")
    d.add_argument("--max-pixels", type=int, default=4096 * 4096, help="decode guard per image")
    m = ap.add_argument_group("model")
    m.add_argument("--model", default="crm_mnv2", help="registry name: crm_r50, crm_mnv2, samsr_v21_r50, "
                   "samsr_v21_mnv2 (default crm_mnv2)")
    m.add_argument("--pretrained-backbone", action="store_true",
                   help="initialise the MobileNetV2 encoder from ImageNet weights (light models)")
    m.add_argument("--init-checkpoint", default=None, metavar="URI",
                   help="start from these weights; a CRM checkpoint into a v2.1 model zero-inits "
                   "the SAM channels")
    m.add_argument("--no-fresh-init", action="store_true",
                   help="without --init-checkpoint: keep the builder's init instead of orthogonal extra stem "
                   "channels + Kaiming decoder MLP")
    o = ap.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, help="total optimizer steps (default 1000)")
    o.add_argument("--batch-size", type=int, default=8, help="crops per worker per step (default 8)")
    o.add_argument("--crop", type=int, default=224, help="crop size in px (default 224)")
    o.add_argument("--patch", type=int, default=64,
                   help="dense query windows of this size per crop; 0 = query every crop pixel (default 64)")
    o.add_argument("--patches", type=int, default=2, help="query windows per crop (default 2)")
    o.add_argument("--lr", type=float, default=2.25e-4, help="Adam learning rate (default 2.25e-4)")
    o.add_argument("--lr-milestones", default=None,
                   help="comma-separated steps where lr *= --lr-gamma (default: 50%% and 83%% of --steps)")
    o.add_argument("--lr-gamma", type=float, default=0.1, help="step-decay factor (default 0.1)")
    o.add_argument("--loss-weights", default="0,1,1,5", help="bce,l1,mse,grad (default CRM's 0,1,1,5)")
    o.add_argument("--input-scale-min", type=float, default=0.125,
                   help="encode the crop downscaled by U(min, 1) (queries stay at crop resolution), like the "
                   "inference cascade's 1/8..1 scales (default 0.125)")
    o.add_argument("--p-input-scale", type=float, default=0.5, help="probability of that downscaling")
    o.add_argument("--p-lowres", type=float, default=0.3,
                   help="probability of the 4-16x low-resolution degradation of a perturbed coarse mask")
    o.add_argument("--p-annotation", type=float, default=0.35,
                   help="share of coarse masks that are low-resolution annotations "
                   "(truth down/upsampled 4-16x)")
    o.add_argument("--p-identity", type=float, default=0.1,
                   help="share of coarse masks that are the truth or nearly (IoU >= 0.97)")
    o.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay (CRM: 1e-4)")
    o.add_argument("--dropout", type=float, default=0.0,
                   help="fusion dropout while training (default 0; CRM's own 0.5 kept the short CPU runs "
                   "at a constant output, see MODEL_CARD); negative: keep the model's")
    o.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="train for about this long: after 50 timed steps the run's length becomes what fits "
                   "(at most --steps) and the lr milestones are scaled with it")
    o.add_argument("--seed", type=int, default=0)
    r = ap.add_argument_group("run")
    r.add_argument("--checkpoint-dir", required=True, metavar="URI", help="checkpoints + log (fsspec URL)")
    r.add_argument("--export", default=None, metavar="URI", help="write final weights here (official keys)")
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--ckpt-every", type=int, default=100)
    r.add_argument("--keep-checkpoints", type=int, default=3)
    r.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (may be < 1)")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per worker, nccl backend")
    r.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: Ray's default)")
    r.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes per worker")
    r.add_argument("--epoch-repeats", type=int, default=1,
                   help="each epoch visits every sample this many times, with other crops (fewer loader "
                   "restarts on small datasets; default 1)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    r.add_argument("--no-ray", action="store_true", help="run the loop in this process (no Ray Train)")
    s = ap.add_argument_group("SAM colour maps (SAM-SR-v2.1 models)")
    s.add_argument("--proposals", choices=["sam", "regions"], default=None,
                   help="proposal source of the colour maps: sam (needs --sam-checkpoint, or "
                   "--sam-model-type tiny for tests) or regions (no weights; the default without "
                   "--sam-checkpoint)")
    s.add_argument("--sam-model-type", default="vit_h", help="vit_h, vit_l, vit_b or tiny")
    s.add_argument("--sam-checkpoint", default=None, metavar="URI",
                   help="SAM weights (none: random, tests only)")
    s.add_argument("--sam-cache", default=None, metavar="URI",
                   help="colour-map cache (default CKPT_DIR/sam_cache)")
    s.add_argument("--sam-points-per-side", type=int, default=32)
    s.add_argument("--sam-working-size", type=int, default=1024)
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments (ValueError for bad values)."""
    milestones = None
    if args.lr_milestones:
        try:
            milestones = tuple(int(v) for v in args.lr_milestones.split(","))
        except ValueError as exc:
            raise ValueError(f"--lr-milestones {args.lr_milestones!r}: expected comma-separated integers") \
                from exc
    return TrainConfig(
        checkpoint_dir=args.checkpoint_dir, model=args.model, pretrained_backbone=args.pretrained_backbone,
        init_checkpoint=args.init_checkpoint, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, lr_milestones=milestones, lr_gamma=args.lr_gamma,
        loss_weights=LossWeights.parse(args.loss_weights), crop=args.crop, patch=args.patch,
        patches=args.patches, p_lowres=args.p_lowres,
        p_annotation=args.p_annotation, p_identity=args.p_identity, weight_decay=args.weight_decay,
        input_scale_range=(args.input_scale_min, 1.0),
        p_input_scale=args.p_input_scale, log_every=args.log_every, ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, loader_workers=args.loader_workers,
        threads=args.threads, use_gpu=args.use_gpu, export=args.export, fresh_init=not args.no_fresh_init,
        dropout=None if args.dropout < 0 else args.dropout,
        epoch_repeats=args.epoch_repeats,
        time_budget_s=None if args.time_budget is None else 60.0 * args.time_budget)


def build_source(args: argparse.Namespace):
    """The training source from --data / --photos (several are concatenated)."""
    from pipeline.train.data import CompositeSource, ConcatSource, LayoutSource

    parts = []
    suffixes = {k: v for k, v in (("image_suffix", args.image_suffix), ("gt_suffix", args.gt_suffix)) if v}
    for uri in args.data:
        parts.append(LayoutSource(uri, layout=args.layout, max_pixels=args.max_pixels, **suffixes))
    if args.photos:
        pattern = args.photos
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*")
        photos = sorted(p for p in glob.glob(pattern, recursive=True)
                        if p.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
        parts.append(CompositeSource(photos, args.composites, seed=args.seed))
    if not parts:
        raise ValueError("no training data: give --data URI and/or --photos DIR")
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def _sam_lookup(args: argparse.Namespace, source, cfg: TrainConfig):
    """For 7-channel models: precompute (Ray job) and return the cached colour-map reader."""
    from pipeline.models import model_spec

    if not model_spec(args.model).takes_proposals:
        return None
    from pipeline.train.sam_cache import SamColourCache, SamSettings, precompute_colour_maps

    proposals = args.proposals or ("sam" if args.sam_checkpoint else "regions")
    settings = SamSettings(proposals=proposals, model_type=args.sam_model_type,
                           checkpoint=args.sam_checkpoint,
                           points_per_side=args.sam_points_per_side, working_size=args.sam_working_size,
                           seed=args.seed)
    cache = SamColourCache(args.sam_cache or cfg.checkpoint_dir.rstrip("/") + "/sam_cache", settings)
    precompute_colour_maps(source, cache, use_ray=not args.no_ray)
    return cache


def run(args: argparse.Namespace) -> dict:
    """Train per ``args``; returns {"steps": ..., "checkpoint_dir": ..., "export": ...}."""
    cfg = config_from_args(args)
    source = build_source(args)
    if args.no_ray:
        train_loop({"cfg": cfg, "source": source, "sam_lookup": _sam_lookup(args, source, cfg)})
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from pipeline.config import RayConfig
        from pipeline.ray_runner import init_ray, shutdown_ray

        ncpu = max(2, int(args.num_workers * args.cpus_per_worker + 0.999) + 1)
        started = init_ray(RayConfig(address=args.address, num_cpus=ncpu))  # local Ray: ncpu CPUs
        try:
            sam = _sam_lookup(args, source, cfg)
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={"cfg": cfg, "source": source, "sam_lookup": sam},
                torch_config=TorchConfig(backend="nccl" if args.use_gpu else "gloo"),
                scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                             resources_per_worker={"CPU": args.cpus_per_worker}),
                run_config=RunConfig(name="samsr-train", storage_path=_ray_storage(cfg.checkpoint_dir)),
            )
            trainer.fit()
        finally:
            shutdown_ray(started)
    from pipeline.train.checkpoint import list_checkpoints

    done = list_checkpoints(cfg.checkpoint_dir)
    return {"steps": done[-1][0] if done else 0, "checkpoint_dir": cfg.checkpoint_dir, "export": cfg.export}


def _ray_storage(checkpoint_dir: str) -> str:
    """Ray's own run folder: local checkpoint dirs keep it beside them, remote ones use /tmp."""
    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file://"):
        return "/tmp/samsr-ray-train"
    return os.path.abspath(checkpoint_dir.removeprefix("file://").rstrip("/") + "_ray")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(f"[train] done: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
