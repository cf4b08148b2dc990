# tests: t/templates/test_engine.py
"""The ``Received:`` trace the macros ``t e ip_trace_* ip_proto_trace_*`` print.

Built as amavis's ``collect_some_info`` builds it (spec/pipeline.md 4, 19.2): one hop
per ``Received`` field, top-down, each parsed for its ``from``/``by``/``with``
clauses and its IP; the SMTP client from XFORWARD/AM.PDP is put in front when the
top field does not name it; our own hop (MTA -> amavis) goes first of all.  A hop
is public unless its address is in amavis's non-public list (loopback, RFC 1918,
link-local, CGN, multicast, class E, ULA, ...): documentation ranges such as
192.0.2.0/24 count as public there, and so they do here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128", "169.254.0.0/16", "fe80::/10",
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "100.64.0.0/10",
    "240.0.0.0/4", "224.0.0.0/4", "ff00::/8"))


@dataclass
class TraceHop:
    """One hop of the trace: its address, port, WITH protocol and parsed clauses."""

    ip: str | None = None
    port: str | int | None = None
    with_: str | None = None
    public: bool = False
    fields: dict[str, str] = field(default_factory=dict)

    def proto_form(self) -> str:
        """``WITH://ip`` or ``WITH://[ip]:port`` (``x`` for no address)."""
        address = "x" if not self.ip else self.ip if not self.port else f"[{self.ip}]:{self.port}"
        return (f"{self.with_}://" if self.with_ else "") + address


def is_public_ip(ip: str | None) -> bool:
    """amavis's ``@public_networks_maps``: any valid address outside the non-public list."""
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not any(addr in net for net in _NOT_PUBLIC if net.version == addr.version)


def normalize_ip(ip: str) -> str:
    """IPv6 lowercased without an ``IPv6:`` prefix; an IPv4-mapped one as dotted quad."""
    had_prefix = ip[:5].lower() == "ipv6:"
    if had_prefix:
        ip = ip[5:]
    if had_prefix or re.search(r":[0-9a-f]*:", ip, re.I):
        scope = ""
        m = re.search(r"%([A-Z0-9._~-]*)\Z", ip, re.I)
        if m:
            scope, ip = m.group(1), ip[:m.start()]
        ip = ip.lower()
        if re.match(r"[0:]+:ffff:", ip):
            try:
                mapped = ipaddress.IPv6Address(ip).ipv4_mapped
            except ValueError:
                mapped = None
            if mapped is not None:
                ip = str(mapped)
        if scope and scope != "0":
            ip += "%" + scope
    return ip


# ------------------------------------------------------------------- Received parsing
_KEYWORD_FROM_BY = re.compile(r"(from|by)(?:[ \t]+|\Z|(?=[\[(\",;<]))", re.I)
_KEYWORD_OTHER = re.compile(r"(via|with|id|for)(?:[ \t]+|\Z|(?=[\[(\",;<]))", re.I)
_BLANKS = re.compile(r"[ \t]+")
_WORD = re.compile(r"[^ \t,:;@<>()\"\[\]\\]+")
_COMMENT_TEXT = re.compile(r"[^()\\]+")
_LITERAL_TEXT = re.compile(r"[^\]\\>]+")
_TCP_IPV4 = re.compile(r"\[\d{1,3}(?:\.\d{1,3}){3}\]", re.A)
_TCP_IPV6 = re.compile(r"\[(?:IPv6:)?[0-9a-f]{0,4}(?::[0-9a-f]{0,4}|\.[0-9]{1,3}){2,9}"
                       r"(?:%[A-Z0-9_-]+)?\]", re.I)
_TCP_NAME = re.compile(r"(?:localhost|(?:[\x80-\U0010ffffa-zA-Z0-9_/+-]{1,63}\.)+"
                       r"[\x80-\U0010ffffa-zA-Z0-9-]{2,})\b", re.S)


