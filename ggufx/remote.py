"""Remote models: ``https://`` URLs and ``hf://ORG/REPO[@REV]/FILE`` read through HTTP range requests.

Only the header crosses the network. :class:`HTTPSource` is a byte source like
:class:`~ggufx.source.FileSource`: its first request fetches the first block and learns the file's
size from ``Content-Range``; later reads are range requests sized by the parser's growth policy
(a 262,144-token vocabulary costs three requests and ~7 MB for a 253 MB file).

The HTTP client is the standard library's ``http.client``, on purpose: persistent connections we
pool ourselves (a range read over keep-alive costs one round trip, not a TCP and TLS handshake),
redirects we follow ourselves (so an ``Authorization`` header never crosses to another host: the
Hub redirects to a CDN), no dependency, and nothing imported until a remote source is opened.

Rules, in the order a read meets them:

* ``hf://`` resolves to ``{HF_ENDPOINT}/ORG/REPO/resolve/REV/FILE``; a file already in the local
  Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``) is opened there, with no request at all.
* ``HF_TOKEN`` (or the token file ``huggingface-cli login`` writes) is sent only to the endpoint's
  host, never after a redirect to another host, and never appears in errors or debug output.
* 429 and 5xx responses, dropped connections and timeouts are retried with exponential back-off
  (``Retry-After`` honoured up to a bound); 401/403/404 are one-line errors that say what to do.
* A server that ignores ``Range`` (200 instead of 206) is refused unless ``allow_full_download``;
  then the body is streamed and closed as soon as the header is parsed.
* Every response after the first must carry the first one's validator (``ETag``, else
  ``Last-Modified``; sent as ``If-Range`` too). A change mid-read restarts the parse once, then is
  an error.
* Parsed headers are cached (``cache_dir``) keyed by URL and validator: a second look costs one
  ``HEAD`` request, or none with ``offline``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import GGUFError, SourceError

SCHEMES = ("http://", "https://", "hf://")
DEFAULT_ENDPOINT = "https://huggingface.co"
FIRST_BLOCK = 1 << 20
REMOTE_GROWTH = 1.5  # see reader._Cursor.need: less overshoot than the local doubling
REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 10
MAX_RETRY_AFTER = 30.0
CACHE_FORMAT = 1
CACHE_MAX_BYTES = 1 << 30  # the header cache keeps the most recently used entries up to this size


def is_remote(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


@dataclass
class RemoteConfig:
    """How remote sources behave. The CLI fills :data:`CONFIG` from its options."""

    cache_dir: str | None = field(default_factory=lambda: default_cache_dir())
    offline: bool = False
    allow_full_download: bool = False
    timeout: float = 30.0  # seconds per connect and per read
    retries: int = 4  # attempts after the first, for 429/5xx/dropped/timeouts
    backoff: float = 0.5  # seconds, doubled per attempt
    debug: bool = False  # log every request (URL without query, status, bytes, time) on stderr
    workers: int = 8  # parallel shard headers
    max_header_bytes: int = 512 << 20  # a header claiming more is refused (a hostile server or file)


def default_cache_dir() -> str | None:
    if os.environ.get("GGUFX_NO_CACHE"):
        return None
    if os.environ.get("GGUFX_CACHE_DIR"):
        return os.environ["GGUFX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "ggufx", "headers")


def _env_offline() -> bool:
    return any(os.environ.get(v) not in (None, "", "0") for v in ("GGUFX_OFFLINE", "HF_HUB_OFFLINE"))


BASE = RemoteConfig(offline=_env_offline())  # the defaults each CLI invocation starts from
CONFIG = dataclasses.replace(BASE)  # what the current command uses (its options change it)


def reset_config() -> RemoteConfig:
    """Start a command from the defaults (one process may run many commands: tests, MCP)."""
    global CONFIG
    CONFIG = dataclasses.replace(BASE)
    return CONFIG


class Stats:
    """Requests and bytes on the wire since the last :meth:`reset` (all threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.log: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any], new_request: bool = True) -> None:
        with self._lock:
            self.requests += new_request
            self.bytes += entry.get("bytes", 0)
            self.log.append(entry)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes": self.bytes}


STATS = Stats()


# -- locations ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """A remote file: what the user typed (``display``, used in every message) and what is fetched."""

    display: str
    url: str
    token_origin: str | None  # scheme://host[:port] that may see the token
    hf: tuple[str, str, str] | None = None  # (repo, revision, file) for hf:// references


