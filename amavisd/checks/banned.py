# tests: t/checks/test_banned.py
"""The banned-content check: which leaf parts a recipient's banned rules ban.

spec/pipeline.md section 7 (``check_for_banned_names``), parts model of section 6.2.
Runs in the child after the MIME walk and the decoders have built the parts tree.
It records ``BannedHit`` findings only; ``decide`` adds ``CC_BANNED`` for the
recipients named in them that do not bypass banned checks (STYLE.md section 5).

Two kinds of table, both first-match-wins regex lists (``new_RE``):

* the traditional tables (``$banned_filename_re`` and whatever
  ``@banned_filename_maps`` / ``%banned_rules`` give a recipient) are matched
  against a *flat list of strings* from every element of the leaf's path:
  MIME types as they are, short file types with a leading dot, declared names, and
  ``UNDECIPHERABLE`` for attribute U.  A rule matches if it matches any string; a
  true right-hand side bans the part, a false one allows it and stops;
* ``$banned_namepath_re`` (global) is matched against one string per leaf, each
  path element's attributes ``P= L= M= T= N= A=`` joined by TAB, elements joined
  by newline.  It is consulted only when some recipient's tables gave no true
  answer, and it answers only for recipients whose tables gave no answer at all.

Recipients sharing the same tables (STYLE.md's recipient groups) are looked up
once per leaf.  Every leaf gets amavis's log line, at level 1 when banned for the
recipient and at level 3 otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amavisd.config.perlconf import NewRE
from amavisd.log import do_log
from amavisd.parts import ATTR_UNDECIPHERABLE, Part, PartsTree

NAME = "banned"

#: The order amavis adds attribute letters in (``U`` before ``C``, as the decoders
#: call ``attributes_add('U','C')``); used when a part keeps them in a set.
ATTRIBUTE_ORDER = "UCBDLS"


# ---------------------------------------------------------------- rules and tables
def perl_key(pattern: re.Pattern[str] | str) -> str:
    """The text amavis shows for a rule: the stringified ``qr``, ``(?^i:...)``.

    Perl stringifies a compiled regex as ``(?^<flags>:<source>)`` with the flags in
    the order ``msixn``; a rule given as a plain string shows as that string.
    """
    if isinstance(pattern, str):
        return pattern
    flags = "".join(letter for letter, bit in (("m", re.M), ("s", re.S), ("i", re.I),
                                               ("x", re.X)) if pattern.flags & bit)
    return f"(?^{flags}:{pattern.pattern})"


@dataclass(frozen=True)
class BannedRule:
    """One entry of a ``new_RE`` table: a regex and its right-hand side (default 1)."""

    pattern: re.Pattern[str]
    rhs: Any = 1
    key: str = ""       # text for logs and banning_rule_key; perl_key(pattern) if ''

    @property
    def display(self) -> str:
        return self.key or perl_key(self.pattern)

    def result(self, match: re.Match[str]) -> Any:
        """The rhs, with ``$1``, ``${1}``, ``$(1)`` replaced by the match's groups.

        As in amavis's ``lookup_re``: a regex without groups yields the list (1), so
        ``$1`` then becomes ``1``; a group that did not take part becomes ''.
        """
        rhs = self.rhs
        if not isinstance(rhs, str) or "$" not in rhs:
            return rhs
        groups: tuple[Any, ...] = match.groups() if self.pattern.groups else (1,)

        def group(m: re.Match[str]) -> str:
            j = int(m.group(2) or m.group(3) or m.group(4))
            value = groups[j - 1] if 1 <= j <= len(groups) else None
            return "" if value is None else str(value)

        return _RHS_REF.sub(group, rhs)


_RHS_REF = re.compile(r"\$((\d+)|\{(\d+)\}|\((\d+)\))", re.S)


@dataclass(frozen=True)
class BannedTable:
    """A ``new_RE`` table of BannedRule, tried in order; the first match decides."""

    rules: tuple[BannedRule, ...]

    def lookup(self, keys: str | Sequence[str]) -> tuple[Any, BannedRule] | None:
        """(result, rule) of the first rule matching ``keys``, or None.

        With a list of keys a rule matches if it matches any of them: the loop over
        the keys is the inner loop, so rule order wins over key order.
        """
        candidates = [keys] if isinstance(keys, str) else keys
        for rule in self.rules:
            for key in candidates:
                match = rule.pattern.search(key)
                if match:
                    return rule.result(match), rule
        return None


def banned_rule(entry: Any) -> BannedRule:
    """One rule from a config entry: a regex, a pattern string, or (regex, rhs)."""
    if isinstance(entry, BannedRule):
        return entry
    if isinstance(entry, re.Pattern):
        return BannedRule(entry)
    if isinstance(entry, str):
        return BannedRule(re.compile(entry), 1, entry)
    if isinstance(entry, (list, tuple)) and 1 <= len(entry) <= 2:
        base = banned_rule(entry[0])
        return BannedRule(base.pattern, entry[1] if len(entry) == 2 else 1, base.key)
    raise TypeError(f"not a banned rule (regex or (regex, value) pair): {entry!r}")


def banned_table(table: Any) -> BannedTable:
    """A BannedTable from a ``NewRE`` (Perl config), a BannedTable, or a Python list.

    A Python list holds regexes (``re.Pattern`` or pattern strings) and
    ``(regex, rhs)`` pairs, exactly like the arguments of ``new_RE(...)``.
    """
    if isinstance(table, BannedTable):
        return table
    if isinstance(table, NewRE):
        return BannedTable(tuple(BannedRule(pattern, rhs) for pattern, rhs in table.entries))
    if isinstance(table, (list, tuple)):
        return BannedTable(tuple(banned_rule(entry) for entry in table))
    raise TypeError(f"not a banned lookup table (new_RE or list of rules): {table!r}")


def _perl_rules(*entries: tuple[str, str] | tuple[str, str, Any]) -> BannedTable:
    """A table written the Perl way: (source, flags[, rhs]) with amavis's key text."""
    rules = []
    for source, flags, *rhs in entries:
        bits = re.I if "i" in flags else 0
        rules.append(BannedRule(re.compile(source, bits), rhs[0] if rhs else 1,
                                f"(?^{flags}:{source})"))
    return BannedTable(tuple(rules))


