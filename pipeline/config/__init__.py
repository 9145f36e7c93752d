"""Job configuration of ``samsr refine`` / ``samsr relabel``.

- :mod:`pipeline.config.schema`: the sections (frozen dataclasses), validation of a whole job,
  loading a YAML file with ``--set`` overrides; its names are re-exported here;
- :mod:`pipeline.config.typed`: the typed-section machinery shared with the training config
  (key and value checks, YAML reading, overrides);
- :mod:`pipeline.config.preflight`: what a job checks before any work (packages, checkpoint
  files, URL schemes, model vs method).
"""

from pipeline.config.schema import *  # noqa: F403 (the schema's names, as its __all__ lists them)
from pipeline.config.schema import __all__  # noqa: F401
