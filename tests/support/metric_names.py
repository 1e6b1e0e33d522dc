"""Which metric names the services export, and which ones a PromQL expression uses."""

import importlib
import re
from functools import cache

from prometheus_client import REGISTRY, generate_latest

from shared.topology import SERVICES

# A metric name, not part of a recording rule's `level:metric:operations` name.
_METRIC = re.compile(r"(?<![\w:])funnelcast_[a-z0-9_]+(?![\w:])")
_TYPE = re.compile(r"^# TYPE (\S+) (\w+)$", re.M)
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"), "counter": ("_created",)}


@cache
def exported_metric_names() -> frozenset[str]:
    """Every series name the five services can serve on /metrics (their modules imported, one registry)."""
    for name in SERVICES:
        importlib.import_module(f"services.{name}.main")
    names = set()
    for name, kind in _TYPE.findall(generate_latest(REGISTRY).decode()):
        names.add(name)
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, ()))
    return frozenset(names)


def metrics_used(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))
