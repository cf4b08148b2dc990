# tests: t/test_oversize_and_extensions.py
"""Address extensions (plus addressing) for local recipients of forwarded mail.

spec/pipeline.md 20.9: when ``$recipient_delimiter`` is non-empty, a local
recipient's (blocking or main) content category picks a table list from
``%addr_extension_maps_by_ccat`` (VIRUS ``@addr_extension_virus_maps``, BANNED
``…_banned_…``, SPAM and SPAMMY ``…_spam_…``, BADH ``…_bad_header_…``); a non-empty
answer ``ext`` makes the forwarding address ``local<first delimiter char>ext@domain``,
replacing an existing extension (``$replace_existing_extension``, default 1) or
appending to it.  ORCPT gets the original address if the client gave none (RFC
3461 4.2).  Only ``Recipient.final_address`` changes: logs, DSNs and SQL keep
``Recipient.address``.  Runs in the child, just before forwarding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from amavisd.config.lookup import Lookups, lookup, split_address, split_localpart
from amavisd.constants import CC_BADH, CC_BANNED, CC_CATCHALL, CC_SPAM, CC_SPAMMY, CC_VIRUS
from amavisd.log import do_log
from amavisd.message import Recipient

#: ``%addr_extension_maps_by_ccat`` as amavis ships it: category -> the setting
#: whose tables are asked (Amavis::Conf; no OVERSIZED, CLEAN or CATCHALL entry).
ADDR_EXTENSION_MAPS_BY_CCAT: dict[str, str] = {
    str(CC_VIRUS): "addr_extension_virus_maps",
    str(CC_BANNED): "addr_extension_banned_maps",
    str(CC_SPAM): "addr_extension_spam_maps",
    str(CC_SPAMMY): "addr_extension_spam_maps",
    str(CC_BADH): "addr_extension_bad_header_maps",
}


def _ccat_order(ccat: str) -> tuple[int, int]:
    major, _, minor = str(ccat).partition(",")
    return int(major), int(minor or 0)


def extension_maps(view: Any) -> dict[str, Any]:
    """The effective ``%addr_extension_maps_by_ccat``: defaults, then configured keys.

    Values are lists of lookup tables.  Amavis's own default subs (imported from a
    Perl config as code) say the same as the defaults and are skipped.
    """
    maps: dict[str, Any] = {ccat: getattr(view, name, None) or []
                            for ccat, name in ADDR_EXTENSION_MAPS_BY_CCAT.items()}
    for key, value in (getattr(view, "addr_extension_maps_by_ccat", None) or {}).items():
        if type(value).__name__ == "PerlCode":
            continue
        maps[str(key)] = value
    return maps


def candidates(rcpt: Recipient) -> list[str]:
    """Category keys tried in order: the blocking one, else all top-down; CATCHALL last.

    pipeline.md 12.2 ("setting by contents category").
    """
    if rcpt.ccat_blocking:
        return [rcpt.ccat_blocking, str(CC_CATCHALL)]
    ccats = sorted(set(rcpt.ccats or []) | {"1"}, key=_ccat_order, reverse=True)
    return [*ccats, str(CC_CATCHALL)]


def extension_for(rcpt: Recipient, view: Any) -> str | None:
    """The extension (without delimiter) for this recipient, or None.

    The first candidate category present in the map decides; its value must be a
    list of tables (a plain string is no table list, as in amavis), asked by the
    recipient's address.  An empty or undefined answer means no extension.
    """
    maps = extension_maps(view)
    for ccat in candidates(rcpt):
        if ccat not in maps:
            continue
        tables = maps[ccat]
        if not isinstance(tables, (list, tuple)):
            return None
        answer = lookup(False, rcpt.address, tables,
                        recipient_delimiter=getattr(view, "recipient_delimiter", None),
                        localpart_is_case_sensitive=bool(
                            getattr(view, "localpart_is_case_sensitive", False)))
        if answer is None or str(answer) == "":
            return None
        return str(answer)
    return None


def extended_address(address: str, extension: str, delimiter: str, replace: bool) -> str:
    """``local<delimiter[0]>ext@domain``; an existing extension is dropped when ``replace``."""
    localpart, domain = split_address(address)
    if replace:
        localpart, _old = split_localpart(localpart, delimiter)
    return f"{localpart}{delimiter[0]}{extension}{domain}"


def original_orcpt(address: str) -> str:
    """ORCPT ``type;address`` for the address as received (RFC 3461 4.2, RFC 6533)."""
    return f"{'rfc822' if address.isascii() else 'utf-8'};{address}"


def apply_address_extensions(recipients: Iterable[Recipient], view: Any) -> None:
    """Set ``final_address`` (and ORCPT if absent) for local recipients (section 20.9)."""
    delimiter = getattr(view, "recipient_delimiter", None)
    if not delimiter:
        return
    replace = bool(getattr(view, "replace_existing_extension", 1))   # undef: append
    lookups = Lookups(view)
    for rcpt in recipients:
        if not lookups.per_recipient("local_domains_maps", rcpt.address):
            continue
        extension = extension_for(rcpt, view)
        if extension is None:
            continue
        new_address = extended_address(rcpt.address, extension, delimiter, replace)
        do_log(5, "address extension '%s' for <%s>, giving <%s>",
               extension, rcpt.address, new_address)
        if rcpt.orcpt is None:
            rcpt.orcpt = original_orcpt(rcpt.quoted)
        rcpt.final_address = new_address
