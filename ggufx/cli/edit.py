"""Metadata editing commands: set, delete, rename, edit (one transaction)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ggufx.cli._common import emit_json, json_option, progress_bar
from ggufx.edit.engine import STRATEGIES, Change, Op

if TYPE_CHECKING:
    from ggufx.edit.engine import EditResult
    from ggufx.results.editing import ValueType


def parse_size(text: str) -> int:
    """``--reserve``: ``4096``, ``64K``, ``1MiB``, ``2M`` -> bytes (:func:`ggufx.results.parse_size`)."""
    from ggufx.results import InputError
    from ggufx.results import parse_size as parse

    try:
        return parse(text)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--reserve") from None


def write_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every editing command shares."""
    opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False),
            help="Write the result to this file and leave FILE untouched.",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Show the metadata diff, the strategy and the bytes that would be written; write nothing.",
        ),
        click.option(
            "--reserve",
            default="0",
            metavar="SIZE",
            help="Leave at least SIZE bytes of padding (e.g. 64K) so later edits stay in place.",
        ),
        click.option(
            "--force",
            is_flag=True,
            help="Allow protected keys (general.alignment, split.*), type changes of known keys, a new key that looks "
            "like a typo of a known one, and content-addressed stores.",
        ),
        click.option(
            "--strategy",
            type=click.Choice(STRATEGIES),
            default="auto",
            show_default=True,
            help="How to write: cheapest that works, or force one.",
        ),
        json_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def run_edit(
    file: str,
    ops: list[Op],
    output: str | None,
    dry_run: bool,
    reserve: str,
    force: bool,
    strategy: str,
    as_json: bool,
) -> None:
    """Apply ``ops`` through the edit engine and print what changed (a progress bar on a terminal)."""
    from ggufx.edit.engine import edit

    t0 = time.perf_counter()
    with progress_bar("copying tensor data", not as_json) as progress:
        result = edit(
            file,
            ops,
            output=output,
            dry_run=dry_run,
            reserve=parse_size(reserve),
            strategy=strategy,
            force=force,
            progress=progress,
        )
    elapsed = time.perf_counter() - t0
    if as_json:
        d = result.to_dict()
        d["seconds"] = round(elapsed, 6)
        emit_json(d)
    else:
        _print_edit(result, dry_run, elapsed)


def _print_edit(result: EditResult, dry_run: bool, elapsed: float) -> None:
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for c in result.changes:
        click.echo(_change_line(c))
    if result.strategy == "unchanged":
        click.echo("nothing to change")
        return
    where = result.output or result.target
    verb = "would write" if dry_run else "wrote"
    moved = (
        ""
        if result.data_offset_after == result.data_offset_before
        else f", data section {result.data_offset_before:,} -> {result.data_offset_after:,}"
    )
    click.echo(
        f"{result.strategy}: {verb} {result.bytes_written:,} bytes to {where}"
        f"{'' if dry_run else f' in {elapsed * 1000:,.1f} ms'} (padding {result.padding_bytes:,} bytes{moved})"
    )


def _short(v: Any) -> str:
    import json

    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "…" + f" ({len(v) if isinstance(v, str) else len(text)} chars)"


def _change_line(c: Change) -> str:
    if c.op == "add":
        return click.style(f"+ {c.key} ({c.after_type}) = {_short(c.after)}", fg="green")
    if c.op == "delete":
        return click.style(f"- {c.key} ({c.before_type}) = {_short(c.before)}", fg="red")
    if c.op == "rename":
        return click.style(f"~ {c.key} -> {c.new_key} ({c.after_type})", fg="yellow")
    return (
        click.style(f"- {c.key} ({c.before_type}) = {_short(c.before)}", fg="red")
        + "\n"
        + click.style(f"+ {c.key} ({c.after_type}) = {_short(c.after)}", fg="green")
    )


def _type_option(value: str | None) -> ValueType | None:
    if value is None:
        return None
    from ggufx.results import InputError, value_type

    try:
        return value_type(value)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None


def _read_text_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror}", param_hint="--from-file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.BadParameter(f"{path} is not valid UTF-8 (byte {e.start})", param_hint="--from-file") from None