def parse_received(text: str) -> dict[str, str]:
    """The clauses of one Received field body: ``from``, ``from-tcp``, ``from-com``,
    ``by``, ``with``, ``id``, ``for``, ``;`` ... (RFC 5321 Stamp, loosely)."""
    s = text.replace("\n", "")
    fields: dict[str, str] = {}
    option = ""
    comments = 0
    ext_dom = 0
    in_tcp = in_literal = in_angle = False
    pos, n = 0, len(s)

    def add(piece: str) -> None:
        fields[option] = fields.get(option, "") + piece

    while pos < n:
        c = s[pos]
        if comments > 0 and c == ")":
            if comments > 1 or in_tcp:
                add(c)
            if comments == 1 and not in_tcp and option.endswith("-com"):
                option = option[:-4]
            comments -= 1
            pos += 1
            continue
        if in_tcp and c == ")":
            if option.endswith("-tcp"):
                option = option[:-4]
            in_tcp, ext_dom = False, 4
            pos += 1
            continue
        if not in_literal and not comments and not in_tcp and ext_dom == 1 and c == "(":
            option += "-tcp"
            in_tcp, ext_dom = True, 2
            pos += 1
            continue
        if not in_literal and c == "(":
            comments += 1
            if comments > 1 or in_tcp:
                add(c)
            if comments == 1 and not in_tcp:
                option += "-com"
                if option in fields:
                    fields[option] += " "
            pos += 1
            continue
        if comments > 0:
            if c == "\\" and pos + 1 < n:
                add(s[pos:pos + 2])
                pos += 2
                continue
            m = _COMMENT_TEXT.match(s, pos)
            if m:
                add(m.group(0))
                pos = m.end()
                continue
        if in_literal:
            if c in "]>":
                in_literal = False
                if c == ">":
                    in_angle = False
                add(c)
                pos += 1
                continue
        if not comments and c == "[":
            in_literal = True
            add(c)
            pos += 1
            continue
        if in_literal:
            if c == "\\" and pos + 1 < n:
                add(s[pos:pos + 2])
                pos += 2
                continue
            m = _LITERAL_TEXT.match(s, pos)
            if m:
                add(m.group(0))
                pos = m.end()
                continue
        if not comments and not in_literal and not in_tcp:
            if not in_angle and c == "<":
                in_angle = True
                add(c)
                pos += 1
                continue
            if in_angle and c == ">":
                in_angle = False
                add(c)
                pos += 1
                continue
            if not in_angle:
                m = _KEYWORD_FROM_BY.match(s, pos)
                if m:
                    option, ext_dom = m.group(1).lower(), 1
                    pos = m.end()
                    continue
                m = _KEYWORD_OTHER.match(s, pos)
                if m:
                    option, ext_dom = m.group(1).lower(), 0
                    pos = m.end()
                    continue
                if c == ";":
                    option, ext_dom = ";", 0
                    pos += 1
                    continue
            m = _BLANKS.match(s, pos) or _WORD.match(s, pos)
            if m:
                add(m.group(0))
                pos = m.end()
                continue
        add(c)                                     # other junk
        pos += 1
    for name in ("from-tcp", "by-tcp"):
        value = fields.get(name)
        if value is None or _TCP_IPV4.search(value) or (
                re.search(r"\[.*:.*:", value) and _TCP_IPV6.search(value)) \
                or _TCP_NAME.match(value):
            continue
        comment = name[:-4] + "-com"               # not an address: it was a comment
        old = fields.get(comment, "")
        glue = "" if value[-1:] in (" ", "\t") or old[:1] in (" ", "\t") else " "
        fields[comment] = value + glue + old
        del fields[name]
    fields = {k: v.strip(" \t") for k, v in fields.items()}
    if fields.get("") == "":
        del fields[""]
    return fields


_FISH_V4 = re.compile(r"\[(\d{1,3}(?:\.\d{1,3}){3})(?:\.\d{4,5})?\]", re.A)
_FISH_V6_MAPPED = re.compile(r"\[((?:IPv6:)?[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){1,5}:\d{1,3}"
                             r"(?:\.\d{1,3}){3}(?:%[A-Z0-9_-]+)?)\]", re.I | re.A)
_FISH_V6 = re.compile(r"\[((?:IPv6:)?[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:%[A-Z0-9_-]+)?)\]",
                      re.I)
_FISH_BARE_V4 = re.compile(r"(?:^|\D)(\d{1,3}(?:\.\d{1,3}){3})(?![0-9.])", re.A)


def ip_from_received(fields: dict[str, str]) -> str | None:
    """The client address of a parsed Received field (``from-tcp``, ``from``, ``from-com``)."""
    for name in ("from-tcp", "from", "from-com"):
        value = fields.get(name)
        if value is None:
            continue
        m = _FISH_V4.search(value)
        if m is None and re.search(r":.*:", value):
            pattern = _FISH_V6_MAPPED if value.count(".") == 3 else _FISH_V6
            m = pattern.search(value)
        elif m is None:
            m = _FISH_BARE_V4.search(value)
        if m is not None:
            ip = m.group(1)
            return ip[5:] if ip[:5].lower() == "ipv6:" else ip
    return None


def first_received_from(received: list[str]) -> str | None:
    """``%t``: the ``from`` clauses of the first Received field amavis looks at.

    amavis asks for the field without an index, which is the topmost occurrence.
    """
    if not received:
        return None
    fields = parse_received(received[0])
    if "from" not in fields:
        return None
    parts = [fields[k] for k in ("from", "from-tcp", "from-com") if fields.get(k) is not None]
    return " ".join(dict.fromkeys(parts))


def build_trace(received: list[str], *, client_addr: str | None, client_port=None,
                client_proto: str | None = None, mta_addr: str | None = None,
                mta_port=None, mta_helo: str | None = None, our_helo: str = "localhost",
                protocol: str | None = None) -> list[TraceHop]:
    """The whole trace, our hop (MTA -> amavis) first, as ``collect_some_info`` makes it."""
    hops: list[TraceHop] = []
    for body in received:
        fields = parse_received(body)
        ip = ip_from_received(fields)
        hops.append(TraceHop(ip=normalize_ip(ip) if ip else None, with_=fields.get("with"),
                             fields=fields))
    if client_addr is not None:
        last = hops[0] if hops else None
        if last is None or last.ip is None or client_addr.lower() != last.ip.lower():
            hops.insert(0, TraceHop(ip=client_addr, port=client_port, with_=client_proto))
        elif last.ip and not last.port:
            last.port = client_port
    hops.insert(0, TraceHop(ip=mta_addr or None, port=mta_port or None, with_=protocol,
                            fields={"from": mta_helo or "", "by": our_helo}))
    for hop in hops:
        hop.public = is_public_ip(hop.ip)
        if hop.with_ is not None:
            hop.with_ = re.sub(r"[^A-Za-z0-9.+-]", "_", hop.with_)
    return hops


def client_addr_from_trace(trace: list[TraceHop]) -> str | None:
    """The first address in the trace: amavis's client address when none was given."""
    for hop in trace:
        if hop.ip:
            return hop.ip
    return None
