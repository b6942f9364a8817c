"""Opening a model: a local path, a URL or an ``hf://`` reference, and every shard it belongs to.

Local files are read with positional reads after any undo journal an interrupted edit left is
replayed (:mod:`ggufx.io.journal`); remote ones through HTTP range requests and the header cache
(:mod:`ggufx.io.remote`), with the options of a :class:`~ggufx.io.remote.RemoteConfig` passed in
(default: :data:`ggufx.io.remote.CONFIG`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ggufx.format.reader import GGUFHeader, parse_header
from ggufx.io import header_index
from ggufx.io.sources import FileSource, close_source, is_remote
from ggufx.model.model import GGUFModel
from ggufx.model.shards import assemble_shards

if TYPE_CHECKING:  # without importing the remote layer at start-up
    from ggufx.io.llamaserver import ServerModel
    from ggufx.io.remote import RemoteConfig

SourceOpener = Callable[[str], Any]


def open_model(
    path: str | os.PathLike[str],
    opener: SourceOpener = FileSource,
    recover: bool = True,
    remote: RemoteConfig | None = None,
) -> GGUFModel:
    """Open a GGUF file (or every shard of the split model it belongs to).

    ``path`` may also be an ``http(s)://`` URL or an ``hf://ORG/REPO[@REV]/FILE`` reference: then
    only the headers are fetched, with range requests (:mod:`ggufx.io.remote`).

    A local file that an interrupted ggufx edit left with an undo journal is first restored
    (``recover=False`` skips that; the edit engine does it under its own lock). ``remote`` holds
    the options for URLs (cache, offline, timeouts; default :data:`ggufx.io.remote.CONFIG`)."""
    path = os.fspath(path)
    if opener is FileSource and is_remote(path):
        return open_remote(path, remote)
    if recover and opener is FileSource:
        _recover_if_journal(path)

    def parse(p: str) -> GGUFHeader:
        src = opener(p)
        try:
            identity = getattr(src, "identity", None)
            known = header_index.load(identity)
            head = parse_header(src, known)
            header_index.store(identity, head, known)
            return head
        finally:
            close_source(src)

    head = parse(path)
    return assemble_shards(
        path,
        head,
        os.path.basename(path),
        lambda name: os.path.join(os.path.dirname(path), name),
        lambda paths: [parse(p) for p in paths],
    )


def _recover_if_journal(path: str) -> None:
    # one stat on the hot path; the journal machinery is loaded only when a journal exists. The
    # suffix is journal.JOURNAL_SUFFIX; the crash tests recover
    # through this function, so the two cannot drift apart unnoticed.
    if os.path.exists(path + ".ggufx-journal"):
        from ggufx.io.journal import recover

        recover(path)


def open_remote(location: str, config: RemoteConfig | None = None) -> GGUFModel:
    """A model for a URL or hf:// reference, reading headers only (siblings in parallel)."""
    from ggufx.io import remote

    local = remote.resolve_local(location)
    if local is not None:
        return open_model(local)
    cfg = remote.CONFIG if config is None else config
    head = remote.parse_remote_header(location, cfg)
    return assemble_shards(
        location,
        head,
        remote.basename(location),
        lambda name: remote.sibling(location, name),
        lambda locations: remote.parse_remote_headers(locations, cfg),
    )


def served_model(url: str, timeout: float = 10.0) -> ServerModel:
    """Which model file the llama-server at ``url`` has loaded (:func:`ggufx.io.llamaserver.query`),
    checked to be readable on this machine, with the file's own chat template read for comparison."""
    from ggufx.errors import SourceError
    from ggufx.io.llamaserver import query

    sm = query(url, timeout)
    if not os.path.isfile(sm.model_path):
        raise SourceError(
            sm.model_path, None, f"the llama-server at {sm.url} has this file loaded, but it is not on this machine"
        )
    sm.file_template = open_model(sm.model_path).metadata.get_str("tokenizer.chat_template")
    return sm
