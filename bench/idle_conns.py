#!/usr/bin/env python3
"""Hold N idle keep-alive HTTP/1.1 connections open to one loopback URL (bench/run.sh).

Each connection sends ONE request (POST, the same JSON body as bench/post.lua, optional
`Authorization: Bearer KEY`) and reads its whole response (Content-Length or chunked);
then it stays open and idle. At most --parallel connections are being opened at a time,
so the server's accept queue never overflows. When every connection has its answer (or
--open-secs is over) the tool prints one line

    READY ok=N failed=N secs=S

on stdout and holds the connections until a line arrives on stdin, SIGTERM/SIGINT, or
--hold-secs (at most 120) pass; then it closes them all and prints

    DONE held_secs=S server_closed=N

where server_closed counts connections the server closed while they were held. Every
phase is bounded; python3 standard library only.

    python3 bench/idle_conns.py -n 5000 --key KEY http://127.0.0.1:8080/callcentre/api/v3/ping
"""
import argparse
import errno
import os
import selectors
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

MAX_HOLD_SECS = 120.0
MAX_OPEN_SECS = 120.0
PER_CONN_SECS = 15.0  # connect + request + response, per connection


class Conn:
    __slots__ = ("sock", "out", "buf", "state", "started")

    def __init__(self, sock, out, now):
        self.sock, self.out, self.buf, self.state, self.started = sock, out, b"", "connecting", now


def response_complete(buf):
    """None while incomplete; else (status, leftover_ok)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return (0, False)
    status = int(parts[1])
    length, chunked = None, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length" and value.isdigit():
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = buf[end + 4:]
    if chunked:
        return (status, True) if body.endswith(b"0\r\n\r\n") else None
    if length is None:
        return (status, False)  # no framing: the server will close; not a keep-alive answer
    return (status, True) if len(body) >= length else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("-n", "--conns", type=int, default=5000)
    ap.add_argument("--key", default="", help="client key for Authorization: Bearer")
    ap.add_argument("--body-bytes", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=128, help="connections being opened at once")
    ap.add_argument("--open-secs", type=float, default=60.0, help="bound on opening all (max 120)")
    ap.add_argument("--hold-secs", type=float, default=MAX_HOLD_SECS, help="bound on holding (max 120)")
    a = ap.parse_args()
    u = urlsplit(a.url)
    if u.scheme != "http" or not u.hostname:
        ap.error("only http://host:port/path URLs")
    host, port = u.hostname, u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    open_secs = min(max(a.open_secs, 1.0), MAX_OPEN_SECS)
    hold_secs = min(max(a.hold_secs, 0.0), MAX_HOLD_SECS)

    head_, tail = '{"data":"', '"}'
    body = (head_ + "x" * max(a.body_bytes - len(head_) - len(tail), 0) + tail).encode()
    auth = f"Authorization: Bearer {a.key}\r\n" if a.key else ""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sel = selectors.DefaultSelector()
    idle, inflight, failed, started = [], set(), 0, 0
    server_closed = 0
    t0 = time.monotonic()
    deadline = t0 + open_secs

    def fail(c):
        nonlocal failed
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        c.state = "failed"
        failed += 1
        inflight.discard(c)

    def lost_idle(c):  # the server closed a connection that was idle
        nonlocal server_closed
        server_closed += 1
        sel.unregister(c.sock)
        c.sock.close()
        c.state = "closed"

    # ---------------------------------------------------------------- open and ask once each
    last_scan = t0
    while (started < a.conns or inflight) and not stop:
        now = time.monotonic()
        if now > deadline:
            break
        while started < a.conns and len(inflight) < a.parallel:
            started += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            c = Conn(s, request, now)
            inflight.add(c)
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ev in sel.select(timeout=0.2):
            c = key.data
            try:
                if c.state == "connecting":
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        fail(c)
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = "reading"
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
                if not data:
                    if c.state == "idle":
                        lost_idle(c)
                    else:
                        fail(c)
                    continue
                if c.state == "idle":
                    continue  # unexpected bytes on an idle connection: ignore
                c.buf += data
                done = response_complete(c.buf)
                if done is None:
                    continue
                status, keep = done
                if 200 <= status < 300 and keep:
                    c.state, c.buf, c.out = "idle", b"", b""
                    idle.append(c)
                    inflight.discard(c)
                else:
                    fail(c)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if c.state == "idle":
                    lost_idle(c)
                else:
                    fail(c)
        now = time.monotonic()
        if now - last_scan > 0.5:  # the per-connection bound
            last_scan = now
            for c in [c for c in inflight if now - c.started > PER_CONN_SECS]:
                fail(c)
    for c in list(inflight):  # whatever is still in progress counts as failed
        fail(c)
    failed += a.conns - started
    ok = sum(1 for c in idle if c.state == "idle")
    print(f"READY ok={ok} failed={failed} secs={time.monotonic() - t0:.1f}", flush=True)

    # ---------------------------------------------------------------- hold
    h0 = time.monotonic()
    try:
        sel.register(sys.stdin, selectors.EVENT_READ, None)
    except (ValueError, OSError):
        pass  # e.g. stdin is /dev/null (epoll refuses files): rely on the signal or the bound
    while not stop and time.monotonic() - h0 < hold_secs:
        for key, _ev in sel.select(timeout=0.5):
            if key.data is None:
                line = os.read(sys.stdin.fileno(), 4096)
                if line:
                    stop = True
                else:  # EOF: no one will write; keep holding until the signal or the bound
                    sel.unregister(sys.stdin)
                continue
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                lost_idle(c)
    held = time.monotonic() - h0
    for c in idle:
        if c.state == "idle":
            c.sock.close()
    print(f"DONE held_secs={held:.1f} server_closed={server_closed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
