"""Metrics (Prometheus, correct across gunicorn workers) and the audit log.

Under `idp serve`, `PROMETHEUS_MULTIPROC_DIR` is set before any worker starts, so every worker
writes its samples to files there and `/metrics` aggregates them (prometheus_client's
multiprocess mode); in a single process the default registry is used.

The audit log is one JSON line per ID token minted or refused on the `idp.audit` logger:
who asked (repo, build, step, client address), what for (aud), what was signed (jti, sub, kid),
and the outcome; never a token or a secret.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any


class Metrics:
    """The metric objects, built on first use.

    prometheus_client picks its storage (memory, or files for multiprocess mode) when it is
    imported, so it is imported here lazily: `idp serve` sets PROMETHEUS_MULTIPROC_DIR first.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.id_tokens = Counter(
            "idp_id_tokens_total",
            "ID tokens minted or refused, by audience and outcome",
            ["audience", "outcome"],
        )
        self.request_tokens = Counter(
            "idp_request_tokens_total", "Request tokens opened or refused, by outcome", ["outcome"]
        )
        self.mint_seconds = Histogram(
            "idp_mint_seconds",
            "Time to answer a token exchange that minted a token",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.keys_published = Gauge(
            "idp_keys_published", "Keys in the served JWKS", multiprocess_mode="max"
        )
        self.current_key_age = Gauge(
            "idp_current_key_age_seconds",
            "Seconds since the current key started signing",
            multiprocess_mode="max",
        )
        self.last_rotation = Gauge(
            "idp_last_rotation_timestamp_seconds",
            "When the current key started signing",
            multiprocess_mode="max",
        )
        self.rate_limited = Counter(
            "idp_rate_limited_total",
            "Requests refused with 429, by budget (ci, step, client)",
            ["budget"],
        )
        self.store_errors = Counter(
            "idp_store_errors_total", "Failed reads or writes of the key store"
        )
        self.ring_refused = Counter(
            "idp_ring_refused_total",
            "Stored key rings refused (damaged, malformed or failing their MAC); the replica "
            "kept serving its last good ring",
        )
        self.ring_conflicts = Counter(
            "idp_ring_conflicts_total",
            "Stored rings that lacked keys or secrets this replica still needed, merged back",
        )


_metrics: Metrics | None = None
# gthread workers serve several requests at once: two first requests must not both register
# the metrics (prometheus_client refuses a duplicate, which answered 500).
_metrics_lock = threading.Lock()
# The children of labelled counters, by label values: `labels()` takes the metric's lock and
# builds a tuple key on every call; a plain dict lookup does not (races only duplicate a
# lookup, never a sample: the child is the same object).
_id_token_children: dict[tuple[str, str], Any] = {}


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def count_id_token(audience: str, outcome: str) -> None:
    """`metrics().id_tokens.labels(audience, outcome).inc()`, without the lookup's lock."""
    child = _id_token_children.get((audience, outcome))
    if child is None:
        child = _id_token_children[(audience, outcome)] = metrics().id_tokens.labels(
            audience, outcome
        )
    child.inc()


audit_log = logging.getLogger("idp.audit")
# One encoder for every audit line (json.dumps builds one per call when given options).
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def audience_label(audience: str, allowed: tuple[str, ...] | None) -> str:
    # Audiences are caller-chosen: only known ones become label values, or anyone could
    # blow up the metric's cardinality.
    if audience == "sts.amazonaws.com" or (allowed is not None and audience in allowed):
        return audience
    return "other"


def render_metrics() -> tuple[bytes, str]:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    metrics()  # every metric exists, even before its first sample
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def audit(outcome: str, **fields: Any) -> None:
    # Serialized once, here; the handlers print the line as is (JsonFormatter too).
    if not audit_log.isEnabledFor(logging.INFO):
        return
    record = {"event": "id_token", "outcome": outcome, "time": round(time.time(), 3), **fields}
    audit_log.info(_encode(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "idp.audit":
            return message  # already one JSON object
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
