# tests: t/config/test_lookup.py
"""The amavis lookup mechanism: one question, asked of a list of tables (pipeline.md §14).

Every per-recipient (and per-sender, per-IP, per-virus-name) setting of amavisd
is a list of lookup tables, asked in order: ``@bypass_virus_checks_maps``,
``@spam_kill_level_maps``, ``@local_domains_maps``...  This module answers such
a question for the table kinds an amavisd.conf can hold, as the Perl importer
(``perlconf``) hands them to us, and for the plain Python values of the native
config:

========================  ===============================================
table                     meaning
========================  ===============================================
str/int/float/bool        constant: always matches (None: no answer)
``PerlScalarRef``         one level of reference: to a table, or a constant
``dict``                  address hash, keys from ``address_keys``
``list``/``tuple``        address ACL (first matching entry wins)
``NewRE``/``re.Pattern``  regexes on the unmodified key, first match wins
``Opaque``/``OpaqueRef``  a structured constant (failover lists...)
``PerlCode``/callable     a table computed when asked (lazily)
``Label``                 names the question in the debug log only
``SQLField``              a field of the SQL users/policy records, asked
                          through ``amavisd.sql.lookup`` when
                          ``@lookup_sql_dsn`` is set, skipped otherwise
``PerlLookup``            ``q_sql_s('f')`` and friends of a Perl config: an
                          ``SQLField``; LDAP fields are skipped (no LDAP)
========================  ===============================================

Runs wherever a setting is asked about: the child, per message, per recipient.
Nothing here does I/O except an SQL field, which queries the lookup database
(once per address and message: ``amavisd.sql.lookup`` caches the records) and
raises ``TempFail`` when it cannot.  The answers agree with Amavis::Lookup and
Amavis::Lookup::IP of amavisd-new 2.13; ``t/config/test_lookup.py`` asks the
installed Perl modules the same questions.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from amavisd.config.perlconf import (
    NewRE,
    Opaque,
    OpaqueRef,
    PerlCode,
    PerlLookup,
    PerlObject,
    PerlScalarRef,
)

try:                                    # IDNA 2008 with UTS 46, as libidn2 does
    import idna
except ImportError:                     # the stdlib codec (IDNA 2003) then
    idna = None

log = logging.getLogger(__name__)

#: At most this many ``.domain`` suffix keys per address; the deepest are dropped (§14).
MAX_DOMAIN_SUFFIX_KEYS = 20

#: Local parts never split at the delimiter (as Postfix does; §14, §20).
_RESERVED_LOCALPARTS = ("postmaster", "mailer-daemon", "double-bounce")

#: ``$1``, ``${1}`` and ``$(1)`` in a hash or regex result (§14).
_RHS_REF = re.compile(r"\$(?:(\d+)|\{(\d+)\}|\((\d+)\))")

#: What may follow the ``@`` that starts the domain: address literals in
#: brackets (which may hold an ``@``), otherwise anything but ``[`` and ``@``.
_DOMAIN_TAIL = re.compile(r"(?:\[(?:\\.|[^\]\\]){0,999}(?:\]|\Z)|[^\[@])*", re.S)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class LookupTableError(TypeError):
    """A table we cannot ask: an unknown object, or Perl code we cannot run."""


@dataclass(frozen=True)
class Label:
    """A pseudo-table naming the question in the debug log (Amavis::Lookup::Label)."""

    name: str


#: Perl code references that may stand for a table, by name: each takes
#: (key, get_all) and returns the table to ask.  Empty: stock amavisd.conf
#: files put no code into lookup lists (the ``*_by_ccat`` subs are not tables).
CODE_TABLES: dict[str, Callable[[Any, bool], Any]] = {}


def register_code_table(name: str, function: Callable[[Any, bool], Any]) -> None:
    """Let ``\\&name`` in an imported config stand for the table ``function`` returns."""
    CODE_TABLES[name] = function


def new_RE(*entries: Any) -> NewRE:
    """A regex table for the native config: patterns, or (pattern, value) pairs.

    A string is compiled with Python's ``re`` (the Perl importer already gives
    compiled patterns); an entry without a value has the value 1, as in amavis.
    """
    compiled: list[tuple[re.Pattern[str], Any]] = []
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            pattern, value = entry[0], (entry[1] if len(entry) > 1 else 1)
        else:
            pattern, value = entry, 1
        compiled.append((_compile(pattern), value))
    return NewRE(tuple(compiled))


@dataclass(frozen=True)
class SQLField:
    """One field of the records ``sel_policy`` finds for an address (Amavis::Lookup::SQLfield).

    ``type`` is B (boolean), N (numeric) or S (string); a ``-`` suffix means a
    column the table lacks is "no answer", ``B1``/``B0`` that it means true/false
    (pipeline.md 14).  ``implied`` marks the fields that ``$lookup_maps_imply_sql_and_ldap``
    put in front of the static maps: amavis inserts them after it has decided
    which code to load, so those decisions look past them (``without_implied_sql``).
    """

    field: str
    type: str = "S-"
    implied: bool = False

    def __repr__(self) -> str:
        return f"SQLField({self.field!r}, {self.type!r})"


def q_sql_s(field: str) -> SQLField:
    """A string field of the SQL lookup records, for a native config (``q_sql_s`` in Perl)."""
    return SQLField(field, "S-")


def q_sql_n(field: str) -> SQLField:
    """A numeric field of the SQL lookup records."""
    return SQLField(field, "N-")


def q_sql_b(field: str) -> SQLField:
    """A boolean field of the SQL lookup records (N, F, 0, space and NUL are false)."""
    return SQLField(field, "B-")


def is_sql_table(table: Any) -> bool:
    """An SQL or LDAP field object: answered by a database, never by the config itself."""
    return isinstance(table, (SQLField, PerlLookup))


def without_implied_sql(tables: Any) -> Any:
    """``tables`` without the SQL fields ``$lookup_maps_imply_sql_and_ldap`` put in front.

    For the startup decisions amavis makes on the static maps alone (is the spam
    or virus code loaded: a plain true first entry of ``@bypass_*_checks_maps``).
    """
    if not isinstance(tables, (list, tuple)):
        return tables
    return [t for t in tables if not (isinstance(t, SQLField) and t.implied)]


def _compile(pattern: Any) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    return re.compile("" if pattern is None else str(pattern))


# ---------------------------------------------------------------- addresses
def _lower(text: str) -> str:
    """Lowercase ASCII letters only, as Perl's ``lc`` does on the octets amavis keys are."""
    return text.translate(_ASCII_LOWER)


