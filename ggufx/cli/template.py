"""`ggufx template ...`: show, set, render, lint, diff, info of chat templates."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ggufx.cli._common import EXIT_CHECK_FAILED, emit_json, json_option, remote_options, write_raw
from ggufx.cli.edit import run_edit, write_options
from ggufx.results import ENGINES, SAMPLES

if TYPE_CHECKING:
    from ggufx.results.templates import TemplateSet

NAME_OPTION = click.option("--name", help="A named template: tokenizer.chat_template.NAME (default: the main one).")


def analysis_options(f: Any) -> Any:
    """SOURCE argument and the options of the commands that render a template (lint, info)."""
    for opt in reversed(
        [
            click.argument("source", type=click.Path(dir_okay=False)),
            click.option(
                "--var",
                "variables",
                multiple=True,
                metavar="KEY=VALUE",
                help="Extra template variable (JSON value or text).",
            ),
            NAME_OPTION,
            json_option,
            remote_options,
        ]
    ):
        f = opt(f)
    return f


@click.group()
def template() -> None:
    """Chat templates: show, set from any source, render in a sandbox, lint, diff, detect the tool-call dialect.

    \b
    Examples:
      ggufx template info model.gguf
      ggufx template lint model.gguf
      ggufx template render model.gguf --sample tools
      ggufx template set model.gguf --from-file tokenizer_config.json --dry-run
      ggufx template diff old.gguf new.gguf
    """


def _load(path: str) -> TemplateSet:
    from ggufx.cli._common import load_templates

    return load_templates(path)


def _served() -> Any:
    """The llama-server given with ``--server`` (ServerAwareCommand put its model file in SOURCE)."""
    from ggufx.cli._common import SERVER_META

    return click.get_current_context().meta.get(SERVER_META)


def _server_url() -> str | None:
    sm = _served()
    return sm.url if sm is not None else None


def _as_served(ts: Any) -> Any:
    """The templates of the served file, with the server's own template in place of the default
    when it was started with another (--chat-template-file): what the server renders."""
    import dataclasses

    sm = _served()
    if sm is None or not sm.server_template or sm.template_matches is not False:
        return ts
    return dataclasses.replace(ts, default=sm.server_template, named={})


def _variables(extra: tuple[str, ...]) -> dict[str, Any]:
    """--var KEY=VALUE options (bos_token/eos_token come from the model: results.template_variables)."""
    v: dict[str, Any] = {}
    for item in extra:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} must look like KEY=VALUE", param_hint="--var")
        k, raw = item.split("=", 1)
        try:
            v[k] = json.loads(raw)  # true, 3, "text", [..]
        except json.JSONDecodeError:
            v[k] = raw
    return v


@template.command()
@click.argument("file", type=click.Path(dir_okay=False))
@NAME_OPTION
@json_option
@remote_options
def show(file: str, name: str | None, as_json: bool) -> None:
    """Print the chat template byte for byte (also named variants and the list of names).

    \b
    Examples:
      ggufx template show model.gguf > template.jinja
      ggufx template show model.gguf --name tool_use
      ggufx template show model.gguf --json
    """
    from ggufx.render.text import raw_text
    from ggufx.results import template_show

    ts = _load(file)
    if as_json:
        if name is not None:
            ts.get(name)  # a --name the file does not have is an error, as without --json
        emit_json(template_show(file, ts))
        return
    write_raw(raw_text(ts.get(name)))


@template.command("set")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--from-file",
    "source",
    type=click.Path(dir_okay=False),
    help="Read the template from this file: a .jinja/text file, another GGUF, a tokenizer_config.json or "
    "chat_template.json (required).",
)
@click.option("--from", "source_alias", type=click.Path(dir_okay=False), hidden=True)  # the earlier name
@NAME_OPTION
@write_options
def set_(file: str, source: str | None, source_alias: str | None, name: str | None, **kw: Any) -> None:
    """Replace the chat template with the one read from --from-file (a .jinja or text file, another
    GGUF, a tokenizer_config.json or chat_template.json), through the crash-safe edit engine (in
    place when it fits). From a tokenizer_config.json with several named templates and no --name, all of them
    are written (default -> tokenizer.chat_template, others -> tokenizer.chat_template.NAME).

    \b
    Examples:
      ggufx template set model.gguf --from-file fixed.jinja
      ggufx template set model.gguf --from-file other-model.gguf --dry-run
      ggufx template set model.gguf --from-file tokenizer_config.json --name tool_use
      ggufx template set model.gguf --from-file chat_template.jinja -o fixed.gguf
    """
    from ggufx.results import template_set_diff, template_set_ops

    source = source or source_alias
    if source is None:
        raise click.UsageError("give --from-file PATH: a template, a GGUF or a tokenizer_config.json")
    from ggufx.results import InputError

    try:
        ops = template_set_ops(_load(source), name)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    if kw.get("dry_run") and not kw.get("as_json"):
        click.echo(template_set_diff(file, _load(file), ops), nl=False)
    run_edit(file, ops, **kw)


def _read_json(path: str, option: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"{path}: {e}", param_hint=option) from None


def _conversation(messages: str | None, tools: str | None, sample_name: str | None) -> list[tuple[str, dict[str, Any]]]:
    from ggufx.results import conversations

    own = None
    if messages is not None:
        doc = _read_json(messages, "--messages")
        conv = {"messages": doc} if isinstance(doc, list) else doc
        if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
            raise click.BadParameter(
                f'{messages}: expected a list of messages or {{"messages": [...]}}', param_hint="--messages"
            )
        # a message that is no {"role": ...} object would fail inside the template, blaming the template
        bad = next((i for i, m in enumerate(conv["messages"]) if not isinstance(m, dict) or "role" not in m), None)
        if bad is not None:
            raise click.BadParameter(
                f'{messages}: message {bad} is not an object with a "role" ({conv["messages"][bad]!r:.60})',
                param_hint="--messages",
            )
        if conv.get("tools") is not None and not _tool_list(conv["tools"]):
            raise click.BadParameter(
                f'{messages}: "tools" must be a list of tool schemas (objects)', param_hint="--messages"
            )
        own = (messages, conv)
    schemas = _read_json(tools, "--tools") if tools is not None else None
    if schemas is not None and not _tool_list(schemas):
        raise click.BadParameter(f"{tools}: expected a JSON list of tool schemas (objects)", param_hint="--tools")
    return conversations(sample_name, own, schemas)


def _tool_list(doc: Any) -> bool:
    return isinstance(doc, list) and all(isinstance(t, dict) for t in doc)


@template.command("render")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option(
    "--messages",
    type=click.Path(dir_okay=False),
    help='JSON: a list of messages, or {"messages": [...], "tools": [...]}.',
)
@click.option("--tools", type=click.Path(dir_okay=False), help="JSON list of tool schemas.")
@click.option(
    "--sample",
    "sample_name",
    type=click.Choice(SAMPLES),
    help="One built-in conversation (default: all of them, unless --messages).",
)
@click.option(
    "--add-generation-prompt/--no-generation-prompt",
    default=True,
    show_default=True,
    help="End with the assistant turn's opening (add_generation_prompt), as a server does before generating.",
)
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra template variable (JSON value or text), e.g. enable_thinking=false.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="transformers",
    show_default=True,
    help="transformers: apply_chat_template (jinja2). llama.cpp: llama-server's inputs and llama.cpp's own "
    "Jinja rules (with --server, the server's /apply-template output, compared with ggufx's).",
)
@NAME_OPTION
@json_option
@remote_options
def render_(
    source: str,
    messages: str | None,
    tools: str | None,
    sample_name: str | None,
    add_generation_prompt: bool,
    variables: tuple[str, ...],
    engine: str,
    name: str | None,
    as_json: bool,
) -> None:
    """Render a chat template in a bounded sandbox, as transformers' apply_chat_template does
    (default) or as llama.cpp does (--engine llama.cpp).

    SOURCE is a GGUF (bos_token/eos_token come from its token ids) or a template file. With
    --server URL and --engine llama.cpp, the running llama-server renders each conversation
    (POST /apply-template) and ggufx says where its own llama.cpp rendering differs.

    \b
    Examples:
      ggufx template render model.gguf
      ggufx template render model.gguf --sample tools
      ggufx template render model.gguf --engine llama.cpp
      ggufx template render --server http://127.0.0.1:8080 --engine llama.cpp --sample tools
      ggufx template render template.jinja --messages conv.json --tools tools.json --var enable_thinking=false
    """
    from ggufx.results import template_render

    ts = _load(source)
    if engine == "llama.cpp":
        ts = _as_served(ts)
    res = template_render(
        source,
        ts,
        _conversation(messages, tools, sample_name),
        name,
        add_generation_prompt,
        _variables(variables),
        engine=engine,
        server=_server_url() if engine == "llama.cpp" else None,
    )
    results = res["results"]
    failed = any(r["error"] for r in results)
    if as_json:
        emit_json(res)
    else:
        single = len(results) == 1
        for r in results:
            if not single:
                click.echo(click.style(f"=== {r['conversation']} ===", bold=True))
            if r["error"]:
                click.echo(f"ggufx: error: {source}: {r['conversation']}: {r['error']}", err=True)
            else:
                click.echo(r["output"], nl=not single)
            if r.get("agrees") is False:
                click.echo(
                    f"ggufx: note: {r['conversation']}: llama-server's prompt differs from ggufx's llama.cpp "
                    f"rendering ({r['ggufx_error'] or 'render with --json to compare'})",
                    err=True,
                )
    if failed:
        sys.exit(EXIT_CHECK_FAILED)


@template.command()
@analysis_options
def lint(source: str, variables: tuple[str, ...], name: str | None, as_json: bool) -> None:
    """Find what breaks chats and tool calls: syntax errors (with lines), built-in conversations that
    fail, refused system messages, undefined variables, a generation prompt that does nothing, BOS
    added twice, special tokens missing from the model's vocabulary. Exit 1 when a problem is found.

    \b
    Examples:
      ggufx template lint model.gguf
      ggufx template lint chat_template.jinja --json
    """
    from ggufx.render.text import lint_lines
    from ggufx.results import template_lint

    ts = _load(source)
    result = template_lint(source, ts, name, _variables(variables), ts.model)
    if as_json:
        emit_json(result)
    else:
        for colour, line in lint_lines(result):
            click.echo(click.style(line, fg=colour))
    if not result["ok"]:
        sys.exit(EXIT_CHECK_FAILED)


@template.command()
@analysis_options
def info(source: str, variables: tuple[str, ...], name: str | None, as_json: bool) -> None:
    """Length, sha256, family, tool-call dialect, tool support, reasoning blocks, system role, and
    llama.cpp's capability flags (as llama-server's /props reports them; with --server URL, the
    server's own flags too).

    The dialect is detected by rendering a tool-call conversation and reading the output;
    "unknown" means no known dialect matched, "none" that tool calls are not rendered at all.

    \b
    Examples:
      ggufx template info model.gguf
      ggufx template info chat_template.jinja --json
    """
    from ggufx.render.text import template_info_text
    from ggufx.results import template_info

    ts = _load(source)
    i = template_info(source, ts, name, _variables(variables), server=_server_url())
    if as_json:
        emit_json(i)
        return
    click.echo(template_info_text(i))


@template.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@NAME_OPTION
@json_option
@remote_options
def diff(a: str, b: str, name: str | None, as_json: bool) -> None:
    """Unified diff of two templates (GGUFs or files) and a one-line verdict on the dialect change.
    Exit 1 when they differ.

    \b
    Examples:
      ggufx template diff old.gguf new.gguf
      ggufx template diff model.gguf fixed.jinja
    """
    from ggufx.results import template_diff

    res = template_diff(a, b, _load(a), _load(b), name)
    if as_json:
        emit_json(res)
    else:
        text = res["diff"]
        if text:
            click.echo(text if text.endswith("\n") else text + "\n", nl=False)
        click.echo(res["verdict"])
    if not res["identical"]:
        sys.exit(EXIT_CHECK_FAILED)
