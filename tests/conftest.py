"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

INTEGRATION = Path(__file__).parent / "integration"
#: fixtures that start real Envoy or HAProxy processes
REAL_FIXTURES = frozenset({"envoy_bin", "haproxy_bin", "envoy_sidecar", "haproxy_sidecar", "world"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``real`` every test that starts real Envoy / HAProxy: all of tests/integration, and
    any other test using their fixtures, so ``-m "not real"`` leaves them out. (A ``pytestmark``
    in a conftest.py marks nothing: markers come from test modules, classes and functions.)"""
    for item in items:
        if item.path.is_relative_to(INTEGRATION) or REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


@dataclass
class Otel:
    """The OpenTelemetry SDK, installed once for the test session (providers are global)."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def histogram(self, scope: str, name: str) -> dict[frozenset[tuple[str, Any]], tuple[int, tuple[float, ...], str]]:
        """The points of histogram ``name`` recorded under instrumentation ``scope`` so far (cumulative):
        attributes -> (count, bucket boundaries, unit)."""
        data = self.metrics.get_metrics_data()
        found = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if sm.scope.name == scope and metric.name == name:
                        for p in metric.data.data_points:
                            found[frozenset(p.attributes.items())] = (p.count, tuple(p.explicit_bounds), metric.unit)
        return found

    def finished(self, trace_id: int | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        if trace_id is not None:
            spans = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
        return spans


_otel: Otel | None = None


@pytest.fixture(scope="session")
def otel_session() -> Otel:
    global _otel
    if _otel is None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _otel = Otel(exporter, reader)
    return _otel


@pytest.fixture
def otel(otel_session: Otel) -> Iterator[Otel]:
    """The SDK with the spans of this test only."""
    otel_session.spans.clear()
    yield otel_session
    otel_session.spans.clear()


def load_idl(tmp_path_factory: pytest.TempPathFactory, idl: str, module_name: str) -> Any:
    """A thriftpy2 module from IDL text. ``module_name`` must be unique: thriftpy2 caches modules by it."""
    path = tmp_path_factory.mktemp("idl") / f"{module_name}.thrift"
    path.write_text(idl)
    return thriftpy2.load(str(path), module_name=module_name)
