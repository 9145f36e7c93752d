"""The Ray wing (filled in by the next commit)."""
