"""Listening sockets: the list amavis builds from its settings, bound by the master.

spec/protocols.md section 2.1.  ``$inet_socket_port`` and ``$unix_socketname`` are
appended to ``@listen_sockets``; a port-only entry is bound on every
``$inet_socket_bind`` address.  On HUP the master re-execs itself and hands the
bound sockets over in ``AMAVISD_BOUND_SOCKETS`` (``fd|host|port|kind;...``), so
the new image listens on the very same sockets.

Unix socket files: ``$unix_socket_mode`` is applied at bind time and kept when the
children adopt the socket (Twisted would otherwise chmod it to 0666 in every
child); a stale socket left by a killed daemon is replaced, but a live socket or
any other kind of file at that path stops the start with a clear error, and the
master removes the file at exit only if it is still the one it bound.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass, field

from amavisd.errors import BootError, ConfigError
from amavisd.log import do_log

log = logging.getLogger(__name__)

ENV_BOUND = "AMAVISD_BOUND_SOCKETS"
STALE_PROBE_TIMEOUT = 2.0


@dataclass
class ListenSpec:
    """One socket to listen on: TCP (host, port) or a Unix path."""

    kind: str                 # 'inet' or 'unix'
    host: str = ""            # bare address, no brackets; '' or '*' means any
    port: int = 0
    path: str = ""
    sock: socket.socket | None = field(default=None, repr=False, compare=False)
    #: Unix only: the file's mode and (st_dev, st_ino) once bound or adopted.
    mode: int | None = field(default=None, repr=False, compare=False)
    inode: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def family(self) -> int:
        if self.kind == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def label(self) -> str:
        """As amavis logs it: ``127.0.0.1:10024/tcp``, ``[::1]:10024/tcp``, ``/p|unix``."""
        if self.kind == "unix":
            return f"{self.path}|unix"
        host = f"[{self.host}]" if ":" in self.host else (self.host or "*")
        return f"{host}:{self.port}/tcp"


def _strip_brackets(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _split_host_port(text: str, origin: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(origin, "listen_sockets", f"bad port in {text!r}")
    return host, int(port)


def parse_entry(entry: str, binds: list[str], origin: str = "listen_sockets") -> list[ListenSpec]:
    """Expand one ``@listen_sockets`` entry into sockets to bind (section 2.1 syntax)."""
    entry = str(entry).strip()
    if entry.startswith("unix:"):
        return [ListenSpec("unix", path=entry[5:])]
    if entry.startswith("/"):
        return [ListenSpec("unix", path=entry.split("|", 1)[0])]
    if entry.startswith(("inet:", "inet6:")):
        host, port = _split_host_port(entry.split(":", 1)[1], origin)
        return [ListenSpec("inet", host=_strip_brackets(host), port=port)]
    bare = entry.split("/", 1)[0]
    if bare.isdigit():
        port = int(bare)
        if not 0 < port < 65536:
            raise ConfigError(origin, "listen_sockets", f"bad port {entry!r}")
        hosts = binds or [""]
        return [ListenSpec("inet", host=_strip_brackets(h or ""), port=port) for h in hosts]
    host, port = _split_host_port(bare, origin)
    return [ListenSpec("inet", host=_strip_brackets(host), port=port)]


def listen_specs(settings, override: list[str] | None = None) -> list[ListenSpec]:
    """The sockets to bind: ``-p`` entries replace the whole list (section 1.7)."""
    binds = [b or "" for b in (settings.inet_socket_bind or [])]
    if override is not None:
        entries = list(override)
    else:
        entries = list(settings.listen_sockets or [])
        entries += [str(p) for p in settings.inet_socket_port or []]
        if settings.unix_socketname:
            entries.append(f"unix:{settings.unix_socketname}")
    specs: list[ListenSpec] = []
    for entry in entries:
        if entry == "":
            continue
        for spec in parse_entry(entry, binds):
            if spec.kind == "inet" and spec.family == socket.AF_INET6 and not socket.has_ipv6:
                log.warning("no IPv6 on this host, not binding %s", spec.label)
                continue
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise BootError("No listen sockets or ports specified")
    return specs


def bind_all(specs: list[ListenSpec], backlog: int | None, unix_mode: int | None) -> None:
    """Bind every socket (still root, so ports below 1024 work) and start listening."""
    backlog = backlog or socket.SOMAXCONN
    for spec in specs:
        try:
            spec.sock = _bind_one(spec, backlog, unix_mode)
        except OSError as exc:
            message = f"cannot bind {spec.label}: {exc.strerror or exc}"
            log.error("%s", message)
            raise BootError(message) from None
        except BootError as exc:
            log.error("%s", exc)
            raise


def _bind_one(spec: ListenSpec, backlog: int, unix_mode: int | None) -> socket.socket:
    if spec.kind == "unix":
        _remove_stale_unix_socket(spec.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(spec.path)
        if unix_mode is not None:
            os.chmod(spec.path, unix_mode)
        _note_unix_file(spec)
    else:
        sock = socket.socket(spec.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        host = "" if spec.host in ("", "*") else spec.host
        sock.bind((host, spec.port))
    sock.listen(backlog)
    sock.setblocking(False)  # Twisted needs it; O_NONBLOCK is shared by all children
    return sock


def _note_unix_file(spec: ListenSpec) -> None:
    st = os.stat(spec.path)
    spec.mode, spec.inode = stat.S_IMODE(st.st_mode), (st.st_dev, st.st_ino)


def _remove_stale_unix_socket(path: str) -> None:
    """A socket file nobody listens on (a killed daemon's) is removed; nothing else is.

    A live socket means another daemon: taking its path over would cut it off.  A
    regular file, a symlink or a folder is a configuration mistake, and deleting
    it could destroy data: both stop the start with a clear error.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(before.st_mode):
        raise BootError(f"cannot bind {path}|unix: {path} exists and is not a socket "
                        "(not removing it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(STALE_PROBE_TIMEOUT)   # a live daemon with a full backlog blocks
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass                                 # nobody listens: stale (or already gone)
    except OSError as exc:
        raise BootError(f"cannot bind {path}|unix: cannot tell whether {path} is in use "
                        f"({exc.strerror or exc})") from None
    else:
        raise BootError(f"cannot bind {path}|unix: {path} is in use by a running process")
    finally:
        probe.close()
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISSOCK(
            now.st_mode):
        raise BootError(f"cannot bind {path}|unix: {path} changed while checking it")
    do_log(1, "removing stale socket %s (nobody listens on it)", path)
    os.unlink(path)


def remove_unix_file(spec: ListenSpec) -> None:
    """At exit: unlink the socket file only if it is still the one this daemon bound.

    Best effort: the file is known by (st_dev, st_ino), and an inode number can be
    reused once our file was deleted by someone else.
    """
    if spec.kind != "unix":
        return
    try:
        st = os.lstat(spec.path)
    except OSError:
        return
    if spec.inode is not None and (st.st_dev, st.st_ino) != spec.inode:
        log.warning("not removing %s: it is no longer our socket", spec.path)
        return
    try:
        os.unlink(spec.path)
    except OSError as exc:
        log.info("could not remove %s: %s", spec.path, exc.strerror or exc)


def adopt_port(reactor, spec: ListenSpec, factory):
    """The child's listening port on the master's socket, as ``adoptStreamPort`` makes it.

    For a Unix socket Twisted chmods the path to ``Port.mode`` (0666 by default) when
    the port starts listening, which would undo ``$unix_socket_mode`` in every child
    and open the socket to every local user; the port gets the bound mode instead.
    """
    assert spec.sock is not None
    if spec.kind != "unix":
        return reactor.adoptStreamPort(spec.sock.fileno(), spec.family, factory)
    from twisted.internet import unix

    port = unix.Port._fromListeningDescriptor(reactor, spec.sock.fileno(), factory)
    port.mode = spec.mode if spec.mode is not None else stat.S_IMODE(os.stat(spec.path).st_mode)
    port.startListening()
    return port


def export_for_exec(specs: list[ListenSpec]) -> str:
    """Make the fds inheritable across exec and describe them for the new image."""
    items = []
    for spec in specs:
        assert spec.sock is not None
        os.set_inheritable(spec.sock.fileno(), True)
        where = spec.path if spec.kind == "unix" else f"{spec.host}|{spec.port}"
        items.append(f"{spec.sock.fileno()}|{spec.kind}|{where}")
    return ";".join(items)


def adopt_from_env(specs: list[ListenSpec], value: str) -> None:
    """After a HUP re-exec: attach the inherited fds to the specs of the same address."""
    inherited: dict[tuple, int] = {}
    for item in value.split(";"):
        parts = item.split("|")
        if len(parts) < 3:
            continue
        fd, kind = int(parts[0]), parts[1]
        key = ("unix", parts[2]) if kind == "unix" else ("inet", parts[2], int(parts[3]))
        inherited[key] = fd
    for spec in specs:
        key = ("unix", spec.path) if spec.kind == "unix" else ("inet", spec.host, spec.port)
        fd = inherited.pop(key, None)
        if fd is None:
            raise BootError(f"reload cannot add a new socket {spec.label}; use restart")
        spec.sock = socket.socket(fileno=fd)
        spec.sock.setblocking(False)
        os.set_inheritable(fd, False)
        if spec.kind == "unix":
            _note_unix_file(spec)
        log.info("Reassociating file descriptor %d with %s", fd, spec.label)
    for fd in inherited.values():
        os.close(fd)
