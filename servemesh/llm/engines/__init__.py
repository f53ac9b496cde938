"""Engines: ``mock`` (deterministic, for tests and benchmarks) and ``llamacpp`` (real, CPU)."""
