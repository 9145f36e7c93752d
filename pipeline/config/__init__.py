"""Job configuration of ``samsr refine`` / ``samsr relabel``.

- :mod:`pipeline.config.schema`: the sections (frozen dataclasses), validation of a whole job,
  loading a YAML file with ``--set`` overrides; its names are re-exported here;
- :mod:`pipeline.config.typed`: the typed-section machinery shared with the training config
  (key and value checks, YAML reading, overrides);
- :mod:`pipeline.config.preflight`: what a job checks before any work (packages, checkpoint
  files, URL schemes, model vs method).
"""

from pipeline.config.schema import (
    METHODS,
    InputConfig,
    ModelConfig,
    OutputConfig,
    RayConfig,
    RefineConfig,
    RefineJobConfig,
    RegionsConfig,
    RelabelConfig,
    SamConfig,
    V1Config,
    config_from_dict,
    config_to_dict,
    default_job_id,
    load_config,
    with_absolute_paths,
)

__all__ = [
    "METHODS",
    "InputConfig",
    "OutputConfig",
    "ModelConfig",
    "SamConfig",
    "RegionsConfig",
    "V1Config",
    "RefineConfig",
    "RayConfig",
    "RelabelConfig",
    "RefineJobConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "default_job_id",
    "with_absolute_paths",
]
