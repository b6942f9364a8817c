"""``ggufx mcp``: serve the read-only library to agents over the Model Context Protocol."""

from __future__ import annotations

import os
from typing import Any

import click

from ggufx.cli._common import EXIT_USAGE, emit_json, json_option, remote_config


@click.command("mcp")
@click.option(
    "--root",
    "roots",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="A folder whose GGUF files the tools may read (repeatable; default: the current directory).",
)
@click.option(
    "--allow-write",
    is_flag=True,
    help="Also expose metadata and chat template edits (crash-safe, under the roots only).",
)
@click.option(
    "--allow-remote", is_flag=True, help="Also read https:// and hf:// models and ask llama-servers on other hosts."
)
@click.option(
    "--http", "http", metavar="HOST:PORT", help="Serve streamable HTTP here instead of stdio, e.g. 127.0.0.1:8765."
)
@click.option("--list-tools", is_flag=True, help="Print the tools (name, description, input schema) and exit.")
@json_option
@click.pass_context
def mcp(
    ctx: click.Context,
    roots: tuple[str, ...],
    allow_write: bool,
    allow_remote: bool,
    http: str | None,
    list_tools: bool,
    as_json: bool,
) -> None:
    """Run an MCP server whose tools mirror the read-only commands (info, type histogram, roles,
    layers, tensors with filters and paging, metadata, recipe, memory, fit, diff, chat template
    info/lint/render, hash, verify, the model a llama-server runs) and return the same JSON as
    their --json. Each model under the roots is also a resource gguf://PATH; the prompt
    audit_quant walks through an audit. Needs: pip install 'ggufx[mcp]'.

    \b
    Examples:
      ggufx mcp --root ~/models                      # stdio, for an MCP client's config
      ggufx mcp --root ~/models --http 127.0.0.1:8765
      ggufx mcp --root ~/models --allow-write        # also set_metadata, set_template
      ggufx mcp --list-tools --json
    """
    try:
        import mcp as _sdk  # noqa: F401
    except ImportError:
        click.echo("ggufx: error: the MCP server needs the official MCP SDK: pip install 'ggufx[mcp]'", err=True)
        ctx.exit(EXIT_USAGE)
    from ggufx.mcp.server import build_server, run

    root_list = list(roots) or [os.getcwd()]
    remote = remote_config(ctx) if allow_remote else None  # --debug logs the server's requests too
    if http is not None:
        host, _, port = http.rpartition(":")
        if not port.isdigit():
            raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8765", param_hint="--http")
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]", ""):
            click.echo(
                f"ggufx: warning: serving on {host}, reachable from other machines; the tools read files under {', '.join(root_list)}",
                err=True,
            )
    if list_tools:
        import anyio

        server = build_server(root_list, allow_write, allow_remote, remote)

        async def listing() -> list[Any]:
            from mcp import Client

            async with Client(server) as client:
                return (await client.list_tools()).tools

        tools = anyio.run(listing)
        if as_json:
            emit_json([{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools])
        else:
            for t in tools:
                click.echo(f"{t.name:18} {t.description}")
        return
    run(root_list, allow_write, allow_remote, http, remote)
