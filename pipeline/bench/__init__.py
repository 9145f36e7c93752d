"""Benchmarks (run by `samsr benchmark NAME`): `pipeline.bench.refiner`, `pipeline.bench.sam`."""

__all__: list[str] = []
