"""A small HTTP/1.1 client for range reads: keep-alive pool, redirects, retries, the token rule.

The standard library's ``http.client``, on purpose: persistent connections pooled here (a range
read over keep-alive costs one round trip, not a TCP and TLS handshake), redirects followed here
(so an ``Authorization`` header never crosses to another origin: the Hub redirects to a CDN),
proxies from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, and no dependency. 429 and 5xx answers,
dropped connections and timeouts are retried with exponential back-off (``Retry-After`` honoured
up to a bound); 401/403/404 become one-line errors that say what to do. Every request is counted
in a :class:`Stats` and, with ``debug``, logged without its query string or credentials.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ggufx.errors import SourceError

REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 10
MAX_RETRY_AFTER = 30.0


class Stats:
    """Requests and bytes on the wire since the last :meth:`reset` (all threads). What is added
    to it is added to ``parent`` too (a client's own counters roll up into the process's)."""

    def __init__(self, parent: Stats | None = None) -> None:
        self._lock = threading.Lock()
        self.parent = parent
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
        if self.parent is not None:
            self.parent.add(entry, new_request)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes": self.bytes}


@dataclass(frozen=True)
class Location:
    """A remote file: what the user typed (``display``, used in every message) and what is fetched."""

    display: str
    url: str
    token_origin: str | None  # scheme://host[:port] that may see the token
    # what a refusal means for this location (the Hub's gated repositories, a missing revision...):
    # explain(status, token_sent) -> text, or None for the generic message
    explain: Callable[[int, bool], str | None] | None = None


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


class Response:
    __slots__ = ("status", "headers", "url", "conn", "raw", "linked")

    def __init__(self, status: int, headers: Any, url: str, conn: Any, raw: Any, linked: dict[str, str]):
        self.status, self.headers, self.url, self.conn, self.raw, self.linked = status, headers, url, conn, raw, linked


class ClientConfig(Protocol):
    """What the client reads of its options (:class:`ggufx.io.remote.RemoteConfig` has more)."""

    timeout: float  # seconds per connect and per read
    retries: int  # attempts after the first
    backoff: float  # seconds, doubled per attempt
    debug: bool  # log every request on stderr


# covariant: an HTTPClient[RemoteConfig] is an HTTPClient[ClientConfig] (hub.py reads no option of its own)
ConfigT = TypeVar("ConfigT", bound=ClientConfig, covariant=True)


class HTTPClient(Generic[ConfigT]):
    """Keep-alive connections per origin (thread-safe), redirects, retries, and the token rule."""

    def __init__(self, config: ConfigT, stats: Stats, token: Callable[[], str | None] | None = None):
        """``config`` has (at least) ``timeout``, ``retries``, ``backoff`` and ``debug``; ``token``
        gives the bearer token sent to ``Location.token_origin`` (none by default)."""
        self.config = config
        self.stats = stats
        self._token_source = token
        self._idle: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._token: tuple[bool, str | None] = (False, None)

    def token(self) -> str | None:
        if not self._token[0]:
            self._token = (True, self._token_source() if self._token_source is not None else None)
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
        if not u.hostname:
            raise ValueError(f"no host in the URL {redact(url)!r}")
        host = u.hostname
        proxy = _proxy_for(u.scheme, host)
        conn: http.client.HTTPConnection
        if proxy is None:
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            return cls(host, u.port, timeout=self.config.timeout)
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if not p.hostname:
            raise ValueError(f"no host in the proxy URL {redact(proxy)!r}")
        auth = {}
        if p.username is not None:
            import base64

            cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(cred).decode()}
        pcls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        if u.scheme == "https":  # a CONNECT tunnel: the proxy sees neither the request nor the token
            conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=self.config.timeout)
            conn.set_tunnel(host, u.port or 443, headers=auth)
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

    def log_request(
        self,
        method: str,
        url: str,
        rng: str | None,
        status: int | str,
        nbytes: int,
        t0: float,
        new_request: bool = True,
    ) -> None:
        entry = {
            "method": method,
            "url": redact(url),
            "range": rng,
            "status": status,
            "bytes": nbytes,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        self.stats.add(entry, new_request)
        if self.config.debug:
            r = f" [{rng}]" if rng else ""
            print(
                f"ggufx: debug: {method} {entry['url']}{r} -> {status}, {nbytes:,} bytes, {entry['ms']:.0f} ms",
                file=sys.stderr,
            )

    def request(
        self,
        method: str,
        loc: Location,
        url: str,
        headers: dict[str, str],
        *,
        follow: bool = True,
        stop_at_linked: bool = False,
    ) -> Response:
        """Send one request (following redirects), with retries. The caller reads the body
        (``read_body``) or closes it. Raises SourceError for what retrying cannot fix."""
        attempt = 0
        while True:
            try:
                return self._send(method, loc, url, headers, follow, stop_at_linked)
            except Retry as r:
                attempt += 1
                if attempt > self.config.retries:
                    raise SourceError(loc.display, None, f"{r.reason}; gave up after {attempt} attempts") from None
                delay = self.config.backoff * (2 ** (attempt - 1))
                if r.retry_after is not None:
                    delay = max(delay, min(r.retry_after, MAX_RETRY_AFTER))
                time.sleep(delay)

    def _send(
        self, method: str, loc: Location, url: str, headers: dict[str, str], follow: bool, stop_at_linked: bool
    ) -> Response:
        import http.client
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
            except TimeoutError:
                conn.close()
                self.log_request(method, url, rng, "timeout", 0, t0)
                raise Retry(f"no response within {self.config.timeout:g} s (timeout)") from None
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                conn.close()
                if reused:  # stale: try the same hop again at once on a new connection (not an attempt)
                    self._drop_idle(url)
                    hops -= 1
                    continue
                self.log_request(method, url, rng, "dropped", 0, t0)
                raise Retry(f"connection failed ({_reason(e)})") from None
            status = resp.status
            if status in REDIRECTS and follow:
                for k in ("X-Linked-Etag", "X-Linked-Size"):
                    if resp.getheader(k) is not None and k not in linked:
                        linked[k] = resp.getheader(k)
                target = resp.getheader("Location")
                drain(resp)
                self._reuse(url, conn, resp)
                self.log_request(method, url, rng, status, 0, t0)
                if not target:
                    raise SourceError(loc.display, None, f"HTTP {status} redirect without a Location header")
                if stop_at_linked and "X-Linked-Etag" in linked:
                    return Response(status, resp.headers, url, None, None, linked)
                url = urljoin(url, target)
                if not url.startswith(("http://", "https://")):
                    raise SourceError(loc.display, None, f"redirected to an unsupported URL scheme ({redact(url)})")
                continue
            if status in RETRY_STATUS:
                ra = resp.getheader("Retry-After")
                drain(resp)
                self._reuse(url, conn, resp)
                self.log_request(method, url, rng, status, 0, t0)
                raise Retry(f"HTTP {status} {resp.reason}".rstrip(), _retry_after(ra))
            if status >= 400:
                drain(resp)
                self._reuse(url, conn, resp)
                self.log_request(method, url, rng, status, 0, t0)
                raise SourceError(loc.display, None, self._explain(loc, status, resp.reason))
            return Response(status, resp.headers, url, conn, resp, linked)
        raise SourceError(loc.display, None, f"more than {MAX_REDIRECTS} redirects")

    def _reuse(self, url: str, conn: Any, resp: Any) -> None:
        if resp.will_close:
            conn.close()
        else:
            self.release(url, conn)

    def _explain(self, loc: Location, status: int, reason: str) -> str:
        what = f"HTTP {status} {reason}".rstrip()
        if loc.explain is not None:
            specific = loc.explain(status, loc.token_origin is not None and bool(self.token()))
            if specific:
                return f"{what}: {specific}"
        if status in (401, 403):
            return f"{what}: the server refused access to this URL"
        if status == 404:
            return f"{what}: no such file on the server"
        if status == 416:
            return f"{what}: the server has an empty file"
        return what

    def timed_read(
        self, resp: Response, n: int | None, method: str, rng: str | None, t0: float, new_request: bool = True
    ) -> bytes:
        """Read the body (or ``n`` bytes of it), count it, and give the connection back."""
        import http.client

        try:
            data = resp.raw.read() if n is None else resp.raw.read(n)
        except TimeoutError:
            resp.conn.close()
            self.log_request(method, resp.url, rng, "timeout", 0, t0)
            raise Retry(f"the body did not arrive within {self.config.timeout:g} s (timeout)") from None
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            resp.conn.close()
            self.log_request(method, resp.url, rng, "dropped", 0, t0)
            raise Retry(f"connection dropped mid-body ({_reason(e)})") from None
        self.log_request(method, resp.url, rng, resp.status, len(data), t0, new_request)
        if n is None:
            self._reuse(resp.url, resp.conn, resp.raw)
        return data


class Retry(Exception):
    """A failure worth another attempt (429/5xx, a dropped connection, a timeout)."""

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


def drain(resp: Any) -> None:
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
    from ggufx._version import __version__

    return f"ggufx/{__version__}"


def validator(resp: Response) -> str | None:
    """What identifies this version of the file: ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag:
        return etag
    lm = resp.headers.get("Last-Modified")
    return f"lm:{lm}" if lm else None
