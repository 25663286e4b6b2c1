"""A loopback proxy in front of an S3-compatible server that injects the faults a real object store shows:
outages (every connection dropped, new ones refused), 503 SlowDown answers (throttling) and answers lost on
the way back (the request took effect; the client sees its connection drop and sends it again). For the
object-store tests and `bench soak`; the server behind it (moto, data in memory) stays up throughout.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from urllib.parse import urlparse

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your '
             b'request rate.</Message><RequestId>proxy</RequestId><HostId>proxy</HostId></Error>')


def slow_down_answer(method: bytes, close: bool) -> bytes:
    """S3's 503 SlowDown response (a HEAD's has no body)."""
    body = b"" if method == b"HEAD" else SLOW_DOWN
    head = (f"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: proxy\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")
    return head.encode() + body


class S3Proxy:
    """A TCP proxy on 127.0.0.1 (its `url` is the endpoint to give clients). `cut()` drops every connection and
    closes the port until `restore()`; `outage_after(n, seconds)` cuts when the n-th request comes. With
    `slow_down` > 0 that fraction of HTTP/1.1 requests, drawn at random, is answered 503 SlowDown instead of being
    forwarded; with `lost_answers` > 0 another such fraction reaches the server, which does it, but the client's
    connection drops before the answer (the client sends it again). Requests are told apart by their
    Content-Length; a request framed otherwise is forwarded with the rest of its connection untouched.
    `lose_answer(line)` loses the answer of the next request whose request line contains `line`."""

    def __init__(self, upstream: str, slow_down: float = 0.0, lost_answers: float = 0.0, seed: int = 0):
        self.upstream = (urlparse(upstream).hostname, urlparse(upstream).port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.slow_down, self.lost_answers, self.random = slow_down, lost_answers, random.Random(seed)
        self.requests = self.slowed = self.lost = 0  # requests seen, answered SlowDown, and whose answer was lost
        self.cut_at: tuple[int, float | None] | None = None
        self.lose: list[str] = []  # request lines (parts of) whose next answer is lost
        self.down = self.closed = False
        self.open: set[socket.socket] = set()
        self.lock, self.switch = threading.Lock(), threading.Lock()
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed: cut
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self.open |= {client, upstream}
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _fate(self, head: bytes) -> str:
        """Counts a request; what to do with it: "lose" its answer, answer it "slow" (SlowDown) or "forward" it."""
        line = head.decode("latin-1").split("\r\n", 1)[0]
        with self.lock:
            self.requests += 1
            if self.cut_at and self.requests == self.cut_at[0]:
                threading.Thread(target=self.outage, args=(self.cut_at[1],), daemon=True).start()
            if (part := next((part for part in self.lose if part in line), None)) is not None:
                self.lose.remove(part)
            draw = self.random.random()
            if part is not None or draw < self.lost_answers:
                self.lost += 1
                return "lose"
            slow = draw < self.lost_answers + self.slow_down
            self.slowed += slow
        return "slow" if slow else "forward"

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to server, one request at a time (a client sends the next only after the answer)."""
        reader = client.makefile("rb")
        try:
            while head := _read_head(reader):
                method, fields = _parse(head)
                if "content-length" not in fields and "transfer-encoding" in fields:
                    upstream.sendall(head)
                    while data := reader.read1(1 << 16):
                        upstream.sendall(data)
                    break
                length = int(fields.get("content-length", 0))
                fate = self._fate(head)
                if fate == "lose":
                    with socket.create_connection(self.upstream) as aside:  # (this connection's answer never comes)
                        aside.sendall(head)
                        if "100-continue" in fields.get("expect", ""):
                            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # (the body comes now)
                        _copy(reader, aside, length)
                        aside.shutdown(socket.SHUT_WR)
                        while aside.recv(1 << 16):  # the server answers, then closes: it has done the request
                            pass
                    break
                if fate == "forward":
                    upstream.sendall(head)
                    _copy(reader, upstream, length)
                elif "100-continue" in fields.get("expect", ""):  # its body waits for an answer: never sent
                    client.sendall(slow_down_answer(method, close=True))
                    break
                else:
                    _copy(reader, None, length)
                    client.sendall(slow_down_answer(method, close=False))
        except OSError:
            pass
        self._close(client, upstream)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        self._close(a, b)

    def _close(self, *sockets: socket.socket) -> None:
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            self.open.discard(s)

    def cut(self) -> None:
        """Close the port (connecting is refused, as by a server that is down) and drop every open connection."""
        with self.switch:
            if not self.down:
                self.down = True
                self.server.shutdown(socket.SHUT_RDWR)  # (wakes the thread in accept)
                self.server.close()
            for s in list(self.open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        with self.switch:
            if self.down and not self.closed:
                self.server = socket.create_server(("127.0.0.1", self.port))
                self.down = False
                threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def outage(self, seconds: float | None) -> None:
        """Cut, and restore after `seconds` (None: when `restore()` is called)."""
        self.cut()
        if seconds is not None:
            time.sleep(seconds)
            self.restore()

    def outage_after(self, requests: int, seconds: float | None = None) -> None:
        """An outage of `seconds` (None: until `restore()`) once the proxy has seen `requests` requests in all."""
        self.cut_at = (requests, seconds)

    def lose_answer(self, line: str) -> None:
        """The next request whose request line ("PUT /bucket/key HTTP/1.1") contains `line` reaches the server,
        but its answer does not reach the client: its connection drops after the server has answered."""
        with self.lock:
            self.lose.append(line)

    def close(self) -> None:
        self.closed = True
        self.cut()


def _read_head(reader) -> bytes:
    """A request's line and header fields, through the blank line; b"" when the client closed."""
    head = b""
    while line := reader.readline(1 << 16):
        head += line
        if line in (b"\r\n", b"\n"):
            return head
    return b""


def _parse(head: bytes) -> tuple[bytes, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    return lines[0].split(" ", 1)[0].encode(), fields


def _copy(reader, to: socket.socket | None, length: int) -> None:
    """`length` bytes of a body from the client, to the server (or dropped)."""
    while length > 0:
        data = reader.read1(min(length, 1 << 16))
        if not data:
            raise OSError("the client closed mid-body")
        if to is not None:
            to.sendall(data)
        length -= len(data)