def split_address(addr: str) -> tuple[str, str]:
    """Split a mailbox into (localpart, domain); the domain keeps its leading ``@``.

    The domain starts at the first ``@`` after which no other ``@`` stands outside
    an address literal, so a quoted local part may hold ``@`` (``"a@b"@dom``) and
    ``user@[1.2.3.4]`` keeps its literal.  ``user`` gives ``('user', '')`` and
    ``user@`` gives ``('user', '@')``: amavis tells them apart.
    """
    start = addr.find("@")
    while start >= 0:
        if _DOMAIN_TAIL.fullmatch(addr, start + 1):
            return addr[:start], addr[start:]
        start = addr.find("@", start + 1)
    return addr, ""


def split_localpart(localpart: str, delimiter: str | None) -> tuple[str, str | None]:
    """Split ``user+ext`` into ``('user', '+ext')``; the extension keeps its delimiter.

    Every character of ``delimiter`` is a delimiter (Postfix's rule).  The split is
    at the first one that is not the first character; postmaster, mailer-daemon and
    double-bounce are never split, nor owner-x and x-request when ``-`` delimits.
    """
    if not delimiter or _lower(localpart) in _RESERVED_LOCALPARTS:
        return localpart, None
    if "-" in delimiter and (re.match(r"owner-.", localpart, re.I | re.S)
                             or re.search(r".-request\Z", localpart, re.I | re.S)):
        return localpart, None
    for index in range(1, len(localpart)):
        if localpart[index] in delimiter:
            return localpart[:index], localpart[index:]
    return localpart, None


@functools.lru_cache(maxsize=4096)
def _idn_to_ascii(domain: str) -> str:
    """Lowercase, and an international name to its ACE form (``xn--``)."""
    if domain.isascii():
        return _lower(domain)
    prefix = domain[0] if domain[0] in ".@" else ""
    name = domain[len(prefix):]
    try:
        if idna is not None:
            ace = idna.encode(name, uts46=True).decode("ascii")
        else:
            ace = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):   # idna.IDNAError is a UnicodeError
        return domain            # amavis keeps a name libidn refuses as it is
    return prefix + _lower(ace)


