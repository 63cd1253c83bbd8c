"""A ZeroGPU device API on 127.0.0.1, answering what spaces' client asks (`spaces/zero/api.py`):
``/schedule``, ``/allow``, ``/release``, ``/startup-report``.

``idle`` is what the scheduler reports: True lets spaces reuse a worker for the next call of the same
function, False makes it fork a new one. ``hold_longer_than`` (seconds), until `release`, answers 503
("No GPU was available") to every ``/schedule`` that asks for a longer duration: a compile held back
while requests are served. ``uuid`` is the GPU handed out (a real one's, from ``nvidia-smi -L``, where
there is one). Every call is logged in ``calls``.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class DeviceAPI:
    def __init__(self, idle: bool = True, hold_longer_than: float | None = None, uuid: str = "GPU-standin-0") -> None:
        self.idle, self.hold_longer_than, self.uuid = idle, hold_longer_than, uuid
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                status, body = api.answer(url.path, params)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, params: dict) -> tuple[int, bytes]:
        with self._lock:
            self.calls.append({"path": path, **params})
            if path == "/schedule":
                if self.hold_longer_than is not None and float(params.get("durationSeconds", 0)) > self.hold_longer_than:
                    return 503, b'{"detail": "no GPU"}'
                body = {"idle": self.idle, "nvidiaIndex": 0, "nvidiaUUID": self.uuid, "allowToken": uuid.uuid4().hex}
                return 200, json.dumps(body).encode()
            return 200, b"{}"

    def release(self) -> None:
        """Stop holding long calls back (``hold_longer_than``)."""
        with self._lock:
            self.hold_longer_than = None

    def scheduled(self) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c["path"] == "/schedule"]

    def close(self) -> None:
        self.server.shutdown()
