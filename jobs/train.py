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

from pipeline.config.flags import add_flags, flag_overrides
from pipeline.train.flags import TRAIN_FLAGS

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="samsr train",
        description="Train the refiner with Ray Train (CRM recipe: L1 + MSE + "
        "Sobel-gradient L1, Adam, step decay). Defaults: configs/train.yaml.",
        epilog="Each flag sets the config key in brackets; --set KEY=VALUE sets any key.",
    )
    ap.add_argument("--config", "-c", metavar="YAML", help="train config file (keys: configs/train.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set optim.lr=5e-4 (YAML value); repeatable")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    add_flags(ap, TRAIN_FLAGS)
    return ap


def config_from_args(args: argparse.Namespace):
    """Config file + flags + --set -> validated TrainJobConfig (ValueError names the key or flag)."""
    from pipeline.config.typed import parse_override
    from pipeline.train.config import load_train_config

    overrides = flag_overrides(args, TRAIN_FLAGS) + [parse_override(text) for text in args.overrides]
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