#: Debian's ``$banned_filename_re`` (/etc/amavis/conf.d/20-debian_defaults,
#: pipeline.md section 7.4), in order; the allow rules for archive contents are
#: commented out there and absent here.
DEBIAN_BANNED_FILENAME_RE = _perl_rules(
    # certain double extensions anywhere in the base name
    (r"\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?$", "i"),
    # Windows Class ID CLSID, strict
    (r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?$", "i"),
    # these MIME types
    (r"^application/x-msdownload$", "i"),
    (r"^application/x-msdos-program$", "i"),
    (r"^application/hta$", "i"),
    # banned extension - basic
    (r".\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$", "i"),
    # banned file(1) types
    (r"^\.(exe-ms)$", ""),
)


def default_banned_rules(banned_filename_re: Any = DEBIAN_BANNED_FILENAME_RE) -> dict[str, Any]:
    """``%banned_rules`` as amavis fills it when the config left it empty.

    ``('DEFAULT' => $banned_filename_re)``, the name ``@banned_filename_maps``
    gives every recipient by default (pipeline.md section 7.1).
    """
    return {"DEFAULT": banned_filename_re}


#: ``%banned_rules`` of a stock Debian config.
BANNED_RULES: dict[str, Any] = default_banned_rules()

_RULE_NAMES = re.compile(r'(?:"(?:\\.|[^"\\]){0,999}"|[^, ])+|[, ]+', re.S)


def resolve_tables(entries: Iterable[Any], banned_rules: Mapping[str, Any] | None = None,
                   recip: str = "") -> list[Any]:
    """The lookup tables of one recipient from its ``@banned_filename_maps`` answers.

    ``entries`` are every answer of the by-recipient (get-all) lookup, in order.
    Each is None (ignored); a string of rule names, separated by commas or spaces,
    mapped through ``%banned_rules`` (an unknown name is logged and skipped, a name
    mapped to None is skipped); a list of tables (``NewRE`` or ``BannedTable``); or,
    for Python configs, one table (``NewRE``, ``BannedTable`` or a list of rules).
    Returns the raw table objects: their identity tells recipient groups apart.
    """
    rules = BANNED_RULES if banned_rules is None else banned_rules
    tables: list[Any] = []
    for entry in entries:
        if entry is None:
            continue
        if isinstance(entry, str):
            for name in _RULE_NAMES.findall(entry):
                if re.fullmatch(r"[, ]*", name):
                    continue
                if name not in rules:
                    do_log(2, "INFO: unknown banned table name %s, recip=%s", name, recip)
                elif rules[name] is not None:
                    tables.append(rules[name])
        elif isinstance(entry, (list, tuple)) and entry and all(
                isinstance(t, (NewRE, BannedTable)) for t in entry):
            tables.extend(entry)
        else:
            tables.append(entry)
    return tables


# ---------------------------------------------------------------- findings
@dataclass(frozen=True)
class BannedHit:
    """A leaf part that one rule bans for some recipients (pipeline.md section 7.3).

    ``banned_part`` is the traditional path descriptor
    (``multipart/mixed | application/zip,.zip,a.zip | .exe,.exe-ms,a.exe``),
    ``banned_part_as_attr`` the attribute form (``P=p003,L=1,M=multipart/mixed | ...``),
    ``banning_reason_short`` amavis's ``%F`` (what ``BANNED: %F`` replies show).
    """

    part: str                       # the leaf's base name, 'p004'
    banned_part: str
    banned_part_as_attr: str
    banning_rule_key: str           # the rule's regex as amavis prints it
    banning_rule_comment: str       # its (?#...) comments, else the whole key
    banning_rule_rhs: Any
    banning_reason_short: str
    recipients: tuple[str, ...]
    via_namepath: bool = False      # decided by $banned_namepath_re


@dataclass
class BannedVerdict:
    """What amavis stores per recipient, in leaf order (pipeline.md section 7.3)."""

    banned_parts: list[str] = field(default_factory=list)
    banned_parts_as_attr: list[str] = field(default_factory=list)
    banning_rule_key: list[str] = field(default_factory=list)
    banning_rule_comment: list[str] = field(default_factory=list)
    banning_rule_rhs: list[Any] = field(default_factory=list)
    banning_reason_short: str | None = None     # the first banned leaf only

    @property
    def dsn_suppress_reason(self) -> str | None:
        """``BANNED:<rhs> suggested by rule`` for an rhs starting with DISCARD (last wins)."""
        reason = None
        for rhs in self.banning_rule_rhs:
            if _perl_str(rhs).startswith("DISCARD"):
                reason = f"BANNED:{_perl_str(rhs)} suggested by rule"
        return reason


def per_recipient(hits: Iterable[BannedHit]) -> dict[str, BannedVerdict]:
    """The hits regrouped by recipient, as amavis keeps them on each recipient."""
    verdicts: dict[str, BannedVerdict] = {}
    for hit in hits:
        for recip in hit.recipients:
            verdict = verdicts.setdefault(recip, BannedVerdict())
            verdict.banned_parts.append(hit.banned_part)
            verdict.banned_parts_as_attr.append(hit.banned_part_as_attr)
            verdict.banning_rule_key.append(hit.banning_rule_key)
            verdict.banning_rule_comment.append(hit.banning_rule_comment)
            verdict.banning_rule_rhs.append(hit.banning_rule_rhs)
            if verdict.banning_reason_short is None:
                verdict.banning_reason_short = hit.banning_reason_short
    return verdicts


# ---------------------------------------------------------------- keys
def _perl_true(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _perl_str(value: Any) -> str:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    return str(value)


def _clean(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ")


def _attribute_letters(part: Part) -> list[str]:
    attrs = part.attributes
    if isinstance(attrs, (set, frozenset)):
        known = [a for a in ATTRIBUTE_ORDER if a in attrs]
        return known + sorted(a for a in attrs if a not in ATTRIBUTE_ORDER)
    return [letter for letter in attrs if letter.strip()]


def element_attributes(part: Part) -> list[tuple[str, str]]:
    """One path element as amavis describes it: (letter, value) pairs, in order.

    ``P`` base name, ``L`` placement, ``M`` each declared MIME type, ``T`` each short
    file type, ``N`` each declared name, ``A`` each attribute letter (section 7.2);
    TAB and newline inside a value become spaces, empty values are left out.
    """
    pairs: list[tuple[str, str]] = []
    for letter, values in (("P", [part.base_name]), ("L", [part.placement]),
                           ("M", part.declared_types), ("T", part.type_short),
                           ("N", part.declared_names)):
        pairs.extend((letter, _clean(v)) for v in values if v)
    pairs.extend(("A", a) for a in _attribute_letters(part))
    return pairs


def traditional_keys(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The strings a traditional table sees for one element: M, .T, N, UNDECIPHERABLE."""
    keys: list[str] = []
    for letter, value in pairs:
        if letter in ("M", "N"):
            keys.append(value)
        elif letter == "T":
            keys.append("." + value)
        elif letter == "A" and value == ATTR_UNDECIPHERABLE:
            keys.append("UNDECIPHERABLE")
    return keys


@dataclass(frozen=True)
class LeafKeys:
    """Both key forms of one leaf, and the descriptors amavis stores and logs."""

    trad: tuple[tuple[str, ...], ...]        # per path element, root side first
    attrs: tuple[tuple[tuple[str, str], ...], ...]

    @classmethod
    def of(cls, leaf: Part) -> LeafKeys:
        attrs = tuple(tuple(element_attributes(p)) for p in leaf.path_from_root())
        return cls(tuple(tuple(traditional_keys(a)) for a in attrs), attrs)

    @property
    def flat(self) -> list[str]:
        """The traditional lookup key: every element's strings in one list."""
        return [key for element in self.trad for key in element]

    @property
    def namepath(self) -> str:
        """The ``$banned_namepath_re`` key: TAB between attributes, LF between elements."""
        return "\n".join("\t".join(f"{k}={v}" for k, v in e) for e in self.attrs)

    @property
    def as_attr(self) -> str:
        """``P=p003,L=1,M=multipart/mixed | P=p002,...`` (logs, banned_parts_as_attr)."""
        return " | ".join(",".join(f"{k}={v}" for k, v in e) for e in self.attrs)

    @property
    def descriptor(self) -> str:
        """``multipart/mixed | application/zip,.zip,a.zip | .asc,a.exe`` (banned_parts)."""
        return " | ".join(",".join(e) for e in self.trad)

    @property
    def leaf_name(self) -> str:
        """The leaf element alone, ``.asc,a.exe``: what ``%F`` is made of."""
        return ",".join(self.trad[-1]) if self.trad else ""


def rule_comment(key: str) -> list[str]:
    """The texts of the ``(?#...)`` comments in a rule, trimmed."""
    return re.findall(r"\(\?#\s*(.*?)\s*\)", key, re.S)


def reason_short(leaf_name: str, key: str) -> str:
    """Macro ``%F``: runs of >= 6 SP/TAB shown as `` ... ``, ``comment:`` in front."""
    text = re.sub(r"[ \t]{6,}", " ... ", leaf_name)
    comments = rule_comment(key)
    return " ".join(comments) + ":" + text if comments else text


_LOG_ESCAPES = {"r": "\r", "n": "\n", "f": "\f", "b": "\b", "e": "\x1b", "a": "\a", "t": "\t"}


def _pretty_key(key: str) -> str:
    """The matching key as amavis logs it: ``\\n``, ``\\t``... turned into the characters."""
    return re.sub(r"\\(.)", lambda m: _LOG_ESCAPES.get(m.group(1), "\\" + m.group(1)),
                  key, flags=re.S)


# ---------------------------------------------------------------- the check
@dataclass
class _Group:
    """Recipients sharing the same tables: looked up once per leaf."""

    tables: list[BannedTable]
    recipients: list[str]


def run(tree: PartsTree, recipients_rules: Mapping[str, Iterable[Any] | None],
        namepath_rules: Any = None, *,
        banned_rules: Mapping[str, Any] | None = None) -> list[BannedHit]:
    """Check every leaf of ``tree`` for every recipient; return what is banned.

    ``recipients_rules`` maps each recipient (``recip_addr``, in envelope order) to
    its ``@banned_filename_maps`` answers (see ``resolve_tables``: rule-name strings
    such as ``'DEFAULT'``, lists of tables, or tables), or to None when the
    recipient bypasses banned checks.  ``namepath_rules`` is ``$banned_namepath_re``
    (a ``NewRE``, BannedTable or list of rules) or None.  ``banned_rules`` is
    ``%banned_rules`` (default: ``BANNED_RULES``).

    As in amavis, a recipient without tables, even a bypassed one, is still
    answered by ``$banned_namepath_re`` and gets its log lines, as long as some
    recipient does not bypass; ``decide`` adds CC_BANNED only for recipients that
    do not bypass (pipeline.md section 7.3).

    Returns one BannedHit per banned leaf and deciding rule, naming the recipients
    it applies to, in breadth-first leaf order.
    """
    do_log(3, "Checking for banned types and filenames")
    recipients = list(recipients_rules)
    groups: dict[tuple[int, ...], _Group] = {}
    keep_alive: list[Any] = []          # ids of raw tables stay unique while we run
    group_of: dict[str, _Group | None] = {}
    for recip in recipients:
        entries = recipients_rules[recip]
        raw = [] if entries is None else resolve_tables(entries, banned_rules, recip)
        keep_alive.extend(raw)
        if not raw:
            group_of[recip] = None
            continue
        ident = tuple(id(t) for t in raw)
        if ident not in groups:
            groups[ident] = _Group([banned_table(t) for t in raw], [])
        groups[ident].recipients.append(recip)
        group_of[recip] = groups[ident]
    namepath = None if namepath_rules is None else banned_table(namepath_rules)
    if all(recipients_rules[recip] is None for recip in recipients):
        do_log(3, "skipping banned check: all recipients bypass banned checks")
        return []
    if not groups and namepath is None:
        do_log(3, "skipping banned check: no applicable lookup tables")
        return []
    do_log(4, "starting banned checks - traversing message structure tree")
    hits: list[BannedHit] = []
    for leaf in tree.leaves():
        hits.extend(_check_leaf(leaf, recipients, group_of, groups.values(), namepath))
    return hits


def _lookup(tables: list[BannedTable], keys: list[str] | str) -> tuple[Any, BannedRule] | None:
    """``lookup2``: the first table that gives a (defined) answer decides."""
    for table in tables:
        found = table.lookup(keys)
        if found is not None and found[0] is not None:
            return found
    return None


def _check_leaf(leaf: Part, recipients: list[str], group_of: Mapping[str, _Group | None],
                groups: Iterable[_Group], namepath: BannedTable | None) -> list[BannedHit]:
    keys = LeafKeys.of(leaf)
    do_log(4, "check_for_banned (%s) %s",
           ",".join(p.base_name for p in leaf.path_from_root()), keys.descriptor)
    by_group: dict[int, tuple[Any, BannedRule] | None] = {
        id(group): _lookup(group.tables, keys.flat) for group in groups}
    answers: dict[str, tuple[Any, BannedRule, bool] | None] = {}
    for recip in recipients:
        group = group_of[recip]
        found = by_group[id(group)] if group is not None else None
        answers[recip] = (found[0], found[1], False) if found else None
    if namepath is not None and any(a is None or not _perl_true(a[0])
                                    for a in answers.values()):
        found = namepath.lookup(keys.namepath)
        if found is not None and found[0] is not None:
            for recip, answer in answers.items():
                if answer is None:
                    answers[recip] = (found[0], found[1], True)
    hits: dict[tuple[int, Any, bool], list[str]] = {}
    rules: dict[tuple[int, Any, bool], BannedRule] = {}
    for recip in recipients:
        answer = answers[recip]
        result = None if answer is None else answer[0]
        banned = _perl_true(result)
        mk = "" if answer is None else f', matching_key="{_pretty_key(answer[1].display)}"'
        do_log(1 if banned else 3, 'p.path%s %s: "%s"%s',
               f" BANNED:{_perl_str(result)}" if banned else "", recip, keys.as_attr, mk)
        if banned and answer is not None:
            ident = (id(answer[1]), _perl_str(result), answer[2])
            hits.setdefault(ident, []).append(recip)
            rules[ident] = answer[1]
    out = []
    for ident, recips in hits.items():
        rule = rules[ident]
        result = next(a[0] for r in recips if (a := answers[r]) is not None)
        key = rule.display
        comments = rule_comment(key)
        out.append(BannedHit(
            part=leaf.base_name, banned_part=keys.descriptor,
            banned_part_as_attr=keys.as_attr, banning_rule_key=key,
            banning_rule_comment=" ".join(comments) if comments else key,
            banning_rule_rhs=result,
            banning_reason_short=reason_short(keys.leaf_name, key),
            recipients=tuple(recips), via_namepath=ident[2]))
    return out
