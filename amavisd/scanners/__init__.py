"""Clients of external scanner daemons (clamd, spamd, rspamd).

Each module talks one daemon's protocol and returns what the daemon said; the
checks in ``amavisd.checks`` interpret the answers (docs: STYLE.md, "scanner
clients are passed in").  Nothing here is imported by the master: connections are
opened in the child, after the fork (DESIGN.md, fork safety).
"""