def _domain_key(domain: str) -> str:
    """The domain part as lookups compare it: no ``@``, no trailing dots, lowercase ACE."""
    if domain.startswith("@"):
        domain = domain[1:]
    domain = domain.rstrip(".")
    return _idn_to_ascii(domain) if domain else ""


@dataclass(frozen=True)
class AddressParts:
    """An address taken apart for a hash lookup; ``rhs`` feeds ``$1``..``$5`` (§14)."""

    keys: list[str]
    #: $1 address as given, $2 full localpart as given, $3 user, $4 extension, $5 domain.
    rhs: tuple[str, str, str, str, str]


def address_parts(addr: str, delimiter: str | None = None,
                  case_sensitive: bool = False) -> AddressParts:
    """The hash lookup keys of ``addr`` in order, and the pieces ``$1``..``$5`` stand for.

    For ``User+Foo@Sub.Example.COM`` with delimiter ``+``: the address as given,
    ``user+foo@sub.example.com``, ``user@sub.example.com``, ``user+foo@``,
    ``user@``, ``sub.example.com``, ``.sub.example.com``, ``.example.com``,
    ``.com``, ``.`` (pipeline.md §14).  Duplicates are dropped, an address
    literal gets no suffix keys, and ``''`` (the null sender) gives ``''``,
    ``'@'``, ``'.'``.
    """
    full_localpart, domain = split_address(addr)
    localpart = full_localpart if case_sensitive else _lower(full_localpart)
    domain = _domain_key(domain)
    localpart, extension = split_localpart(localpart, delimiter)
    extension = extension or ""
    keys = [addr]
    if extension:
        keys.append(f"{localpart}{extension}@{domain}")
    keys.append(f"{localpart}@{domain}")
    if extension:
        keys.append(f"{localpart}{extension}@")
    keys.append(f"{localpart}@")
    keys.append(domain)
    if "[" in domain:                    # an address literal is not split
        keys.append(".")
    else:
        suffixes = []
        rest = domain
        while True:
            suffixes.append("." + rest)
            if not rest:
                break
            rest = rest.partition(".")[2]
        keys.extend(suffixes[-MAX_DOMAIN_SUFFIX_KEYS:])
    return AddressParts(list(dict.fromkeys(keys)),
                        (addr, full_localpart, localpart, extension, domain))


def address_keys(addr: str, delimiter: str | None = None,
                 case_sensitive: bool = False) -> list[str]:
    """The keys a hash table is asked for ``addr``, most specific first (§14)."""
    return address_parts(addr, delimiter, case_sensitive).keys


def _expand(value: Any, pieces: Sequence[Any]) -> Any:
    """Replace ``$n``/``${n}``/``$(n)`` in a string result; ``$0`` and missing pieces are ''."""
    if not isinstance(value, str) or "$" not in value:
        return value

    def piece(match: re.Match[str]) -> str:
        number = int(match.group(1) or match.group(2) or match.group(3))
        if number < 1 or number > len(pieces) or pieces[number - 1] is None:
            return ""
        return str(pieces[number - 1])

    return _RHS_REF.sub(piece, value)


# ---------------------------------------------------------------- one table
Found = list[tuple[Any, str]]


def _hash_lookup(addr: str, table: dict, get_all: bool, delimiter: str | None,
                 case_sensitive: bool) -> Found:
    """The first key present wins, even when its value is None ("ask the next table")."""
    parts = address_parts(addr, delimiter, case_sensitive)
    found: Found = []
    for key in parts.keys:
        if key in table:
            found.append((_expand(table[key], parts.rhs), key))
            if not get_all:
                break
    return found


def acl_lookup(addr: str, acl: Iterable[Any],
               case_sensitive: bool = False) -> tuple[bool | None, str | None]:
    """Ask an address ACL: first matching entry wins; (True/False, entry) or (None, None).

    ``user@dom`` compares the whole address (``@dom`` therefore matches only an
    empty local part), ``.dom`` the domain and its subdomains, ``dom`` the domain
    alone, ``.`` everything; an odd number of leading ``!`` negates.  The address
    extension is not stripped (pipeline.md §14).
    """
    localpart, domain = split_address(addr)
    if not case_sensitive:
        localpart = _lower(localpart)
    domain = _domain_key(domain)
    for raw in acl:
        entry = "" if raw is None else str(raw)
        key = entry.lstrip("!")
        result = (len(entry) - len(key)) % 2 == 0
        if "@" in key:
            user, _, dom = key.rpartition("@")
            found = (localpart == (user if case_sensitive else _lower(user))
                     and domain == _lower(dom))
        elif key.startswith("."):
            suffix = _lower(key[1:])
            found = not suffix or domain == suffix or domain.endswith("." + suffix)
        else:
            found = domain == _lower(key)
        if found:
            return result, entry
    return None, None


