"""Train the refiner (CRM or SAM-SR-v2.1) with Ray Train, resuming from the last checkpoint.

    samsr train --config configs/train.yaml --set run.checkpoint_dir=s3://bucket/runs/crm_mnv2
    python -m jobs.train --data /data/big/train --checkpoint-dir s3://bucket/runs/crm_mnv2 \\
        --model crm_mnv2 --pretrained-backbone --steps 2000 --export pipeline/weights/crm_mnv2.pt

    # SAM-SR-v2.1 from a CRM checkpoint: colour maps are precomputed once (Ray job) and cached
    python -m jobs.train --data /data/big/train --model samsr_v21_mnv2 \\
        --init-checkpoint pipeline/weights/crm_mnv2.pt --proposals regions \\
        --sam-cache s3://bucket/sam_cache --checkpoint-dir ...

Every key is in ``configs/train.yaml`` (with its default); flags override the file and
``--set section.key=value`` overrides both. Data: ``data.uris`` (``--data``, repeatable) in any
input layout with ground truth and/or ``data.photos`` for composites made on the fly. Training
runs as a Ray Train ``TorchTrainer`` (``pipeline.runner.train``) on a local Ray (default) or
``run.address`` / ``RAY_ADDRESS``; ``--no-ray`` runs the same loop in this process. Re-running
the same command after a kill resumes from the newest checkpoint in ``run.checkpoint_dir``.
Exit status: 0 done, 2 bad config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]

# flag (dest) -> config key; flags default to None so the file's values apply unless given
_FLAG_KEYS = {
    "layout": "data.layout",
    "image_suffix": "data.image_suffix",
    "gt_suffix": "data.gt_suffix",
    "photos": "data.photos",
    "composites": "data.composites",
    "max_pixels": "data.max_pixels",
    "model": "model.name",
    "init_checkpoint": "model.init_checkpoint",
    "steps": "optim.steps",
    "batch_size": "optim.batch_size",
    "crop": "optim.crop",
    "patch": "optim.patch",
    "patches": "optim.patches",
    "lr": "optim.lr",
    "lr_gamma": "optim.lr_gamma",
    "loss_weights": "optim.loss_weights",
    "input_scale_min": "optim.input_scale_min",
    "p_input_scale": "optim.p_input_scale",
    "p_lowres": "optim.p_lowres",
    "p_annotation": "optim.p_annotation",
    "p_identity": "optim.p_identity",
    "p_truth_jitter": "optim.p_truth_jitter",
    "truth_jitter_kinds": "optim.truth_jitter_kinds",
    "weight_decay": "optim.weight_decay",
    "time_budget": "optim.time_budget_min",
    "seed": "optim.seed",
    "checkpoint_dir": "run.checkpoint_dir",
    "export": "run.export",
    "log_every": "run.log_every",
    "ckpt_every": "run.ckpt_every",
    "keep_checkpoints": "run.keep_checkpoints",
    "num_workers": "run.num_workers",
    "cpus_per_worker": "run.cpus_per_worker",
    "threads": "run.threads",
    "loader_workers": "run.loader_workers",
    "epoch_repeats": "run.epoch_repeats",
    "address": "run.address",
    "proposals": "sam.proposals",
    "sam_model_type": "sam.model_type",
    "sam_checkpoint": "sam.checkpoint",
    "sam_cache": "sam.cache",
    "sam_points_per_side": "sam.points_per_side",
    "sam_working_size": "sam.working_size",
    "sam_seed": "sam.seed",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="samsr train",
        description="Train the refiner with Ray Train (CRM recipe: L1 + MSE + "
        "Sobel-gradient L1, Adam, step decay). Defaults: configs/train.yaml.",
        epilog="Each flag sets the config key in brackets; --set KEY=VALUE sets any key.",
    )
    ap.add_argument("--config", "-c", metavar="YAML", help="train config file (keys: configs/train.yaml)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=5e-4 (YAML value); repeatable",
    )
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    d = ap.add_argument_group("data")
    d.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="URI",
        help="input dataset with ground truth (repeatable; any fsspec URI) [data.uris]",
    )
    d.add_argument(
        "--layout",
        choices=["prefix", "webdataset", "list"],
        help="input layout of --data (prefix: NAME_im.jpg/NAME_seg.png/NAME_gt.png) [data.layout]",
    )
    d.add_argument("--image-suffix", help="override the layout's image suffix [data.image_suffix]")
    d.add_argument("--gt-suffix", help="override the layout's ground-truth suffix [data.gt_suffix]")
    d.add_argument(
        "--photos",
        metavar="DIR_OR_GLOB",
        help="photographs for composites generated on the fly (pasted shapes, exact gt) [data.photos]",
    )
    d.add_argument("--composites", type=int, help="on-the-fly composites per epoch [data.composites]")
    d.add_argument("--max-pixels", type=int, help="decode guard per image [data.max_pixels]")
    m = ap.add_argument_group("model")
    m.add_argument(
        "--model", help="registry name: crm_r50, crm_mnv2, samsr_v21_r50, samsr_v21_mnv2 [model.name]"
    )
    m.add_argument(
        "--pretrained-backbone",
        action="store_true",
        default=None,
        help="initialise the MobileNetV2 encoder from ImageNet weights [model.pretrained_backbone]",
    )
    m.add_argument(
        "--init-checkpoint",
        metavar="URI",
        help="start from these weights; a CRM checkpoint into a v2.1 model zero-inits the SAM "
        "channels [model.init_checkpoint]",
    )
    m.add_argument(
        "--no-fresh-init",
        action="store_true",
        default=None,
        help="without --init-checkpoint: keep the builder's init instead of orthogonal extra stem "
        "channels + Kaiming decoder MLP [model.fresh_init: false]",
    )
    o = ap.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, help="total optimizer steps [optim.steps]")
    o.add_argument("--batch-size", type=int, help="crops per worker per step [optim.batch_size]")
    o.add_argument("--crop", type=int, help="crop size in px [optim.crop]")
    o.add_argument(
        "--patch",
        type=int,
        help="dense query windows of this size per crop; 0 = every crop pixel [optim.patch]",
    )
    o.add_argument("--patches", type=int, help="query windows per crop [optim.patches]")
    o.add_argument("--lr", type=float, help="Adam learning rate [optim.lr]")
    o.add_argument(
        "--lr-milestones",
        help="comma-separated steps where lr *= --lr-gamma (default: 50%% and 83%% of the steps) "
        "[optim.lr_milestones]",
    )
    o.add_argument("--lr-gamma", type=float, help="step-decay factor [optim.lr_gamma]")
    o.add_argument("--loss-weights", help="bce,l1,mse,grad, CRM's 0,1,1,5 [optim.loss_weights]")
    o.add_argument(
        "--input-scale-min",
        type=float,
        help="encode the crop downscaled by U(min, 1) (queries stay at crop resolution), like the "
        "inference cascade's 1/8..1 scales [optim.input_scale_min]",
    )
    o.add_argument(
        "--p-input-scale", type=float, help="probability of that downscaling [optim.p_input_scale]"
    )
    o.add_argument(
        "--p-lowres",
        type=float,
        help="probability of the 4-16x low-resolution degradation of a perturbed coarse mask "
        "[optim.p_lowres]",
    )
    o.add_argument(
        "--p-annotation",
        type=float,
        help="share of coarse masks that are low-resolution annotations [optim.p_annotation]",
    )
    o.add_argument(
        "--p-identity",
        type=float,
        help="share of coarse masks that are the truth or nearly (IoU >= 0.97) [optim.p_identity]",
    )
    o.add_argument(
        "--p-truth-jitter",
        type=float,
        help="share of training truths whose boundary is moved by a smooth ~1 px random field, like a "
        "hand-drawn line (pipeline.train.perturb.jitter_boundary) [optim.p_truth_jitter]",
    )
    o.add_argument(
        "--truth-jitter-kinds",
        type=lambda v: [k.strip() for k in v.split(",") if k.strip()],
        help="comma list of the coarse kinds whose truths may be jittered: identity, annotation, "
        "perturbed (default all) [optim.truth_jitter_kinds]",
    )
    o.add_argument("--weight-decay", type=float, help="Adam weight decay [optim.weight_decay]")
    o.add_argument(
        "--dropout",
        type=float,
        help="fusion dropout while training (CRM's own 0.5 kept short CPU runs at a constant "
        "output, see MODEL_CARD); negative: keep the model's [optim.dropout]",
    )
    o.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="train for about this long: after 50 timed steps the run's length becomes what fits "
        "(at most --steps) and the lr milestones are scaled with it [optim.time_budget_min]",
    )
    o.add_argument("--seed", type=int, help="[optim.seed]")
    r = ap.add_argument_group("run")
    r.add_argument(
        "--checkpoint-dir",
        metavar="URI",
        help="checkpoints + log (fsspec URL); required [run.checkpoint_dir]",
    )
    r.add_argument("--export", metavar="URI", help="write final weights here (official keys) [run.export]")
    r.add_argument("--log-every", type=int, help="[run.log_every]")
    r.add_argument("--ckpt-every", type=int, help="[run.ckpt_every]")
    r.add_argument("--keep-checkpoints", type=int, help="[run.keep_checkpoints]")
    r.add_argument("--num-workers", type=int, help="Ray Train workers (DDP ranks) [run.num_workers]")
    r.add_argument(
        "--cpus-per-worker", type=float, help="CPUs reserved per worker (may be < 1) [run.cpus_per_worker]"
    )
    r.add_argument(
        "--use-gpu", action="store_true", default=None, help="one GPU per worker, nccl [run.use_gpu]"
    )
    r.add_argument("--threads", type=int, help="torch threads per worker (0: Ray's default) [run.threads]")
    r.add_argument(
        "--loader-workers", type=int, help="DataLoader worker processes per worker [run.loader_workers]"
    )
    r.add_argument(
        "--epoch-repeats",
        type=int,
        help="each epoch visits every sample this many times, with other crops [run.epoch_repeats]",
    )
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local) [run.address]")
    r.add_argument(
        "--no-ray",
        action="store_true",
        default=None,
        help="run the loop in this process (no Ray Train) [run.ray: false]",
    )
    s = ap.add_argument_group("SAM colour maps (SAM-SR-v2.1 models)")
    s.add_argument(
        "--proposals",
        choices=["sam", "regions"],
        help="proposal source of the colour maps: sam (needs --sam-checkpoint, or --sam-model-type tiny "
        "for tests) or regions (no weights; the default without --sam-checkpoint) [sam.proposals]",
    )
    s.add_argument("--sam-model-type", help="vit_h, vit_l, vit_b or tiny [sam.model_type]")
    s.add_argument("--sam-checkpoint", metavar="URI", help="SAM weights [sam.checkpoint]")
    s.add_argument(
        "--sam-cache", metavar="URI", help="colour-map cache (default CKPT_DIR/sam_cache) [sam.cache]"
    )
    s.add_argument("--sam-points-per-side", type=int, help="[sam.points_per_side]")
    s.add_argument("--sam-working-size", type=int, help="[sam.working_size]")
    s.add_argument("--sam-seed", type=int, help="colour seed of the maps, as refine's sam.seed [sam.seed]")
    return ap


def config_from_args(args: argparse.Namespace):
    """Config file + flags + --set -> validated TrainJobConfig (ValueError names the key or flag)."""
    from pipeline.config.typed import parse_override
    from pipeline.train.config import load_train_config

    overrides: list[tuple[list[str], Any]] = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key.split("."), value))
    if args.data is not None:
        overrides.append((["data", "uris"], list(args.data)))
    if args.lr_milestones is not None:
        try:
            milestones = [int(v) for v in args.lr_milestones.split(",")]
        except ValueError:
            raise ValueError(
                f"--lr-milestones {args.lr_milestones!r}: expected comma-separated integers"
            ) from None
        overrides.append((["optim", "lr_milestones"], milestones))
    if args.dropout is not None:
        overrides.append((["optim", "dropout"], None if args.dropout < 0 else args.dropout))
    for flag, key, value in (
        ("pretrained_backbone", "model.pretrained_backbone", True),
        ("no_fresh_init", "model.fresh_init", False),
        ("use_gpu", "run.use_gpu", True),
        ("no_ray", "run.ray", False),
    ):
        if getattr(args, flag):
            overrides.append((key.split("."), value))
    overrides.extend(parse_override(text) for text in args.overrides)
    return load_train_config(args.config, overrides)


def main(argv: Sequence[str] | None = None, prog: str = "samsr train") -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.print_config:
            from pipeline.train.config import train_config_to_dict

            print(json.dumps(train_config_to_dict(cfg), indent=2))
            return 0
        from pipeline.train.job import check_train

        check_train(cfg)
    except ValueError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    from pipeline.runner.train import run_train

    result = run_train(cfg)
    print(f"[train] done: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
