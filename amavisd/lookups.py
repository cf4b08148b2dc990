# tests: t/config/test_lookup.py
"""The two access-list questions of the relay path, on top of ``config.lookup``.

``@inet_acl`` and ``@mynetworks`` are IP ACLs, ``@local_domains_acl`` an address
ACL (spec/pipeline.md section 14).  The whole lookup mechanism (hashes, regexes,
constants, per-recipient maps) is ``amavisd.config.lookup``; these two wrappers
keep the signatures the child already calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from amavisd.config.lookup import acl_lookup, lookup_ip_acl

log = logging.getLogger(__name__)


def ip_acl_match(ip: str | None, acl: Iterable[str]) -> tuple[bool | None, str | None]:
    """First matching entry wins; a leading ``!`` negates.  Returns (result, rule).

    An entry amavis cannot parse makes it die when the search reaches it; here
    the question fails closed instead (no match), with the error logged, so a
    bad ``@inet_acl`` denies rather than kills the child.  Configs are checked
    with ``config.lookup.check_ip_acl`` when loaded.
    """
    try:
        result, rule = lookup_ip_acl(ip, [list(acl)])
    except ValueError as exc:
        log.error("%s", exc)
        return None, None
    return (None if result is None else bool(result)), rule


def domain_acl_match(address: str, acl: Iterable[str]) -> bool | None:
    """Address ACL: ``user@dom`` exact, ``.dom`` domain or subdomains, ``dom`` exact, ``.`` all.

    As in amavis, ``@dom`` is the address with an empty local part, not the domain.
    """
    return acl_lookup(address, list(acl))[0]
