"""SAM stage: model building, fast automatic masks, SAM-SR-v2.1 colour maps, SAM-SR-v1 merge."""

from pipeline.sam.build import SAM_BUILDERS, build_sam
from pipeline.sam.generator import FastMaskGenerator, SamMasks
from pipeline.sam.merge import GATE_DEFORMATION, GATE_SPARSITY, merge_v1
from pipeline.sam.proposals import SamProposals, colour_map_to_size, propose, stable_seed, to_working_size

__all__ = [
    "GATE_DEFORMATION",
    "GATE_SPARSITY",
    "SAM_BUILDERS",
    "FastMaskGenerator",
    "SamMasks",
    "SamProposals",
    "build_sam",
    "colour_map_to_size",
    "merge_v1",
    "propose",
    "stable_seed",
    "to_working_size",
]
