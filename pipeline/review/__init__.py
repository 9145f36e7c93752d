"""The human review loop (``samsr review``): send objects of a finished job to Label Studio as
pre-annotated tasks (or to FiftyOne as a dataset to sort and filter), bring the reviewers' masks
back into the outputs and the manifest.

Modules: :mod:`.brush_rle` (Label Studio's brush RLE), :mod:`.tasks` (labeling config, tasks,
image URLs), :mod:`.select` (which objects), :mod:`.outputs` (read / replace the masks of each
kind of output), :mod:`.fo_dataset` (FiftyOne's JSON dataset format), :mod:`.importer` (an
export -> checked corrections), :mod:`.loop` (export and import end to end). No Ray; Label
Studio is only spoken to over HTTP, FiftyOne never imported.
"""

from .loop import export_review, import_review

__all__ = ["export_review", "import_review"]
