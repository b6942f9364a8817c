"""Pieces shared by every command: output options, JSON emission, error mapping, and how a
command opens its models: with this invocation's remote options (:func:`remote_config`), passed
explicitly, never through a module global."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, NoReturn, overload

import click

# the exit codes, defined with the process's ending; the commands take them from here
from ggufx.cli._process import EXIT_CHECK_FAILED as EXIT_CHECK_FAILED
from ggufx.cli._process import EXIT_USAGE as EXIT_USAGE

if TYPE_CHECKING:  # the model and remote layers are imported by the commands that use them
    from ggufx.errors import GGUFError
    from ggufx.io.remote import RemoteConfig
    from ggufx.model import GGUFModel
    from ggufx.results.pick import PickResult
    from ggufx.results.templates import TemplateSet

TABLE_FORMATS = ("simple", "github", "grid", "pipe", "rst", "html", "tsv", "plain")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON (a stable, documented interface)."
    )(f)


def tablefmt_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--tablefmt",
        type=click.Choice(TABLE_FORMATS),
        default="simple",
        show_default=True,
        help="Table layout; 'github' pastes into a model card.",
    )(f)


def fail_usage(param: str | None, message: str) -> NoReturn:
    """One line ``ggufx: error: PARAM: message`` on stderr, exit 2 (bad input, not a bad file)."""
    click.echo(f"ggufx: error: {param + ': ' if param else ''}{message}", err=True)
    sys.exit(EXIT_USAGE)


# -- pick's sizing options: `pick` and `report FOLDER` take the same ones ------------------------

# the parameter names pick_sizing_options adds (the keyword arguments of run_pick)
PICK_SIZING = ("ctx", "fit_ctx", "cache_type_k", "cache_type_v", "mmproj", "fit_target", "tool", "llama_args")


# (click.option only records its arguments; each command it decorates gets Option objects of its own)
_PICK_CONTEXT = [
    click.option(
        "--ctx-size",
        "-c",
        "ctx",
        type=click.IntRange(min=1),
        default=None,
        help="The context you need (tokens). Default, or with --fit: no -c, llama.cpp's --fit chooses one.",
    ),
    click.option(
        "--fit", "fit_ctx", is_flag=True, help="No -c: llama.cpp's --fit reduces the training context to fit."
    ),
]
_PICK_REST = [
    click.option(
        "--mmproj",
        default="auto",
        show_default=True,
        metavar="auto|FILE|none",
        help="The vision/audio projector counted on the first GPU: auto = the repository's own (F16, then BF16, "
        "then F32), a file, or none.",
    ),
    click.option(
        "--fit-target",
        "-fitt",
        type=click.FloatRange(min=0),
        default=1024.0,
        show_default=True,
        metavar="MiB",
        help="MiB kept free on each GPU (llama.cpp's -fitt).",
    ),
    click.option(
        "--tool",
        type=click.Choice(["llama-server"]),
        default="llama-server",
        show_default=True,
        help="The program the command lines are written for (its defaults size the buffers).",
    ),
    click.option(
        "--llama-args",
        metavar="'ARGS'",
        default="",
        help="The other llama-server options you run with (-np 1 -ub 1024 -fa on ...): they size every figure and "
        "are kept in the command lines. Not those pick writes (-m, -c, -ctk, -ctv, -ngl, -ts, -ot, -fitt...).",
    ),
]


def pick_sizing_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-c``, ``--fit``, ``-ctk``, ``-ctv``, ``--mmproj``, ``-fitt``, ``--tool``, ``--llama-args``: what
    sizes ``pick``'s ranking (:func:`run_pick` takes them as they come). The cache types are read when a
    command that uses them is imported, so that ``ggufx --help`` and the other commands do without them."""
    from ggufx.results import CACHE_TYPES

    cache = [
        click.option(
            f"--cache-type-{kv.lower()}",
            f"-ct{kv.lower()}",
            type=click.Choice(CACHE_TYPES),
            default="f16",
            show_default=True,
            help=f"{kv} cache type.",
        )
        for kv in ("K", "V")
    ]
    for opt in reversed([*_PICK_CONTEXT, *cache, *_PICK_REST]):
        f = opt(f)
    return f


def pick_sizing_given(ctx: click.Context, but: tuple[str, ...] = ()) -> list[str]:
    """The sizing options given on the command line (or from the environment), each as its option names
    (``-c/--ctx-size``), in the order the command declares them; ``but``: parameters left out."""
    from click.core import ParameterSource

    given = []
    for p in ctx.command.params:
        if (
            p.name in PICK_SIZING
            and p.name not in but
            and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)
        ):
            given.append("/".join(sorted(p.opts, key=len)))
    return given


