"""A tiny DNS server on 127.0.0.1 (UDP) for the DKIM tests: TXT answers from a dict.

Real dnspython queries go to it (``dkim_dns_servers = ['127.0.0.1:PORT']``), so the
tests exercise the resolver, the cache and the deadline for real.  ``mode``:
``answer`` (records from ``records``; others NXDOMAIN), ``silent`` (never answers,
the slow server of the deadline tests) or ``servfail``.  ``queries`` lists the
names asked, in order, so a test can see what was (not) asked again.

    with DnsStub({"sel._domainkey.example.com": "v=DKIM1; p=..."}) as dns:
        ... dns.address ...   # '127.0.0.1:PORT'
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Self

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsStub:
    def __init__(self, records: dict[str, str | list[str]] | None = None,
                 mode: str = "answer", ttl: int = 300):
        self.records = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        self.mode = mode
        self.ttl = ttl
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            data, peer = self._sock.recvfrom(4096)
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a broken query gets no answer
                continue
            name = query.question[0].name.to_text().lower().rstrip(".")
            self.queries.append(name)
            if self.mode == "silent":
                continue
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.RA
            if self.mode == "servfail":
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif name in self.records:
                texts = self.records[name]
                texts = [texts] if isinstance(texts, str) else texts
                rrset = dns.rrset.RRset(query.question[0].name, dns.rdataclass.IN,
                                        dns.rdatatype.TXT)
                rrset.ttl = self.ttl
                for text in texts:
                    chunks = [text[i:i + 250] for i in range(0, len(text), 250)] or [""]
                    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"'
                                      for c in chunks)
                    rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT,
                                                  quoted))
                reply.answer.append(rrset)
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(reply.to_wire(), peer)
