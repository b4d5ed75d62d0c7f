"""``memwatch watch ... --prometheus ADDR:PORT``: the Prometheus exporter.

Serves the Prometheus text exposition over HTTP (``/metrics``, any path) with
the optional ``prometheus_client`` package (``pip install
'memwatch[prometheus]'``).  The numbers are the :class:`ProcessWatcher`
samples, summed since the exporter started:

``memwatch_pages_written_total{pid,command,mapping}``
    pages written, per process and mapping name (the path, ``[heap]``,
    ``[stack]``, or ``[anon]`` for every anonymous mapping together, so that
    the number of series stays that of the named mappings);
``memwatch_process_pages_written_total{pid,command}``
    the same, per process;
``memwatch_scan_seconds_total{pid,command}`` and ``memwatch_scans_total``
    time spent collecting dirty pages, and how many samples;
``memwatch_errors_total{pid,command}``
    mappings that could not be watched or scanned;
``memwatch_watched_mappings{pid,command}`` (gauge)
    writable mappings watched at the last sample.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from ._top import ProcessSample

__all__ = ["Exporter", "MissingPrometheusClient", "parse_address"]


class MissingPrometheusClient(ImportError):
    """``prometheus_client`` is not installed."""


def parse_address(text: str) -> tuple[str, int]:
    """``"ADDR:PORT"`` (``[::1]:9100``, ``:9100`` for every interface) ->
    (host, port); ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected ADDR:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(f"port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {text!r}")
    return host or "0.0.0.0", port


class Exporter:
    """An HTTP server (its own thread) exposing what :meth:`record` was given.

    Port 0 picks a free port; :attr:`port` is the real one.
    """

    def __init__(self, host: str, port: int) -> None:
        try:
            import prometheus_client
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise MissingPrometheusClient(
                "--prometheus needs the prometheus_client package: "
                "pip install 'memwatch[prometheus]' (or pip install prometheus_client)"
            ) from None
        self._counter: Any = CounterMetricFamily
        self._gauge: Any = GaugeMetricFamily
        self._lock = threading.Lock()
        self._pages: dict[tuple[str, str, str], int] = {}
        self._process_pages: dict[tuple[str, str], int] = {}
        self._scan_seconds: dict[tuple[str, str], float] = {}
        self._scans: dict[tuple[str, str], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._watched: dict[tuple[str, str], int] = {}
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(self)
        started: Any = prometheus_client.start_http_server(port, host, registry)
        if started is None:  # prometheus_client < 0.17 keeps the server to itself
            raise MissingPrometheusClient(
                "--prometheus needs prometheus_client 0.17 or later: "
                "pip install -U prometheus_client"
            )
        self._server, self._thread = started
        self.host = host
        self.port: int = self._server.server_port

    def record(self, sample: ProcessSample) -> None:
        proc = (str(sample.pid), sample.command)
        with self._lock:
            self._process_pages[proc] = self._process_pages.get(proc, 0) + sample.pages
            for m in sample.mappings:
                key = (*proc, m.mapping.name)
                self._pages[key] = self._pages.get(key, 0) + m.pages
            self._scan_seconds[proc] = self._scan_seconds.get(proc, 0.0) + sample.scan_seconds
            self._scans[proc] = self._scans.get(proc, 0) + 1
            self._errors[proc] = self._errors.get(proc, 0) + len(sample.errors)
            self._watched[proc] = 0 if sample.exited else sum(
                1 for m in sample.mappings if m.mapping not in sample.gone)

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client for each scrape (its thread)."""
        with self._lock:
            pages = dict(self._pages)
            process_pages = dict(self._process_pages)
            scan_seconds = dict(self._scan_seconds)
            scans = dict(self._scans)
            errors = dict(self._errors)
            watched = dict(self._watched)
        c = self._counter("memwatch_pages_written",
                          "Pages written, per process and mapping name",
                          labels=["pid", "command", "mapping"])
        for key, n in sorted(pages.items()):
            c.add_metric(list(key), n)
        yield c
        per_process: list[tuple[str, str, str, dict[Any, Any]]] = [
            ("memwatch_process_pages_written", "Pages written, per process", "c",
             process_pages),
            ("memwatch_scan_seconds", "Seconds spent collecting dirty pages", "c",
             scan_seconds),
            ("memwatch_scans", "Samples taken (one per interval)", "c", scans),
            ("memwatch_errors", "Mappings that could not be watched or scanned", "c",
             errors),
            ("memwatch_watched_mappings", "Writable mappings watched at the last sample",
             "g", watched),
        ]
        for name, doc, kind, values in per_process:
            family = (self._counter if kind == "c" else self._gauge)(
                name, doc, labels=["pid", "command"])
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            yield family

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
