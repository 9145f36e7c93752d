"""A process-wide count of refinement work done, for the job's progress watchdog.

One refinement of a 16000x12000 image takes many minutes on a CPU, while the watchdog
(``ray.stall_timeout_s``) counts a job as stalled when no *sample* has finished for a while. The
refine loops call :func:`tick` once per unit of work (an encoder tile, a decoder tile row, a chunk
of decoded queries), and a worker's beat thread (``pipeline.runner.progress.WorkBeat``) reports to
the driver only when :func:`ticks` has moved since its last look: a refinement that makes progress
keeps its job alive, one that hangs does not. A plain counter: no locks, no I/O, nothing to set up.
"""

from __future__ import annotations

__all__ = ["tick", "ticks"]

_ticks = 0


def tick() -> None:
    """One more unit of refinement work done in this process."""
    global _ticks
    _ticks += 1


def ticks() -> int:
    """Units of refinement work done in this process so far."""
    return _ticks
