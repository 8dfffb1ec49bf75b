"""A TCP proxy on 127.0.0.1 that can cut a browser stream's connection mid-answer.

Everything between the client and rill passes through unchanged. When armed with `cut_after(n)`, the next
response to a `GET /v1/streams/.../events` request is cut (both sockets closed) once `n` bytes of it have been
forwarded, as a network blip would. The proxy records the requests it forwarded (method, path, headers, body) so
tests can check what the page sent: the conversation, and the `Last-Event-ID` of a reconnect.
"""

import socket
import threading


class Proxy:
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.cut_at = None  # bytes of an event-stream response to forward before cutting, when armed
        self.cuts = 0
        self.requests = []  # (method, path, headers dict lower-cased, body bytes)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n):
        with self.lock:
            self.cut_at = n

    def close(self):
        self.closed = True
        self.sock.close()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            conn = _Conn(self, client, server)
            threading.Thread(target=conn.upward, daemon=True).start()
            threading.Thread(target=conn.downward, daemon=True).start()


class _Conn:
    """One proxied connection; HTTP/1.1 keep-alive may carry several requests."""

    def __init__(self, proxy, client, server):
        self.proxy, self.client, self.server = proxy, client, server
        self.event_stream = False  # the request in flight is a stream's event feed
        self.buf = b""

    def upward(self):
        try:
            while data := self.client.recv(65536):
                self._record(data)
                self.server.sendall(data)
        except OSError:
            pass
        self._close()

    def _record(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
            n = int(headers.get("content-length", "0"))
            if len(rest) < n:
                return
            body, self.buf = rest[:n], rest[n:]
            with self.proxy.lock:
                self.proxy.requests.append((method, path, headers, body))
            self.event_stream = method == "GET" and path.startswith("/v1/streams/") and "/events" in path

    def downward(self):
        sent = 0
        try:
            while data := self.server.recv(65536):
                with self.proxy.lock:
                    limit = self.proxy.cut_at if self.event_stream else None
                if limit is not None and sent + len(data) >= limit:
                    self.client.sendall(data[: max(0, limit - sent)])
                    with self.proxy.lock:
                        self.proxy.cut_at = None
                        self.proxy.cuts += 1
                    break
                self.client.sendall(data)
                if self.event_stream:
                    sent += len(data)
                else:
                    sent = 0
        except OSError:
            pass
        self._close()

    def _close(self):
        for s in (self.client, self.server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
