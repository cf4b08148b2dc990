# tests: t/checks/test_dkim.py, t/actions/test_dkim_sign.py
"""The ``Authentication-Results`` field body for DKIM results (spec/pipeline.md 24.2).

One field combines every signature: ``<authserv-id> (amavis); dkim=<result>
(<bits>-bit key)[ reason="<detail>"] header.d=<domain>[ header.b="<8 chars>"]``,
repeated per signature with ``\\n`` fold points (RFC 8601; the field is
structured, so ``actions.headers.hdr(..., structured=1)`` folds there).  Used
for incoming mail (the verification results) and for the signatures we have
just made (reported as ``pass``, "just generated, assumed good").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from amavisd.log import do_log

PRODUCT = "amavis"
_B64 = re.compile(r"[A-Za-z0-9+/]+=*\Z")


class DkimResult(Protocol):
    """What the field needs of one signature (``checks.dkim.SignatureResult``)."""

    domain: str
    b: str
    expiration: int | None
    result: str | None
    detail: str | None
    key_bits: int | None


def authserv_id(view: object) -> str:
    """``$myauthservid``, else ``$myhostname``; an international name in ACE form."""
    name = getattr(view, "myauthservid", None) or getattr(view, "myhostname", None) \
        or "localhost"
    try:
        return name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def rfc8601_result(result: str) -> str:
    """Mail::DKIM's vocabulary to RFC 8601: invalid is neutral, unknown is permerror."""
    return {"pass": "pass", "fail": "fail", "temperror": "temperror",
            "invalid": "neutral"}.get(result, "permerror")


def _ace(domain: str) -> str:
    try:
        return domain.lower() if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _qtext(detail: str) -> str:
    """A quoted-string: controls, ``"`` and backslash escaped with a backslash."""
    return re.sub(r'([\x00-\x1f\x7f"\\])', r"\\\1", detail)


def authentication_results(sigs: Sequence[DkimResult], authservid: str,
                           rx_time: float, allow_none: bool = False) -> list[str]:
    """The field bodies (none or one) for ``sigs``; a ``result`` of None means a
    signature we just made.  ``rx_time`` decides "good, but expired"."""
    entries: list[tuple[DkimResult, str, str | None, bool]] = []
    all_b: Counter[str] = Counter()
    valid_b: Counter[str] = Counter()
    first8: Counter[str] = Counter()
    for sig in sigs:
        result, detail = (sig.result or "pass").lower(), sig.detail
        if sig.result is None:
            detail = "just generated, assumed good"
        valid = result == "pass"
        if valid and sig.expiration is not None and rx_time > sig.expiration:
            result, detail, valid = "fail", "good, but expired", False
        b = re.sub(r"[ \t\r\n]", "", sig.b or "")
        if b:
            first8[b[:8]] += 1
            all_b[b] += 1
            if valid:
                valid_b[b] += 1
        entries.append((sig, result, detail, valid))
    several = len(entries) > 1
    text = ""
    for sig, result, detail, valid in entries:
        value = rfc8601_result(result)
        piece = ";\n dkim=" + value
        if sig.key_bits:
            piece += f" ({sig.key_bits}-bit key)"
        full = f"{result} ({detail})" if detail else result
        if full and full.lower() != value.lower():
            piece += f'\n reason="{_qtext(full)}"'
        if sig.domain:
            piece += "\n header.d=" + _ace(sig.domain)
        b = re.sub(r"[ \t\r\n]", "", sig.b or "")
        if b and several:                        # RFC 6008: only to tell signatures apart
            if not _B64.match(b):
                do_log(2, "generate_AR: bad signature tag b=%s", b)
            elif all_b[b] > 1 and valid_b[b] and not valid:
                do_log(2, "generate_AR: not reporting bad duplicates: %s", b)
                piece = ""
            elif first8[b[:8]] > all_b[b]:
                do_log(2, "generate_AR: not reporting b for collisions: %s", b)
            else:
                piece += f'\n header.b="{b[:8]}"'
        text += piece
    if not text:
        if not allow_none:
            return []
        text = ";\n dkim=none"
    return [f"{authservid} ({PRODUCT}){text}"]
