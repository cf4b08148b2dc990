# tests: t/templates/test_debian_templates.py
"""An expanded notification template as header fields and a body (pipeline.md 19.1).

A template's first lines, up to the first empty line, are the notice's header
fields; the rest is the text part.  This is the split amavis's
``build_mime_entity`` makes before it encodes and folds the fields (RFC 2047,
``$hdr_encoding``) and encodes the body (``$bdy_encoding``), which is the
notification sender's job, not the template engine's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from amavisd.templates.mailfmt import mime_decode_header

_FIELD = re.compile(r"([^:]*?)[ \t]*:[ \t]*(.*)", re.DOTALL)


@dataclass
class Notice:
    """Header fields (name, unfolded decoded value) in template order, and the body."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""

    def get(self, name: str) -> str | None:
        """The last value of field ``name`` (any case): a later line replaces an earlier."""
        found = None
        for key, value in self.fields:
            if key.lower() == name.lower():
                found = value
        return found


def split_notice(text: str) -> Notice:
    """Split an expanded template: header lines up to the first empty line, then the body.

    A text starting with an empty line has no header; one without an empty line is
    all header.  Folded template lines are unfolded, RFC 2047 words decoded; a
    line that is not ``name: value`` is dropped, as amavis drops it.
    """
    if text == "":
        return Notice()
    if text.startswith("\n"):
        return Notice(body=text[1:])
    end = text.find("\n\n")
    head, body = (text, "") if end < 0 else (text[:end + 1], text[end + 2:])
    head = re.sub(r"\r?\n(?=[ \t])", "", head)
    fields = []
    for line in re.split(r"\r?\n", head):
        m = _FIELD.fullmatch(line)
        if m:
            fields.append((m.group(1), mime_decode_header(m.group(2)) or ""))
    return Notice(fields, body)
