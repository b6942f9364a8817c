"""Read-only inspection commands: info, tensors, meta."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ggufx.cli._common import (
    SERVER_META,
    emit,
    emit_json,
    json_option,
    open_many,
    open_model,
    remote_options,
    tablefmt_option,
    write_raw,
)
from ggufx.results import SORT_ORDERS

if TYPE_CHECKING:
    from ggufx.errors import GGUFError
    from ggufx.model import GGUFModel


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@tablefmt_option
@remote_options
@click.pass_context
def info(ctx: click.Context, files: tuple[str, ...], as_json: bool, tablefmt: str) -> None:
    """Summarise one or more GGUF files: architecture, name, file type, size, tensor count,
    parameters, bits per weight, type histogram, context length and chat template.

    \b
    BPW is llama.cpp's own figure: 8 x (bytes of all tensors) / (elements of all tensors), the
    number `llama-cli` prints when it loads the model; metadata and padding are not counted.
    BPW weights counts only the weight matrices llama-quantize quantizes (no norms, no biases).
    Any shard of a split model gives the whole model.

    \b
    Examples:
      ggufx info model.gguf
      ggufx info --json model.gguf | jq .bpw
      ggufx info ~/models/*.gguf --tablefmt github
      ggufx info --server http://127.0.0.1:8080     # the model llama-server has loaded

    With --json one file prints one object, several files a list of objects. A split model is listed
    once, however many of its shards are named.
    """
    from ggufx.cli._info import run

    def many(paths: Sequence[str]) -> list[GGUFModel | GGUFError]:
        return open_many(tuple(paths), keep_errors=True)

    code = run(files, as_json, tablefmt, many, click.echo, ctx.meta.get(SERVER_META))
    if code:
        ctx.exit(code)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--type", "types", multiple=True, metavar="TYPE", help="Only tensors of this ggml type (repeatable), e.g. Q6_K."
)
@click.option("--grep", metavar="REGEX", help="Only tensors whose name matches this regular expression.")
@click.option("--layers", metavar="N|A-B", help="Only tensors of these layers (blk.N), e.g. 10-19.")
@click.option(
    "--sort",
    type=click.Choice(SORT_ORDERS),
    default="offset",
    show_default=True,
    help="Order: file offset, name, size (largest first), type, BPW (highest first).",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many matching tensors (paging).")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many (paging; JSON then has next_offset).")
@json_option
@tablefmt_option
@remote_options
def tensors(
    file: str,
    types: tuple[str, ...],
    grep: str | None,
    layers: str | None,
    sort: str,
    offset: int,
    limit: int | None,
    as_json: bool,
    tablefmt: str,
) -> None:
    """List tensors: name, ggml type, shape (ggml order, ne[0] first), elements, bytes, bits per
    weight, shard (split models) and absolute offset of the data in its shard.

    \b
    Examples:
      ggufx tensors model.gguf
      ggufx tensors model.gguf --grep 'ffn_(up|gate)' --type Q5_K
      ggufx tensors model.gguf --sort size --json | jq '.tensors[0]'
      ggufx tensors model.gguf --layers 10-19 --limit 50 --offset 50
    """
    from ggufx import results
    from ggufx.render.text import tensors_text

    model = open_model(file)
    try:
        res = results.tensors(model, types, grep, sort, layers, offset, limit)
    except results.InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    emit(res, as_json, lambda: tensors_text(res, tablefmt, show_shard=model.is_split))
    if not as_json and res.get("next_offset") is not None:
        click.echo(f"({res['count']:,} tensors match; next page: --offset {res['next_offset']})", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("key", required=False)
@click.option("--full", is_flag=True, help="Show whole strings and arrays instead of a summary.")
@json_option
@tablefmt_option
@remote_options
def meta(file: str, key: str | None, full: bool, as_json: bool, tablefmt: str) -> None:
    """List every metadata key with its GGUF value type and value, or print one KEY's raw value.

    Arrays are summarised (type, length, first items) unless --full. With KEY, a string value is
    written byte for byte with nothing added (a chat template pipes into a file unchanged),
    numbers as text, arrays as JSON.

    \b
    Examples:
      ggufx meta model.gguf
      ggufx meta model.gguf tokenizer.chat_template > template.jinja
      ggufx meta model.gguf general.architecture
      ggufx meta model.gguf --json | jq '."llama.context_length".value'
    """
    from ggufx import results
    from ggufx.render.text import key_bytes, meta_text

    model = open_model(file)
    if key is None:
        res = results.meta(model, full)
        emit(res, as_json, lambda: meta_text(res, full, tablefmt))
        return
    try:
        one = results.meta_key(model, key)
    except results.InputError as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        emit_json(one)
    else:
        write_raw(key_bytes(one))
