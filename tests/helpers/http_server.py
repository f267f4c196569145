"""A real HTTP server in a thread, playing a rank 0's metrics endpoint that misbehaves."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[BaseHTTPRequestHandler, "Server"], None]


class Server:
    """Serves on `addr`:`port` (0: any free one); `answer` handles each GET. HTTP/1.1, so an
    answer may be chunked, whatever the request's version."""

    def __init__(self, answer: Answer, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.connections = 0  # GETs received
        self.open = 0  # GETs being answered now
        self.release = threading.Event()  # set on close: ends answers that wait for it
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.connections += 1
                server.open += 1
                try:
                    answer(self, server)
                except OSError:
                    pass  # the client went away
                finally:
                    server.open -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{addr}:{self.port}/metrics"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def serve(answer: Answer, addr: str = "127.0.0.1", port: int = 0) -> Iterator[Server]:
    server = Server(answer, addr, port)
    try:
        yield server
    finally:
        server.close()


def endless(handler: BaseHTTPRequestHandler, server: Server) -> None:
    """A chunked answer that never ends, a chunk every 50 ms (no read waits long enough to
    time out), until the server closes."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    while not server.release.wait(0.05):
        handler.wfile.write(b"2\r\n#\n\r\n")
        handler.wfile.flush()