def _re_lookup(key: Any, entries: Iterable[Any], get_all: bool) -> Found:
    """Regexes searched in the unmodified key (or any of a list of keys), first match wins."""
    candidates = [key] if isinstance(key, str) else list(key)
    found: Found = []
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            pattern, value = _compile(entry[0]), (entry[1] if len(entry) > 1 else 1)
        else:
            pattern, value = _compile(entry), 1
        for candidate in candidates:
            match = pattern.search("" if candidate is None else str(candidate))
            if match:
                # Perl's list-context match gives (1) when the pattern captures nothing.
                pieces = match.groups() if pattern.groups else ("1",)
                found.append((_expand(value, pieces), pattern.pattern))
                break
        if found and not get_all:
            break
    return found


_SCALARS = (str, int, float, bytes)


def _is_regex_list(table: Sequence[Any]) -> bool:
    """A native-config list of compiled patterns (or pattern pairs) is a regex table."""
    return bool(table) and all(
        isinstance(item, re.Pattern)
        or (isinstance(item, (tuple, list)) and item and isinstance(item[0], re.Pattern))
        for item in table)


def _run_code(table: Any, key: Any, get_all: bool) -> Any:
    if isinstance(table, PerlCode):
        function = CODE_TABLES.get(table.name)
        if function is None:
            what = ("an anonymous Perl sub" if table.name == "__ANON__"
                    else f"the Perl sub \\&{table.name}")
            raise LookupTableError(f"a lookup table is {what}, which cannot run here; "
                                   "write the table out in the config instead")
        return function(key, get_all)
    return table(key, get_all)


@dataclass(frozen=True)
class _Constant:
    """A constant reached through a reference (``\\$x`` holding a plain value)."""

    value: Any


def _dereference(table: Any) -> Any:
    """One level of reference, as amavis allows: ``\\$x`` holding a table is that table."""
    if isinstance(table, PerlScalarRef):
        inner = table.value
        if isinstance(inner, PerlScalarRef):      # \\"x": a reference to a constant
            if isinstance(inner.value, (PerlScalarRef, dict, list, tuple)):
                raise LookupTableError("a lookup table is a reference to a reference")
            return _Constant(inner.value)
        if inner is None or isinstance(inner, _SCALARS):
            return _Constant(inner)
        return inner
    return table


def _ask(table: Any, key: Any, get_all: bool, delimiter: str | None,
         case_sensitive: bool) -> Found | Label:
    """Ask one table; returns what it found (value, matching key), or a Label."""
    table = _dereference(table)
    if isinstance(table, PerlCode) or (callable(table) and not isinstance(table, type)):
        table = _run_code(table, key, get_all)
    if isinstance(table, _Constant):
        table = table.value
    if table is None:
        return []
    if isinstance(table, bool) or isinstance(table, _SCALARS):
        return [(table, f"(constant:{table})")]
    if isinstance(table, dict):
        if not table:
            return []
        return _hash_lookup(_address(key), table, get_all, delimiter, case_sensitive)
    if isinstance(table, NewRE):
        return _re_lookup(key, table.entries, get_all)
    if isinstance(table, re.Pattern):
        return _re_lookup(key, [table], get_all)
    if isinstance(table, (list, tuple)):
        if _is_regex_list(table):
            return _re_lookup(key, table, get_all)
        if not table:
            return []
        result, entry = acl_lookup(_address(key), table, case_sensitive)
        return [] if result is None else [(result, entry or "")]
    if isinstance(table, (Opaque, OpaqueRef)):
        value = table.value
        if isinstance(table, OpaqueRef) and isinstance(value, PerlScalarRef):
            value = value.value
        return [] if value is None else [(value, f"(opaque:{value})")]
    if isinstance(table, Label):
        return table
    if isinstance(table, PerlObject) and table.cls == "Amavis::Lookup::Label":
        return Label(_label_name(table))
    if isinstance(table, (SQLField, PerlLookup)):
        # asked only when SQL lookups are configured; LDAP fields never (no LDAP here)
        from amavisd.sql import lookup as sql_lookup

        return sql_lookup.ask_field(table, _address(key), get_all, delimiter, case_sensitive)
    raise LookupTableError(f"a lookup table is an unknown object: {table!r}")