@click.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--type",
    "vtype",
    metavar="TYPE",
    help="u8|i8|u16|i16|u32|i32|u64|i64|f32|f64|bool|str; with a JSON list, the element type.",
)
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False),
    help="Read a string VALUE from this file (UTF-8), e.g. a chat template.",
)
@write_options
def set_(file: str, key: str, value: str | None, vtype: str | None, from_file: str | None, **kw: Any) -> None:
    """Set metadata KEY to VALUE, in place when it fits (milliseconds, crash-safe).

    The value type is the key's current type, else the type llama.cpp's gguf-py writes for it
    (llama.context_length is u32), else --type. Arrays are JSON lists. Tensor data is never touched.

    \b
    Examples:
      ggufx set model.gguf general.name "My fine-tune"
      ggufx set model.gguf llama.context_length 32768
      ggufx set model.gguf tokenizer.chat_template --from-file template.jinja
      ggufx set model.gguf my.flags '[1, 2, 3]' --type u32
      ggufx set model.gguf tokenizer.ggml.eos_token_id 106 --dry-run
      ggufx set model.gguf my.offset -5 --type i32
    """
    from ggufx.edit.engine import Set

    if (value is None) == (from_file is None):
        raise click.UsageError("give either VALUE or --from-file PATH")
    if from_file is not None:
        op = Set(key, _read_text_file(from_file), _type_option(vtype) or None)
    else:
        op = Set(key, value, _type_option(vtype), from_text=True)
    run_edit(file, [op], **kw)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("keys", nargs=-1, required=True)
@write_options
def delete(file: str, keys: tuple[str, ...], **kw: Any) -> None:
    """Delete one or more metadata KEYS.

    \b
    Examples:
      ggufx delete model.gguf tokenizer.chat_template.tool_use
      ggufx delete model.gguf general.url general.repo_url --dry-run
    """
    from ggufx.edit.engine import Delete

    run_edit(file, [Delete(k) for k in keys], **kw)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("old")
@click.argument("new")
@write_options
def rename(file: str, old: str, new: str, **kw: Any) -> None:
    """Rename metadata key OLD to NEW (value and type unchanged, position kept).

    \b
    Examples:
      ggufx rename model.gguf tokenizer.chat_template tokenizer.chat_template.default
    """
    from ggufx.edit.engine import Rename

    run_edit(file, [Rename(old, new)], **kw)


def _edit_ops(
    sets: tuple[str, ...], set_files: tuple[str, ...], deletes: tuple[str, ...], renames: tuple[str, ...]
) -> list[Op]:
    """The changes of ``edit``, in the order --set, --from-file, --delete, --rename."""
    from ggufx.edit.engine import Delete, Rename, Set

    ops: list[Op] = []
    for s in sets:
        k, v = _split_pair(s, "=", "--set")
        vtype = None
        if ":" in k:
            k, t = k.rsplit(":", 1)
            vtype = _type_option(t)
        ops.append(Set(k, v, vtype, from_text=True))
    for s in set_files:
        k, p = _split_pair(s, "=", "--from-file")
        ops.append(Set(k, _read_text_file(p)))
    ops.extend(Delete(k) for k in deletes)
    for s in renames:
        a, b = _split_pair(s, "=", "--rename")
        ops.append(Rename(a, b))
    return ops


def _split_pair(text: str, sep: str, opt: str) -> tuple[str, str]:
    if sep not in text:
        raise click.BadParameter(f"{text!r} must look like KEY{sep}VALUE", param_hint=opt)
    a, b = text.split(sep, 1)
    return a, b


@click.command("edit")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a key (repeatable); KEY:TYPE=VALUE gives the type."
)
@click.option(
    "--from-file",
    "set_files",
    multiple=True,
    metavar="KEY=PATH",
    help="Set a string key to the text of a UTF-8 file (repeatable).",
)
@click.option("--set-file", "set_files_alias", multiple=True, hidden=True)  # the earlier name of --from-file
@click.option("--delete", "deletes", multiple=True, metavar="KEY", help="Delete a key (repeatable).")
@click.option("--missing-ok", is_flag=True, help="--delete of a key the file does not have is not an error.")
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW", help="Rename a key (repeatable).")
@write_options
def edit_(
    file: str,
    sets: tuple[str, ...],
    set_files: tuple[str, ...],
    set_files_alias: tuple[str, ...],
    deletes: tuple[str, ...],
    missing_ok: bool,
    renames: tuple[str, ...],
    **kw: Any,
) -> None:
    """Apply several changes as one transaction: all of them or none, one write.

    Changes apply in the order: --set, --from-file, --delete, --rename. --delete of a key the
    file does not have is an error unless --missing-ok.

    \b
    Examples:
      ggufx edit model.gguf --set general.name=Foo --delete general.url --rename a.b=a.c
      ggufx edit model.gguf --set my.count:u32=7 --from-file tokenizer.chat_template=fixed.jinja -o fixed.gguf
    """
    if not (sets or set_files or set_files_alias or deletes or renames):
        raise click.UsageError("nothing to do: give --set, --from-file, --delete or --rename")
    if missing_ok:
        from ggufx.results import present_keys

        deletes = present_keys(file, deletes)
    ops = _edit_ops(sets, set_files + set_files_alias, deletes, renames)
    run_edit(file, ops, **kw)
