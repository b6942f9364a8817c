"""The model a running llama-server has loaded: its file, and whether its chat template is the file's.

llama-server answers ``GET /props`` with ``model_path``, the ``chat_template`` it uses (the file's,
or the one given by ``--chat-template``/``--chat-template-file``, or its built-in fallback when the
file has none), ``default_generation_settings.n_ctx`` and ``build_info``; ``GET /v1/models`` lists
the model ids. In router mode (several models) ``model_path`` is ``"none"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ggufx.errors import SourceError


@dataclass
class ServerModel:
    url: str
    model_path: str
    model_ids: list[str]
    n_ctx: int | None
    build_info: str | None
    server_template: str | None
    server_template_tool_use: str | None
    file_template: str | None = None

    @property
    def template_matches(self) -> bool | None:
        if self.server_template is None:
            return None
        return self.server_template == (self.file_template or "")

    def template_note(self) -> str | None:
        """One sentence when the server does not use the file's template, else None."""
        if self.template_matches is not False:
            return None
        if not self.file_template:
            return (
                "the file has no chat template; the server uses another one (its built-in fallback, or one given "
                "with --chat-template/--chat-template-file)"
            )
        return (
            "the server uses a different chat template than the file's tokenizer.chat_template (it was started "
            "with --chat-template or --chat-template-file, or the file changed since it was loaded)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model_path": self.model_path,
            "model_ids": self.model_ids,
            "n_ctx": self.n_ctx,
            "build_info": self.build_info,
            "template_matches_file": self.template_matches,
            "note": self.template_note(),
        }


def _get_json(url: str, path: str, timeout: float) -> Any:
    import urllib.error
    import urllib.request

    full = url.rstrip("/") + path
    headers = {"Accept": "application/json"}
    key = os.environ.get("LLAMA_API_KEY")  # the variable llama-server itself reads for --api-key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(full, headers=headers), timeout=timeout) as r:
            body = r.read(16 << 20)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise SourceError(
                url,
                None,
                f"llama-server wants an API key for GET {path} (it was started with --api-key): set LLAMA_API_KEY",
            ) from None
        raise SourceError(url, None, f"llama-server answered HTTP {e.code} to GET {path}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(url, None, f"no llama-server reachable ({reason})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise SourceError(url, None, f"GET {path} did not return JSON: is this a llama-server?") from None


def query(url: str, timeout: float = 10.0) -> ServerModel:
    """Ask the llama-server at ``url`` which model file it serves (raises SourceError)."""
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    props = _get_json(url, "/props", timeout)
    if not isinstance(props, dict):
        raise SourceError(url, None, "GET /props did not return an object: is this a llama-server?")
    ids: list[str] = []
    try:
        models = _get_json(url, "/v1/models", timeout)
        data = models.get("data") if isinstance(models, dict) else None
        ids = [
            m["id"]
            for m in (data if isinstance(data, list) else ())
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]
    except SourceError:
        pass
    path = props.get("model_path")
    if not isinstance(path, str) or not path or path == "none":
        listed = f" ({', '.join(ids[:10])})" if ids else ""
        raise SourceError(url, None, f"the server does not report one model file (router mode?){listed}")
    settings = props.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    tmpl = props.get("chat_template")
    tool_tmpl = props.get("chat_template_tool_use")
    return ServerModel(
        url,
        path,
        ids,
        n_ctx if isinstance(n_ctx, int) else None,
        props.get("build_info") if isinstance(props.get("build_info"), str) else None,
        tmpl if isinstance(tmpl, str) else None,
        tool_tmpl if isinstance(tool_tmpl, str) else None,
    )