_HF_RE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)$")


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_token() -> str | None:
    """``HF_TOKEN``, else the token file ``huggingface-cli login`` wrote (as huggingface_hub reads it)."""
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok.strip()
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        from .scan import default_hf_cache

        home = os.environ.get("HF_HOME") or os.path.dirname(default_hf_cache())
        path = os.path.join(home, "token")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def origin(url: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{(u.hostname or '').lower()}:{port}"


def redact(url: str) -> str:
    """A URL fit for a log line: no user:password, no query (signed CDN URLs carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    netloc = u.hostname or ""
    if u.port:
        netloc += f":{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, "…" if u.query else "", ""))


def parse_location(location: str) -> Location:
    if location.startswith("hf://"):
        m = _HF_RE.match(location)
        if m is None:
            if _HF_REPO_RE.match(location):
                raise SourceError(location, None, f"name a file: hf://ORG/REPO[@REVISION]/FILE (`ggufx scan {location}` lists the repository's GGUF files)")
            raise SourceError(location, None, "not a Hugging Face reference: expected hf://ORG/REPO/FILE or hf://ORG/REPO@REVISION/FILE")
        from urllib.parse import quote

        repo, rev, file = m["repo"], m["rev"] or "main", m["file"]
        ep = hf_endpoint()
        url = f"{ep}/{repo}/resolve/{quote(rev, safe='')}/{quote(file)}"
        return Location(location, url, origin(ep), (repo, rev, file))
    url = location
    ep = hf_endpoint()
    if origin(url) == origin(ep):
        # a browser link to the Hub's file page: fetch the file, not the HTML page
        url = re.sub(r"^(%s/[^/]+/[^/]+)/blob/" % re.escape(ep), r"\1/resolve/", url)
        return Location(location, url, origin(ep))
    return Location(location, url, None)


def hf_cached_file(repo: str, rev: str, file: str) -> str | None:
    """The local Hugging Face cache's copy of REPO@REV/FILE, if it holds one."""
    from .scan import default_hf_cache

    base = os.path.join(default_hf_cache(), "models--" + repo.replace("/", "--"))
    commit = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None:
        try:
            with open(os.path.join(base, "refs", rev), encoding="utf-8") as f:
                commit = f.read().strip()
        except OSError:
            return None
    path = os.path.join(base, "snapshots", commit, *file.split("/"))
    return path if os.path.isfile(path) else None


def sibling(location: str, name: str) -> str:
    """The location of the file ``name`` in the same folder as ``location``."""
    head, _, _ = location.rpartition("/")
    return f"{head}/{name}"


def basename(location: str) -> str:
    return location.rpartition("/")[2].partition("?")[0]


# -- HTTP --------------------------------------------------------------------------------------

class _Changed(Exception):
    """The file changed on the server between two requests."""

    def __init__(self, before: str | None, after: str | None):
        super().__init__(f"{before} -> {after}")
        self.before, self.after = before, after


class _Response:
    __slots__ = ("status", "headers", "url", "conn", "raw", "linked")

    def __init__(self, status: int, headers: Any, url: str, conn: Any, raw: Any, linked: dict[str, str]):
        self.status, self.headers, self.url, self.conn, self.raw, self.linked = status, headers, url, conn, raw, linked


class HTTPClient:
    """Keep-alive connections per origin (thread-safe), redirects, retries, and the token rule."""

    def __init__(self, config: RemoteConfig, stats: Stats = STATS):
        self.config = config
        self.stats = stats
        self._idle: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._token: tuple[bool, str | None] = (False, None)

    def token(self) -> str | None:
        if not self._token[0]:
            self._token = (True, hf_token())
        return self._token[1]

    # connections
    def _conn(self, url: str) -> Any:
        """An idle keep-alive connection to the URL's origin, or a new one (through the proxy
        that HTTPS_PROXY/HTTP_PROXY/NO_PROXY name, as curl and urllib read them)."""
        import http.client
        from urllib.parse import unquote, urlsplit

        key = origin(url)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        u = urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {u.scheme!r}")
        proxy = _proxy_for(u.scheme, u.hostname or "")
        if proxy is None:
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            return cls(u.hostname, u.port, timeout=self.config.timeout)
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        auth = {}
        if p.username is not None:
            import base64

            cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(cred).decode()}
        pcls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        if u.scheme == "https":  # a CONNECT tunnel: the proxy sees neither the request nor the token
            conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=self.config.timeout)
            conn.set_tunnel(u.hostname, u.port or 443, headers=auth)
            return conn
        conn = pcls(p.hostname, p.port or (443 if p.scheme == "https" else 8080), timeout=self.config.timeout)
        conn._ggufx_proxy_headers = auth  # type: ignore[attr-defined]  # plain http: absolute-form requests
        return conn

    def release(self, url: str, conn: Any) -> None:
        with self._lock:
            self._idle.setdefault(origin(url), []).append(conn)

    def _drop_idle(self, url: str) -> None:
        with self._lock:
            conns = self._idle.pop(origin(url), [])
        for c in conns:
            c.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for v in self._idle.values() for c in v]
            self._idle.clear()
        for c in conns:
            c.close()

    def _log(self, method: str, url: str, rng: str | None, status: int | str, nbytes: int, t0: float,
             new_request: bool = True) -> None:
        entry = {"method": method, "url": redact(url), "range": rng, "status": status, "bytes": nbytes,
                 "ms": round((time.perf_counter() - t0) * 1000, 1)}
        self.stats.add(entry, new_request)
        if self.config.debug:
            r = f" [{rng}]" if rng else ""
            print(f"ggufx: debug: {method} {entry['url']}{r} -> {status}, {nbytes:,} bytes, {entry['ms']:.0f} ms",
                  file=sys.stderr)

    def request(self, method: str, loc: Location, url: str, headers: dict[str, str], *, follow: bool = True,
                stop_at_linked: bool = False) -> _Response:
        """Send one request (following redirects), with retries. The caller reads the body
        (``read_body``) or closes it. Raises SourceError for what retrying cannot fix."""
        attempt = 0
        while True:
            try:
                return self._send(method, loc, url, headers, follow, stop_at_linked)
            except _Retry as r:
                attempt += 1
                if attempt > self.config.retries:
                    raise SourceError(loc.display, None, f"{r.reason}; gave up after {attempt} attempts") from None
                delay = self.config.backoff * (2 ** (attempt - 1))
                if r.retry_after is not None:
                    delay = max(delay, min(r.retry_after, MAX_RETRY_AFTER))
                time.sleep(delay)

    def _send(self, method: str, loc: Location, url: str, headers: dict[str, str], follow: bool,
              stop_at_linked: bool) -> _Response:
        import http.client
        import socket
        from urllib.parse import urljoin

        linked: dict[str, str] = {}
        hops = 0
        while hops <= MAX_REDIRECTS:
            hops += 1
            h = dict(headers)
            h.setdefault("User-Agent", _user_agent())
            tok = self.token() if loc.token_origin is not None else None
            if tok and origin(url) == loc.token_origin:
                h["Authorization"] = f"Bearer {tok}"
            conn = self._conn(url)
            reused = conn.sock is not None  # an idle keep-alive connection the server may have closed
            t0 = time.perf_counter()
            rng = headers.get("Range")
            via = getattr(conn, "_ggufx_proxy_headers", None)
            if via is not None:
                h.update(via)
            try:
                conn.request(method, url if via is not None else _target(url), headers=h)
                resp = conn.getresponse()
            except (socket.timeout, TimeoutError):
                conn.close()
                self._log(method, url, rng, "timeout", 0, t0)
                raise _Retry(f"no response within {self.config.timeout:g} s (timeout)") from None
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                conn.close()
                if reused:  # stale: try the same hop again at once on a new connection (not an attempt)
                    self._drop_idle(url)
                    hops -= 1
                    continue
                self._log(method, url, rng, "dropped", 0, t0)
                raise _Retry(f"connection failed ({_reason(e)})") from None
            status = resp.status
            if status in REDIRECTS and follow:
                for k in ("X-Linked-Etag", "X-Linked-Size"):
                    if resp.getheader(k) is not None and k not in linked:
                        linked[k] = resp.getheader(k)
                target = resp.getheader("Location")
                _drain(resp)
                self._reuse(url, conn, resp)
                self._log(method, url, rng, status, 0, t0)
                if not target:
                    raise SourceError(loc.display, None, f"HTTP {status} redirect without a Location header")
                if stop_at_linked and "X-Linked-Etag" in linked:
                    return _Response(status, resp.headers, url, None, None, linked)
                url = urljoin(url, target)
                if not url.startswith(("http://", "https://")):
                    raise SourceError(loc.display, None, f"redirected to an unsupported URL scheme ({redact(url)})")
                continue
            if status in RETRY_STATUS:
                ra = resp.getheader("Retry-After")
                _drain(resp)
                self._reuse(url, conn, resp)
                self._log(method, url, rng, status, 0, t0)
                raise _Retry(f"HTTP {status} {resp.reason}".rstrip(), _retry_after(ra))
            if status >= 400:
                _drain(resp)
                self._reuse(url, conn, resp)
                self._log(method, url, rng, status, 0, t0)
                raise SourceError(loc.display, None, self._explain(loc, status, resp.reason))
            return _Response(status, resp.headers, url, conn, resp, linked)
        raise SourceError(loc.display, None, f"more than {MAX_REDIRECTS} redirects")

    def _reuse(self, url: str, conn: Any, resp: Any) -> None:
        if resp.will_close:
            conn.close()
        else:
            self.release(url, conn)

    def _explain(self, loc: Location, status: int, reason: str) -> str:
        what = f"HTTP {status} {reason}".rstrip()
        hub = loc.token_origin is not None
        if status in (401, 403):
            if hub and self.token():
                return f"{what}: your HF_TOKEN has no access to this repository (gated: accept its terms on the Hub; private: use a token of an account with access)"
            if hub:
                return f"{what}: the repository is gated or private; set HF_TOKEN to a token with access (huggingface.co/settings/tokens)"
            return f"{what}: the server refused access to this URL"
        if status == 404:
            if loc.hf is not None:
                repo, rev, file = loc.hf
                if not file:
                    return f"{what}: no repository {repo} with a revision {rev!r} (check the name and the @REVISION)"
                return f"{what}: no file {file!r} at revision {rev!r} of {repo} (check the repository, the @REVISION and the file name)"
            return f"{what}: no such file on the server"
        if status == 416:
            return f"{what}: the server has an empty file"
        return what

    def timed_read(self, resp: _Response, n: int | None, method: str, rng: str | None, t0: float,
                   new_request: bool = True) -> bytes:
        """Read the body (or ``n`` bytes of it), count it, and give the connection back."""
        import http.client
        import socket

        try:
            data = resp.raw.read() if n is None else resp.raw.read(n)
        except (socket.timeout, TimeoutError):
            resp.conn.close()
            self._log(method, resp.url, rng, "timeout", 0, t0)
            raise _Retry(f"the body did not arrive within {self.config.timeout:g} s (timeout)") from None
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            resp.conn.close()
            self._log(method, resp.url, rng, "dropped", 0, t0)
            raise _Retry(f"connection dropped mid-body ({_reason(e)})") from None
        self._log(method, resp.url, rng, resp.status, len(data), t0, new_request)
        if n is None:
            self._reuse(resp.url, resp.conn, resp.raw)
        return data


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL for ``scheme://host`` from the environment (never for loopback hosts)."""
    import urllib.request

    if host in _LOOPBACK or host.startswith("127."):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None
    try:
        if urllib.request.proxy_bypass(host):
            return None
    except OSError:  # pragma: no cover - platform lookups
        pass
    return proxy


