"""Dropping root: resolve ``$daemon_user``/``$daemon_group``, chroot, setgid/setuid.

spec/protocols.md section 1.6 steps 6, 14, 15: the daemon must not keep running
as root; it refuses to run with EUID 0 after the drop, and refuses a config file
its own user could write.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from amavisd.errors import BootError


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str


def resolve(user: str | None, group: str | None, groups: list[str] | None) -> Identity | None:
    """The identity to drop to, or None when no user is configured."""
    if not user:
        return None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise BootError(f"No such username: {user}") from None
    gids: list[int] = []
    for name in ([group] if group else []) + list(groups or []):
        gids.append(_group_id(name))
    if not gids:
        gids = [entry.pw_gid] + [g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    unique = tuple(dict.fromkeys(gids))
    return Identity(entry.pw_uid, unique[0], unique, entry.pw_name)


def _group_id(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise BootError(f"No such group: {name}") from None


def drop(identity: Identity | None, chroot_dir: str | None) -> None:
    """Chroot (optional) and become ``identity``; abort if still root afterwards."""
    if os.geteuid() != 0:
        return
    if chroot_dir:
        os.chroot(chroot_dir)
        os.chdir("/")
    if identity is None:
        raise BootError("Running as EUID 0 (root) without $daemon_user, ABORTING!")
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise BootError("Running as EUID 0 (root), ABORTING!")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise BootError("Can switch back to root, ABORTING!")


def check_not_writable(paths: list[str]) -> None:
    """After the drop: config files writable by the daemon user are a security problem."""
    for path in paths:
        if os.access(path, os.W_OK):
            raise BootError(f"SECURITY PROBLEM, ABORTING! config file {path} is writable "
                            "by the daemon user")
