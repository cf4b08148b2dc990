"""Starting the daemon: the cold/warm start sequence of spec/protocols.md section 1.6.

Runs in the process that becomes the master.  Order: refuse a second instance,
set up logging, bind every socket while still root (so `amavisd start` can say
'cannot bind' and exit 1), go to the background, write the pid file, create the
stats segment, chown what the daemon user must write, drop privileges, check the
temp folder, then hand over to ``Master.serve``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys

from amavisd import log as amavis_log
from amavisd import privileges, sockets
from amavisd.constants import EXIT_FAILURE, PY_VERSION, VERSION
from amavisd.errors import BootError

log = logging.getLogger(__name__)

ENV_WARM = "AMAVISD_WARM_RESTART"


def program_name() -> str:
    """``$0`` as invoked, path included, as the Perl daemon shows it (section 1.8)."""
    name = os.environ.get("AMAVISD_PROGRAM_NAME") or sys.argv[0]
    if name.endswith("__main__.py"):
        name = "amavisd"
    return name


def run(config, opts, mode: str) -> int:
    """Start the daemon in ``mode`` (start, foreground, debug, demo); returns the exit code."""
    from amavisd.cli import running_pid

    warm = os.environ.get(ENV_WARM) == str(os.getpid())
    program = config.myprogram_name or program_name()
    if not warm:
        pid = running_pid(config)
        if pid is not None:
            print(f"The amavisd daemon is already running, PID: [{pid}]")
            return EXIT_FAILURE
    identity = privileges.resolve(config.daemon_user, config.daemon_group,
                                  config.daemon_groups)
    if mode == "demo":
        from amavisd.config.demo import DEMO_BANNER, demo_home, prepare_demo_dirs

        prepare_demo_dirs(identity.uid if identity else None, identity.gid if identity else None)
        first = sockets.listen_specs(config)[0]
        where = first.path if first.kind == "unix" else f"{first.host}:{first.port}"
        print(DEMO_BANNER.format(home=demo_home(), where=where, host=first.host,
                                 port=first.port), flush=True)
    _ensure_dirs(config, identity)
    handler = amavis_log.setup_logging(config, program, debug=bool(config.DEBUG))
    _chown_log(config, identity)

    specs = sockets.listen_specs(config)
    if warm:
        sockets.adopt_from_env(specs, os.environ.pop(sockets.ENV_BOUND, ""))
    else:
        log.info("will bind to %s", ", ".join(s.label for s in specs))
        sockets.bind_all(specs, config.listen_queue_size, config.unix_socket_mode)
        if identity is not None:
            for spec in specs:
                if spec.kind == "unix":
                    os.chown(spec.path, identity.uid, identity.gid)

    daemonize = bool(config.daemonize) and mode == "start" and not config.DEBUG and not warm
    if daemonize:
        _daemonize()
        amavis_log.after_fork()
    pid_file = config.pid_file if (daemonize or "pid_file" in _explicit(config)
                                   or warm) else None
    # a signal sent as soon as the pid file exists (e.g. `amavisd reload`) waits until
    # the master's handlers are in place instead of killing it with the default action
    from amavisd.master import HANDLED_SIGNALS

    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    if pid_file and not warm:
        _write_pid_file(pid_file, identity)

    from amavisd.stats import StatsSegment

    stats_path = stats_segment_path(config)
    nslots = stats_slot_count(config)
    segment = StatsSegment.open_or_create(stats_path, nslots, os.getpid())
    if identity is not None and os.geteuid() == 0:
        os.chown(stats_path, identity.uid, identity.gid)

    # everything the master and its children import is loaded while still root: the
    # daemon user may not be able to read the Python installation (and forks are faster)
    from amavisd.master import Master, preimport

    preimport(config)
    try:
        privileges.drop(identity, config.daemon_chroot_dir)
        privileges.check_not_writable(config.files)
        _check_tempbase(config.TEMPBASE)
    except BootError as exc:
        log.error("%s", exc)
        print(str(exc))
        return EXIT_FAILURE

    kind = "dynamic" if config.min_servers is not None else "fixed"
    amavis_log.do_log(0, "starting. %s at %s %s (python amavisd %s)%s", program,
                      config.myhostname, VERSION, PY_VERSION, " (warm)" if warm else "")
    amavis_log.do_log(2, "logging initialized, log level %s, %s", config.log_level,
                      _log_target(config))
    log.info("Amavis (%s pool of %d) starting!", kind, config.max_servers)
    if config.accepted_not_implemented:
        amavis_log.do_log(0, "config: accepted, not implemented (no effect yet): %s",
                          ", ".join(sorted(config.accepted_not_implemented)))

    gc.collect()
    gc.freeze()
    master = Master(config, specs, segment, program, opts, pid_file, handler)
    return master.serve()


def _explicit(config) -> set[str]:
    return {name for name, origin in config.origins.items()
            if origin not in ("default", "derived")}


def stats_segment_path(config) -> str:
    """The stats segment lives in ``$db_home`` (read there by amavisd-nanny/-agent)."""
    folder = config.db_home if config.enable_db else config.TEMPBASE
    return os.path.join(folder, "amavisd-stats.mmap")


def stats_slot_count(config) -> int:
    """Room for a full pool plus the old children still finishing after a HUP."""
    return max(config.max_servers, 1) * 2 + 2


def _ensure_dirs(config, identity) -> None:
    """Create ``$db_home`` (the stats segment) and ``$QUARANTINEDIR`` when missing.

    A missing quarantine folder would otherwise be taken for an mbox file by the
    ``local:`` method; TEMPBASE must already exist (checked after the drop).
    """
    wanted = [("db_home", config.db_home if config.enable_db else None),
              ("QUARANTINEDIR", config.QUARANTINEDIR)]
    for name, folder in wanted:
        if not folder or os.path.exists(folder):
            continue
        try:
            os.makedirs(folder, mode=0o750)
        except OSError as exc:
            raise BootError(f"cannot create {name} {folder}: {exc.strerror}") from None
        if identity is not None and os.geteuid() == 0:
            os.chown(folder, identity.uid, identity.gid)


def _chown_log(config, identity) -> None:
    if config.LOGFILE and identity is not None and os.geteuid() == 0 and not config.DO_SYSLOG:
        try:
            os.chown(config.LOGFILE, identity.uid, identity.gid)
        except OSError:
            pass


def _log_target(config) -> str:
    if config.DEBUG:
        return "STDERR"
    if config.DO_SYSLOG:
        return f"syslog: {config.syslog_ident}.{config.syslog_facility}"
    if config.LOGFILE:
        return f"logfile: {config.LOGFILE}"
    return "STDERR"


def _check_tempbase(path: str) -> None:
    if not os.path.isdir(path):
        raise BootError(f"Temporary directory {path} does not exist or is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise BootError(f"Temporary directory {path} is not writable by the daemon user")


def _daemonize() -> None:
    """Double fork and setsid; stdin/stdout/stderr go to /dev/null (section 1.6 step 14)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _write_pid_file(path: str, identity) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees it empty."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        if identity is not None and os.geteuid() == 0:
            os.chown(tmp, identity.uid, identity.gid)
        os.replace(tmp, path)
    except OSError as exc:
        raise BootError(f"cannot write pid file {path}: {exc.strerror}") from None
