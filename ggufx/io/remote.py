"""Remote models: ``https://`` URLs and ``hf://ORG/REPO[@REV]/FILE`` read through HTTP range requests.

Only the header crosses the network. :class:`HTTPSource` is a byte source like
:class:`~ggufx.io.sources.FileSource`: its first request fetches the first block and learns the file's
size from ``Content-Range``; later reads are range requests sized by the parser's growth policy
(a 262,144-token vocabulary costs three requests and ~7 MB for a 253 MB file). The HTTP rules
(pool, redirects, retries, the token, proxies) are :mod:`ggufx.io.http`'s; ``hf://`` and the
Hugging Face cache are :mod:`ggufx.io.hub`'s.

Here:

* A server that ignores ``Range`` (200 instead of 206) is refused unless ``allow_full_download``;
  then the body is streamed and closed as soon as the header is parsed.
* Every response after the first must carry the first one's validator (``ETag``, else
  ``Last-Modified``; sent as ``If-Range`` too). A change mid-read restarts the parse once, then is
  an error.
* Parsed headers are cached (``cache_dir``) keyed by URL and validated by ``ETag``: a second look
  costs one ``HEAD`` request, or none with ``offline``. The cache keeps the most recently used
  headers up to 1 GiB.
* Split models: the siblings of a shard are found by name and their headers read in parallel.

Options are passed explicitly: every function here takes a :class:`RemoteConfig` (the CLI builds one
per invocation with :func:`new_config`, the MCP server one for its lifetime) and falls back to the
module's :data:`CONFIG`, the library's default, only when given none. Each config has its own
:class:`~ggufx.io.http.HTTPClient` (:func:`client`), so its keep-alive connections and request
counters belong to it; :data:`STATS` adds up every client of the process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ggufx.errors import SourceError
from ggufx.io.header_index import default_cache_dir
from ggufx.io.http import HTTPClient, Location, Response, Retry, Stats, drain, validator

if TYPE_CHECKING:  # the parser is imported when a header is parsed, not with this module
    from ggufx.format.reader import GGUFHeader

FIRST_BLOCK = 1 << 20
REMOTE_GROWTH = 1.5  # see reader._Cursor.need: less overshoot than the local doubling
CACHE_FORMAT = 1
CACHE_MAX_BYTES = 1 << 30  # the header cache keeps the most recently used entries up to this size


@dataclass
class RemoteConfig:
    """How remote sources behave. The CLI builds one per invocation from its options
    (:func:`new_config`); the library uses :data:`CONFIG` where none is passed."""

    cache_dir: str | None = field(default_factory=lambda: default_cache_dir())
    offline: bool = False
    allow_full_download: bool = False
    timeout: float = 30.0  # seconds per connect and per read
    retries: int = 4  # attempts after the first, for 429/5xx/dropped/timeouts
    backoff: float = 0.5  # seconds, doubled per attempt
    debug: bool = False  # log every request (URL without query, status, bytes, time) on stderr
    workers: int = 8  # parallel shard headers
    max_header_bytes: int = 512 << 20  # a header claiming more is refused (a hostile server or file)
    # the HTTP client of this config (made by client() on first use; a copy starts without one)
    _client: HTTPClient[RemoteConfig] | None = field(default=None, init=False, repr=False, compare=False)


def _env_offline() -> bool:
    return any(os.environ.get(v) not in (None, "", "0") for v in ("GGUFX_OFFLINE", "HF_HUB_OFFLINE"))


BASE = RemoteConfig(offline=_env_offline())  # the defaults (and environment) each new_config() starts from
CONFIG = dataclasses.replace(BASE)  # the library's default where no config is passed (callers may change it)

STATS = Stats()  # requests and bytes of this process: every config's client adds to it


def new_config(**changes: Any) -> RemoteConfig:
    """A fresh config: the defaults (:data:`BASE`, with the environment's ``GGUFX_*`` and
    ``HF_HUB_OFFLINE``) with ``changes`` (field names of :class:`RemoteConfig`)."""
    return dataclasses.replace(BASE, **changes)


# -- locations ---------------------------------------------------------------------------------


def sibling(location: str, name: str) -> str:
    """The location of the file ``name`` in the same folder as ``location``."""
    head, _, _ = location.rpartition("/")
    return f"{head}/{name}"


def basename(location: str) -> str:
    return location.rpartition("/")[2].partition("?")[0]


# -- the byte source ---------------------------------------------------------------------------


class _Changed(Exception):
    """The file changed on the server between two requests."""

    def __init__(self, before: str | None, after: str | None):
        super().__init__(f"{before} -> {after}")
        self.before, self.after = before, after


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HTTPSource:
    """A remote file read with range requests. The constructor fetches the first block."""

    def __init__(self, loc: Location, client: HTTPClient[RemoteConfig], first: int = FIRST_BLOCK):
        self.loc = loc
        self.path = loc.display
        self.client = client
        self.growth = REMOTE_GROWTH
        self._stream: Response | None = None
        self._buf = b""  # the first block, or everything streamed so far
        resp, data, t0 = self._get(loc.url, 0, first - 1, first=True)
        self.url = resp.url  # after redirects: later ranges go straight there
        self.linked_etag = resp.linked.get("X-Linked-Etag")
        self.validator = validator(resp)
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
            if m is None or m[3] == "*" or int(m[1]) != 0:
                raise SourceError(
                    self.path,
                    None,
                    f"the server sent a malformed Content-Range ({resp.headers.get('Content-Range')!r})",
                )
            self.size = int(m[3])
            self._buf = data
        else:  # 200: the server ignores Range and sends the whole file
            length = resp.headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() else -1
            if not client.config.allow_full_download:
                resp.conn.close()
                client.log_request("GET", resp.url, f"bytes=0-{first - 1}", 200, 0, t0)
                size = f" of {self.size:,} bytes" if self.size >= 0 else ""
                raise SourceError(
                    self.path,
                    None,
                    f"the server does not support range requests (HTTP 200 instead of 206): reading the header would start a full download{size}; pass --allow-full-download to stream it and stop after the header",
                )
            if self.size < 0:
                resp.conn.close()
                raise SourceError(self.path, None, "the server supports neither range requests nor Content-Length")
            self._stream = resp
            self._buf = self._stream_more(first)
        self._strong = self.validator if self.validator and not self.validator.startswith(("W/", "lm:")) else None

    @property
    def cache_validator(self) -> str | None:
        return self.linked_etag or self.validator

    def _get(self, url: str, start: int, end: int, first: bool = False) -> tuple[Response, bytes, float]:
        client = self.client
        rng = f"bytes={start}-{end}"
        headers = {"Range": rng, "Accept-Encoding": "identity"}
        if not first and self._strong:
            headers["If-Range"] = self._strong
        attempt = 0
        while True:
            t0 = time.perf_counter()
            resp = client.request("GET", self.loc, url, headers)
            if resp.status == 200 and first:
                return resp, b"", t0
            if resp.status != 206:
                resp.conn.close()
                client.log_request("GET", resp.url, rng, resp.status, 0, t0)
                if resp.status == 200:  # If-Range failed: the file is not the one we started on
                    raise _Changed(self.validator, validator(resp))
                raise SourceError(self.path, start, f"unexpected HTTP {resp.status} for a range request")
            try:
                data = client.timed_read(resp, None, "GET", rng, t0)
            except Retry as r:
                attempt += 1
                if attempt > client.config.retries:
                    raise SourceError(self.path, start, f"{r.reason}; gave up after {attempt} attempts") from None
                time.sleep(client.config.backoff * (2 ** (attempt - 1)))
                continue
            if not first:
                v = validator(resp)
                if v != self.validator:
                    raise _Changed(self.validator, v)
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                if m is None or int(m[1]) != start or m[3] != str(self.size):
                    raise _Changed(self.validator, f"Content-Range {resp.headers.get('Content-Range')}")
            expected = end - start + 1 if first is False else None
            if expected is not None and len(data) != min(expected, self.size - start):
                raise SourceError(
                    self.path, start, f"the server sent {len(data):,} bytes for a {expected:,}-byte range"
                )
            return resp, data, t0

    def _stream_more(self, upto: int) -> bytes:
        want = min(upto, self.size) - len(self._buf)
        if want <= 0:
            return self._buf
        assert self._stream is not None, "only a streamed body grows"
        t0 = time.perf_counter()
        try:
            chunk = self.client.timed_read(
                self._stream,
                want,
                "GET",
                f"stream {len(self._buf)}-{len(self._buf) + want - 1}",
                t0,
                new_request=not self._buf,
            )
        except Retry as r:
            raise SourceError(self.path, len(self._buf), f"{r.reason} (a streamed download cannot resume)") from None
        if len(chunk) != want:
            raise SourceError(
                self.path,
                len(self._buf) + len(chunk),
                "the server closed the connection before the header was complete",
            )
        return self._buf + chunk

    def read(self, offset: int, n: int) -> bytes:
        end = offset + n
        cap = self.client.config.max_header_bytes
        if end > cap:
            raise SourceError(
                self.path,
                offset,
                f"the header would need more than {cap:,} bytes (reading {end:,}); "
                "refusing to download that much metadata",
            )
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

    @property
    def streamed(self) -> bool:
        """True when the server ignored ``Range`` and the body is being streamed (not cacheable)."""
        return self._stream is not None

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
        return self._data[offset : offset + n]


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
    meta = {
        "format": CACHE_FORMAT,
        "url": url,
        "validator": validator,
        "size": size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "stored": int(time.time()),
    }
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


def _head_validator(client: HTTPClient[RemoteConfig], loc: Location) -> tuple[str | None, int | None]:
    """(validator, size) from one HEAD request; on the Hub the first redirect's X-Linked-Etag."""
    t0 = time.perf_counter()
    resp = client.request("HEAD", loc, loc.url, {"Accept-Encoding": "identity"}, stop_at_linked=True)
    if resp.raw is not None:
        drain(resp.raw)
        client.log_request("HEAD", resp.url, None, resp.status, 0, t0)
        client._reuse(resp.url, resp.conn, resp.raw)
    if "X-Linked-Etag" in resp.linked:
        size = resp.linked.get("X-Linked-Size")
        return resp.linked["X-Linked-Etag"], int(size) if size and size.isdigit() else None
    length = resp.headers.get("Content-Length")
    return validator(resp), int(length) if length and length.isdigit() else None


