"""``amavisd showconfig``: every effective setting with where it came from."""

from __future__ import annotations

import pprint

from amavisd.config.model import Config
from amavisd.config.registry import REGISTRY


def show_config(config: Config) -> str:
    """One line per setting: ``$name = value;  # origin``, in registry order."""
    lines = []
    section = None
    for name, entry in REGISTRY.items():
        if entry.section != section:
            section = entry.section
            lines.append(f"\n# --- {section}")
        value = pprint.pformat(config.values[name], width=120, compact=True)
        lines.append(f"{entry.sigil}{name} = {value};  # {config.origins.get(name, '?')}")
    if config.accepted_not_implemented:
        lines.append("\n# --- accepted, not implemented (no effect yet)")
        for name, origin in sorted(config.accepted_not_implemented.items()):
            lines.append(f"# {name}  # {origin}")
    return "\n".join(lines).lstrip("\n") + "\n"