def run_pick(
    sources: list[str] | tuple[str, ...],
    gpus: str,
    *,
    ctx: int | None,
    fit_ctx: bool,
    cache_type_k: str,
    cache_type_v: str,
    mmproj: str,
    fit_target: float,
    tool: str,
    llama_args: str,
) -> PickResult:
    """``results.pick`` with the sizing options as :func:`pick_sizing_options` gives them: the same
    checks and the same one-line errors (exit 2) for every command that ranks models."""
    from ggufx import results
    from ggufx.io.sources import is_remote

    if fit_ctx and ctx is not None:
        fail_usage("-c", "give either -c N or --fit, not both")
    remote = remote_config() if any(is_remote(s) for s in sources) or is_remote(mmproj) else None

    def progress(done: int, total: int, name: str) -> None:
        click.echo(f"ggufx: header {done}/{total}: {name}", err=True)

    try:
        return results.pick(
            sources,
            gpus,
            ctx=ctx,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            mmproj=mmproj,
            tool=tool,
            fit_target_mib=fit_target,
            llama_args=llama_args,
            remote=remote,
            progress=progress if remote is not None else None,
        )
    except results.InputError as e:
        fail_usage(e.param, str(e))


def emit_json(obj: Any) -> None:
    from ggufx.render.jsontext import dumps  # a text answer does not import it (issue 21)

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


# -- remote options: one RemoteConfig per invocation, on the click context --------------------

REMOTE_OPTIONS = "ggufx.remote_options"  # ctx.meta: the remote options given (RemoteConfig field -> value)
REMOTE_CONFIG = "ggufx.remote_config"  # ctx.meta: this invocation's RemoteConfig, once built


def set_remote_option(ctx: click.Context, field: str, value: Any) -> None:
    """Record one remote option for this invocation (``ctx.meta`` is shared by the whole command
    line: ``ggufx --debug template show --offline URL``)."""
    ctx.meta.setdefault(REMOTE_OPTIONS, {})[field] = value
    if REMOTE_CONFIG in ctx.meta:  # already built (options are parsed first; never in practice)
        setattr(ctx.meta[REMOTE_CONFIG], field, value)


def _set_remote(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or (value is False and isinstance(param, click.Option) and param.is_flag):
            return
        set_remote_option(ctx, field, value)

    return callback


def _no_cache(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        set_remote_option(ctx, "cache_dir", None)


def remote_config(ctx: click.Context | None = None) -> RemoteConfig:
    """This invocation's options for https:// and hf:// sources: a
    :class:`~ggufx.io.remote.RemoteConfig` built on first use from the defaults and the options
    given (``--cache``, ``--no-cache``, ``--offline``, ``--allow-full-download``, ``--timeout``,
    ``--debug``), kept on the click context, and passed explicitly to whatever reads a URL."""
    meta = (ctx or click.get_current_context()).meta
    cfg: RemoteConfig | None = meta.get(REMOTE_CONFIG)
    if cfg is None:
        from ggufx.io.remote import new_config

        cfg = meta[REMOTE_CONFIG] = new_config(**meta.get(REMOTE_OPTIONS, {}))
    return cfg


def remote_for(path: str | os.PathLike[str], ctx: click.Context | None = None) -> RemoteConfig | None:
    """:func:`remote_config` if ``path`` is a URL or hf:// reference, else None (a local file
    needs no options, and its command then never imports the remote layer)."""
    from ggufx.io.sources import is_remote

    return remote_config(ctx) if is_remote(os.fspath(path)) else None


def open_model(path: str | os.PathLike[str], ctx: click.Context | None = None) -> GGUFModel:
    """``ggufx.open(path)`` with this invocation's remote options."""
    import ggufx

    return ggufx.open(path, remote=remote_for(path, ctx))


def load_templates(path: str, ctx: click.Context | None = None) -> TemplateSet:
    """The chat templates of ``path`` (:func:`ggufx.results.load_templates`) with this invocation's
    remote options."""
    from ggufx.results import load_templates as load

    return load(path, remote=remote_for(path, ctx))


REMOTE_SECTION = "Remote sources (https://, hf://)"


class RemoteOption(click.Option):
    """An option that only matters for https:// and hf:// sources: listed under its own heading."""

    help_section = REMOTE_SECTION


class SectionedCommand(click.Command):
    """A command whose --help lists the remote-source options under their own heading, after the
    command's own options (they are the same five in every command that reads a file)."""

    def make_parser(self, ctx: click.Context) -> Any:
        """click's parser, which reads ``-c`` as a short option only after it failed as a long one: that
        failure's "did you mean" list (``difflib`` over every long option, about 4 M instructions) is
        dropped when an argument with one leading dash turns out short. Here such an argument goes to
        the short options with the same error (no list), which click drops the same way; anything else
        (``--ctx``, ``-ctk``, a token normalizer) is matched by click's own code."""
        parser = super().make_parser(ctx)
        long_opts, prefixes = getattr(parser, "_long_opt", None), getattr(parser, "_opt_prefixes", None)
        match_long = getattr(parser, "_match_long_opt", None)
        if not isinstance(long_opts, dict) or not isinstance(prefixes, set) or match_long is None:
            return parser  # another click: its own parser as it is
        if ctx.token_normalize_func is not None:
            return parser

        def match_long_opt(opt: str, explicit_value: str | None, state: Any) -> None:
            # _process_opts catches this and, since the argument's first two characters are no prefix,
            # reads it as short options (click's own rule, parser.py); the possibilities only fed the message
            if opt not in long_opts and len(opt) >= 2 and opt[:2] not in prefixes:
                raise click.NoSuchOption(opt, ctx=ctx)
            match_long(opt, explicit_value, state)

        parser._match_long_opt = match_long_opt  # type: ignore[method-assign]
        return parser

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "help_section", "Options"), []).append(record)
        for name, rows in sections.items():
            if rows:
                with formatter.section(name):
                    formatter.write_dl(rows)


