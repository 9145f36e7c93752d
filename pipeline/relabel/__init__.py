"""Re-labeling multi-object annotations (``samsr relabel``): COCO instances and label maps.

Pure computation (arrays and dicts, no Ray, no storage): ``coco`` (index, parse, validate),
``coco_masks`` (rasterise into windows, encode back), ``crops`` (the crop rule), ``instances``
(one image's instances), ``labelmaps`` (read / write, per-class windows, the merge),
``evaluation`` (COCO mask AP, mIoU, mBA).
With storage, still without Ray: ``plan`` (the driver's plan: items, driver rows, stall limit),
``stages`` (the batch functions the Ray runner maps), ``output`` (the merged COCO file, the job
record, the object summary) and ``quality`` (before/after scores of a finished job for
``samsr evaluate``). The Ray wiring is ``pipeline.runner.relabel``.
"""
