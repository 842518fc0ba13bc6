"""Benchmarks: the model's speed, memory and FLOPs (`python -m megan_jax.benchmark`: `programs`
builds what is timed, `measure` times it, `profile` summarises a trace) and the training input
pipeline's throughput (`python -m megan_jax.bench.pipeline`). Results in docs/BENCHMARKS.md."""
