"""``ggufx mcp``: the read-only library as Model Context Protocol tools, for agents.

Every tool returns the JSON object the matching CLI command prints with ``--json`` (the same
:mod:`ggufx.results` function builds both), as text and as structured content. A bad file or a bad
argument is a tool error whose text is the CLI's one-line message; nothing a caller sends can stop
the server.

Security: tools read only files under the roots given at start-up (``--root``, default the current
directory), checked after resolving symlinks, for every shard of a split model; remote sources
(https://, hf://) and llama-servers other than on this machine are refused unless
``--allow-remote``; the edit tools exist only with ``--allow-write`` and go through the crash-safe
edit engine, still only under the roots. Hostile files and templates are as bounded as in the CLI
(the same reader, the same sandbox).

The tools are in :mod:`ggufx.mcp.tools`, the access rules in :mod:`ggufx.mcp.access`; this module
puts them, the resources and the prompt together. Needs the optional extra:
``pip install 'ggufx[mcp]'`` (the official ``mcp`` SDK, v2).
"""

# no `from __future__ import annotations`: the SDK reads the prompt's annotations
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ggufx import results
from ggufx.errors import AccessError, GGUFError
from ggufx.mcp.access import Access
from ggufx.render.jsontext import dumps

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from ggufx.io.remote import RemoteConfig

MAX_RESOURCES = 500

INSTRUCTIONS = """\
ggufx inspects GGUF model files (llama.cpp, Ollama, LM Studio) from their headers: no tensor data
is loaded, so even a 200 GB model answers in milliseconds. Start with `info` (architecture,
parameters, bits per weight, type histogram), then `roles` (where the bits go), `layers` (layer
kinds: attention, sliding-window, recurrent, MoE), `memory` (bytes at a context length) and
`template_lint`. `tensors` pages through tensors with filters. Sizes are bytes unless a key says
MiB; context lengths are tokens. Paths are relative to the first allowed root or absolute."""


def build_server(
    roots: list[str], allow_write: bool = False, allow_remote: bool = False, remote: "RemoteConfig | None" = None
) -> "MCPServer":
    """An ``mcp.server.MCPServer`` with ggufx's tools, resources and prompt. ``remote``: the options
    for URLs (with ``allow_remote``; default a fresh config, see :class:`~ggufx.mcp.access.Access`).

    A root that is not a directory is a ``ValueError``."""
    from mcp.server import MCPServer

    from ggufx.mcp.pick_tool import register as register_pick
    from ggufx.mcp.tools import GGUFTools, register_tools

    access = Access(roots, allow_remote, remote)
    server = MCPServer("ggufx", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING")
    register_tools(server, GGUFTools(access), allow_write)
    register_pick(server, access)
    _add_resources(server, access)
    server.prompt(
        name="audit_quant", description="Audit a quantized GGUF: summary, where the bits go, chat template, memory."
    )(audit_quant)
    return server


def _add_resources(server: "MCPServer", access: Access) -> None:
    """One resource per model under the roots (at most MAX_RESOURCES): what the info tool returns for it."""
    from mcp.server.mcpserver.resources import FunctionResource

    for path in _models_under(access.roots)[:MAX_RESOURCES]:
        server.add_resource(
            FunctionResource(
                uri=f"gguf://{path}",
                name=os.path.basename(path),
                description="Summary of this GGUF (what the info tool returns)",
                mime_type="application/json",
                fn=_summary_reader(access, path),
            )
        )


def _summary_reader(access: Access, path: str) -> Callable[[], str]:
    """Read the summary of ``path`` when called: its JSON, or ``{"error": ...}`` with the CLI's message."""

    def read() -> str:
        try:
            return dumps(results.info(access.open_model(path)))
        except (GGUFError, AccessError) as e:
            return dumps({"error": str(e) if isinstance(e, AccessError) else e.one_line()})

    return read


def audit_quant(path: str, ctx: str = "32768") -> str:
    """The ``audit_quant`` prompt: the steps of auditing the quant at ``path`` (``ctx`` in tokens)."""
    return (
        f"Audit the GGUF model {path} with the ggufx tools, one step at a time:\n"
        f"1. `info`: architecture, parameters, file type, BPW and the type histogram.\n"
        f"2. `roles`: which roles (attn_v, ffn_down, ssm_out, token_embd, output...) got which types and "
        f"what share of the bytes; note anything kept at high precision or cut low.\n"
        f"3. `layers`: the layer kinds (attention, sliding-window, recurrent, MoE) and where types change.\n"
        f"4. `template_lint` and `template_info`: is the chat template valid, which tool-call dialect does it "
        f"write, does it accept a system message?\n"
        f"5. `memory` with ctx={ctx} for f16 and q8_0 caches, and `fit` for the user's GPU if known.\n"
        f"Then summarise in a few lines: what this quant is, its risks, and what it costs to run."
    )


def _models_under(roots: list[str]) -> list[str]:
    """GGUF files under the roots (first shard only for split models), sorted."""
    from ggufx.model.shards import SHARD_RE

    out: list[str] = []
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(files):
                if not f.endswith(".gguf"):
                    continue
                m = SHARD_RE.match(f)
                if m and int(m["no"]) != 1:
                    continue
                out.append(os.path.join(dirpath, f))
                if len(out) >= MAX_RESOURCES:
                    return out
    return out


def _version() -> str:
    from ggufx._version import __version__

    return __version__


def run(
    roots: list[str],
    allow_write: bool = False,
    allow_remote: bool = False,
    http: str | None = None,
    remote: "RemoteConfig | None" = None,
) -> None:
    """Serve over stdio, or over streamable HTTP at ``http`` (``HOST:PORT``)."""
    server = build_server(roots, allow_write, allow_remote, remote)
    if http is None:
        server.run("stdio")
        return
    host, _, port = http.rpartition(":")
    server.run("streamable-http", host=host or "127.0.0.1", port=int(port))
