# tests: t/checks/test_dkim.py, t/test_dkim_keys.py
"""DKIM key records from DNS: a per-message deadline and a per-child cache.

dnspython does the protocol (it is dkimpy's own DNS library).  What this module
adds is the policy amavis needs around it (spec/pipeline.md 24.1): every lookup
of one message shares one deadline, so a name server that never answers costs
at most that long in all and turns into ``temperror`` for the signatures still
waiting; answers and "no such record" are kept per child for their TTL (bounded),
failures are not kept.  Lookups of different names run side by side.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

#: Each try at one server waits this long (Net::DNS's 3 s in amavis).
QUERY_TIMEOUT = 3.0
#: EDNS0 UDP payload size amavis's resolver announces.
EDNS_PAYLOAD = 1220
CACHE_SIZE = 1000
_MIN_TTL, _MAX_TTL, _NEGATIVE_TTL = 60, 3600, 300
#: Concurrent lookups for one message (distinct names not in the cache).
PARALLEL = 4


@dataclass(frozen=True)
class TxtAnswer:
    """Outcome of one TXT lookup.

    ``status``: ``ok`` (``text`` holds the first record, its strings joined),
    ``none`` (NXDOMAIN or no TXT record) or ``error`` (timeout, SERVFAIL, no
    resolver: a temporary failure; ``detail`` says which).
    """

    status: str
    text: bytes = b""
    detail: str = ""


class KeyFetcher:
    """TXT lookups for one child: a resolver and a cache, both built lazily.

    ``servers``: ``ip`` or ``ip:port`` / ``[ipv6]:port`` entries; empty means the
    system's /etc/resolv.conf.  Thread-safe: the pipeline calls it from a worker.
    """

    def __init__(self, servers: Sequence[str] = (), cache_size: int = CACHE_SIZE):
        self.servers = tuple(servers)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, TxtAnswer]] = OrderedDict()
        self._lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._resolver: dns.resolver.Resolver | None = None
        self._resolver_error = ""

    # -- resolver ----------------------------------------------------------
    def _make_resolver(self) -> dns.resolver.Resolver | None:
        if self._resolver is not None or self._resolver_error:
            return self._resolver
        try:
            if self.servers:
                resolver = dns.resolver.Resolver(configure=False)
                hosts, ports = [], {}
                for entry in self.servers:
                    host, port = _host_port(entry)
                    hosts.append(host)
                    ports[host] = port
                resolver.nameservers = hosts
                resolver.nameserver_ports = ports
            else:
                resolver = dns.resolver.Resolver()
        except (dns.resolver.NoResolverConfiguration, OSError, ValueError) as exc:
            self._resolver_error = f"DNS error: no resolver configuration ({exc})"
            return None
        resolver.timeout = QUERY_TIMEOUT
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = None            # ours below knows the per-message deadline
        self._resolver = resolver
        return resolver

    # -- cache -------------------------------------------------------------
    def cached(self, name: str) -> TxtAnswer | None:
        with self._lock:
            entry = self._cache.get(name)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._cache[name]
                return None
            return entry[1]

    def _store(self, name: str, answer: TxtAnswer, ttl: float) -> None:
        with self._lock:
            self._cache[name] = (time.monotonic() + ttl, answer)
            self._cache.move_to_end(name)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    # -- lookups -----------------------------------------------------------
    def lookup(self, name: str, deadline: float) -> TxtAnswer:
        """One TXT lookup, answered from the cache or asked before ``deadline``
        (a ``time.monotonic()`` value)."""
        hit = self.cached(name)
        if hit is not None:
            return hit
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TxtAnswer("error", detail=f"DNS query timeout for {name}")
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError) as exc:
            return TxtAnswer("none", detail=f"bad name: {exc}")   # no such record can exist
        with self._init_lock:
            resolver = self._make_resolver()
        if resolver is None:
            return TxtAnswer("error", detail=self._resolver_error)
        try:
            answer = resolver.resolve(qname, dns.rdatatype.TXT,
                                      raise_on_no_answer=False, lifetime=remaining,
                                      search=False)
        except dns.resolver.NXDOMAIN:
            result, ttl = TxtAnswer("none", detail="NXDOMAIN"), _NEGATIVE_TTL
            self._store(name, result, ttl)
            return result
        except dns.exception.Timeout:
            return TxtAnswer("error", detail=f"DNS query timeout for {name}")
        except dns.resolver.NoNameservers as exc:
            return TxtAnswer("error", detail=f"DNS error: {_servfail(exc)}")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return TxtAnswer("error", detail=f"DNS error: {exc}")
        rrset = answer.rrset
        if rrset is None or not len(rrset):
            result, ttl = TxtAnswer("none", detail="NODATA"), _NEGATIVE_TTL
        else:
            first = next(iter(rrset))
            result = TxtAnswer("ok", b"".join(first.strings))
            ttl = min(max(rrset.ttl, _MIN_TTL), _MAX_TTL)
        self._store(name, result, ttl)
        return result

    def lookup_many(self, names: Iterable[str], deadline: float) -> dict[str, TxtAnswer]:
        """Several names at once, none answered later than ``deadline``."""
        wanted = list(dict.fromkeys(names))
        results: dict[str, TxtAnswer] = {}
        missing = []
        for name in wanted:
            hit = self.cached(name)
            if hit is None:
                missing.append(name)
            else:
                results[name] = hit
        if len(missing) == 1:
            results[missing[0]] = self.lookup(missing[0], deadline)
        elif missing:
            with ThreadPoolExecutor(max_workers=min(PARALLEL, len(missing))) as pool:
                for name, answer in zip(missing, pool.map(lambda n: self.lookup(n, deadline),
                                                          missing), strict=True):
                    results[name] = answer
        return results


def _host_port(entry: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[ipv6]`` or ``[ipv6]:port`` (port 53 by default)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, 53


def _servfail(exc: dns.resolver.NoNameservers) -> str:
    """dnspython's long message cut to what the log needs (usually SERVFAIL/REFUSED)."""
    text = str(exc)
    for rcode in ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP"):
        if rcode in text:
            return rcode
    return text[:200]


_fetchers: dict[tuple[str, ...], KeyFetcher] = {}
_fetchers_lock = threading.Lock()


def fetcher(servers: Sequence[str] = ()) -> KeyFetcher:
    """The child's fetcher for these servers (its cache lives as long as the child)."""
    key = tuple(servers or ())
    with _fetchers_lock:
        found = _fetchers.get(key)
        if found is None:
            found = _fetchers[key] = KeyFetcher(key)
        return found


def key_name(selector: str, domain: str) -> str:
    """``<selector>._domainkey.<domain>`` in ASCII (IDN labels as ACE)."""
    def ace(text: str) -> str:
        text = text.strip().rstrip(".")
        return text if text.isascii() else text.encode("idna").decode("ascii")
    return f"{ace(selector)}._domainkey.{ace(domain)}"
