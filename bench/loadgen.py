#!/usr/bin/env python3
"""SMTP load generator for amavisd (ours or the Perl one) and for plain sinks.

Why it exists: we compare our daemon with the Perl amavisd under identical load, so the
generator must work against any SMTP server, cost little CPU itself, and check that every
message really came out at the far side (a fast filter that loses mail is worthless).

    python bench/loadgen.py 127.0.0.1:32024 --size 4k --count 300 --concurrency 2 \
        --sink-dir /tmp/amavisd-bench-sink --json out.jsonl --label ours-4k-c2

* All messages are generated before the clock starts: multipart/mixed with a text part and
  a base64 PDF-like attachment, unique body and ``X-Bench-Id: <run>-<seq>`` each.
* C threads; each takes the next message and runs one SMTP session (connect, banner, EHLO,
  MAIL, RCPT, DATA, QUIT), or K messages per session with --per-conn K.
* latency = connect() start -> reply to the end of DATA; msgs/s = measured messages /
  (last reply - first connect); the --warmup messages go first and are not measured.
* CPU busy % of the whole machine (all cores, 100 % = every core busy) from /proc/stat.
* Verification: waits until every X-Bench-Id (warm-up included) is found in a new file of
  --sink-dir; reports lost and duplicated ones.  Exit status 1 on any error reply, lost or
  duplicated message.
* --mem-pid PID: samples VmRSS/VmHWM of PID and its children every 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import re
import resource
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate

DEFAULT_SINK_DIR = "/tmp/amavisd-bench-sink"

TEXT = """Hello Bob,

attached is the draft of the quarterly report we talked about at the
meeting with the regional teams.  The summary on page two still needs a
final check by finance before it can go out to the board.

Open points:
 - the travel budget is an estimate until Carol confirms it on Thursday,
 - the headcount table now includes the two contractors who started in
   September,
 - the risk section was rewritten after your comments.

Could you have a look before Friday?  Call me if anything is unclear; I am
in the office all week except Wednesday afternoon.

Best regards,
Alice

