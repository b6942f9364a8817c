"""Pieces shared by every command: output options, JSON emission, error mapping."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from ggufx.render.jsontext import dumps

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

TABLE_FORMATS = ("simple", "github", "grid", "pipe", "rst", "html", "tsv", "plain")


def json_option(f: Callable) -> Callable:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON (a stable, documented interface)."
    )(f)


def tablefmt_option(f: Callable) -> Callable:
    return click.option(
        "--tablefmt",
        type=click.Choice(TABLE_FORMATS),
        default="simple",
        show_default=True,
        help="Table layout; 'github' pastes into a model card.",
    )(f)


def emit_json(obj: Any) -> None:
    click.echo(dumps(obj))


def emit(result: Any, as_json: bool, text: Callable[[], str]) -> None:
    """The one output path of a read-only command: its result as JSON, or ``text()`` of it."""
    if as_json:
        emit_json(result)
    else:
        click.echo(text())


def write_raw(data: bytes) -> None:
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is None:  # click's CliRunner in text mode
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
        return
    out.write(data)
    out.flush()


def _set_remote(field: str) -> Callable:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or (value is False and param.is_flag):
            return
        from ggufx.io.remote import CONFIG

        setattr(CONFIG, field, value)

    return callback


def _no_cache(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from ggufx.io.remote import CONFIG

        CONFIG.cache_dir = None


def _remote_options(with_server: bool) -> Callable[[Callable], Callable]:
    def decorate(f: Callable) -> Callable:
        opts = [
            click.option(
                "--cache",
                "cache_dir",
                metavar="DIR",
                expose_value=False,
                callback=_set_remote("cache_dir"),
                help="Remote sources: keep parsed headers here (default ~/.cache/ggufx/headers; GGUFX_CACHE_DIR).",
            ),
            click.option(
                "--no-cache",
                is_flag=True,
                expose_value=False,
                callback=_no_cache,
                help="Remote sources: neither read nor write the header cache.",
            ),
            click.option(
                "--offline",
                is_flag=True,
                expose_value=False,
                callback=_set_remote("offline"),
                help="Remote sources: use only the header cache, no network (also HF_HUB_OFFLINE=1).",
            ),
            click.option(
                "--allow-full-download",
                is_flag=True,
                expose_value=False,
                callback=_set_remote("allow_full_download"),
                help="Remote sources: if the server ignores range requests, stream the file and stop after the header.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                metavar="SECONDS",
                expose_value=False,
                callback=_set_remote("timeout"),
                help="Remote sources: connect/read timeout per request (default 30).",
            ),
        ]
        if with_server:
            opts.insert(
                0,
                click.option(
                    "--server",
                    "server_url",
                    metavar="URL",
                    expose_value=False,
                    help="Inspect the model file a running llama-server has loaded (instead of FILE), and say "
                    "whether the server's chat template is the file's.",
                ),
            )
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


# options for reading https:// and hf:// sources (they set ggufx.io.remote.CONFIG), with and without
# ``--server URL`` (handled by ServerAwareCommand)
remote_options = _remote_options(with_server=True)
network_options = _remote_options(with_server=False)


SERVER_META = "ggufx.server"


def _take_server(args: list[str]) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    url = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--server" and i + 1 < len(args):
            url = args[i + 1]
            i += 2
            continue
        if a.startswith("--server="):
            url = a.split("=", 1)[1]
            i += 1
            continue
        rest.append(a)
        i += 1
    return url, rest


class ServerAwareCommand(click.Command):
    """A read-only command whose FILE may come from ``--server URL``: the model file the
    llama-server at URL has loaded (``/props``) becomes the first argument."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        url, rest = _take_server(list(args))
        if url is not None and not any(a in ("-h", "--help") for a in rest):
            from ggufx.model.open import served_model

            sm = served_model(url)
            ctx.meta[SERVER_META] = sm
            click.echo(f"ggufx: {sm.url} has {sm.model_path} loaded", err=True)
            note = sm.template_note()
            if note:
                click.echo(f"ggufx: note: {note}", err=True)
            rest = [sm.model_path, *rest]
        return super().parse_args(ctx, rest)


def server_aware(cmd: click.Command) -> click.Command:
    """Give every command with a ``--server`` option (and a group's subcommands) that behaviour."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            server_aware(sub)
    elif any(p.name == "server_url" for p in cmd.params) and type(cmd) is click.Command:
        cmd.__class__ = ServerAwareCommand
    return cmd


def open_many(paths: list[str] | tuple[str, ...], keep_errors: bool = False) -> list[Any]:
    """``ggufx.open`` each path, remote ones at the same time. The first GGUFError is raised, or
    with ``keep_errors`` each failing path's error takes its place in the list."""
    import ggufx
    from ggufx.errors import GGUFError
    from ggufx.io.sources import is_remote

    def one(path: str) -> Any:
        try:
            return ggufx.open(path)
        except GGUFError as e:
            if not keep_errors:
                raise
            return e

    if len(paths) > 1 and any(is_remote(p) for p in paths):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(8, len(paths))) as pool:
            return list(pool.map(one, paths))
    return [one(p) for p in paths]
