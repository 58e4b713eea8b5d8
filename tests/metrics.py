"""This process's metrics as prometheus-client exposes them (never through its private fields)."""

from __future__ import annotations

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    """One sample of the default registry by its exposed name, 0 when absent (no child yet)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value
