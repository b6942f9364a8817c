"""A range-capable HTTP/1.1 server on 127.0.0.1 with switches for the failures remote reads meet.

Used by the tests (a pytest fixture) and by benchmarks/bench_remote.py (``latency``). Files are
served at ``/NAME``; Hugging Face paths ``/ORG/REPO/resolve/REV/FILE`` are served too, either
directly or, like the Hub, as a 302 to a CDN (another server) carrying ``X-Linked-Etag``.
Every request is logged with its method, path, Range and whether it carried a token.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_HF = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class Behaviour:
    no_range: bool = False  # answer 200 with the whole file
    fail_status: int = 0  # answer this status ...
    fail_count: int = 0  # ... to the next N requests (then behave)
    retry_after: str | None = None
    status: int = 0  # answer this status to every request
    drop_after: int = -1  # send this many body bytes of the next drop_count range responses, then close
    drop_count: int = 0
    change_etag_after: int = -1  # the ETag changes after this many requests (a re-upload)
    change_every: bool = False  # ... and keeps changing with every request
    delay: float = 0.0  # sleep before answering (timeouts)
    latency: float = 0.0  # sleep per request (benchmarks)
    bandwidth: float = 0.0  # bytes per second for bodies, 0 = unlimited (benchmarks)
    hf_redirect: str | None = None  # base URL of the "CDN" the /resolve/ paths redirect to
    hf_required_token: str | None = None  # /resolve/ paths need "Bearer <token>"
    no_etag: bool = False
    no_head: bool = False  # answer HEAD with 405 Method Not Allowed
    silent_close: bool = False  # close every connection after the response without saying so


@dataclass
class Served:
    files: dict[str, Path]
    behaviour: Behaviour = field(default_factory=Behaviour)
    log: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    max_in_flight: int = 0  # the most requests being answered at once since reset (parallel clients show > 1)
    epoch: int = 0  # requests still running from before a reset (a slow test) do not count after it
    in_flight: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.behaviour = Behaviour()
            self.log.clear()
            self.requests = 0
            self.max_in_flight = 0
            self.epoch += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stalls)
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        if self.server.state.behaviour.no_head:
            with self.server.state.lock:
                self.server.state.log.append(
                    {"method": "HEAD", "path": self.path, "range": None, "if_range": None, "authorization": None}
                )
            return self._status(405)
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        st = self.server.state
        with st.lock:
            epoch = st.epoch
            st.in_flight[epoch] = st.in_flight.get(epoch, 0) + 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight[epoch])
        try:
            self._answer(head)
        finally:
            with st.lock:
                st.in_flight[epoch] -= 1

    def _answer(self, head: bool) -> None:
        st = self.server.state
        b = st.behaviour
        with st.lock:
            st.requests += 1
            n = st.requests
            st.log.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "range": self.headers.get("Range"),
                    "if_range": self.headers.get("If-Range"),
                    "authorization": self.headers.get("Authorization"),
                }
            )
            fail = b.fail_count > 0
            if fail:
                b.fail_count -= 1
            drop = b.drop_count > 0 and self.headers.get("Range") is not None and not head
            if drop:
                b.drop_count -= 1
        if b.latency:
            time.sleep(b.latency)
        if b.delay:
            time.sleep(b.delay)
        if b.status:
            return self._status(b.status)
        if fail:
            return self._status(b.fail_status, {"Retry-After": b.retry_after} if b.retry_after else {})
        path, _, query = self.path.partition("?")
        api = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/?]+)$", path)
        if api is not None:
            return self._tree(api["rev"], query)
        if path.startswith("http://"):  # absolute form: we are being used as a forward proxy
            st.log[-1]["proxied"] = path
            path = "/" + path.split("/", 3)[3]
        m = _HF.match(path)
        if m is not None:
            if b.hf_required_token and self.headers.get("Authorization") != f"Bearer {b.hf_required_token}":
                return self._status(401)
            name = m["file"].removeprefix("gguf/")
            if name not in st.files or m["rev"] not in ("main", "v1", "0" * 40):
                return self._status(404)
            if b.hf_redirect:
                self.send_response(302)
                self.send_header("Location", f"{b.hf_redirect}/{name}?X-Amz-Signature=secret")
                self.send_header("X-Linked-Etag", self._etag(st.files[name], n))
                self.send_header("X-Linked-Size", str(st.files[name].stat().st_size))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = "/" + name
        name = path.lstrip("/")
        f = st.files.get(name)
        if f is None:
            return self._status(404)
        self._file(f, head, b, n, drop)
        if b.silent_close:  # as a server whose keep-alive timeout expired would
            self.close_connection = True

    def _tree(self, rev: str, query: str) -> None:
        """The Hub's file listing (GET /api/models/REPO/tree/REV?recursive=true), 4 entries a page."""
        import json

        st = self.server.state
        if rev not in ("main", "v1"):
            return self._status(404)
        entries = [{"type": "file", "oid": "0" * 40, "size": 1234, "path": "README.md"}]
        entries += [
            {
                "type": "file",
                "oid": "0" * 40,
                "size": f.stat().st_size,
                "path": f"gguf/{name}",
                "lfs": {"oid": "0" * 64, "size": f.stat().st_size, "pointerSize": 134},
            }
            for name, f in sorted(st.files.items())
        ]
        entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": "gguf"})
        cursor = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("cursor", "0"))
        page = entries[cursor : cursor + 4]
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if cursor + 4 < len(entries):
            path = self.path.partition("?")[0]
            self.send_header(
                "Link", f'<http://{self.headers["Host"]}{path}?recursive=true&cursor={cursor + 4}>; rel="next"'
            )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _etag(self, f: Path, n: int) -> str:
        b = self.server.state.behaviour
        st = f.stat()
        gen = 0
        if b.change_etag_after >= 0 and n > b.change_etag_after:
            gen = n if b.change_every else 1
        return f'"{st.st_size:x}-{int(st.st_mtime):x}-{gen}"'

    def _file(self, f: Path, head: bool, b: Behaviour, n: int, drop: bool) -> None:
        size = f.stat().st_size
        etag = self._etag(f, n)
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        start, end, status = 0, size - 1, 200
        if rng and not b.no_range and (if_range is None or if_range == etag):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            if m is None:
                return self._status(400)
            start = int(m[1])
            end = min(int(m[2]) if m[2] else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        if not b.no_etag:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", self.date_time_string(f.stat().st_mtime))
        if not b.no_range:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if head:
            return
        limit = b.drop_after if drop else -1
        with open(f, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            sent = 0
            try:
                while left > 0:
                    chunk = fh.read(min(left, 1 << 20))
                    if limit >= 0 and sent + len(chunk) > limit:
                        self.wfile.write(chunk[: limit - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if b.bandwidth:
                        for i in range(0, len(chunk), 1 << 16):
                            piece = chunk[i : i + (1 << 16)]
                            self.wfile.write(piece)
                            time.sleep(len(piece) / b.bandwidth)
                    else:
                        self.wfile.write(chunk)
                    sent += len(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: Served


class RangeServer:
    """``with RangeServer(files) as srv: srv.url('name')``; ``srv.state`` holds behaviour and log."""

    def __init__(self, files: dict[str, Path], host: str = "127.0.0.1"):
        # bound to the loopback address; ``host`` may name it differently ("localhost"), which
        # makes a second server another origin for redirect tests
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.state = Served(dict(files))
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def state(self) -> Served:
        return self.httpd.state

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def start(self) -> RangeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_dir(paths: list[Path]) -> dict[str, Path]:
    return {os.path.basename(p): Path(p) for p in paths}


class _LlamaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LlamaServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        import json

        key = self.server.routes.get("api_key")
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.routes.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _LlamaServer(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Any]


class FakeLlamaServer:
    """Answers /props and /v1/models as llama-server does (tools/server/server-context.cpp)."""

    def __init__(self, model_path: str, chat_template: str | None, n_ctx: int = 4096, api_key: str | None = None):
        self.httpd = _LlamaServer(("127.0.0.1", 0), _LlamaHandler)
        props: dict[str, Any] = {
            "default_generation_settings": {"n_ctx": n_ctx, "params": {}},
            "total_slots": 1,
            "model_alias": os.path.basename(model_path),
            "model_path": model_path,
            "build_info": "b0-fake",
            "bos_token": "<s>",
            "eos_token": "</s>",
        }
        if chat_template is not None:
            props["chat_template"] = chat_template
        self.httpd.routes = {
            "/props": props,
            "/v1/models": {"object": "list", "data": [{"id": os.path.basename(model_path), "object": "model"}]},
            "api_key": api_key,
        }
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeLlamaServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
