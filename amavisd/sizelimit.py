# tests: t/test_oversize_and_extensions.py
"""Per-recipient message size limits: ``@message_size_limit_maps`` and their destiny.

One answer for the two places that ask: the SMTP/LMTP server at RCPT and for the
DATA limit (spec/protocols.md 3.6 and 3.7, through ``SmtpSession.recipient_size_policy``),
and the content checks, which add CC_OVERSIZED for a recipient whose limit the
message exceeds (spec/pipeline.md 12.3 and section 13 step 2).  Pure lookups on the
policy-bank view in force; no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from amavisd.config.lookup import Lookups, lookup
from amavisd.constants import CC_CATCHALL, CC_OVERSIZED, D_PASS
from amavisd.decide import final_destiny_map

#: RFC 5321 4.5.3.1.10: a limit below 64 KiB is raised to it when
#: ``$enforce_smtpd_message_size_limit_64kb_min`` is on (protocols.md 3.6, pipeline.md 13).
MIN_SIZE_LIMIT = 65536

_PERL_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def perl_number(value: Any) -> float:
    """Perl's numeric value of a scalar: the leading number of a string, else 0."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    match = _PERL_NUMBER.match(str(value))
    return float(match.group(1)) if match else 0.0


def _perl_true(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def recipient_size_limit(view: Any, address: str) -> int | None:
    """The recipient's limit from ``@message_size_limit_maps``, or None for no limit.

    A false answer (undef, 0, '') means no limit; a limit below 65536 is raised to
    65536 unless ``$enforce_smtpd_message_size_limit_64kb_min`` is off (pipeline.md 13
    step 2: "(>= 65536 enforced)").
    """
    tables = getattr(view, "message_size_limit_maps", None)
    if not tables:
        return None
    value = Lookups(view).per_recipient("message_size_limit_maps", address)
    if not _perl_true(value):
        return None
    limit = int(perl_number(value))
    enforce = getattr(view, "enforce_smtpd_message_size_limit_64kb_min", 1)
    if (enforce is None or enforce) and limit < MIN_SIZE_LIMIT:
        limit = MIN_SIZE_LIMIT
    return limit


def oversized_destiny(view: Any, address: str) -> int:
    """The destiny of an oversized message for this recipient (protocols.md 3.6).

    ``%final_destiny_maps_by_ccat`` by CC_OVERSIZED, else CATCHALL (D_BOUNCE by
    default, pipeline.md 13 step 4); a value may be a list of by-recipient tables.
    Undef counts as D_PASS.  There are no oversized lovers by default (step 4), and
    ``%lovers_maps_by_ccat`` is not configurable here, so none are asked.
    """
    destinies = final_destiny_map(view)
    for key in (str(CC_OVERSIZED), str(CC_CATCHALL)):
        if key not in destinies:
            continue
        value = destinies[key]
        if isinstance(value, (list, tuple)):
            value = lookup(False, address, value,
                           recipient_delimiter=getattr(view, "recipient_delimiter", None),
                           localpart_is_case_sensitive=bool(
                               getattr(view, "localpart_is_case_sensitive", False)))
        if value is None:
            return D_PASS
        return int(perl_number(value))
    return D_PASS