# -- opening -----------------------------------------------------------------------------------

_CLIENT_LOCK = threading.Lock()


def client(config: RemoteConfig | None = None) -> HTTPClient[RemoteConfig]:
    """The HTTP client of ``config`` (default :data:`CONFIG`): one per config, made on first use,
    so later requests with the same options reuse its keep-alive connections. It counts requests
    in its own ``stats`` (:func:`stats_of`) and in :data:`STATS`."""
    cfg = CONFIG if config is None else config
    with _CLIENT_LOCK:  # the shards of a split model ask from several threads at once
        if cfg._client is None:
            from ggufx.io.hub import hf_token

            cfg._client = HTTPClient(cfg, Stats(parent=STATS), token=hf_token)
        return cfg._client


def stats_of(config: RemoteConfig) -> Stats:
    """The requests and bytes made with ``config`` so far (none if it never made a client)."""
    return config._client.stats if config._client is not None else Stats()


def parse_remote_header(location: str, config: RemoteConfig | None = None) -> GGUFHeader:
    """Parse the header of one remote file (no shard logic): cache, network, one restart on change."""
    from ggufx.format.reader import parse_header
    from ggufx.io.hub import parse_location

    cfg = CONFIG if config is None else config
    loc = parse_location(location)
    cl = client(cfg)
    cached = _cache_load(cfg.cache_dir, loc.url) if cfg.cache_dir else None
    if cached is not None:
        meta, data = cached
        fresh = cfg.offline
        if not fresh:
            try:
                v, size = _head_validator(cl, loc)
            except SourceError:  # no HEAD support (405), or worse: the GET below says which
                v, size = None, None
            fresh = v is not None and v == meta["validator"] and (size is None or size == meta["size"])
        if fresh:
            try:
                return parse_header(_CachedSource(location, data, meta["size"]))
            except _CachedSource.Miss:
                if cfg.offline:
                    raise SourceError(
                        location, None, "the cached header is incomplete and --offline forbids the network"
                    ) from None
    elif cfg.offline:
        raise SourceError(
            location,
            None,
            "not in the header cache, and --offline forbids the network (run once online, or drop --offline)",
        )
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
        if cfg.cache_dir and v and not src.streamed:
            _cache_store(cfg.cache_dir, loc.url, v, src.size, bytes(h.buf[: h.header_end]))  # no tensor data
        return h
    assert changed is not None
    raise SourceError(
        location,
        None,
        f"the file changed on the server while its header was read, twice (validator {changed.before} became {changed.after}); try again later",
    )


def resolve_local(location: str) -> str | None:
    """A local path for ``location`` if no network is needed (an hf:// file in the HF cache)."""
    if location.startswith("hf://"):
        from ggufx.io.hub import hf_cached_file, hf_reference, parse_location

        parse_location(location)  # a malformed reference is an error here too
        ref = hf_reference(location)
        return hf_cached_file(*ref) if ref is not None else None
    return None


def list_hf_repo(location: str, config: RemoteConfig | None = None) -> list[tuple[str, int | None]]:
    """(path, size) of every file of the Hub repository ``hf://ORG/REPO[@REV]``."""
    from ggufx.io.hub import hf_repo_files

    cfg = CONFIG if config is None else config
    return hf_repo_files(location, client(cfg), cfg.offline)


def parse_remote_headers(locations: list[str], config: RemoteConfig | None = None) -> list[GGUFHeader]:
    """:func:`parse_remote_header` of several files, in parallel (the shards of a split model)."""
    cfg = CONFIG if config is None else config
    if len(locations) <= 1:
        return [parse_remote_header(x, cfg) for x in locations]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(cfg.workers, len(locations))) as pool:
        return list(pool.map(lambda x: parse_remote_header(x, cfg), locations))
