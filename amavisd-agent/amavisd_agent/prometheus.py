"""``amavisd-agent --prometheus HOST:PORT``: serve the stats segment as /metrics.

A custom collector reads the segment afresh on every scrape (no state is kept
between scrapes besides the open mapping), so the values are those a text-mode
poll would show at that moment.  Metric names are listed in docs/monitoring.md:

* each fixed counter of monitoring.md 1.3 as ``amavis_<snake_name>_total``, zero
  or not (``InMsgsRecipsLocal`` -> ``amavis_in_msgs_recips_local_total``); the
  ``TimeElapsed*`` ones are converted from milliseconds to
  ``amavis_time_elapsed_<section>_seconds_total``;
* the dynamic names as labelled families: ``amavis_virus_by_name_total{name}``,
  ``amavis_by_os_total{class,os}``, ``amavis_ops_dec_type_total{type}`` and
  ``amavis_dynamic_counter_total{name}`` for the rest (external ``OpsDecBy*``);
* ``amavis_children{state}``, ``amavis_up``, ``amavis_start_time_seconds``,
  ``amavis_stats_generation`` and ``amavis_stats_dropped_total``.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from amavisd.constants import EXIT_FAILURE, EXIT_OK
from amavisd.stats import COUNTER_NAMES, SegmentError, Snapshot, StatsSegment

PREFIX = "amavis_"

#: Label value of ``amavis_children{state=...}`` for each nanny letter
#: (monitoring.md 1.5); idle children (the reader rule) are ``idle``.
STATE_NAMES: dict[str, str] = {
    "A": "accepted",
    "b": "begin",
    "m": "mail",
    "d": "data",
    "=": "checking",
    "G": "mail_id",
    "D": "decoding",
    "V": "virus",
    "S": "spam",
    "P": "penpals",
    "r": "results",
    "Q": "quarantine",
    "F": "forwarding",
}
#: Every label value, so each series exists from the first scrape on.
CHILD_STATES = ("idle", *STATE_NAMES.values(), "other")

_TIME_PREFIX = "TimeElapsed"
_BY_OS_RE = re.compile(r"([A-Za-z]+)\.byOS\.(.*)\Z", re.S)


def snake_name(name: str) -> str:
    """``InMsgsStatusRelayedUntagged`` -> ``in_msgs_status_relayed_untagged``.

    A run of capitals is one word (``OpsLDAPSearch`` -> ``ops_ldap_search``);
    ``UUlib`` is treated as one word too.
    """
    name = name.replace("UUlib", "Uulib")
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def metric_name(counter: str) -> str:
    """The family name of a fixed counter, without the ``_total`` the client adds."""
    if counter.startswith(_TIME_PREFIX):
        return f"{PREFIX}time_elapsed_{snake_name(counter[len(_TIME_PREFIX):])}_seconds"
    return PREFIX + snake_name(counter)


class SegmentCollector:
    """Reads the segment at ``path`` on each scrape; reopens it after a cold start.

    Scrapes may come from several server threads, so opening and reading are
    done under a lock.  Without a readable segment only ``amavis_up 0`` is served.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._seg: StatsSegment | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []                  # names depend on the segment; don't read it at register

    def close(self) -> None:
        with self._lock:
            if self._seg is not None:
                self._seg.close()
                self._seg = None

    def _snapshot(self) -> Snapshot | None:
        with self._lock:
            if self._seg is not None and self._seg.replaced():
                self._seg.close()
                self._seg = None
            if self._seg is None:
                try:
                    self._seg = StatsSegment.open_readonly(self.path)
                except (FileNotFoundError, SegmentError, OSError):
                    return None
            return self._seg.snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        up = GaugeMetricFamily(f"{PREFIX}up", "1 if the stats segment could be read.")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is None:
            return
        yield from self._counters(snap)
        children = GaugeMetricFamily(f"{PREFIX}children",
                                     "Child processes by nanny state (monitoring.md 1.5).",
                                     labels=["state"])
        counts = dict.fromkeys(CHILD_STATES, 0)
        for child in snap.children:
            state = STATE_NAMES.get(child.state, "other") if child.busy else "idle"
            counts[state] += 1
        for state, n in counts.items():
            children.add_metric([state], n)
        yield children
        start = GaugeMetricFamily(f"{PREFIX}start_time_seconds",
                                  "Unix time of the cold start (sysUpTime).")
        start.add_metric([], snap.created)
        yield start
        gen = GaugeMetricFamily(f"{PREFIX}stats_generation",
                                "Reloads (HUP) since the cold start.")
        gen.add_metric([], snap.generation)
        yield gen
        dropped = CounterMetricFamily(f"{PREFIX}stats_dropped",
                                      "Increments of dynamic names lost to full tables.")
        dropped.add_metric([], snap.dyn_dropped)
        yield dropped

    def _counters(self, snap: Snapshot) -> Iterator[Metric]:
        fixed = set(COUNTER_NAMES)
        for name in COUNTER_NAMES:
            value = snap.counters.get(name, 0)
            if name.startswith(_TIME_PREFIX):
                fam = CounterMetricFamily(metric_name(name),
                                          f"amavisd counter {name}, in seconds.")
                fam.add_metric([], value / 1000)
            else:
                fam = CounterMetricFamily(metric_name(name), f"amavisd counter {name}.")
                fam.add_metric([], value)
            yield fam
        virus = CounterMetricFamily(f"{PREFIX}virus_by_name", "Detections per virus name.",
                                    labels=["name"])
        by_os = CounterMetricFamily(f"{PREFIX}by_os",
                                    "Messages per class and sender OS (p0f).",
                                    labels=["class", "os"])
        dec_type = CounterMetricFamily(f"{PREFIX}ops_dec_type",
                                       "Decomposed parts per file type.", labels=["type"])
        other = CounterMetricFamily(f"{PREFIX}dynamic_counter",
                                    "Other dynamic amavisd counters, by internal name.",
                                    labels=["name"])
        for name in sorted(snap.counters):
            if name in fixed:
                continue
            value = snap.counters[name]
            m = _BY_OS_RE.match(name)
            if name.startswith("virus.byname."):
                virus.add_metric([name[len("virus.byname."):]], value)
            elif m:
                by_os.add_metric([m.group(1), m.group(2)], value)
            elif name.startswith("OpsDecType-"):
                dec_type.add_metric([name[len("OpsDecType-"):]], value)
            else:
                other.add_metric([name], value)
        yield from (virus, by_os, dec_type, other)


def make_registry(path: str) -> tuple[CollectorRegistry, SegmentCollector]:
    """A registry holding only our collector (no process or GC metrics)."""
    registry = CollectorRegistry()
    collector = SegmentCollector(path)
    registry.register(collector)
    return registry, collector


def start(path: str, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Start the /metrics server in a daemon thread; port 0 picks a free one."""
    registry, _ = make_registry(path)
    return start_http_server(port, addr=host, registry=registry)


def serve_forever(path: str, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    try:
        server, _thread = start(path, host, port)
    except OSError as exc:
        sys.stderr.write(f"amavisd-agent: cannot listen on {host}:{port}: {exc}\n")
        return EXIT_FAILURE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    return EXIT_OK
