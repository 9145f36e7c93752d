"""ProposalWorker builds SAM's generator with the job's sam.precision / sam.reassociate."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.runner.workers import ProposalWorker, proposal_kwargs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("precision, reassociate, expected",
                         [("auto", False, "fp32"), ("bf16", True, "bf16")])
def test_worker_passes_sam_modes(tmp_path, precision, reassociate, expected):
    from pipeline.io.weights import save_checkpoint
    from pipeline.sam.build import build_sam

    ckpt = str(tmp_path / "sam_tiny.pth")
    save_checkpoint(build_sam("tiny", seed=0), ckpt)
    cfg = load_config(str(ROOT / "configs" / "default.yaml"),
                      [(["method"], "samsr-v2.1"), (["sam", "proposals"], "sam"),
                       (["sam", "model_type"], "tiny"), (["sam", "checkpoint"], ckpt),
                       (["sam", "precision"], precision),
                       (["sam", "reassociate"], reassociate), (["refine", "device"], "cpu")])
    worker = ProposalWorker(**proposal_kwargs(cfg, threads=1))
    assert worker.generator.precision == expected and worker.generator.reassociate is reassociate
