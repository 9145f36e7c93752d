"""The Ray wing: every import of Ray in samsr lives in this package (a test checks it).

- ``cluster``: start or join Ray (``init_ray`` / ``shutdown_ray``; a local Ray gets the
  ``reaper`` sentinel), Ray Data settings, what a worker knows about itself;
- ``plan``: how many tasks and actors each stage gets, from the cluster's resources (pure);
- ``progress``: the manifest writer, the stall watchdog, the driver's signals;
- ``job``: the skeleton every job follows (plan -> init -> record -> stream rows -> flush ->
  summary) and the manifest fields of a run;
- ``refine``, ``relabel``, ``train``: the three jobs (``run_refine``, ``run_relabel``,
  ``run_train``), each called by one ``jobs/*.py`` command;
- ``workers``: the model actors (refiner, relabel, proposals);
- ``local_cluster``: a multi-node local cluster of ``ray start`` processes (tests, benchmarks).

Import what you need from the submodule (``from pipeline.runner.refine import run_refine``):
this package imports nothing, so ``python -m pipeline.runner.reaper`` starts fast.
"""