def _target(url: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return (u.path or "/") + (f"?{u.query}" if u.query else "")


def _drain(resp: Any) -> None:
    try:
        resp.read()
    except Exception:
        pass


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _reason(e: BaseException) -> str:
    return type(e).__name__ + (f": {e}" if str(e) else "")


def _user_agent() -> str:
    from . import __version__

    return f"ggufx/{__version__}"


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _validator(resp: _Response) -> str | None:
    """What identifies this version of the file: ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag:
        return etag
    lm = resp.headers.get("Last-Modified")
    return f"lm:{lm}" if lm else None


class HTTPSource:
    """A remote file read with range requests. The constructor fetches the first block."""

    def __init__(self, loc: Location, client: HTTPClient, first: int = FIRST_BLOCK):
        self.loc = loc
        self.path = loc.display
        self.client = client
        self.growth = REMOTE_GROWTH
        self.requests = 0
        self.bytes_read = 0
        self._stream: _Response | None = None
        self._buf = b""  # the first block, or everything streamed so far
        resp, data, t0 = self._get(loc.url, 0, first - 1, first=True)
        self.url = resp.url  # after redirects: later ranges go straight there
        self.linked_etag = resp.linked.get("X-Linked-Etag")
        self.validator = _validator(resp)
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
            if m is None or m[3] == "*" or int(m[1]) != 0:
                raise SourceError(self.path, None, f"the server sent a malformed Content-Range ({resp.headers.get('Content-Range')!r})")
            self.size = int(m[3])
            self._buf = data
        else:  # 200: the server ignores Range and sends the whole file
            length = resp.headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() else -1
            if not client.config.allow_full_download:
                resp.conn.close()
                client._log("GET", resp.url, f"bytes=0-{first - 1}", 200, 0, t0)
                size = f" of {self.size:,} bytes" if self.size >= 0 else ""
                raise SourceError(self.path, None, f"the server does not support range requests (HTTP 200 instead of 206): reading the header would start a full download{size}; pass --allow-full-download to stream it and stop after the header")
            if self.size < 0:
                resp.conn.close()
                raise SourceError(self.path, None, "the server supports neither range requests nor Content-Length")
            self._stream = resp
            self._stream_t0 = t0
            self._buf = b""
            self._buf = self._stream_more(first)
        self._strong = self.validator if self.validator and not self.validator.startswith(("W/", "lm:")) else None

    @property
    def cache_validator(self) -> str | None:
        return self.linked_etag or self.validator

    def _get(self, url: str, start: int, end: int, first: bool = False) -> tuple[_Response, bytes, float]:
        client = self.client
        rng = f"bytes={start}-{end}"
        headers = {"Range": rng, "Accept-Encoding": "identity"}
        if not first and self._strong:
            headers["If-Range"] = self._strong
        attempt = 0
        while True:
            t0 = time.perf_counter()
            resp = client.request("GET", self.loc, url, headers)
            self.requests += 1
            if resp.status == 200 and first:
                return resp, b"", t0
            if resp.status != 206:
                resp.conn.close()
                client._log("GET", resp.url, rng, resp.status, 0, t0)
                if resp.status == 200:  # If-Range failed: the file is not the one we started on
                    raise _Changed(self.validator, _validator(resp))
                raise SourceError(self.path, start, f"unexpected HTTP {resp.status} for a range request")
            try:
                data = client.timed_read(resp, None, "GET", rng, t0)
            except _Retry as r:
                attempt += 1
                if attempt > client.config.retries:
                    raise SourceError(self.path, start, f"{r.reason}; gave up after {attempt} attempts") from None
                time.sleep(client.config.backoff * (2 ** (attempt - 1)))
                continue
            self.bytes_read += len(data)
            if not first:
                v = _validator(resp)
                if v != self.validator:
                    raise _Changed(self.validator, v)
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                if m is None or int(m[1]) != start or m[3] != str(self.size):
                    raise _Changed(self.validator, f"Content-Range {resp.headers.get('Content-Range')}")
            expected = end - start + 1 if first is False else None
            if expected is not None and len(data) != min(expected, self.size - start):
                raise SourceError(self.path, start, f"the server sent {len(data):,} bytes for a {expected:,}-byte range")
            return resp, data, t0

    def _stream_more(self, upto: int) -> bytes:
        want = min(upto, self.size) - len(self._buf)
        if want <= 0:
            return self._buf
        t0 = time.perf_counter()
        try:
            chunk = self.client.timed_read(self._stream, want, "GET", f"stream {len(self._buf)}-{len(self._buf) + want - 1}",
                                           t0, new_request=not self._buf)
        except _Retry as r:
            raise SourceError(self.path, len(self._buf), f"{r.reason} (a streamed download cannot resume)") from None
        self.bytes_read += len(chunk)
        if len(chunk) != want:
            raise SourceError(self.path, len(self._buf) + len(chunk), "the server closed the connection before the header was complete")
        return self._buf + chunk

    def read(self, offset: int, n: int) -> bytes:
        end = offset + n
        cap = self.client.config.max_header_bytes
        if end > cap:
            raise SourceError(self.path, offset, f"the header would need more than {cap:,} bytes (reading {end:,}); "
                                                 "refusing to download that much metadata")
        if self._stream is not None:
            if end > len(self._buf):
                self._buf = self._stream_more(end)
            return self._buf[offset:end]
        if end <= len(self._buf):
            return self._buf[offset:end]
        if offset < len(self._buf):
            head = self._buf[offset:]
            offset += len(head)
        else:
            head = b""
        _, data, _ = self._get(self.url, offset, end - 1)
        return head + data

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.conn.close()
            finally:
                self._stream = None


class _CachedSource:
    """A cached header prefix presented as the remote file; reading past it is a cache miss."""

    class Miss(Exception):
        pass

    def __init__(self, path: str, data: bytes, size: int):
        self.path, self._data, self.size = path, data, size
        self.available = len(data)

    def read(self, offset: int, n: int) -> bytes:
        if offset + n > len(self._data):
            raise _CachedSource.Miss()
        return self._data[offset:offset + n]


# -- header cache ------------------------------------------------------------------------------

def _cache_paths(cache_dir: str, url: str) -> tuple[str, str]:
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    return os.path.join(cache_dir, key + ".json"), os.path.join(cache_dir, key + ".bin")


def _cache_load(cache_dir: str, url: str) -> tuple[dict[str, Any], bytes] | None:
    meta_path, bin_path = _cache_paths(cache_dir, url)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        with open(bin_path, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("url") != url:
        return None
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    try:
        os.utime(bin_path)  # recently used: pruned last
    except OSError:
        pass
    return meta, data


def _cache_store(cache_dir: str, url: str, validator: str, size: int, data: bytes) -> None:
    meta = {"format": CACHE_FORMAT, "url": url, "validator": validator, "size": size,
            "sha256": hashlib.sha256(data).hexdigest(), "stored": int(time.time())}
    meta_path, bin_path = _cache_paths(cache_dir, url)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for path, payload in ((bin_path, data), (meta_path, json.dumps(meta).encode())):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        _cache_prune(cache_dir, CACHE_MAX_BYTES)
    except OSError:
        pass  # a cache that cannot be written is only slower


def _cache_prune(cache_dir: str, limit: int) -> None:
    """Delete the least recently used entries until the cache holds at most ``limit`` bytes."""
    entries = []
    total = 0
    for name in os.listdir(cache_dir):
        if name.endswith(".bin"):
            p = os.path.join(cache_dir, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
            total += st.st_size
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        for victim in (p, p[:-4] + ".json"):
            try:
                os.unlink(victim)
            except OSError:
                pass
        total -= size


def _head_validator(client: HTTPClient, loc: Location) -> tuple[str | None, int | None]:
    """(validator, size) from one HEAD request; on the Hub the first redirect's X-Linked-Etag."""
    t0 = time.perf_counter()
    resp = client.request("HEAD", loc, loc.url, {"Accept-Encoding": "identity"}, stop_at_linked=True)
    if resp.raw is not None:
        _drain(resp.raw)
        client._log("HEAD", resp.url, None, resp.status, 0, t0)
        client._reuse(resp.url, resp.conn, resp.raw)
    if "X-Linked-Etag" in resp.linked:
        size = resp.linked.get("X-Linked-Size")
        return resp.linked["X-Linked-Etag"], int(size) if size and size.isdigit() else None
    length = resp.headers.get("Content-Length")
    return _validator(resp), int(length) if length and length.isdigit() else None


# -- opening -----------------------------------------------------------------------------------

_CLIENT: HTTPClient | None = None


def client(config: RemoteConfig | None = None) -> HTTPClient:
    global _CLIENT
    cfg = config or CONFIG
    if _CLIENT is None or _CLIENT.config is not cfg:
        _CLIENT = HTTPClient(cfg)
    return _CLIENT


def parse_remote_header(location: str, config: RemoteConfig | None = None):
    """Parse the header of one remote file (no shard logic): cache, network, one restart on change."""
    from .reader import parse_header

    cfg = config or CONFIG
    loc = parse_location(location)
    cl = client(cfg)
    cached = _cache_load(cfg.cache_dir, loc.url) if cfg.cache_dir else None
    if cached is not None:
        meta, data = cached
        fresh = cfg.offline
        if not fresh:
            v, size = _head_validator(cl, loc)
            fresh = v is not None and v == meta["validator"] and (size is None or size == meta["size"])
        if fresh:
            try:
                return parse_header(_CachedSource(location, data, meta["size"]))
            except _CachedSource.Miss:
                if cfg.offline:
                    raise SourceError(location, None, "the cached header is incomplete and --offline forbids the network") from None
    elif cfg.offline:
        raise SourceError(location, None, "not in the header cache, and --offline forbids the network (run once online, or drop --offline)")
    changed: _Changed | None = None
    for _ in range(2):
        src = HTTPSource(loc, cl)
        try:
            h = parse_header(src)
        except _Changed as e:
            changed = e
            continue
        finally:
            src.close()
        v = src.cache_validator
        if cfg.cache_dir and v and src._stream is None:
            _cache_store(cfg.cache_dir, loc.url, v, src.size, bytes(h.buf[:h.header_end]))  # no tensor data
        return h
    assert changed is not None
    raise SourceError(location, None, f"the file changed on the server while its header was read, twice (validator {changed.before} became {changed.after}); try again later")


_HF_REPO_RE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/?$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
MAX_LISTING_PAGES = 100


def is_hf_repo(location: str) -> bool:
    """``hf://ORG/REPO`` or ``hf://ORG/REPO@REV`` (no file): a repository to list."""
    return _HF_REPO_RE.match(location) is not None


def hf_repo_files(location: str, config: RemoteConfig | None = None) -> list[tuple[str, int | None]]:
    """(path in the repository, size) of every file of ``hf://ORG/REPO[@REV]``, from the Hub's
    tree listing (``/api/models/REPO/tree/REV?recursive=true``, following its ``Link`` pages)."""
    from urllib.parse import quote, urljoin

    m = _HF_REPO_RE.match(location)
    if m is None:
        raise SourceError(location, None, "not a Hugging Face repository: expected hf://ORG/REPO or hf://ORG/REPO@REVISION")
    repo, rev = m["repo"], m["rev"] or "main"
    ep = hf_endpoint()
    cfg = config or CONFIG
    if cfg.offline:
        raise SourceError(location, None, "listing a repository needs the network, and --offline forbids it")
    url: str | None = f"{ep}/api/models/{repo}/tree/{quote(rev, safe='')}?recursive=true"
    loc = Location(location, url, origin(ep), (repo, rev, ""))
    cl = client(cfg)
    files: list[tuple[str, int | None]] = []
    for _ in range(MAX_LISTING_PAGES):
        if url is None:
            break
        t0 = time.perf_counter()
        resp = cl.request("GET", loc, url, {"Accept": "application/json", "Accept-Encoding": "identity"})
        try:
            body = cl.timed_read(resp, None, "GET", None, t0)
        except _Retry as r:
            raise SourceError(location, None, f"listing the repository failed: {r.reason}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise SourceError(location, None, "the Hub's file listing is not JSON") from None
        if not isinstance(doc, list):
            raise SourceError(location, None, "the Hub's file listing is not a list of files")
        for e in doc:
            if isinstance(e, dict) and e.get("type") == "file" and isinstance(e.get("path"), str):
                size = e.get("lfs", {}).get("size") if isinstance(e.get("lfs"), dict) else e.get("size")
                files.append((e["path"], size if isinstance(size, int) else None))
        nxt = _LINK_NEXT.search(resp.headers.get("Link") or "")
        url = urljoin(url, nxt[1]) if nxt else None
    return files


def resolve_local(location: str) -> str | None:
    """A local path for ``location`` if no network is needed (an hf:// file in the HF cache)."""
    if location.startswith("hf://"):
        loc = parse_location(location)
        assert loc.hf is not None
        return hf_cached_file(*loc.hf)
    return None


def open_remote(location: str, config: RemoteConfig | None = None):
    """A :class:`~ggufx.model.GGUFModel` for a URL or hf:// reference, reading headers only."""
    from .model import assemble_shards, open_model

    local = resolve_local(location)
    if local is not None:
        return open_model(local)
    cfg = config or CONFIG
    head = parse_remote_header(location, cfg)

    def parse_many(locations: list[str]) -> list[Any]:
        if len(locations) <= 1:
            return [parse_remote_header(x, cfg) for x in locations]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(cfg.workers, len(locations))) as pool:
            return list(pool.map(lambda x: parse_remote_header(x, cfg), locations))

    return assemble_shards(location, head, basename(location), lambda name: sibling(location, name), parse_many)


def describe_error(e: GGUFError) -> str:  # pragma: no cover - convenience for callers
    return e.one_line()
