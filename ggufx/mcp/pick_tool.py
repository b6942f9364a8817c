"""The MCP tool ``pick``: which quant of a repository or folder to download for given GPUs and context.

It returns what ``ggufx pick --json`` prints for the same arguments (``PickResult.to_json()``). Local
sources must lie under the server's roots (every file found, every shard, checked after resolving
symlinks); ``hf://`` repositories and URLs need ``--allow-remote``. Imports the MCP SDK: only the
server imports this module. :func:`register` adds the tool to a server beside :mod:`ggufx.mcp.tools`'
(``build_server``: ``register(server, access)`` after ``register_tools``).
"""

# no `from __future__ import annotations`: the SDK reads the tool's annotations, so they must be objects
import os
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

from ggufx.errors import AccessError
from ggufx.io.sources import is_remote
from ggufx.mcp.access import Access
from ggufx.results import CACHE_TYPES

NAME = "pick"
DESCRIPTION = (
    "Which quant to download: every GGUF model of a Hugging Face repository (hf://ORG/REPO[@REV] or its "
    "https://huggingface.co page), a folder or files, held against the GPUs' free memory and a context, from "
    "headers alone. Per model: quant, file size (bytes), BPW, parameters; whether it runs entirely on the GPUs "
    "(as llama.cpp's --fit decides, keeping fit_target_mib free per GPU) or what --fit moves to the host "
    "(-ngl, -ts, -ot); the largest context (tokens) per KV cache type with everything on the GPUs; the "
    "llama-server command line (command_line) and what it allocates per GPU (bytes). `summary` is the "
    "recommendation in one line: the highest-BPW model that fits entirely, and a higher one that runs with "
    "part on the host (`runner_up`)."
)
CacheType = Literal[CACHE_TYPES]  # type: ignore[valid-type]


class PickTool:
    """The tool, reading only what ``access`` permits."""

    def __init__(self, access: Access):
        self.access = access

    def pick(
        self,
        sources: Annotated[
            list[str],
            Field(
                min_length=1,
                description="hf://ORG/REPO[@REV], https://huggingface.co/ORG/REPO[/tree/REV], folders or GGUF "
                "files under the roots (relative to the first root, or absolute).",
            ),
        ],
        gpus: Annotated[str, Field(description='Free memory per GPU: "24GiB", "24GiB,24GiB" for two, or "none".')],
        ctx: Annotated[
            int | None,
            Field(ge=1, description="The context needed (tokens). Omitted: llama.cpp's --fit chooses (no -c)."),
        ] = None,
        cache_type_k: Annotated[CacheType, Field(description="K cache type.")] = "f16",
        cache_type_v: Annotated[CacheType, Field(description="V cache type.")] = "f16",
        mmproj: Annotated[
            str,
            Field(
                description='"auto" (the repository\'s projector, F16 before BF16 before F32, counted on the '
                'first GPU), "none", or a projector file under the roots.'
            ),
        ] = "auto",
        fit_target_mib: Annotated[
            float, Field(ge=0, description="MiB kept free on each GPU (llama.cpp's -fitt).")
        ] = 1024.0,
        llama_args: Annotated[
            str,
            Field(
                description='The other llama-server options the models run with ("-np 1 -ub 1024"): they size '
                "every figure and are kept in the command lines; not those pick writes (-m, -c, -ctk, -ctv, -ngl, "
                "-ts, -ot, -fitt...)."
            ),
        ] = "",
    ) -> dict[str, Any]:
        from ggufx import results

        resolved = [self.access.local(s) for s in sources]  # remote only if allowed; local under the roots
        projector = mmproj if mmproj in ("auto", "none") else self.access.local(mmproj)
        if projector not in ("auto", "none") and not is_remote(projector):
            self.access.open_model(projector)  # every shard under the roots
        res = results.pick(
            resolved,
            gpus,
            ctx=ctx,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            mmproj=projector,
            fit_target_mib=fit_target_mib,
            llama_args=llama_args,
            remote=self.access.remote,
            allow=self._refusal,
        )
        return res.to_json()

    def _refusal(self, path: str) -> str | None:
        real = os.path.realpath(path)
        if self.access.inside(real):
            return None
        return str(AccessError(f"{path}: outside the allowed roots ({', '.join(self.access.roots)})"))


def register(server: MCPServer, access: Access) -> None:
    """Add the ``pick`` tool to ``server`` (read-only; open-world when remote sources are allowed)."""
    from ggufx.mcp.tools import _guarded

    server.add_tool(
        _guarded(PickTool(access).pick),
        name=NAME,
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=access.allow_remote),
    )