--
Alice Example | Finance & Controlling | Anchor Test Ltd.
Phone +1 555 0100 | https://www.anchor.test/
"""


# ----------------------------------------------------------------------------- messages
def parse_size(text: str) -> int:
    """'4k' -> 4096, '10m' -> 10485760, '5000' -> 5000 (binary units, like the anchor)."""
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    num = t[:-1] if mult != 1 else t
    value = int(float(num) * mult)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _pdf_like(nbytes: int, rng: random.Random) -> bytes:
    """Bytes that file(1) calls a PDF, with an incompressible (random) content stream.

    Random content keeps filters from getting an unrealistic boost from compression or
    deduplication, and the PDF magic makes type detection take its usual path."""
    head = (b"%PDF-1.5\n%\xc7\xec\x8f\xa2\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
            b"3 0 obj\n<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>\nendobj\n")
    tail = b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    n = max(32, nbytes - len(head) - len(tail) - 56)
    mid = b"4 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % n
    return head + mid + rng.randbytes(n) + tail


def make_message(size: int, run_id: str, seq: int, mail_from: str, rcpt: str) -> bytes:
    """A realistic message of about `size` bytes with CRLF line ends, not dot-stuffed."""
    rng = random.Random(f"{run_id}/{seq}")
    date = formatdate(localtime=False, usegmt=True)
    bnd = f"=_bench_{run_id}_{seq:06d}_{rng.getrandbits(32):08x}"
    headers = [
        "Received: from [10.20.30.40] (pc-alice.office.anchor.test [10.20.30.40])",
        f"\tby submit.anchor.test (Postfix) with ESMTPSA id 4Q{seq & 0xFFFFFFFF:08X}",
        f"\tfor <{rcpt}>; {date}",
        f"Message-ID: <{run_id}.{seq}@bench.anchor.test>",
        "Date: " + date,
        f"From: Alice Example <{mail_from}>",
        f"To: Bob Example <{rcpt}>",
        f"Subject: Quarterly report draft ({run_id} #{seq})",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101",
        " Thunderbird/115.5.0",
        "Content-Language: en-US",
        f"X-Bench-Id: {run_id}-{seq}",
        f'Content-Type: multipart/mixed; boundary="{bnd}"',
    ]
    text = TEXT + f"\n(ref {run_id}/{seq}, {rng.getrandbits(32):08x})\n"
    pre = "\r\n".join(headers) + "\r\n\r\nThis is a multi-part message in MIME format.\r\n"
    part1 = (f"--{bnd}\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n"
             "Content-Transfer-Encoding: 7bit\r\n\r\n") + text.replace("\n", "\r\n")
    name = f"report-{run_id}-{seq}.pdf"
    part2 = (f'--{bnd}\r\nContent-Type: application/pdf; name="{name}"\r\n'
             f'Content-Disposition: attachment; filename="{name}"\r\n'
             "Content-Transfer-Encoding: base64\r\n\r\n")
    end = f"\r\n--{bnd}--\r\n"
    fixed = len(pre) + len(part1) + len(part2) + len(end)
    raw_len = max(128, (size - fixed) * 57 // 78)  # base64: 76 chars + CRLF per 57 bytes
    b64 = base64.encodebytes(_pdf_like(raw_len, rng)).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return (pre + part1 + part2).encode() + b64 + end.encode()


def dot_stuff(data: bytes) -> bytes:
    """Prepare message bytes for DATA: stuff leading dots, ensure final CRLF, add '.'."""
    out = data.replace(b"\r\n.", b"\r\n..")
    if out[:1] == b".":
        out = b"." + out
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out + b".\r\n"


# --------------------------------------------------------------------------- SMTP client
class SMTPFailure(Exception):
    """A reply we did not expect; carries the reply text for the error summary."""


class Client:
    """Minimal blocking SMTP client on a raw socket (no smtplib: fewer layers, exact
    control over what is timed, and TCP_NODELAY so Nagle does not add ~40 ms stalls)."""

    def __init__(self, host: str, port: int, timeout: float, helo: str) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        self.helo = helo

    def reply(self) -> tuple[int, str]:
        last = b""
        while True:
            line = self.rfile.readline(8192)
            if not line:
                raise SMTPFailure("connection closed by server")
            last = line
            if len(line) < 4 or line[3:4] != b"-":
                break
        text = last.decode("utf-8", "replace").rstrip("\r\n")
        try:
            return int(text[:3]), text
        except ValueError:
            raise SMTPFailure(f"garbled reply: {text!r}") from None

    def command(self, line: str, expect: int) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        code, text = self.reply()
        if code // 100 != expect // 100:
            raise SMTPFailure("{} -> {}".format(line.split(" ", 1)[0], text))
        return text

    def transaction(self, mail_from: str, rcpt: str, payload: bytes) -> str:
        """MAIL, RCPT, DATA with `payload` already dot-stuffed; returns the final reply."""
        self.command(f"MAIL FROM:<{mail_from}>", 250)
        self.command(f"RCPT TO:<{rcpt}>", 250)
        self.command("DATA", 354)
        self.sock.sendall(payload)
        code, text = self.reply()
        if code // 100 != 2:
            raise SMTPFailure(f"end of DATA -> {text}")
        return text

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


@dataclass
class Record:
    """Outcome of one message: timing from connect (or MAIL when reusing a session)."""

    bench_id: str
    t0: float
    t1: float
    ok: bool
    text: str


@dataclass
class Job:
    """Messages to send; workers take the next one under a lock."""

    items: list[tuple[str, bytes]]
    pos: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[Record] = field(default_factory=list)

    def take(self) -> tuple[str, bytes] | None:
        with self.lock:
            if self.pos >= len(self.items):
                return None
            item = self.items[self.pos]
            self.pos += 1
            return item

    def add(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)


def worker(job: Job, args: argparse.Namespace, host: str, port: int) -> None:
    while True:
        item = job.take()
        if item is None:
            return
        t0 = time.monotonic()
        client: Client | None = None
        try:
            client = Client(host, port, args.timeout, args.helo)
            code, text = client.reply()
            if code != 220:
                raise SMTPFailure(f"banner: {text}")
            client.command("EHLO " + args.helo, 250)
            for k in range(args.per_conn):
                if k:
                    item = job.take()
                    if item is None:
                        break
                    t0 = time.monotonic()
                text = client.transaction(args.mail_from, args.rcpt, item[1])
                job.add(Record(item[0], t0, time.monotonic(), True, text))
                item = None
            client.command("QUIT", 221)
        except (OSError, SMTPFailure) as e:
            # a failure after the last accepted message (e.g. at QUIT) loses nothing
            if item is not None:
                job.add(Record(item[0], t0, time.monotonic(), False, str(e)))
        finally:
            if client is not None:
                client.close()


def run_batch(items: list[tuple[str, bytes]], args: argparse.Namespace,
              host: str, port: int) -> list[Record]:
    job = Job(items)
    threads = [threading.Thread(target=worker, args=(job, args, host, port), daemon=True)
               for _ in range(min(args.concurrency, max(1, len(items))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return job.records


# ------------------------------------------------------------------------------- /proc
def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; idle includes iowait."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])  # guest times are already part of user/nice
    return total - idle, total


def proc_status(pid: int) -> dict[str, int] | None:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(val.split()[0])
    except (OSError, ValueError):
        return None
    return out


def child_pids(ppid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                pids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class MemSampler(threading.Thread):
    """Keeps the largest VmHWM/VmRSS seen per process of the daemon's tree (kB)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak: dict[int, int] = {}
        self.parent_rss: int | None = None
        self.samples = 0

    def sample(self) -> None:
        for p in [self.pid] + child_pids(self.pid):
            st = proc_status(p)
            if st:
                self.peak[p] = max(self.peak.get(p, 0), st.get("VmHWM", 0), st.get("VmRSS", 0))
                if p == self.pid:
                    self.parent_rss = st.get("VmRSS")
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def finish(self) -> dict[str, object]:
        self.stop_event.set()
        self.join()
        self.sample()
        kids = [v for p, v in self.peak.items() if p != self.pid]
        return {"parent_rss_kB": self.parent_rss, "parent_peak_kB": self.peak.get(self.pid),
                "max_child_peak_kB": max(kids) if kids else None,
                "processes_seen": len(self.peak), "samples": self.samples}


