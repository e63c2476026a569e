"""A tiny local HTTP server for the agent client's own logic (faults, polling): it records what
reached it and answers what the test scripted. Not a stand-in for the agent in any other test."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Server:
    url: str
    default: tuple[int, dict]
    seen: list[tuple[str, str]] = field(default_factory=list)
    # (method, path) -> answers given in order, the last one repeated: (status, JSON body)
    answers: dict[tuple[str, str], list[tuple[int, dict]]] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def local_server(default: tuple[int, dict] = (200, {}), tls: tuple[str, str] | None = None) -> Iterator[Server]:
    """``tls``: (certificate file, key file) to serve HTTPS with."""
    srv = Server(url="", default=default)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                srv.bodies.append(json.loads(self.rfile.read(length)))
            path = self.path.split("?")[0]
            srv.seen.append((self.command, path))
            queue = srv.answers.get((self.command, path))
            status, body = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else srv.default
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    srv.url = f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)
