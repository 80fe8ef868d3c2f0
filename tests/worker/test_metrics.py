"""Worker metrics: what a finished request, a batch or a job chunk leaves in the exposition."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.subjects import Subject
from worker.metrics import (
    DURATION_BUCKETS,
    RequestSpans,
    WorkerMetrics,
    request_observer,
    serve_metrics,
)
from worker.services.request_record import NO_METRICS, RequestRecord

ENCRYPT = Subject.KEM_ENCRYPT.value
ENCRYPT_BATCH = Subject.KEM_ENCRYPT_BATCH.value
TENANT = "tenant-7f3a"
REQUEST_ID = "req-secret-looking-0001"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def record(operation: str = ENCRYPT, outcome: str = "OK", seconds: float = 0.0003,
           items: int = 1) -> RequestRecord:
    return RequestRecord(operation=operation, request_id=REQUEST_ID, tenant_id=TENANT,
                         algorithm="Kyber768", key_version=1, outcome=outcome,
                         duration_seconds=seconds, items=items)


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(metrics: WorkerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_requests_are_counted_by_operation_and_outcome() -> None:
    metrics = WorkerMetrics()
    metrics.observe(record())
    metrics.observe(record(seconds=0.002))
    metrics.observe(record(outcome="ERR_AUTH_001"))
    metrics.observe(record(Subject.SIGNATURE_SIGN.value, outcome="ERR_RATE_001"))

    found = samples(scrape(metrics))
    assert value(found, "pqkms_requests_total", operation=ENCRYPT, outcome="OK") == 2
    assert value(found, "pqkms_requests_total", operation=ENCRYPT, outcome="ERR_AUTH_001") == 1
    assert value(found, "pqkms_requests_total", operation=Subject.SIGNATURE_SIGN.value,
                 outcome="ERR_RATE_001") == 1
    # Every operation is there from the start, at zero.
    assert value(found, "pqkms_requests_total", operation=Subject.KEYS_ROTATE.value,
                 outcome="OK") == 0


def test_durations_land_in_their_buckets() -> None:
    metrics = WorkerMetrics()
    for seconds in (0.00004, 0.0003, 0.002, 30.0):
        metrics.observe(record(seconds=seconds))

    found = samples(scrape(metrics))
    bucket = "pqkms_request_duration_seconds_bucket"
    assert value(found, bucket, operation=ENCRYPT, le="5e-05") == 1
    assert value(found, bucket, operation=ENCRYPT, le="0.0005") == 2
    assert value(found, bucket, operation=ENCRYPT, le="0.0025") == 3
    assert value(found, bucket, operation=ENCRYPT, le="10.0") == 3
    assert value(found, bucket, operation=ENCRYPT, le="+Inf") == 4
    assert value(found, "pqkms_request_duration_seconds_count", operation=ENCRYPT) == 4
    assert value(found, "pqkms_request_duration_seconds_sum", operation=ENCRYPT) == (
        pytest.approx(30.00234))
    les = {dict(labels)["le"] for name, labels in found
           if name == bucket and dict(labels)["operation"] == ENCRYPT}
    assert len(les) == len(DURATION_BUCKETS) + 1


def test_batch_sizes_of_successful_batches_only() -> None:
    metrics = WorkerMetrics()
    metrics.observe(record(ENCRYPT_BATCH, items=7))
    metrics.observe(record(ENCRYPT_BATCH, items=300))
    metrics.observe(record(ENCRYPT_BATCH, outcome="ERR_INVALID_001", items=5000))
    metrics.observe(record(ENCRYPT, items=1))  # a single request is no batch

    found = samples(scrape(metrics))
    labels = {"operation": ENCRYPT_BATCH, "source": "request"}
    assert value(found, "pqkms_batch_items_count", **labels) == 2
    assert value(found, "pqkms_batch_items_sum", **labels) == 307
    assert value(found, "pqkms_batch_items_bucket", le="10.0", **labels) == 1
    assert value(found, "pqkms_batch_items_bucket", le="500.0", **labels) == 2
    assert not any(name.startswith("pqkms_batch_items") and ("operation", ENCRYPT) in labels_
                   for name, labels_ in found)


def test_job_chunks_and_their_items() -> None:
    metrics = WorkerMetrics()
    metrics.chunk_items(ENCRYPT_BATCH, items=100, failed=3)
    metrics.chunk_finished("done")
    metrics.chunk_finished("duplicate")

    found = samples(scrape(metrics))
    assert value(found, "pqkms_batch_items_count", operation=ENCRYPT_BATCH, source="job") == 1
    assert value(found, "pqkms_batch_items_sum", operation=ENCRYPT_BATCH, source="job") == 100
    assert value(found, "pqkms_job_items_total", operation=ENCRYPT_BATCH,
                 result="succeeded") == 97
    assert value(found, "pqkms_job_items_total", operation=ENCRYPT_BATCH, result="failed") == 3
    assert value(found, "pqkms_job_chunks_total", outcome="done") == 1
    assert value(found, "pqkms_job_chunks_total", outcome="duplicate") == 1
    assert value(found, "pqkms_job_chunks_total", outcome="failed") == 0


def test_audit_group_commits_by_size_time_and_failed_stage() -> None:
    metrics = WorkerMetrics()
    found = samples(scrape(metrics))
    assert value(found, "pqkms_audit_flush_failures_total", stage="database") == 0
    assert value(found, "pqkms_audit_flush_failures_total", stage="stream") == 0

    metrics.audit_flushed(records=40, commit_seconds=0.0002, publish_seconds=0.0006)
    metrics.audit_flushed(records=1, commit_seconds=0.0001, publish_seconds=0.0004)
    metrics.audit_flush_failed("stream")

    found = samples(scrape(metrics))
    assert value(found, "pqkms_audit_flush_records_count") == 2
    assert value(found, "pqkms_audit_flush_records_sum") == 41
    assert value(found, "pqkms_audit_flush_records_bucket", le="1.0") == 1
    assert value(found, "pqkms_audit_flush_records_bucket", le="50.0") == 2
    assert value(found, "pqkms_audit_commit_seconds_bucket", le="0.00025") == 2
    assert value(found, "pqkms_audit_publish_seconds_bucket", le="0.0005") == 1
    assert value(found, "pqkms_audit_publish_seconds_sum") == pytest.approx(0.001)
    assert value(found, "pqkms_audit_flush_failures_total", stage="stream") == 1


def test_no_tenant_or_request_id_in_the_exposition() -> None:
    metrics = WorkerMetrics()
    metrics.observe(record(outcome="ERR_AUTH_001"))
    text = scrape(metrics)
    assert TENANT not in text and REQUEST_ID not in text


def test_observe_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = WorkerMetrics()
    metrics.observe(record())  # resolves the children

    def broken(*args: Any) -> None:
        raise RuntimeError("registry trouble")

    series = metrics._series[ENCRYPT]
    monkeypatch.setattr(series.duration, "observe", broken)
    metrics.observe(record())  # no exception reaches the envelope handler
    assert value(samples(scrape(metrics)), "pqkms_requests_total", operation=ENCRYPT,
                 outcome="OK") == 2


def test_metrics_off_costs_nothing() -> None:
    assert request_observer(None, otel=False) is NO_METRICS
    metrics = WorkerMetrics()
    assert request_observer(metrics, otel=False) is metrics


def test_served_over_http_and_port_released() -> None:
    metrics = WorkerMetrics()
    metrics.observe(record())
    server = serve_metrics(metrics, "127.0.0.1", 0)
    port = server.port
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        assert value(found, "pqkms_requests_total", operation=ENCRYPT, outcome="OK") == 1
        assert ("process_cpu_seconds_total", frozenset()) in found
    finally:
        server.close()
    again = serve_metrics(metrics, "127.0.0.1", port)  # the port is free again
    again.close()


def test_a_taken_port_is_an_error() -> None:
    metrics = WorkerMetrics()
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            serve_metrics(WorkerMetrics(), "127.0.0.1", server.port)
    finally:
        server.close()


def test_one_span_per_request_with_ids_and_never_data() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = WorkerMetrics()
    spans = RequestSpans(metrics, provider.get_tracer("test"))

    spans.observe(record(seconds=0.25))
    spans.observe(record(outcome="ERR_KEM_005"))

    ok, failed = exporter.get_finished_spans()
    assert ok.name == ENCRYPT
    assert ok.attributes is not None
    assert ok.attributes["pqkms.request_id"] == REQUEST_ID
    assert ok.attributes["pqkms.tenant_id"] == TENANT
    assert ok.end_time is not None and ok.start_time is not None
    assert ok.end_time - ok.start_time == pytest.approx(250_000_000, abs=1000)
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ERR_KEM_005"
    assert set(ok.attributes) == {
        "messaging.system", "messaging.destination.name", "pqkms.request_id",
        "pqkms.outcome", "pqkms.items", "pqkms.tenant_id", "pqkms.algorithm",
    }
    # The metrics behind the spans still count.
    assert value(samples(scrape(metrics)), "pqkms_requests_total", operation=ENCRYPT,
                 outcome="OK") == 1


def test_otel_on_gives_spans_over_the_metrics_and_off_costs_nothing() -> None:
    pytest.importorskip("opentelemetry.sdk")
    metrics = WorkerMetrics()
    assert request_observer(metrics, otel=False) is metrics
    assert request_observer(None, otel=False) is NO_METRICS
    traced = request_observer(metrics, otel=True)  # PQKMS_OTEL=1, no exporter installed
    assert isinstance(traced, RequestSpans)
    traced.observe(record())
    assert value(samples(scrape(metrics)), "pqkms_requests_total", operation=ENCRYPT,
                 outcome="OK") == 1
