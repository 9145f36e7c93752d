"""Re-labeling multi-object annotations (``samsr relabel``): COCO instances and label maps.

Pure computation (arrays and dicts, no Ray, no storage): ``coco`` (parse, validate, rasterise,
encode), ``crops`` (the crop rule), ``instances`` (one image's instances), ``labelmaps`` (read /
write, per-class windows, the merge), ``evaluation`` (COCO mask AP, mIoU, mBA).
With storage, still without Ray: ``stages`` (the batch functions the Ray runner maps) and
``quality`` (before/after scores of a finished job for ``samsr evaluate``). The Ray wiring is
``pipeline.runner.relabel``.
"""
