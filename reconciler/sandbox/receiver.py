"""A notification endpoint on 127.0.0.1 that records what it receives (tests, benchmarks).

`Receiver(status, delay)` answers every POST with `status` after `delay` seconds (cut short when it
closes), so one class plays a Slack webhook, an endpoint answering 500 and one that hangs. The
URL ends in a token, as a Slack webhook URL does, for checking that it is never shown.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: the secret last part of the receiver's URL
TOKEN = "XyzSecretToken0123456789"


class Receiver:
    """An HTTP endpoint on 127.0.0.1 recording every POSTed body; `url` is where to send."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.bodies: list[bytes] = []
        self.changed = threading.Condition()
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.changed:
                    receiver.bodies.append(body)
                    receiver.changed.notify_all()
                receiver.closing.wait(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the bodies are the record."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/{TOKEN}"
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()

    def docs(self) -> list[dict[str, Any]]:
        """The bodies received so far, as JSON."""
        with self.changed:
            return [json.loads(b) for b in self.bodies]

    def events(self) -> list[tuple[str, str]]:
        """(model, event) of each body received so far."""
        return [(d["model"], d["event"]) for d in self.docs()]

    def wait_for(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Until at least `n` bodies arrived; AssertionError after `timeout` seconds."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.bodies) >= n, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n} notifications, got {self.events()}")
        return self.docs()

    def close(self) -> None:
        """Answer what is held back, stop serving and free the port."""
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
