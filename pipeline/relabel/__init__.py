"""Re-labeling multi-object annotations: COCO instances and label maps (pure: no Ray, no storage)."""
