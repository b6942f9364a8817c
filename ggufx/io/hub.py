"""The Hugging Face Hub: ``hf://`` references, the token, the local cache, repository listings.

``hf://ORG/REPO[@REV]/FILE`` resolves to ``{HF_ENDPOINT}/ORG/REPO/resolve/REV/FILE`` (default
revision ``main``); ``HF_ENDPOINT`` and ``HF_TOKEN`` (or the token file ``huggingface-cli login``
writes) are read as huggingface_hub reads them, and the token goes only to the endpoint's origin.
A file already in the local cache (``HF_HUB_CACHE``, ``HF_HOME``) is found there without network.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

from ggufx.errors import SourceError
from ggufx.io.http import ClientConfig, HTTPClient, Location, Retry, origin

DEFAULT_ENDPOINT = "https://huggingface.co"
_HF_RE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)$")


def default_hf_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_token() -> str | None:
    """``HF_TOKEN``, else the token file ``huggingface-cli login`` wrote (as huggingface_hub reads it)."""
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok.strip()
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.dirname(default_hf_cache())
        path = os.path.join(home, "token")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _hub_refusal(ref: tuple[str, str, str] | None) -> Callable[[int, bool], str | None]:
    """What a refusal by the Hub means, for :attr:`Location.explain` (the client knows no Hub)."""

    def explain(status: int, token_sent: bool) -> str | None:
        if status in (401, 403):
            if token_sent:
                return "your HF_TOKEN has no access to this repository (gated: accept its terms on the Hub; private: use a token of an account with access)"
            return "the repository is gated or private; set HF_TOKEN to a token with access (huggingface.co/settings/tokens)"
        if status == 404 and ref is not None:
            repo, rev, file = ref
            if not file:
                return f"no repository {repo} with a revision {rev!r} (check the name and the @REVISION)"
            return f"no file {file!r} at revision {rev!r} of {repo} (check the repository, the @REVISION and the file name)"
        return None

    return explain


def hf_reference(location: str) -> tuple[str, str, str] | None:
    """(repo, revision, file) of an ``hf://ORG/REPO[@REV]/FILE`` reference, else None."""
    m = _HF_RE.match(location)
    return None if m is None else (m["repo"], m["rev"] or "main", m["file"])


def parse_location(location: str) -> Location:
    if location.startswith("hf://"):
        m = _HF_RE.match(location)
        if m is None:
            if _HF_REPO_RE.match(location):
                raise SourceError(
                    location,
                    None,
                    f"name a file: hf://ORG/REPO[@REVISION]/FILE (`ggufx scan {location}` lists the repository's GGUF files)",
                )
            raise SourceError(
                location,
                None,
                "not a Hugging Face reference: expected hf://ORG/REPO/FILE or hf://ORG/REPO@REVISION/FILE",
            )
        from urllib.parse import quote

        repo, rev, file = m["repo"], m["rev"] or "main", m["file"]
        ep = hf_endpoint()
        url = f"{ep}/{repo}/resolve/{quote(rev, safe='')}/{quote(file)}"
        return Location(location, url, origin(ep), _hub_refusal((repo, rev, file)))
    url = location
    ep = hf_endpoint()
    if origin(url) == origin(ep):
        # a browser link to the Hub's file page: fetch the file, not the HTML page
        url = re.sub(r"^(%s/[^/]+/[^/]+)/blob/" % re.escape(ep), r"\1/resolve/", url)
        return Location(location, url, origin(ep), _hub_refusal(None))
    return Location(location, url, None)


def hf_cached_file(repo: str, rev: str, file: str) -> str | None:
    """The local Hugging Face cache's copy of REPO@REV/FILE, if it holds one."""
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


_HF_REPO_RE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/?$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
MAX_LISTING_PAGES = 100


def hf_repo_files(location: str, cl: HTTPClient[ClientConfig], offline: bool = False) -> list[tuple[str, int | None]]:
    """(path in the repository, size) of every file of ``hf://ORG/REPO[@REV]``, from the Hub's
    tree listing (``/api/models/REPO/tree/REV?recursive=true``, following its ``Link`` pages)."""
    from urllib.parse import quote, urljoin

    m = _HF_REPO_RE.match(location)
    if m is None:
        raise SourceError(
            location, None, "not a Hugging Face repository: expected hf://ORG/REPO or hf://ORG/REPO@REVISION"
        )
    repo, rev = m["repo"], m["rev"] or "main"
    ep = hf_endpoint()
    if offline:
        raise SourceError(location, None, "listing a repository needs the network, and --offline forbids it")
    first = f"{ep}/api/models/{repo}/tree/{quote(rev, safe='')}?recursive=true"
    loc = Location(location, first, origin(ep), _hub_refusal((repo, rev, "")))
    url: str | None = first
    files: list[tuple[str, int | None]] = []
    for _ in range(MAX_LISTING_PAGES):
        if url is None:
            break
        t0 = time.perf_counter()
        resp = cl.request("GET", loc, url, {"Accept": "application/json", "Accept-Encoding": "identity"})
        try:
            body = cl.timed_read(resp, None, "GET", None, t0)
        except Retry as r:
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