def _label_name(table: PerlObject) -> str:
    """The name in an imported ``Amavis::Lookup::Label->new(name)`` (a blessed scalar)."""
    value = table.value
    return str(value.value if isinstance(value, PerlScalarRef) else value)


def _address(key: Any) -> str:
    if key is None:
        return ""
    if not isinstance(key, str):
        raise LookupTableError("only regex tables take a list of keys; "
                               f"got {type(key).__name__} for a hash or ACL")
    return key


# ---------------------------------------------------------------- the question
def lookup_with_key(get_all: bool, key: Any, tables: Iterable[Any] | None, *,
                    recipient_delimiter: str | None = None,
                    localpart_is_case_sensitive: bool = False,
                    label: str = "") -> tuple[Any, Any]:
    """Like ``lookup``, and also what matched: (value, key) or (values, keys) with get_all.

    A matching key is the hash key, the ACL entry, the regex pattern text, or
    ``(constant:VALUE)`` / ``(opaque:VALUE)`` for constants.
    """
    results: list[Any] = []
    keys: list[str] = []
    labels = [label] if label else []
    for table in tables or ():
        found = _ask(table, key, get_all, recipient_delimiter, localpart_is_case_sensitive)
        if isinstance(found, Label):
            labels.append(found.name)
            continue
        if not get_all:
            # A hash or regex table whose first match is None means "ask the next table".
            found = found[:1] if found and found[0][0] is not None else []
        for value, matching in found:
            results.append(value)
            keys.append(matching)
        if results and not get_all:
            break
    if log.isEnabledFor(logging.DEBUG):
        where = f" [{','.join(dict.fromkeys(labels))}]" if labels else ""
        if not results:
            log.debug("lookup%s => undef, %r does not match", where, key)
        elif get_all:
            log.debug("lookup%s, %d matches for %r: %s", where, len(results), key,
                      ", ".join(f"{k!r}=>{v!r}" for k, v in zip(keys, results, strict=True)))
        else:
            log.debug("lookup%s => %r, %r matches key %r", where, results[0], key, keys[0])
    if get_all:
        return results, keys
    return (results[0], keys[0]) if results else (None, None)


def lookup(get_all: bool, key: Any, tables: Iterable[Any] | None, *,
           recipient_delimiter: str | None = None,
           localpart_is_case_sensitive: bool = False,
           label: str = "") -> Any:
    """Ask ``tables`` in order about ``key`` (amavis ``lookup2``, pipeline.md §14).

    Without ``get_all`` the first answer wins; None means no table knew.  With
    ``get_all`` the list holds every answer of every table in order, and within
    a hash or regex table every matching key, None values included as amavis
    does.  ``key`` is an address for hash and ACL tables; a regex table takes
    any string, or a list of strings (any of them matching counts).
    """
    return lookup_with_key(get_all, key, tables, recipient_delimiter=recipient_delimiter,
                           localpart_is_case_sensitive=localpart_is_case_sensitive,
                           label=label)[0]


# ---------------------------------------------------------------- per recipient
class Lookups:
    """Asks a settings view's ``*_maps`` about an address (decide/actions use it).

    Bound to the ``BankView`` of the message, so a policy bank's tables, and its
    ``recipient_delimiter`` and ``localpart_is_case_sensitive``, are the ones asked.
    With SQL lookups on, the maps themselves start with their SQL field (put there
    once, by ``amavisd.sql.lookup.imply_sql_lookups`` when the config is finished),
    so this and every direct ``lookup()`` of a map ask SQL first, as amavisd does.
    """

    def __init__(self, view: Any):
        self.view = view

    def _option(self, name: str, default: Any) -> Any:
        try:
            value = getattr(self.view, name)
        except AttributeError:          # the registry does not have it (yet)
            return default
        return default if value is None else value

    def per_recipient(self, setting_name: str, address: Any, get_all: bool = False) -> Any:
        """Ask the tables of ``setting_name`` about ``address``.

        An unknown setting is an AttributeError: the registry owns the names.
        """
        tables = getattr(self.view, setting_name)
        if tables is not None and not isinstance(tables, (list, tuple)):
            tables = [tables]
        return lookup(get_all, address, tables,
                      recipient_delimiter=self._option("recipient_delimiter", None),
                      localpart_is_case_sensitive=bool(
                          self._option("localpart_is_case_sensitive", False)),
                      label=setting_name)