# ------------------------------------------------------------------------- verification
ID_RE = re.compile(rb"^X-Bench-Id:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


def list_sink(sink_dir: str) -> set[str]:
    """Finished message files (ours: *.eml; smtp-sink: any name) below sink_dir."""
    out = set()
    for root, _dirs, files in os.walk(sink_dir):
        for f in files:
            if not f.startswith(".") and not f.endswith(".tmp") and f != "sink.pid":
                out.add(os.path.join(root, f))
    return out


def bench_id_of(path: str) -> str | None:
    """The X-Bench-Id of the top-level header section (not of an attached original)."""
    with open(path, "rb") as f:
        head = f.read(256 * 1024)
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    m = ID_RE.search(head[: min(ends)] if ends else head)
    return m.group(1).decode("ascii", "replace") if m else None


def verify(sink_dir: str, before: set[str], expected: list[str], wait: float) -> dict:
    """Poll the sink dir until every expected id arrived (or `wait` s without progress)."""
    seen: set[str] = set()
    found: dict[str, int] = {}
    other = 0
    want = set(expected)
    last_progress = time.monotonic()
    while True:
        new = list_sink(sink_dir) - before - seen
        for p in new:
            seen.add(p)
            try:
                bid = bench_id_of(p)
            except OSError:
                continue
            if bid in want:
                found[bid] = found.get(bid, 0) + 1
            else:
                other += 1
        if new:
            last_progress = time.monotonic()
        if len(found) == len(want) or time.monotonic() - last_progress > wait:
            break
        time.sleep(0.1)
    missing = [i for i in expected if i not in found]
    return {"sink_found": len(found), "expected": len(expected), "lost": len(missing),
            "lost_ids": missing[:10], "duplicates": sum(v - 1 for v in found.values()),
            "other_files": other}


# --------------------------------------------------------------------------------- main
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    return values[max(0, math.ceil(q * len(values)) - 1)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="HOST:PORT of the SMTP server under test")
    ap.add_argument("--size", type=parse_size, default=parse_size("4k"),
                    help="message size: 4k, 100k, 10m or bytes (default 4k)")
    ap.add_argument("--count", type=int, default=200, help="measured messages")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="client threads")
    ap.add_argument("--warmup", type=int, default=None,
                    help="unmeasured messages sent first (default 2 x concurrency)")
    ap.add_argument("--per-conn", type=int, default=1, help="messages per SMTP session")
    ap.add_argument("--sink-dir", default=DEFAULT_SINK_DIR,
                    help="directory where the sink writes messages (default %(default)s)")
    ap.add_argument("--no-verify", action="store_true", help="skip the sink check")
    ap.add_argument("--verify-wait", type=float, default=30.0,
                    help="give up verifying after this many seconds without new files")
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    ap.add_argument("--label", default="", help="free text stored with the result")
    ap.add_argument("--mem-pid", type=int, help="sample memory of this pid and its children")
    ap.add_argument("--from", dest="mail_from", default="alice@anchor.test")
    ap.add_argument("--to", dest="rcpt", default="bob@anchor.test")
    ap.add_argument("--helo", default="client.anchor.test")
    ap.add_argument("--timeout", type=float, default=300.0, help="socket timeout, seconds")
    args = ap.parse_args(argv)
    if args.count < 1 or args.concurrency < 1 or args.per_conn < 1:
        ap.error("--count, --concurrency and --per-conn must be >= 1")
    if args.warmup is None:
        args.warmup = 2 * args.concurrency
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host, _, port_s = args.target.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_s)
    verify_on = not args.no_verify
    if verify_on and not os.path.isdir(args.sink_dir):
        print(f"loadgen: sink dir {args.sink_dir} does not exist (start bench/sink.py, "
              "or pass --sink-dir or --no-verify)", file=sys.stderr)
        return 2

    run_id = f"{int(time.time()) & 0xFFFFFFF:x}{os.getpid() & 0xFFFF:04x}"
    total = args.warmup + args.count
    msgs = [(f"{run_id}-{i}",
             dot_stuff(make_message(args.size, run_id, i, args.mail_from, args.rcpt)))
            for i in range(total)]
    size_bytes = len(make_message(args.size, run_id, 0, args.mail_from, args.rcpt))
    before = list_sink(args.sink_dir) if verify_on else set()
    sampler = MemSampler(args.mem_pid) if args.mem_pid else None
    if sampler:
        sampler.start()

    warm = run_batch(msgs[: args.warmup], args, host, port) if args.warmup else []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = cpu_jiffies()
    recs = run_batch(msgs[args.warmup:], args, host, port)
    cpu1 = cpu_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    mem = sampler.finish() if sampler else None

    t_start = min(r.t0 for r in recs)
    t_end = max(r.t1 for r in recs)
    elapsed = max(t_end - t_start, 1e-9)
    lat = sorted((r.t1 - r.t0) * 1000.0 for r in recs)
    errors = [r for r in recs + warm if not r.ok]
    busy, tot = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    res: dict[str, object] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label,
        "target": args.target, "size_arg": args.size, "size_bytes": size_bytes,
        "count": args.count, "warmup": args.warmup, "concurrency": args.concurrency,
        "per_conn": args.per_conn, "run_id": run_id,
        "elapsed_s": round(elapsed, 3), "msgs_per_s": round(len(recs) / elapsed, 2),
        "MB_per_s": round(len(recs) * size_bytes / elapsed / 1e6, 3),
        "lat_ms": {"min": round(lat[0], 2), "p50": round(pct(lat, 0.50), 2),
                   "p90": round(pct(lat, 0.90), 2), "p99": round(pct(lat, 0.99), 2),
                   "max": round(lat[-1], 2), "mean": round(sum(lat) / len(lat), 2)},
        "cpu_busy_pct": round(100.0 * busy / tot, 1) if tot else None,
        "client_cpu_pct": round(100.0 * client_cpu / elapsed / (os.cpu_count() or 1), 1),
        "ncpu": os.cpu_count(),
        "errors": len(errors),
        "error_samples": sorted({r.text for r in errors})[:5],
        "reply_sample": recs[0].text if recs else "",
    }
    if mem:
        res["mem"] = mem
    if verify_on:
        res.update(verify(args.sink_dir, before, [m[0] for m in msgs], args.verify_wait))

    lm = res["lat_ms"]
    assert isinstance(lm, dict)
    line = (f"{args.label or '-'} {args.target} size={size_bytes}B n={args.count} "
            f"c={args.concurrency}: {res['msgs_per_s']:.2f} msg/s; latency ms "
            f"p50 {lm['p50']:.1f} p90 {lm['p90']:.1f} p99 {lm['p99']:.1f} max {lm['max']:.1f}; "
            f"cpu busy {res['cpu_busy_pct']}% (client {res['client_cpu_pct']}%); "
            f"errors {len(errors)}")
    if verify_on:
        line += (f"; sink {res['sink_found']}/{res['expected']} lost {res['lost']} "
                 f"dup {res['duplicates']}")
    else:
        line += "; not verified"
    if mem:
        line += "; max child peak {} kB, parent RSS {} kB".format(mem["max_child_peak_kB"],
                                                             mem["parent_rss_kB"])
    print(line, flush=True)
    for sample in res["error_samples"]:  # type: ignore[union-attr]
        print(f"  error: {sample}", file=sys.stderr)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    bad = bool(errors) or res.get("lost", 0) or res.get("duplicates", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