def _remote_option_list() -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """``--cache``, ``--no-cache``, ``--offline``, ``--allow-full-download``, ``--timeout``."""

    def option(*decls: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return click.option(*decls, cls=RemoteOption, expose_value=False, **kw)

    return [
        option(
            "--cache",
            "cache_dir",
            metavar="DIR",
            callback=_set_remote("cache_dir"),
            help="Keep parsed headers here (default ~/.cache/ggufx/headers; GGUFX_CACHE_DIR).",
        ),
        option("--no-cache", is_flag=True, callback=_no_cache, help="Neither read nor write the header cache."),
        option(
            "--offline",
            is_flag=True,
            callback=_set_remote("offline"),
            help="Use only the header cache, no network (also HF_HUB_OFFLINE=1).",
        ),
        option(
            "--allow-full-download",
            is_flag=True,
            callback=_set_remote("allow_full_download"),
            help="If the server ignores range requests, stream the file and stop after the header.",
        ),
        option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            metavar="SECONDS",
            callback=_set_remote("timeout"),
            help="Connect/read timeout per request (default 30).",
        ),
    ]


SERVER_OPTION = click.option(
    "--server",
    "server_url",
    metavar="URL",
    expose_value=False,
    help="Inspect the model file a running llama-server has loaded (instead of FILE), and say "
    "whether the server's chat template is the file's.",
)


def _remote_options(with_server: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = ([SERVER_OPTION] if with_server else []) + _remote_option_list()
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


# options for reading https:// and hf:// sources (recorded for remote_config()), with and without
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


class ServerAwareCommand(SectionedCommand):
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
    """Give every command with a ``--server`` option (and a group's subcommands) that behaviour, and
    every command the sectioned --help."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            server_aware(sub)
    elif any(p.name == "server_url" for p in cmd.params) and type(cmd) is click.Command:
        cmd.__class__ = ServerAwareCommand
    elif type(cmd) is click.Command:
        cmd.__class__ = SectionedCommand
    return cmd


@overload
def open_many(
    paths: list[str] | tuple[str, ...], keep_errors: Literal[False] = False, ctx: click.Context | None = None
) -> list[GGUFModel]: ...


@overload
def open_many(
    paths: list[str] | tuple[str, ...], keep_errors: Literal[True], ctx: click.Context | None = None
) -> list[GGUFModel | GGUFError]: ...


def open_many(
    paths: list[str] | tuple[str, ...], keep_errors: bool = False, ctx: click.Context | None = None
) -> list[GGUFModel] | list[GGUFModel | GGUFError]:
    """:func:`open_model` each path, remote ones at the same time. The first GGUFError is raised,
    or with ``keep_errors`` each failing path's error takes its place in the list."""
    import ggufx
    from ggufx.errors import GGUFError

    configs = [remote_for(p, ctx) for p in paths]  # here: the click context is this thread's

    def one(path: str, remote: RemoteConfig | None) -> GGUFModel | GGUFError:
        try:
            return ggufx.open(path, remote=remote)
        except GGUFError as e:
            if not keep_errors:
                raise
            return e

    if len(paths) > 1 and any(c is not None for c in configs):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(8, len(paths))) as pool:
            return list(pool.map(one, paths, configs))
    return [one(p, c) for p, c in zip(paths, configs)]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that the file is the old one or the new one at every instant: a
    uniquely named file beside it, then a rename; nothing is left behind if the write fails."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or "."
        )
    except OSError as e:  # no such folder, no permission: named by the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, path) from None
    try:
        try:  # a file replaced keeps its mode; a new one gets the umask's (mkstemp makes it 0600)
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def progress_bar(label: str, show: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr (None when ``show`` is false or
    stderr is not a terminal); the bar is closed however the work ends."""
    if not show or not sys.stderr.isatty():
        yield None
        return
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
