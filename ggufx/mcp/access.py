"""What the MCP tools may touch: files under the roots given at start-up, and remote sources only
when allowed.

Paths are checked after resolving symlinks, and an opened model is checked shard by shard, so
neither a link nor a split model's other shards lead outside the roots. Needs no MCP SDK.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ggufx.errors import AccessError
from ggufx.io.sources import is_remote

if TYPE_CHECKING:
    from ggufx.io.remote import RemoteConfig
    from ggufx.model import GGUFModel
    from ggufx.results.templates import TemplateSet


class Access:
    """The roots (resolved) and whether remote sources are allowed; opens only what they permit,
    remote sources with the options ``remote``."""

    def __init__(self, roots: list[str], allow_remote: bool, remote: RemoteConfig | None = None):
        """Resolve ``roots``; a root that is not a directory is a ``ValueError``. ``remote``: the
        options for URLs (with ``allow_remote``, default: a fresh config from the environment's
        defaults, owned by this server, not the library's mutable ``ggufx.io.remote.CONFIG``)."""
        self.roots = [os.path.realpath(r) for r in roots]
        for r in self.roots:
            if not os.path.isdir(r):
                raise ValueError(f"root {r} is not a directory")
        self.allow_remote = allow_remote
        if allow_remote and remote is None:
            from ggufx.io.remote import new_config

            remote = new_config()
        self.remote = remote

    def inside(self, real: str) -> bool:
        """Whether the resolved path ``real`` is a root or lies under one."""
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def local(self, path: str) -> str:
        """``path`` resolved (relative to the first root), or a remote source if those are allowed."""
        if is_remote(path):
            if not self.allow_remote:
                raise AccessError(f"{path}: remote sources are disabled (start the server with --allow-remote)")
            return path
        full = path if os.path.isabs(path) else os.path.join(self.roots[0], path)
        real = os.path.realpath(full)
        if not self.inside(real):
            raise AccessError(f"{path}: outside the allowed roots ({', '.join(self.roots)})")
        return real

    def open_model(self, path: str) -> GGUFModel:
        """Open the model at ``path``, refusing it if any of its shards lies outside the roots."""
        from ggufx.model import open_model

        model = open_model(self.local(path), remote=self.remote)
        for s in model.shards:
            if not is_remote(s.path) and not self.inside(os.path.realpath(s.path)):
                raise AccessError(f"{s.path}: a shard of {path} lies outside the allowed roots")
        return model

    def load_templates(self, path: str) -> tuple[str, TemplateSet]:
        """``(resolved path, template set)``: results name the file as the CLI would given that path."""
        from ggufx.results import is_gguf_path, load_templates, model_templates

        src = self.local(path)
        if is_remote(src) or is_gguf_path(src):
            return src, model_templates(self.open_model(path), src)  # every shard checked against the roots
        return src, load_templates(src, remote=self.remote)
