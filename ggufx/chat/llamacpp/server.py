"""Ask a running llama-server about its chat template: ``POST /apply-template`` renders a
conversation with the server's own template and engine (the ground truth for
:func:`ggufx.chat.llamacpp.caps.render_server`), ``GET /props`` gives its ``chat_template_caps``.

``LLAMA_API_KEY`` is sent as a bearer token, as llama-server reads it for ``--api-key``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ggufx.chat.llamacpp.caps import FLAGS
from ggufx.errors import RenderError, SourceError


def _base(url: str) -> str:
    return (url if url.startswith(("http://", "https://")) else "http://" + url).rstrip("/")


def _call(url: str, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    key = os.environ.get("LLAMA_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(_base(url) + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read(64 << 20)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise SourceError(url, None, f"llama-server wants an API key for {path} (set LLAMA_API_KEY)") from None
        status, raw = e.code, e.read(1 << 20)
    except (urllib.error.URLError, OSError) as e:
        raise SourceError(url, None, f"no llama-server reachable ({getattr(e, 'reason', e)})") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise SourceError(url, None, f"{path} did not return JSON: is this a llama-server?") from None


def apply_template(
    url: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    kwargs: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> str:
    """The prompt llama-server renders for a conversation (RenderError ``server`` when it refuses)."""
    body: dict[str, Any] = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    if tools:
        body["tools"] = tools
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    status, res = _call(url, "/apply-template", body, timeout)
    prompt = res.get("prompt") if isinstance(res, dict) else None
    if status == 200 and isinstance(prompt, str):
        return prompt
    err = res.get("error") if isinstance(res, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    lines = [ln.strip() for ln in (msg or f"HTTP {status}").splitlines() if ln.strip()]
    raise RenderError("server", f"llama-server: {lines[-1] if lines else f'HTTP {status}'}")


def server_caps(url: str, timeout: float = 10.0) -> dict[str, bool] | None:
    """``/props`` ``chat_template_caps`` of the server (None when it does not report them)."""
    status, props = _call(url, "/props", None, timeout)
    caps = props.get("chat_template_caps") if status == 200 and isinstance(props, dict) else None
    if not isinstance(caps, dict):
        return None
    return {k: bool(caps[k]) for k in FLAGS if k in caps}
