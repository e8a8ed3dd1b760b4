"""The two tiny programs `rulegen lab` runs inside its network namespaces: a server and a prober.

`python -m rulegen.lab.net serve --endpoint NETNS_PATH,IP,TCP+PORTS,UDP+PORTS ...`
binds, for each endpoint and inside its own network namespace, TCP and UDP
sockets on IP (e.g. `/run/netns/rglab-x-pod1,10.244.1.5,3000+8080,53`) and
answers every connection (TCP) or datagram (UDP) with one line `ip=<own
address> port=<own port> peer=<source address> peerport=<source port>`, the
source being what arrived after the node's netfilter hooks (so a
masqueraded client shows up as the node's address).
It prints `ready` once bound, and stops by itself when its standard input
closes (the lab process died or finished) or after `--lifetime` seconds.

`python -m rulegen.lab.net probe --deadline EPOCH` reads a JSON list of jobs
on standard input (`{"id", "proto", "dst", "port", "count", "timeout"}`),
runs all jobs' connections together with a bounded number in flight (jobs
marked `sticky`, for ClientIP affinity, one at a time with their first
connection alone), and prints one JSON list: per job the answers per
`ip:port` with the peers seen, how many were refused (ECONNREFUSED: a REJECT
or no listener), timed out (a DROP) or failed otherwise, and whether it gave
up after `give_up` failures without an answer. Every loop is bounded by
count and by the deadline.

Only the standard library is imported, so each start costs tens of ms.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import sys
import time

MAX_IN_FLIGHT = 16  # per job
MAX_TOTAL = 64  # per prober
LINE_MAX = 256


def _reply(own: tuple, peer: tuple) -> bytes:
    return f"ip={own[0]} port={own[1]} peer={peer[0]} peerport={peer[1]}\n".encode()


def _ports(text: str | None) -> list[int]:
    return [int(p) for p in (text or "").split(",") if p]


CLONE_NEWNET = 0x40000000


_LIBC: list = []


def _setns_fd(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if not _LIBC:
        import ctypes

        _LIBC.append((ctypes, ctypes.CDLL(None, use_errno=True)))
    ctypes, libc = _LIBC[0]
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _setns(path: str) -> None:
    """Move this (single-threaded) process into the network namespace at PATH (/run/netns/NAME)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _bind(sel: selectors.BaseSelector, ip: str, tcp: list[int], udp: list[int]) -> None:
    for port in tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(512)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for port in udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "udp")


def serve(endpoints: list[str], lifetime: float) -> int:
    """Answer on each of ENDPOINTS ("NETNS_PATH,IP,TCP+PORTS,UDP+PORTS").

    A socket stays in the namespace it was made in, so one process serves
    endpoints in many namespaces: it enters each to make that endpoint's
    sockets, then comes back. (One process instead of one per endpoint:
    starting Python is most of a small lab's time under emulation.)
    """
    sel = selectors.DefaultSelector()
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for spec in endpoints:
            path, eip, etcp, eudp = spec.split(",")
            _setns(path)
            try:
                _bind(sel, eip, _ports(etcp.replace("+", ",")), _ports(eudp.replace("+", ",")))
            finally:
                _setns(f"/proc/self/fd/{home}")
    finally:
        os.close(home)
    # The lab keeps our stdin open; EOF means it is gone and we must go too.
    sel.register(sys.stdin.buffer, selectors.EVENT_READ, "stdin")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    end = time.monotonic() + lifetime
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return 0
        for key, _ in sel.select(timeout=min(left, 1.0)):
            kind = key.data
            sock = key.fileobj
            if kind == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return 0
                continue
            try:
                if kind == "tcp":
                    conn, peer = sock.accept()
                    try:
                        conn.settimeout(1.0)
                        conn.sendall(_reply(conn.getsockname(), peer))
                    finally:
                        conn.close()
                else:
                    _, peer = sock.recvfrom(LINE_MAX)
                    sock.sendto(_reply(sock.getsockname(), peer), peer)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # a client gave up; the next one is independent


# ---------------------------------------------------------------------- probing


class _Job:
    def __init__(self, spec: dict):
        self.id = spec["id"]
        self.proto = spec["proto"]
        self.addr = (spec["dst"], int(spec["port"]))
        self.count = int(spec["count"])
        self.timeout = float(spec["timeout"])
        # With ClientIP affinity the first connection must finish (and leave its
        # `recent` entry) before the others race for an endpoint.
        self.sticky = bool(spec.get("sticky"))
        # Stop a path once this many connections have failed without a single answer: it is broken,
        # and waiting out every remaining timeout would only make the run slow.
        self.give_up = int(spec.get("give_up") or 0)
        self.answers: dict[str, dict[str, int]] = {}
        self.refused = 0
        self.timeouts = 0
        self.errors: dict[str, int] = {}
        self.started = 0
        self.done = 0
        self.inflight = 0

    def result(self) -> dict:
        return {
            "id": self.id, "sent": self.started, "answers": self.answers, "refused": self.refused,
            "timeout": self.timeouts, "errors": self.errors, "gave_up": self.gave_up,
        }

    def limit(self) -> int:
        return 1 if self.sticky and self.done == 0 else MAX_IN_FLIGHT

    @property
    def gave_up(self) -> bool:
        return bool(self.give_up) and not self.answers and self.done >= self.give_up

    def wants_more(self) -> bool:
        return self.started < self.count and not self.gave_up

    def answered(self, line: bytes) -> None:
        fields = dict(kv.split("=", 1) for kv in line.decode(errors="replace").split() if "=" in kv)
        ep = f"{fields.get('ip', '?')}:{fields.get('port', '?')}"
        peers = self.answers.setdefault(ep, {})
        peer = fields.get("peer", "?")
        peers[peer] = peers.get(peer, 0) + 1

    def failed(self, err: int) -> None:
        if err == errno.ECONNREFUSED:
            self.refused += 1
        elif err == errno.ETIMEDOUT:
            self.timeouts += 1
        else:
            name = errno.errorcode.get(err, str(err))
            self.errors[name] = self.errors.get(name, 0) + 1


