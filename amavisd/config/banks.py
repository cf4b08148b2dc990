"""Policy-bank selection points after the socket: client IP, MYUSERS, DKIM author.

spec/pipeline.md section 16 and protocols.md section 2.2.  Each function loads
banks onto a ``BankView`` (the view of the transaction in progress) and returns
the names it loaded; a bank that does not exist is ignored, as in amavis.
"""

from __future__ import annotations

import logging

from amavisd.config.lookup import lookup_ip_acl
from amavisd.config.model import BankView

log = logging.getLogger(__name__)


def load_client_ip_banks(view: BankView, client_addr: str | None) -> list[str]:
    """``@client_ipaddr_policy``: pairs (IP table, 'BANK1,BANK2'); the first table that
    matches the client address (0.0.0.0 when unknown) loads its banks (section 2.2)."""
    key = client_addr or "0.0.0.0"
    policy = list(view.client_ipaddr_policy or [])
    loaded: list[str] = []
    for i in range(0, len(policy) - 1, 2):
        table, names = policy[i], policy[i + 1]
        try:
            result, _ = lookup_ip_acl(key, [table])
        except ValueError as exc:
            log.error("client_ipaddr_policy: %s", exc)
            continue
        if result:
            for name in str(names).split(","):
                if name.strip() and view.load(name.strip()):
                    loaded.append(name.strip())
            break
    return loaded
