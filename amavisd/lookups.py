"""IP and address access lists, as amavis matches them (spec/pipeline.md section 14).

This is the part of the lookup mechanism the relay path needs: ``@inet_acl``,
``@mynetworks`` and the domain ACL of ``@local_domains_acl``.  Hash, regexp and
SQL tables come with the config-import issue; they plug in beside these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def _parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``1.2.3.4``, ``1.2.3.0/24``, ``1.2.3.0/255.255.255.0``, ``[::1]``, ``[fe80::]/10``."""
    text = entry.strip()
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        text = addr + rest
    return ipaddress.ip_network(text, strict=False)


def ip_acl_match(ip: str | None, acl: Iterable[str]) -> tuple[bool | None, str | None]:
    """First matching entry wins; a leading ``!`` negates.  Returns (result, rule)."""
    try:
        addr = ipaddress.ip_address((ip or "").strip("[]").split("%")[0])
    except ValueError:
        addr = None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for raw in acl:
        entry = str(raw).strip()
        negate = False
        while entry.startswith("!"):
            negate = not negate
            entry = entry[1:].strip()
        if entry == "::/0":                      # matches anything, even an invalid address
            return (not negate, raw)
        if addr is None:
            continue
        try:
            net = _parse_network(entry)
        except ValueError:
            continue
        if net.version == addr.version and addr in net:
            return (not negate, raw)
    return (None, None)


def domain_acl_match(address: str, acl: Iterable[str]) -> bool | None:
    """Address ACL: ``user@dom`` exact, ``.dom`` domain or subdomains, ``dom`` exact, ``.`` all."""
    addr = address.lower()
    local, _, domain = addr.rpartition("@")
    if "@" not in addr:
        domain = addr
    for raw in acl:
        entry = str(raw).strip().lower()
        negate = False
        while entry.startswith("!"):
            negate = not negate
            entry = entry[1:]
        if entry == ".":
            return not negate
        if "@" in entry:
            if entry == addr or (entry.startswith("@") and entry[1:] == domain):
                return not negate
            continue
        if entry.startswith("."):
            if domain == entry[1:] or domain.endswith(entry):
                return not negate
        elif domain == entry:
            return not negate
    return None