class _Conn:
    __slots__ = ("job", "sock", "until", "buf", "connected", "eperm")

    def __init__(self, job: _Job, sock: socket.socket, until: float):
        self.job = job
        self.sock = sock
        self.until = until
        self.buf = b""
        self.connected = False
        self.eperm = False


def _start(job: _Job, sel: selectors.BaseSelector) -> None:
    now = time.monotonic()
    job.started += 1
    kind = socket.SOCK_STREAM if job.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setblocking(False)
    c = _Conn(job, s, now + job.timeout)
    if job.proto == "tcp":
        err = s.connect_ex(job.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            _done(job, err)
            return
        sel.register(s, selectors.EVENT_WRITE, c)
    else:
        try:
            # A connected UDP socket gets the ICMP error of a REJECT as ECONNREFUSED.
            s.connect(job.addr)
            s.send(b"?\n")
        except OSError as e:
            if e.errno != errno.EPERM:
                s.close()
                _done(job, e.errno or 0)
                return
            # EPERM: the node's own OUTPUT hook dropped the datagram. A REJECT
            # still queues its ICMP error for us; a DROP leaves us to time out.
            c.eperm = True
        c.connected = True
        sel.register(s, selectors.EVENT_READ, c)
    job.inflight += 1


def _done(job: _Job, err: int | None = None, line: bytes | None = None) -> None:
    job.done += 1
    if err is not None:
        job.failed(err)
    elif line is not None and line.strip():
        job.answered(line.split(b"\n", 1)[0])
    else:
        job.errors["EMPTY"] = job.errors.get("EMPTY", 0) + 1


def _finish(sel: selectors.BaseSelector, c: _Conn, err: int | None = None, line: bytes | None = None) -> None:
    sel.unregister(c.sock)
    c.sock.close()
    c.job.inflight -= 1
    _done(c.job, err, line)


def run_jobs(jobs: list[_Job], deadline: float) -> None:
    """All JOBS at once, round-robin, at most MAX_IN_FLIGHT each and MAX_TOTAL together."""
    sel = selectors.DefaultSelector()
    while True:
        now = time.monotonic()
        added = True
        while added and now < deadline:
            added = False
            for j in jobs:
                if len(sel.get_map()) >= MAX_TOTAL:
                    break
                if j.wants_more() and j.inflight < j.limit():
                    _start(j, sel)
                    added = True
        if not sel.get_map():
            if now >= deadline or not any(j.wants_more() for j in jobs):
                return
            continue
        wait = max(0.0, min(min(k.data.until for k in sel.get_map().values()), deadline) - now)
        for key, _ in sel.select(timeout=min(wait, 0.5)):
            c: _Conn = key.data
            if not c.connected:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    _finish(sel, c, err=err)
                    continue
                c.connected = True
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(LINE_MAX)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                _finish(sel, c, err=e.errno or 0)
                continue
            c.buf += data
            if b"\n" in c.buf or not data or c.job.proto == "udp":
                _finish(sel, c, line=c.buf)
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            c = key.data
            if now >= c.until or now >= deadline:
                _finish(sel, c, err=errno.EPERM if c.eperm else errno.ETIMEDOUT)


def probe(deadline_epoch: float) -> int:
    jobs = [_Job(spec) for spec in json.load(sys.stdin)]
    # Wall-clock deadline from the lab, turned into our monotonic clock.
    deadline = time.monotonic() + max(0.0, deadline_epoch - time.time())
    # Sticky jobs one by one (all of one client's paths share the affinity
    # state), then everything else together.
    for j in jobs:
        if j.sticky:
            run_jobs([j], deadline)
    run_jobs([j for j in jobs if not j.sticky], deadline)
    json.dump([j.result() for j in jobs], sys.stdout)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rulegen.lab.net")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--endpoint", action="append", required=True,
                   help="NETNS_PATH,IP,TCP+PORTS,UDP+PORTS: serve this endpoint, in that namespace (repeatable)")
    s.add_argument("--lifetime", type=float, default=600.0)
    s.add_argument("--tag", default="", help="the lab run's name, so its processes can be found")
    p = sub.add_parser("probe")
    p.add_argument("--deadline", type=float, required=True, help="wall-clock time (epoch seconds) to stop at")
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.endpoint, a.lifetime)
    return probe(a.deadline)


if __name__ == "__main__":
    sys.exit(main())
