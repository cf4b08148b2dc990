#!/usr/bin/env python3
"""Throughput through a real Postfix: the after-queue topology, Perl amavisd vs ours.

Why: bench/compare.py measures the filter alone (client -> amavisd -> sink).  Admins run
it behind Postfix (content_filter, a re-injection smtpd), where Postfix's queue, its
smtp client with ``maxproc = $max_servers`` and its re-injection share the CPU.  This
script drives exactly the after-queue configuration of docs/postfix.md (the snippet of
t/helpers/postfix.py) with Postfix's own load generator, ``smtp-source``, and reports
messages per second end to end (first message submitted -> last message at the sink):

    smtp-source -> Postfix smtpd (queue) -> smtp-amavis -> amavisd -> 127.0.0.1:31025
        (Postfix re-injection smtpd, queue) -> smtp -> bench/sink.py (one file per message)

    python bench/postfix.py                          # as root; anchor = $ANCHOR or ../shared/anchor
    python bench/postfix.py --count 60 --repeat 1    # a quick check
    python bench/postfix.py --skip-perl --sizes 4k

Both daemons forward to 127.0.0.1:31025 (the anchor's Perl config and
bench/conf/amavisd-pass.conf say so), so the private Postfix's re-injection listener is
on 31025; its content_filter points at 31024 (Perl, started by the anchor's amavisd.sh)
or 32024 (ours, as compare.py starts it).  A fresh private Postfix (t/helpers/postfix.py)
is started for each side and for the baseline (Postfix alone, no content_filter), and
stopped afterwards.  Each run first sends a warm-up that is not measured.

The message is bench/loadgen.py's (multipart, text + a PDF-like attachment, ``--size``),
written to a file that ``smtp-source -F`` sends ``--count`` times over ``--sessions``
parallel sessions; every copy carries ``X-Bench-Run: <label>``.  A run is checked at the
sink: every message accepted by Postfix must arrive exactly once (told apart by the
queue id the public smtpd gave it), and Postfix's queue must be empty at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import (
    OURS_PORT,
    PERL_PORT,
    SINK_PORT,
    OurDaemon,
    PerlDaemon,
    find_our_amavisd,
    port_open,
    prepare_anchor,
    uptime,
    wait_banner,
)
from bench.loadgen import cpu_jiffies, make_message, parse_size
from t.helpers.postfix import (
    HOSTNAME,
    QUEUE_ID,
    SMTP_SOURCE,
    Postfix,
    after_queue,
    free_port,
    unavailable,
)

REPO = Path(__file__).resolve().parent.parent
REINJECT_PORT = SINK_PORT           # 31025: where both daemons forward
RUN_RE = re.compile(rb"^X-Bench-Run: (\S+)\r?$", re.M)
#: Postfix's Received fields; the lowest one is the public smtpd's, whose queue id names
#: one accepted message
HOP_RE = re.compile(rb"by " + re.escape(HOSTNAME.encode()) + rb" \(Postfix\) with \w+ id ("
                    + QUEUE_ID.encode() + rb")\r?\n")


def log(msg: str) -> None:
    print("[postfix-bench] " + msg, file=sys.stderr, flush=True)


class BenchSink:
    """bench/sink.py on a free port, one file per message in `directory`."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "sink"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.logf = work / "sink.log"

    def start(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        with open(self.logf, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "sink.py"), "--port", str(self.port),
                 "--dir", str(self.dir)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        if not wait_banner(self.port, 10, self.proc):
            raise SystemExit(f"sink did not start: {self.logf.read_text()[-500:]}")

    def files(self) -> set[Path]:
        return {p for p in self.dir.iterdir() if p.suffix == ".eml"}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def message_file(work: Path, size: int, label: str) -> Path:
    """One loadgen message with LF line ends (smtp-source -F appends CRLF to each line)."""
    data = make_message(size, label, 0, "alice@anchor.test", "bob@anchor.test")
    head, _, body = data.partition(b"\r\n\r\n")
    head += f"\r\nX-Bench-Run: {label}".encode()
    path = work / f"message-{label}.txt"
    path.write_bytes((head + b"\r\n\r\n" + body).replace(b"\r\n", b"\n"))
    return path


def inject(port: int, path: Path, count: int, sessions: int) -> subprocess.CompletedProcess:
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-F", str(path),
            "-f", "alice@anchor.test", "-t", "bob@anchor.test", "-M", "client.anchor.test",
            f"127.0.0.1:{port}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)


def collect(sink: BenchSink, before: set[Path], label: str, count: int,
            wait: float) -> tuple[dict[bytes, int], float, int]:
    """Poll the sink until `count` messages of run `label` arrived or nothing new came for
    `wait` s: their first-hop queue ids (with counts), the last arrival's mtime, and the
    number of other new files (DSNs, notices)."""
    found: dict[bytes, int] = {}
    seen: set[Path] = set()
    last_mtime, other = 0.0, 0
    progress = time.monotonic()
    while sum(found.values()) < count and time.monotonic() - progress < wait:
        new = sink.files() - before - seen
        for path in new:
            seen.add(path)
            data = path.read_bytes()
            head = data.split(b"\r\n\r\n", 1)[0]
            run = RUN_RE.search(head)
            if not run or run.group(1).decode() != label:
                other += 1
                continue
            hops = HOP_RE.findall(head)
            key = hops[-1] if hops else path.name.encode()
            found[key] = found.get(key, 0) + 1
            last_mtime = max(last_mtime, path.stat().st_mtime)
        if new:
            progress = time.monotonic()
        else:
            time.sleep(0.02)
    return found, last_mtime, other


def one_run(postfix: Postfix, sink: BenchSink, work: Path, who: str, size_name: str,
            count: int, sessions: int, wait: float, rep: int) -> dict:
    label = f"{who}-{size_name}-s{sessions}-r{rep}-{os.getpid()}"
    path = message_file(work, parse_size(size_name), label)
    before = sink.files()
    busy0, total0 = cpu_jiffies()
    t0 = time.time()
    run = inject(postfix.smtp_port, path, count, sessions)
    t_inject = time.time() - t0
    found, last, other = collect(sink, before, label, count, wait)
    busy1, total1 = cpu_jiffies()
    queue = postfix.queue().strip()
    unique = len(found)
    elapsed = (last - t0) if last else None
    rec = {"label": label, "who": who, "size": size_name, "bytes": path.stat().st_size,
           "count": count, "sessions": sessions, "inject_s": round(t_inject, 3),
           "end_to_end_s": round(elapsed, 3) if elapsed else None,
           "msgs_per_s": round(unique / elapsed, 2) if elapsed else 0.0,
           "delivered": unique, "lost": count - unique,
           "duplicates": sum(found.values()) - unique, "other_files": other,
           "cpu_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
           "smtp_source_rc": run.returncode,
           "queue_empty": queue == "Mail queue is empty",
           "smtp_source_err": (run.stdout + run.stderr).strip()[-300:]}
    rec["ok"] = (run.returncode == 0 and rec["lost"] == 0 and rec["duplicates"] == 0
                 and rec["queue_empty"])
    if not rec["queue_empty"]:
        rec["queue_tail"] = queue[-600:]
    return rec


def side(who: str, amavis_port: int | None, args: argparse.Namespace, sink: BenchSink,
         work: Path, results: list[dict]) -> None:
    """A fresh Postfix in front of one daemon (or none: the baseline), warm-up, runs."""
    root = work / f"postfix-{who}"
    shutil.rmtree(root, ignore_errors=True)
    snippet = after_queue(amavis_port, REINJECT_PORT, args.max_servers) if amavis_port \
        else None
    postfix = Postfix(root, sink.port, snippet)
    postfix.start()
    try:
        log(f"{who}: Postfix on 127.0.0.1:{postfix.smtp_port}"
            + (f", content_filter -> {amavis_port}" if amavis_port else ", no filter"))
        for size_name in args.sizes:
            warm = one_run(postfix, sink, work, who + "-warmup", size_name,
                           args.warmup, args.sessions, args.wait, 0)
            if not warm["ok"]:
                log(f"{who}: warm-up failed: {json.dumps(warm)}")
            for rep in range(1, args.repeat + 1):
                rec = one_run(postfix, sink, work, who, size_name, args.count,
                              args.sessions, args.wait, rep)
                results.append(rec)
                with open(args.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(f"{who} {size_name} s={args.sessions} #{rep}: {rec['msgs_per_s']} msgs/s "
                    f"({rec['delivered']}/{rec['count']} in {rec['end_to_end_s']} s, "
                    f"injected in {rec['inject_s']} s, cpu {rec['cpu_busy_pct']} %)"
                    + ("" if rec["ok"] else "  [FAILED]"))
    finally:
        postfix.stop()


def table(results: list[dict], args: argparse.Namespace) -> str:
    def med(who: str, size: str, key: str) -> float | None:
        vals = [r[key] for r in results if r["who"] == who and r["size"] == size
                and r[key] is not None]
        return statistics.median(vals) if vals else None

    def f(v: float | None, nd: int = 1) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    rows = ["| size | sessions | Postfix alone msgs/s | Perl msgs/s | ours msgs/s | ratio "
            "ours/Perl | Perl CPU % | ours CPU % | runs (failed) |", "|---" * 9 + "|"]
    for size in args.sizes:
        base, perl, ours = (med(w, size, "msgs_per_s") for w in ("postfix", "perl", "ours"))
        ratio = f"{ours / perl:.2f}" if perl and ours else "-"
        runs = " / ".join(
            f"{w[0].upper()} {n} ({sum(1 for r in rs if not r['ok'])})"
            for w in ("postfix", "perl", "ours")
            if (n := len(rs := [r for r in results if r["who"] == w and r["size"] == size])))
        rows.append(f"| {size} | {args.sessions} | {f(base)} | {f(perl)} | {f(ours)} | "
                    f"{ratio} | {f(med('perl', size, 'cpu_busy_pct'), 0)} | "
                    f"{f(med('ours', size, 'cpu_busy_pct'), 0)} | {runs} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", default=os.environ.get("ANCHOR",
                                                       str(REPO.parent / "shared" / "anchor")))
    ap.add_argument("--sizes", default="4k,100k", help="message sizes, as loadgen's --size")
    ap.add_argument("--count", type=int, default=300, help="messages per run")
    ap.add_argument("--sessions", type=int, default=2, help="smtp-source -s")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10, help="messages before each size")
    ap.add_argument("--max-servers", type=int, default=2,
                    help="amavisd children, and maxproc of Postfix's smtp-amavis")
    ap.add_argument("--wait", type=float, default=60.0,
                    help="give up when nothing arrived at the sink for this long (s)")
    ap.add_argument("--work", default="/tmp/amavisd-bench-postfix")
    ap.add_argument("--json", help="raw results (default WORK/results.jsonl)")
    ap.add_argument("--skip-perl", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="skip Postfix alone")
    args = ap.parse_args(argv)
    args.sizes = args.sizes.split(",")
    why = unavailable()
    if why or not os.access(SMTP_SOURCE, os.X_OK):
        log(why or f"{SMTP_SOURCE} is missing (Debian package postfix)")
        return 2
    busy = [p for p in (PERL_PORT, REINJECT_PORT, OURS_PORT) if port_open(p)]
    if busy:
        log(f"ports already in use: {busy} (stop the anchor's sink/amavisd or other runs)")
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    args.json = Path(args.json or work / "results.jsonl")
    args.json.write_text("")
    log(f"machine: {uptime()}")
    results: list[dict] = []
    sink = BenchSink(work)
    sink.start()
    try:
        if not args.no_baseline:
            side("postfix", None, args, sink, work, results)
        anchor = None if args.skip_perl else prepare_anchor(Path(args.anchor))
        if anchor is not None:
            perl = PerlDaemon(anchor, args.max_servers, "pass")
            try:
                perl.start()
                side("perl", PERL_PORT, args, sink, work, results)
            finally:
                perl.stop()
        cmd = None if args.skip_ours else find_our_amavisd()
        if cmd is not None:
            ours = OurDaemon(cmd, args.max_servers, work, "pass")
            try:
                ours.start()
                side("ours", OURS_PORT, args, sink, work, results)
            finally:
                ours.stop()
        elif not args.skip_ours:
            log("OUR amavisd is not installed (pip install -e . or AMAVISD_CMD): skipped")
    finally:
        sink.stop()
    print(f"<!-- bench/postfix.py {time.strftime('%Y-%m-%d %H:%M')}, {uptime()}, "
          f"after-queue, max_servers {args.max_servers}, {args.count} msgs per run, "
          f"{args.repeat} runs, medians -->")
    print(table(results, args))
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
