"""Exceptions that carry what we will say: a reply, a config origin, a boot fault.

Only ``protocols.smtp_server.reply_for`` (and its AM.PDP twin) turn an exception
into wire text; everything else raises one of these or lets a bug propagate,
which then becomes a 451 tempfail (spec/protocols.md section 6).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code, enhanced status code and text (without the codes)."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"

    @property
    def is_ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_tempfail(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permfail(self) -> bool:
        return self.code >= 500

    @classmethod
    def parse(cls, line: str) -> Reply:
        """Split ``'250 2.0.0 Ok'`` into its parts; the enhanced code is optional."""
        code = int(line[:3])
        rest = line[4:] if len(line) > 3 else ""
        parts = rest.split(" ", 1)
        if parts and _looks_enhanced(parts[0]):
            return cls(code, parts[0], parts[1] if len(parts) > 1 else "")
        return cls(code, "", rest)


def _looks_enhanced(word: str) -> bool:
    bits = word.split(".")
    return len(bits) == 3 and all(b.isdigit() for b in bits) and word[0] in "245"


class AmavisError(Exception):
    """Base of our own exceptions."""


class Refusal(AmavisError):
    """Raised on purpose to answer with ``reply``; never logged as trouble."""

    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


class TempFail(AmavisError):
    """Our own infrastructure failed (disk, scanner, SQL): the MTA must retry."""

    def __init__(self, section: str, reason: str):
        super().__init__(f"{section} FAILED: {reason}")
        self.section = section
        self.reason = reason


class ConfigError(AmavisError):
    """A config file is wrong.  ``origin`` is ``file:line``; the daemon will not start."""

    def __init__(self, origin: str, name: str, why: str):
        super().__init__(f"{origin}: {name}: {why}" if name else f"{origin}: {why}")
        self.origin = origin
        self.name = name
        self.why = why


class BootError(AmavisError):
    """The daemon cannot start (sockets, privileges, directories, already running)."""


class UsageError(AmavisError):
    """The command line is wrong."""
