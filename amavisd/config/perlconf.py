# tests: t/config/test_perlconf.py
"""Importer of Perl ``amavisd.conf`` files: a drop-in takes the admin's config as it is.

An amavisd.conf is Perl code, so the host's perl evaluates it: ``perl_shim.pl``
(shipped beside this module) runs the files in order, in the environment amavisd
gives them, and prints every variable they assigned as JSON.  This module turns
that dump into Python values and assigns each variable our registry knows with
``Config.assign(name, value, "file:line")``, so a bad value names the line that
set it.  Variables amavisd has but we do not implement yet are recorded in
``Config.accepted_not_implemented`` (the daemon lists them once at startup)
rather than refused: a stock Debian config must load.

Perl regexes (``qr//``) are translated to Python ``re`` patterns.  What has an
exact Python equivalent is rewritten (``\\z``, ``\\Z``, ``(?<name>)``, ``\\h``,
POSIX classes, inline flags in mid-pattern, ...); anything else (code blocks,
recursion, ``\\G``, ``\\K``, Unicode properties, ...) is a ConfigError naming the
file and the pattern, never a silently different pattern.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amavisd.config.model import Config
from amavisd.config.registry import BANK, REGISTRY, canonical
from amavisd.errors import ConfigError

log = logging.getLogger(__name__)

#: The Perl program that evaluates the files; it ships in the package.
SHIM = Path(__file__).with_name("perl_shim.pl")
#: Seconds the shim may run: config files may run commands (`hostname --fqdn`).
SHIM_TIMEOUT = 30


# ---------------------------------------------------------------- Perl values
@dataclass(frozen=True)
class PerlCode:
    """A code reference, by name: ``\\&ask_daemon`` -> ``PerlCode("ask_daemon")``.

    The daemon maps the name to its own implementation; ``"__ANON__"`` is an
    anonymous ``sub { ... }``, which we cannot run.
    """

    name: str


@dataclass(frozen=True)
class NewRE:
    """``new_RE(...)``: a regex lookup table, first match wins (pipeline.md section 14).

    Each entry is ``(pattern, value)``; an entry written without a value has 1,
    and ``undef`` is None ("no answer").
    """

    entries: tuple[tuple[re.Pattern[str], Any], ...]


@dataclass(frozen=True)
class Opaque:
    """``Opaque(x)``: a constant that a lookup returns as is (e.g. a failover list)."""

    value: Any


@dataclass(frozen=True)
class OpaqueRef:
    """``OpaqueRef(\\$x)``: like Opaque, but the value is read when looked up."""

    value: Any


@dataclass
class PerlScalarRef:
    """A reference to a scalar: ``\\$virus_admin`` (``name`` set) or ``\\"x"`` (no name).

    In amavisd such a reference stays live; after the import ``value`` holds the
    scalar's final value.
    """

    name: str | None
    value: Any = None


@dataclass(frozen=True)
class PerlLookup:
    """An SQL/LDAP/DNS field query object: ``q_sql_s('field')`` and friends."""

    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class PerlObject:
    """Any other blessed object; kept so nothing is dropped silently."""

    cls: str
    value: Any


@dataclass(frozen=True)
class DkimKey:
    """One ``dkim_key(domain, selector, pem_file, options...)`` call."""

    domain: Any
    selector: str
    key: Any
    options: dict[str, Any]
    origin: str


@dataclass
class PerlConfig:
    """What the Perl files set, before it is assigned to a ``Config``.

    ``variables`` are keyed by the Perl name with its sigil (``"$max_servers"``),
    with Python values; ``referenced`` holds unassigned variables that those
    values refer to (e.g. ``%bypass_virus_checks`` from the default maps).
    """

    variables: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    referenced: dict[str, Any] = field(default_factory=dict)
    undeclared: list[str] = field(default_factory=list)
    dkim_keys: list[DkimKey] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    #: ``$ENV{...}`` entries the files set (None: deleted), e.g. TMPDIR on Debian.
    environment: dict[str, str | None] = field(default_factory=dict)


# ---------------------------------------------------------------- running the shim
def _perl() -> str:
    return shutil.which("perl") or "/usr/bin/perl"


_ERROR_LINE = re.compile(r"^(?P<origin>.*?:\d+): (?P<why>.*)$")


def run_shim(paths: list[str], preset: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``perl_shim.pl`` on ``paths`` and return its JSON; a failure is a ConfigError.

    ``preset`` gives scalars a value before the first file, as amavisd's command
    line does (``-H`` sets ``$MYHOME`` so a file can use ``"$MYHOME/tmp"``).
    """
    where = paths[0] if paths else "perl config"
    options: list[str] = []
    from amavisd.logtemplates import perl_presets  # $log_templ = $log_verbose_templ;

    for name, value in {**perl_presets(), **(preset or {})}.items():
        options += ["--set", f"{name}={value}"]
    try:
        # Its own session: on a timeout the whole group goes, including a
        # command the file started with backticks that still holds our pipes.
        proc = subprocess.Popen([_perl(), str(SHIM), *options, "--", *paths],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        raise ConfigError(where, "", f"cannot run perl to read a Perl config: {exc}") from None
    try:
        stdout, stderr = proc.communicate(timeout=SHIM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ConfigError(where, "", f"evaluating the Perl config took over {SHIM_TIMEOUT} s "
                          "(a command run by the file hangs?)") from None
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    if proc.returncode != 0:
        last = lines.pop() if lines else f"perl exited with status {proc.returncode}"
        for line in lines:
            log.warning("perl: %s", line)
        match = _ERROR_LINE.match(last)
        if match:
            raise ConfigError(match["origin"], "", match["why"])
        origin, _, why = last.partition(": ")
        raise ConfigError(origin if why else where, "", why or origin)
    for line in lines:
        log.warning("perl: %s", line)
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise ConfigError(where, "", f"unreadable output from the Perl config reader: {exc}") \
            from None


# ---------------------------------------------------------------- Perl regexes
class RegexError(ValueError):
    """A Perl regex that Python's ``re`` cannot express."""


#: Perl \h (horizontal space) and \v (vertical space), as class contents.
_HSPACE = r"\t\x20\xa0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000"
_VSPACE = r"\n\x0b\f\r\x85\u2028\u2029"
#: POSIX classes, ASCII as Perl matches them on byte strings (amavis keys).
_POSIX = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
    "lower": "a-z", "space": r"\t\n\x0b\f\r\x20", "blank": r"\t\x20",
    "punct": r"\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e", "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e", "cntrl": r"\x00-\x1f\x7f", "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_", "ascii": r"\x00-\x7f",
}
_FLAG_BITS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
#: Escapes with the same meaning in both, outside a class.
_SAME_ESCAPES = set("dDwWsSbBafnrt")
#: Escapes Perl has and Python cannot express.
_NO_ESCAPES = {
    "G": "\\G (match position) has no Python equivalent",
    "K": "\\K (keep) has no Python equivalent",
    "p": "\\p{...} Unicode properties are not supported by Python re",
    "P": "\\P{...} Unicode properties are not supported by Python re",
    "X": "\\X (grapheme cluster) is not supported by Python re",
    "C": "\\C (single byte) is not supported by Python re",
    "l": "\\l is string interpolation, not a regex escape",
    "u": "\\u is string interpolation, not a regex escape",
    "L": "\\L is string interpolation, not a regex escape",
    "U": "\\U is string interpolation, not a regex escape",
    "Q": "\\Q is string interpolation, not a regex escape",
    "E": "\\E is string interpolation, not a regex escape",
    "F": "\\F is string interpolation, not a regex escape",
}


def _char(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\U{code:08x}"


class _RegexTranslator:
    """One pass over a Perl pattern, writing the equivalent Python pattern."""

    def __init__(self, pattern: str, verbose: bool, no_capture: bool):
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.verbose = verbose
        self.no_capture = no_capture
        self.groups = 0
        # Per open group: extra ')' owed for mid-group inline flags, and the
        # /x state to restore when it closes.
        self.frames: list[list[Any]] = [[0, verbose]]

    def fail(self, why: str) -> RegexError:
        return RegexError(f"{why} (at offset {self.i})")

    def run(self) -> str:
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            if c == "\\":
                self.out.append(self.escape(in_class=False))
            elif c == "[":
                self.char_class()
            elif c == "(":
                self.group()
            elif c == ")":
                if len(self.frames) == 1:
                    raise self.fail("unmatched )")
                extra, verbose = self.frames.pop()
                self.verbose = verbose
                self.out.append(")" * (1 + extra))
                self.i += 1
            elif c == "#" and self.verbose:
                end = p.find("\n", self.i)
                end = len(p) if end < 0 else end + 1
                self.out.append(p[self.i:end])
                self.i = end
            else:
                self.out.append(c)
                self.i += 1
        if len(self.frames) != 1:
            raise self.fail("unterminated group")
        self.out.append(")" * self.frames[0][0])
        return "".join(self.out)

    # -- escapes --------------------------------------------------------
    def braced(self) -> str:
        """The text of ``{...}`` at the cursor (after an escape letter)."""
        end = self.p.find("}", self.i)
        if self.i >= len(self.p) or self.p[self.i] != "{" or end < 0:
            raise self.fail("expected {...}")
        text = self.p[self.i + 1:end]
        self.i = end + 1
        return text.strip()

    def escape(self, in_class: bool) -> str:
        p = self.p
        if self.i + 1 >= len(p):
            raise self.fail("trailing backslash")
        c = p[self.i + 1]
        self.i += 2
        if c == "x":
            if self.i < len(p) and p[self.i] == "{":
                digits = self.braced() or "0"
            else:
                m = re.match(r"[0-9A-Fa-f]{0,2}", p[self.i:])
                digits = m.group(0) or "0"
                self.i += len(digits) if m.group(0) else 0
            try:
                return _char(int(digits, 16))
            except ValueError:
                raise self.fail(f"bad hex escape \\x{{{digits}}}") from None
        if c == "o":
            try:
                return _char(int(self.braced(), 8))
            except ValueError:
                raise self.fail("bad octal escape \\o{...}") from None
        if c == "c":
            if self.i >= len(p):
                raise self.fail("\\c at the end")
            self.i += 1
            return _char(ord(p[self.i - 1].upper()) ^ 64)
        if c == "e":
            return r"\x1b"
        if c == "N":
            if self.i < len(p) and p[self.i] == "{":
                name = self.braced()
                if name.upper().startswith("U+"):
                    return _char(int(name[2:], 16))
                return f"\\N{{{name}}}"
            if in_class:
                raise self.fail("\\N (not a newline) inside a character class")
            return r"[^\n]"
        if c.isdigit():
            m = re.match(r"\d*", p[self.i:])
            self.i += len(m.group(0))
            return "\\" + c + m.group(0)
        if in_class:
            return self.class_escape(c)
        if c in _SAME_ESCAPES:
            if c in "bB" and self.i < len(p) and p[self.i] == "{":
                raise self.fail(f"\\{c}{{...}} (Unicode boundaries) has no Python equivalent")
            return "\\" + c
        if c == "A":
            return r"\A"
        if c == "z":
            return r"\Z"
        if c == "Z":
            return r"(?=\n?\Z)"
        if c == "h":
            return f"[{_HSPACE}]"
        if c == "H":
            return f"[^{_HSPACE}]"
        if c == "v":
            return f"[{_VSPACE}]"
        if c == "V":
            return f"[^{_VSPACE}]"
        if c == "R":
            return f"(?:\\r\\n|[{_VSPACE}])"
        if c == "g":
            return self.backref_g()
        if c == "k":
            return self.backref_k()
        if c in _NO_ESCAPES:
            raise self.fail(_NO_ESCAPES[c])
        if c.isascii() and c.isalpha():
            return c  # Perl passes an unknown letter escape through as the letter
        return re.escape(c)

    def class_escape(self, c: str) -> str:
        if c in "dDwWsSafnrt":
            return "\\" + c
        if c == "b":
            return r"\x08"
        if c == "h":
            return _HSPACE
        if c == "v":
            return _VSPACE
        if c in "HVR":
            raise self.fail(f"\\{c} inside a character class has no Python equivalent")
        if c in _NO_ESCAPES:
            raise self.fail(_NO_ESCAPES[c])
        if c.isascii() and c.isalpha():
            return c
        return re.escape(c)

    def backref_g(self) -> str:
        p = self.p
        if self.i < len(p) and p[self.i] == "{":
            ref = self.braced()
        else:
            m = re.match(r"-?\d+", p[self.i:])
            if not m:
                raise self.fail("bad \\g reference")
            ref = m.group(0)
            self.i += len(ref)
        if re.fullmatch(r"-\d+", ref):
            number = self.groups + 1 + int(ref)
            if number < 1:
                raise self.fail(f"relative back-reference \\g{{{ref}}} before any group")
            return f"(?:\\{number})"
        if ref.isdigit():
            return f"(?:\\{ref})"
        if re.fullmatch(r"\w+", ref):
            return f"(?P={ref})"
        raise self.fail(f"bad back-reference \\g{{{ref}}}")

    def backref_k(self) -> str:
        m = re.match(r"<(\w+)>|'(\w+)'|\{(\w+)\}", self.p[self.i:])
        if not m:
            raise self.fail("bad \\k reference")
        self.i += len(m.group(0))
        return f"(?P={m.group(1) or m.group(2) or m.group(3)})"

    # -- character classes ---------------------------------------------------
    def char_class(self) -> None:
        p = self.p
        self.i += 1
        parts = ["["]
        if self.i < len(p) and p[self.i] == "^":
            parts.append("^")
            self.i += 1
        if self.i < len(p) and p[self.i] == "]":
            parts.append(r"\]")
            self.i += 1
        previous = ""
        while self.i < len(p) and p[self.i] != "]":
            c = p[self.i]
            if p.startswith("[:", self.i):
                m = re.match(r"\[:(\^?)(\w+):\]", p[self.i:])
                if not m:
                    parts.append(r"\[")
                    self.i += 1
                    previous = c
                    continue
                if m.group(1):
                    raise self.fail(f"negated POSIX class [:^{m.group(2)}:] inside a class")
                if m.group(2) not in _POSIX:
                    raise self.fail(f"unknown POSIX class [:{m.group(2)}:]")
                parts.append(_POSIX[m.group(2)])
                self.i += len(m.group(0))
                previous = "]"
                continue
            if p.startswith(("[=", "[."), self.i):
                raise self.fail("POSIX [= =] and [. .] are not supported")
            if c == "\\":
                parts.append(self.escape(in_class=True))
                previous = "\\"
                continue
            if c in "[&~|":
                parts.append("\\" + c)
            elif c == "-" and previous == "-":
                parts.append(r"\-")
            else:
                parts.append(c)
            previous = c
            self.i += 1
        if self.i >= len(p):
            raise self.fail("unterminated character class")
        self.i += 1
        parts.append("]")
        self.out.append("".join(parts))

    # -- groups -----------------------------------------------------------
    def push(self, text: str) -> None:
        self.out.append(text)
        self.frames.append([0, self.verbose])

    def group(self) -> None:
        p = self.p
        rest = p[self.i:]
        if rest.startswith("(*"):
            raise self.fail("backtracking control verbs (*...) have no Python equivalent")
        if not rest.startswith("(?"):
            self.i += 1
            if self.no_capture:
                self.push("(?:")
            else:
                self.groups += 1
                self.push("(")
            return
        body = rest[2:]
        for start in (":", "=", "!", "<=", "<!", ">"):
            if body.startswith(start):
                self.i += 2 + len(start)
                self.push("(?" + start)
                return
        if body.startswith("#"):
            end = p.find(")", self.i)
            if end < 0:
                raise self.fail("unterminated (?# comment")
            self.out.append(p[self.i:end + 1])
            self.i = end + 1
            return
        m = re.match(r"<(\w+)>|'(\w+)'|P<(\w+)>", body)
        if m:
            self.i += 2 + len(m.group(0))
            self.groups += 1
            self.push(f"(?P<{m.group(1) or m.group(2) or m.group(3)}>")
            return
        m = re.match(r"P=(\w+)\)", body)
        if m:
            self.i += 2 + len(m.group(0))
            self.out.append(f"(?P={m.group(1)})")
            return
        if body.startswith("("):
            m = re.match(r"\((?:(\d+)|<(\w+)>|'(\w+)')\)", body)
            if not m:
                raise self.fail("only (?(N)...) and (?(<name>)...) conditions are supported")
            self.i += 2 + len(m.group(0))
            self.push(f"(?({m.group(1) or m.group(2) or m.group(3)})")
            return
        m = re.match(r"(\^?)([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])", body)
        if m:
            self.flag_group(m)
            return
        if body.startswith(("{", "?{", "??{")):
            raise self.fail("(?{ code }) blocks cannot be translated")
        if body.startswith("|"):
            raise self.fail("branch reset (?|...) has no Python equivalent")
        if re.match(r"[R&+\-\d]|P>", body):
            raise self.fail("recursion (?R), (?N), (?&name) has no Python equivalent")
        raise self.fail("unknown (? construct")

    def flag_group(self, m: re.Match[str]) -> None:
        caret, on, off, end = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        for letter in on + off:
            if letter not in "imsxn":
                raise self.fail(f"inline flag {letter!r} has no Python equivalent")
        if "n" in on + off:
            raise self.fail("inline flag n has no Python equivalent")
        if caret:
            off = "".join(f for f in "imsx" if f not in on)
        on = "".join(dict.fromkeys(on))
        self.i += 2 + len(m.group(0))
        if "x" in on:
            self.verbose = True
        if "x" in off:
            self.verbose = False
        spec = on + (f"-{off}" if off else "")
        if end == ":":
            frame_verbose = self.frames[-1][1]
            self.out.append(f"(?{spec}:" if spec else "(?:")
            self.frames.append([0, frame_verbose])
            return
        # (?i) alone: Python wants global flags at the very start; elsewhere
        # the flags last to the end of the enclosing group, so open a scoped
        # group there and close it when the enclosing group closes.
        if not self.out and not off and on:
            self.out.append(f"(?{on})")
            self.frames[0][1] = self.verbose
            return
        if spec:
            self.out.append(f"(?{spec}:")
            self.frames[-1][0] += 1


def perl_regex(pattern: str, flags: str = "") -> re.Pattern[str]:
    """Compile a Perl regex (as ``re::regexp_pattern`` gives it) with Python ``re``.

    Raises RegexError (a ValueError) for anything without an exact equivalent.
    """
    bits = 0
    for letter in set(flags):
        if letter in _FLAG_BITS:
            bits |= _FLAG_BITS[letter]
        elif letter == "a":
            bits |= re.ASCII
        elif letter in "udpo":
            pass  # u: Unicode rules (below); p and o change nothing here
        elif letter == "l":
            raise RegexError("flag /l (locale rules) has no Python equivalent")
        elif letter != "n":
            raise RegexError(f"unknown regex flag {letter!r}")
    if flags.count("x") > 1:
        raise RegexError("flag /xx has no Python equivalent")
    if "u" not in flags:
        # amavisd matches keys as octets: \w, \d, \s and /i follow ASCII rules there
        bits |= re.ASCII
    translated = _RegexTranslator(pattern, "x" in flags, "n" in flags).run()
    try:
        return re.compile(translated, bits)
    except re.error as exc:
        raise RegexError(f"Python re refuses it: {exc}") from None


# ---------------------------------------------------------------- JSON -> Python
class _Decoder:
    """Turns the shim's JSON into Python values, keeping shared references shared."""

    def __init__(self, dump: dict[str, Any]):
        self.raw = {**dump.get("referenced", {}), **dump.get("variables", {})}
        self.origins: dict[str, str] = dump.get("origins", {})
        self.fallback = ", ".join(dump.get("files", [])) or "perl config"
        self.vars: dict[str, Any] = {}
        self.shared: dict[int, Any] = {}
        self.scalar_refs: list[PerlScalarRef] = []
        self.current = ""

    def var(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        saved, self.current = self.current, name
        raw = self.raw.get(name)
        sigil = name[0]
        if sigil == "@":
            value: Any = []
            self.vars[name] = value
            value.extend(self.value(item) for item in raw or [])
        elif sigil == "%":
            value = {}
            self.vars[name] = value
            value.update((k, self.value(v)) for k, v in (raw or {}).items())
        else:
            value = self.value(raw)
            self.vars[name] = value
        self.current = saved
        return value

    def origin(self) -> str:
        return self.origins.get(self.current, self.fallback)

    def regex(self, node: dict[str, Any]) -> re.Pattern[str]:
        pattern, flags = node["__regex__"], node.get("flags", "")
        try:
            return perl_regex(pattern, flags)
        except RegexError as exc:
            raise ConfigError(self.origin(), self.current.lstrip("$@%"),
                              f"regex qr/{pattern}/{flags} cannot be used: {exc}") from None

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "__regex__" in node:
            return self.regex(node)
        if "__code__" in node:
            return PerlCode(node["__code__"])
        if "__var__" in node:
            name = node["__var__"]
            if name[0] == "$":
                ref = PerlScalarRef(name[1:])
                self.scalar_refs.append(ref)
                return ref
            return self.var(name)
        if "__shared__" in node:
            return self.shared_value(node)
        if "__ref__" in node:
            return self.shared[node["__ref__"]]
        if "__new_re__" in node:
            entries = []
            for pair in node["__new_re__"]:
                key = pair[0]
                pattern = (self.regex(key) if isinstance(key, dict) and "__regex__" in key
                           else self.regex({"__regex__": str(key), "flags": ""}))
                entries.append((pattern, self.value(pair[1]) if len(pair) > 1 else 1))
            return NewRE(tuple(entries))
        if "__scalar_ref__" in node:
            return PerlScalarRef(None, self.value(node["__scalar_ref__"]))
        if "__opaque__" in node:
            return Opaque(self.value(node["__opaque__"]))
        if "__opaque_ref__" in node:
            return OpaqueRef(self.value(node["__opaque_ref__"]))
        if "__lookup__" in node:
            return PerlLookup(node["__lookup__"], tuple(self.value(a) for a in node["args"]))
        if "__object__" in node:
            return PerlObject(node["__object__"], self.value(node["value"]))
        if "__unsupported__" in node:
            raise ConfigError(self.origin(), self.current.lstrip("$@%"),
                              f"a {node['__unsupported__']} reference cannot be imported")
        return {key: self.value(item) for key, item in node.items()}

    def shared_value(self, node: dict[str, Any]) -> Any:
        ident, inner = node["__shared__"], node["value"]
        if isinstance(inner, list):
            out: list[Any] = []
            self.shared[ident] = out
            out.extend(self.value(item) for item in inner)
            return out
        if isinstance(inner, dict) and not any(k.startswith("__") for k in inner):
            mapping: dict[str, Any] = {}
            self.shared[ident] = mapping
            mapping.update((k, self.value(v)) for k, v in inner.items())
            return mapping
        value = self.value(inner)
        self.shared[ident] = value
        return value

    def finish(self) -> None:
        """Give each reference to a named scalar that scalar's final value."""
        for ref in self.scalar_refs:
            ref.value = self.var("$" + ref.name) if ref.name else ref.value


def evaluate_perl_config(paths: list[str],
                         preset: Mapping[str, str] | None = None) -> PerlConfig:
    """Evaluate the Perl files in order and return what they set, as Python values."""
    dump = run_shim([str(p) for p in paths], preset)
    decoder = _Decoder(dump)
    result = PerlConfig(origins=dict(dump.get("origins", {})),
                        undeclared=list(dump.get("undeclared", [])),
                        files=list(dump.get("files", [])),
                        environment=dict(dump.get("environment", {})))
    for name in dump.get("variables", {}):
        result.variables[name] = decoder.var(name)
    for name in dump.get("referenced", {}):
        result.referenced[name] = decoder.var(name)
    for key in dump.get("dkim_keys", []):
        decoder.current = "dkim_key"
        result.dkim_keys.append(DkimKey(
            decoder.value(key["domain"]), key["selector"], decoder.value(key["key"]),
            decoder.value(key.get("options") or {}), key.get("origin") or decoder.fallback))
    decoder.finish()
    return result


# ---------------------------------------------------------------- assigning
def _policy_banks(value: Any, origin: str, config: Config) -> Any:
    """Keep the bank keys we implement; the others are accepted, not implemented.

    amavisd logs and ignores a bank key it does not know (pipeline.md section 16),
    so a key we lack, or one that is global for us, must not stop the load.
    """
    if not isinstance(value, dict):
        return value
    banks: dict[str, Any] = {}
    for bank, content in value.items():
        if not isinstance(content, dict):
            banks[bank] = content
            continue
        kept: dict[str, Any] = {}
        for key, item in content.items():
            name = canonical(key)
            if key in ("ACTION", "REPLACE") or (name is not None
                                                 and REGISTRY[name].scope == BANK):
                kept[key] = item
            else:
                config.accepted_not_implemented[f"policy_bank[{bank}][{key}]"] = origin
        banks[bank] = kept
    return banks


def _declare_dkim_keys(keys: list[DkimKey], config: Config) -> None:
    """Append the ``dkim_key()`` calls to ``dkim_signing_keys_list`` (amavisd.dkim_keys)."""
    from amavisd.dkim_keys import DkimKeyError, declare

    decls = list(config.values.get("dkim_signing_keys_list") or [])
    for key in keys:
        try:
            decls.append(declare(key.domain, key.selector, key.key, key.options, key.origin,
                                 decls))
        except DkimKeyError as exc:
            raise ConfigError(key.origin, "dkim_key", str(exc)) from None
    config.assign("dkim_signing_keys_list", decls, keys[-1].origin)


def assign_perl_config(result: PerlConfig, config: Config) -> None:
    """Assign what ``evaluate_perl_config`` found: known settings, and the rest recorded."""
    by_name: dict[str, list[str]] = {}
    for var in result.variables:
        by_name.setdefault(var[1:], []).append(var[0])
    undeclared = set(result.undeclared)
    for bare in sorted(by_name):
        sigils = by_name[bare]
        key = canonical(bare)
        wanted = REGISTRY[key].sigil if key is not None else None
        for sigil in sigils:
            var = sigil + bare
            origin = result.origins.get(var) or ", ".join(result.files)
            if sigil != wanted:
                label = bare if len(sigils) == 1 else var
                config.accepted_not_implemented[label] = origin
                if var in undeclared:
                    log.warning("%s: %s is not an amavisd setting (misspelled?); ignored",
                                origin, var)
                continue
            value = result.variables[var]
            if key == "policy_bank":
                value = _policy_banks(value, origin, config)
            config.assign(bare, value, origin)
    for name in result.environment:
        config.accepted_not_implemented[f"ENV{{{name}}}"] = ", ".join(result.files)
    if result.dkim_keys:        # key files are read now, as root (pipeline.md 24.3)
        _declare_dkim_keys(result.dkim_keys, config)
    config.files.extend(result.files)


def load_perl_config(paths: list[str], config: Config,
                     preset: Mapping[str, str] | None = None) -> None:
    """Evaluate Perl amavisd.conf files (in order, in one perl) and assign them to ``config``.

    All files run in one interpreter, as in amavisd, so a later file sees what an
    earlier one set (``$MYHOME`` in ``"$MYHOME/tmp"``).  Errors -- a Perl syntax
    error, a missing included file, a value our registry refuses, a regex Python
    cannot take -- are ConfigError with the file and line.  ``preset``: see
    ``run_shim`` (values the command line gives before the files run).
    """
    assign_perl_config(evaluate_perl_config(paths, preset), config)
