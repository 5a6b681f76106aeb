"""The scheduler's metrics in one prometheus-client registry, served two ways: Prometheus' text
format (``/metrics/prometheus``) and Marathon's Dropwizard JSON (``/metrics``: ``version``,
``gauges``, ``counters``, ``histograms``, ``meters``, ``timers``).

Samples labelled with a ``tenant`` are shown only to that tenant; the others (offers, API
latency) describe the scheduler as a whole and reveal nothing of another tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

PREFIX = "hypervm_scheduler"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.offers = Counter(f"{PREFIX}_offers", "Resource offers received", registry=r)
        self.offers_declined = Counter(f"{PREFIX}_offers_declined",
                                       "Resource offers declined", registry=r)
        self.launches = Counter(f"{PREFIX}_launches", "Task groups launched (one VM each)",
                                ["tenant"], registry=r)
        self.task_failures = Counter(f"{PREFIX}_task_failures",
                                     "Tasks that ended failed, lost or in error", ["tenant"],
                                     registry=r)
        self.status_updates = Counter(f"{PREFIX}_status_updates", "Task status updates",
                                      ["tenant", "state"], registry=r)
        self.api_latency = Histogram(f"{PREFIX}_api_request_seconds",
                                     "API request latency", ["method", "status"], registry=r)
        self.usage = Gauge(f"{PREFIX}_tenant_usage", "Resources of a tenant's running or "
                           "pending instances", ["tenant", "resource"], registry=r)
        self.quota = Gauge(f"{PREFIX}_tenant_quota", "A tenant's quota",
                           ["tenant", "resource"], registry=r)
        self.deployments = Gauge(f"{PREFIX}_deployments", "Deployments in progress",
                                 ["tenant"], registry=r)
        #: called before every rendering to refresh the gauges (set by the hub)
        self.refresh: Callable[[], None] = lambda: None

    def collect(self, tenant: str) -> list[Metric]:
        """The registry's metrics with only this tenant's labelled samples."""
        self.refresh()
        out = []
        for metric in self.registry.collect():
            keep = [s for s in metric.samples if s.labels.get("tenant", tenant) == tenant]
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = keep
            out.append(copy)
        return out

    def prometheus(self, tenant: str) -> bytes:
        metrics = self.collect(tenant)

        class _View:
            def collect(self) -> Iterable[Metric]:
                return metrics

        return generate_latest(_View())  # type: ignore[arg-type]

    def dropwizard(self, tenant: str) -> dict[str, Any]:
        return dropwizard(self.collect(tenant))


def _name(metric: str, labels: dict[str, str]) -> str:
    extra = ".".join(f"{k}.{v}" for k, v in sorted(labels.items()) if k != "le")
    return f"{metric.replace('_', '.')}" + (f".{extra}" if extra else "")


def dropwizard(metrics: Iterable[Metric]) -> dict[str, Any]:
    """Counters → ``counters``, gauges → ``gauges``, histograms → ``timers`` (seconds)."""
    out: dict[str, Any] = {"version": "4.0.0", "gauges": {}, "counters": {}, "histograms": {},
                           "meters": {}, "timers": {}}
    for metric in metrics:
        if metric.type == "counter":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out["counters"][_name(metric.name, s.labels)] = {"count": int(s.value)}
        elif metric.type == "gauge":
            for s in metric.samples:
                out["gauges"][_name(metric.name, s.labels)] = {"value": s.value}
        elif metric.type == "histogram":
            out["timers"].update(_timers(metric.name, metric.samples))
    return out


def _timers(name: str, samples: list[Sample]) -> dict[str, Any]:
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        item = series.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            item["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            item["count"] = s.value
        elif s.name.endswith("_sum"):
            item["sum"] = s.value
    out = {}
    for key, item in series.items():
        count = int(item.get("count", 0))
        buckets = sorted(item["buckets"])
        timer: dict[str, Any] = {
            "count": count, "mean": item.get("sum", 0.0) / count if count else 0.0,
            "min": 0.0, "max": quantile(buckets, 1.0), "stddev": 0.0,
            "duration_units": "seconds", "rate_units": "calls/second",
            "m1_rate": 0.0, "m5_rate": 0.0, "m15_rate": 0.0, "mean_rate": 0.0}
        for q, label in ((0.5, "p50"), (0.75, "p75"), (0.95, "p95"), (0.98, "p98"),
                         (0.99, "p99"), (0.999, "p999")):
            timer[label] = quantile(buckets, q)
        out[_name(name, dict(key))] = timer
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile estimated from cumulative buckets (upper bound of the bucket it falls
    in; the largest finite bound for the +Inf bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    rank = q * buckets[-1][1]
    finite = [b for b, _ in buckets if b != float("inf")]
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return bound if bound != float("inf") else (finite[-1] if finite else 0.0)
    return finite[-1] if finite else 0.0


class LatencyMiddleware:
    """Observes every API request's duration (by method and status)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.monotonic()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        if started is not None:
            # labels from a fixed set: a client must not be able to mint new series
            method = req.method if req.method in METHODS else "OTHER"
            status = str(resp.status)[:3]
            self.metrics.api_latency.labels(method, status if status.isdigit() else "000"
                                            ).observe(time.monotonic() - started)


class MetricsResource:
    """``GET /metrics`` (Dropwizard JSON) and ``GET /metrics/prometheus`` (text format)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.metrics.dropwizard(req.context.tenant.id)

    def on_get_prometheus(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self.metrics.prometheus(req.context.tenant.id)