# ---------------------------------------------------------------- IP addresses
_IPV4_MAPPED = 0xFFFF << 32
_IPV4_MAPPED_MASK = ((1 << 96) - 1) << 32
_FULL = (1 << 128) - 1


def ip_to_vec(text: str, allow_mask: bool = False) -> tuple[int, int, str | None]:
    """Parse an IP address (or network, with ``allow_mask``) the way amavis does.

    Returns (128-bit value, prefix length, zone).  IPv4 becomes IPv4-mapped IPv6
    (``::ffff:a.b.c.d``), its prefix 96 more.  Accepted: ``[...]`` brackets, an
    ``IPv6:`` prefix, ``%zone``, ``n.n.n.n/k``, ``n.n.n.n/m.m.m.m``, shortened
    ``n.n/k`` (only with a prefix), decimal fields with leading zeros.  Anything
    else is a ValueError.
    """
    ip = text.lstrip(" \t").rstrip(" \t\r\n")
    address, length = ip, None
    if allow_mask and "/" in ip:
        address, _, length = ip.partition("/")
    bracketed = re.fullmatch(r"\[(.*)\]", address, re.S)
    if bracketed:
        address = bracketed.group(1)
    ipv6 = False
    if address[:5].lower() == "ipv6:":
        address, ipv6 = address[5:], True
    elif re.search(r":[0-9a-f]*:", address, re.I):
        ipv6 = True
    zone = None
    zoned = re.search(r"%[A-Za-z0-9._~-]*\Z", address)
    if zoned:
        zone, address = zoned.group(0), address[:zoned.start()]
    prefix: int | None = None
    embedded = ipv6 and re.fullmatch(r"(.*:)([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})"
                                     r"\.([0-9]{1,3})", address, re.S)
    if embedded:
        octets = [int(x) for x in embedded.groups()[1:]]
        if any(o > 255 for o in octets):
            raise ValueError(f"Invalid decimal field value in IPv6 address: [{ip}]")
        address = embedded.group(1) + "{:02x}{:02x}:{:02x}{:02x}".format(*octets)
    elif not ipv6 and re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,3}", address):
        octets = [int(x) for x in address.split(".")]
        if any(o > 255 for o in octets):
            raise ValueError(f"Invalid field value in IPv4 address: [{ip}]")
        if length is None and len(octets) != 4:
            raise ValueError(f"IPv4 address [{ip}] contains fewer than 4 fields")
        octets += [0] * (4 - len(octets))
        address = "::ffff:" + "{:02x}{:02x}:{:02x}{:02x}".format(*octets)
        prefix = _ipv4_prefix(length, ip) + 96
    if "::" in address:
        before, _, after = address.partition("::")
        head = before.split(":") if before else []
        tail = after.split(":") if after else []
        fields = head + ["0"] * max(1, 8 - len(head) - len(tail)) + tail
    else:
        fields = address.split(":") if address else []
    if len(fields) < 8:
        raise ValueError(f"IPv6 address [{ip}] contains fewer than 8 fields")
    if len(fields) > 8:
        raise ValueError(f"IPv6 address [{ip}] contains more than 8 fields")
    if not all(re.fullmatch(r"[0-9a-fA-F]{1,4}", f) for f in fields):
        raise ValueError(f"Invalid syntax of IPv6 address: [{ip}]")
    value = 0
    for field in fields:
        value = (value << 16) | int(field, 16)
    if prefix is None:
        if length is None:
            prefix = 128
        elif not re.fullmatch(r"[0-9]{1,3}", length):
            raise ValueError(f"Invalid prefix length syntax in IP address: [{ip}]")
        else:
            prefix = int(length)
            if prefix > 128:
                raise ValueError(f"IPv6 network prefix length greater than 128: [{ip}]")
    return value, prefix, zone


