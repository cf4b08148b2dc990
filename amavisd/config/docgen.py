"""Writes docs/config.md and conf/amavisd.conf from the settings registry.

``python -m amavisd.config.docgen [ROOT]`` regenerates both; a test fails when
they are out of date, so the registry stays the one place a setting is described.
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path

from amavisd.config.registry import BANK, REGISTRY

CONF_HEADER = '''\
# amavisd.conf - native (Python) configuration of the Python amavisd.
#
# This file is generated from the settings registry (amavisd/config/registry.py)
# by `python -m amavisd.config.docgen`; it lists every setting with its default.
# Copy it, uncomment what you change.  The file is Python: plain assignments,
# with the amavis constants (D_PASS, D_DISCARD, CC_VIRUS, ...) already defined.
# Names are the Perl variable names without their sigil ($max_servers ->
# max_servers).  An unknown name stops the daemon with the file and line.
# Names starting with '_' are yours (helpers), the daemon ignores them.
'''


def _value(value) -> str:
    return pprint.pformat(value, width=88, compact=True)


def render_conf() -> str:
    lines = [CONF_HEADER]
    section = None
    for name, entry in REGISTRY.items():
        if entry.section != section:
            section = entry.section
            lines.append(f"\n# {'-' * 20} {section}\n")
        scope = " (policy bank)" if entry.scope == BANK else ""
        lines.append(f"# {entry.doc}{scope}")
        if entry.derive is not None and entry.default is None:
            lines.append(f"# {name} = ...   (derived, see docs/config.md)")
        else:
            text = f"{name} = {_value(entry.default)}"
            lines.append("\n".join(f"# {line}" for line in text.splitlines()))
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    out = [
        "# Settings",
        "",
        "Generated from `amavisd/config/registry.py` by `python -m amavisd.config.docgen`;",
        "do not edit by hand.  *Scope* `bank` means the setting may also be set inside a",
        "policy bank (`policy_bank = {'NAME': {...}}`) and is looked up through the bank in",
        "force; `global` settings are read once at startup.  Perl names carry the sigil shown.",
        "",
    ]
    section = None
    for name, entry in REGISTRY.items():
        if entry.section != section:
            section = entry.section
            out += [f"## {section}", "", "| setting | default | scope | meaning |",
                    "|---|---|---|---|"]
        default = "derived" if entry.derive is not None and entry.default is None \
            else f"`{_value(entry.default)}`"
        aliases = f" (alias {', '.join(entry.aliases)})" if entry.aliases else ""
        doc = entry.doc.replace("|", "\\|")
        default = default.replace("|", "\\|")
        out.append(f"| `{entry.sigil}{name}`{aliases} | {default} | {entry.scope} | {doc} |")
        nxt = list(REGISTRY.values())
        idx = nxt.index(entry)
        if idx + 1 == len(nxt) or nxt[idx + 1].section != section:
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["."])[0])
    (root / "docs").mkdir(exist_ok=True)
    (root / "conf").mkdir(exist_ok=True)
    (root / "docs" / "config.md").write_text(render_markdown())
    (root / "conf" / "amavisd.conf").write_text(render_conf())
    return 0


if __name__ == "__main__":
    sys.exit(main())