def _ipv4_prefix(length: str | None, ip: str) -> int:
    """``/k`` or ``/m.m.m.m`` of an IPv4 network (32 when absent)."""
    if length is None:
        return 32
    if re.fullmatch(r"[0-9]{1,9}", length):
        prefix = int(length)
    else:
        mask = re.fullmatch(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})", length)
        if not mask:
            raise ValueError(f"Invalid IPv4 network mask or CIDR prefix length: [{ip}]")
        octets = [int(x) for x in mask.groups()]
        if any(o > 255 for o in octets):
            raise ValueError(f"Illegal field value in IPv4 mask: [{ip}]")
        bits = int.from_bytes(bytes(octets), "big")
        prefix = bin(bits).count("1")
        if bits != (((1 << prefix) - 1) << (32 - prefix)):
            raise ValueError(f"IPv4 mask not representing a valid CIDR mask: [{ip}]")
    if prefix > 32:
        raise ValueError(f"IPv4 network prefix length greater than 32: [{ip}]")
    return prefix


def _mask(prefix: int) -> int:
    return _FULL ^ ((1 << (128 - prefix)) - 1)


def _ip_hash_lookup(value: int | None, table: dict) -> tuple[Any, str | None] | None:
    """Dotted quad, then shorter (``10.1.2``, ``10.1``, ``10``), then the full IPv6 form."""
    if value is None:                  # an invalid address can only match the key ''
        result = table.get("")
        return None if result is None else (result, None)
    if value & _IPV4_MAPPED_MASK == _IPV4_MAPPED:
        octets = [str(b) for b in (value & 0xFFFFFFFF).to_bytes(4, "big")]
        while octets:
            key = ".".join(octets)
            result = table.get(key)
            if result is not None:
                return result, key
            octets.pop()
    key = ":".join(f"{(value >> shift) & 0xFFFF:04x}" for shift in range(112, -1, -16))
    result = table.get(key)
    return None if result is None else (result, key)


def lookup_ip_acl(ip: str | None, tables: Iterable[Any]) -> tuple[Any, str | None]:
    """Ask IP tables (``@inet_acl``, ``@mynetworks_maps``, ``@client_ipaddr_policy``...).

    Returns (result, matching entry) of the first table that matches, else
    (None, None).  An ACL is a list of networks, first match wins, ``!``
    negates (result False); ``::/0`` matches anything, even an invalid address;
    ``0/0`` matches IPv4 only.  A hash matches the dotted quad or a shortened
    one (``192.168``), or the full IPv6 form (``2001:0db8:0000:...``).  A
    constant always matches.  An invalid ACL entry, once reached, is a
    ValueError, as amavis dies there (pipeline.md §14).
    """
    try:
        value: int | None = ip_to_vec(ip or "", allow_mask=False)[0]
    except ValueError as exc:
        log.debug("lookup_ip_acl: %s", exc)
        value = None
    label = ""
    for table in tables:
        table = _dereference(table)
        if isinstance(table, _Constant):
            table = table.value
        if table is None:
            continue
        if isinstance(table, bool) or isinstance(table, _SCALARS):
            return table, f"(constant:{table})"
        if isinstance(table, dict):
            found = _ip_hash_lookup(value, table)
            if found is not None:
                return found
            continue
        if isinstance(table, (list, tuple)):
            for raw in table:
                entry = "" if raw is None else str(raw)
                network = entry.lstrip("!")
                result = (len(entry) - len(network)) % 2 == 0
                try:
                    net_value, prefix, _ = ip_to_vec(network, allow_mask=True)
                except ValueError as exc:
                    raise ValueError(f"lookup_ip_acl{label}: entry {entry!r}: {exc}") from None
                if prefix == 0:
                    return result, entry
                if value is not None and (value ^ net_value) & _mask(prefix) == 0:
                    return result, entry
            continue
        if isinstance(table, Label):
            label = f" ({table.name})"
            continue
        if isinstance(table, PerlObject) and table.cls == "Amavis::Lookup::Label":
            label = f" ({_label_name(table)})"
            continue
        raise LookupTableError(f"an IP lookup table is an unknown object: {table!r}")
    return None, None


def check_ip_acl(entries: Iterable[Any]) -> None:
    """Raise ValueError for the first entry ``lookup_ip_acl`` would die on (for config load)."""
    for raw in entries:
        entry = "" if raw is None else str(raw)
        try:
            ip_to_vec(entry.lstrip("!"), allow_mask=True)
        except ValueError as exc:
            raise ValueError(f"bad IP network {entry!r}: {exc}") from None
