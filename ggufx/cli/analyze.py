"""Quant analysis commands: roles, layers, recipe, diff."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ggufx.cli._common import (
    EXIT_CHECK_FAILED,
    emit,
    emit_json,
    json_option,
    open_many,
    remote_options,
    tablefmt_option,
)
from ggufx.results import CACHE_TYPES


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@tablefmt_option
@remote_options
def roles(file: str, as_json: bool, tablefmt: str) -> None:
    """Where the bits go: per tensor role (ffn_down, attn_v, ssm_out, token_embd...) the tensors,
    their types with counts, parameters, bytes, share of all tensor bytes and bits per weight
    (8 x bytes / elements, the same definition as the whole-model BPW).

    \b
    Examples:
      ggufx roles model.gguf
      ggufx roles model.gguf --json | jq '.roles[] | select(.role == "ffn_down")'
    """
    import ggufx
    from ggufx import results
    from ggufx.render.text import roles_text

    res = results.roles(ggufx.open(file))
    emit(res, as_json, lambda: roles_text(res, tablefmt))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-collapse", is_flag=True, help="One row per layer even where neighbours are identical.")
@json_option
@tablefmt_option
@remote_options
def layers(file: str, no_collapse: bool, as_json: bool, tablefmt: str) -> None:
    """A grid with one row per layer: its kind (attention, sliding-window attention, recurrent:
    Mamba, Gated DeltaNet, RWKV...; dense or MoE feed-forward) and the type of each role. Identical
    neighbouring layers are collapsed, so "blocks 12-16 have ffn_up Q5_K" shows at a glance.

    \b
    Examples:
      ggufx layers model.gguf
      ggufx layers model.gguf --json | jq .layer_kinds
    """
    import ggufx
    from ggufx import results
    from ggufx.render.text import layers_text

    res = results.layers(ggufx.open(file), collapse=not no_collapse)
    emit(res, as_json, lambda: layers_text(res, tablefmt))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["command", "tensor-type-file", "args"]),
    default="command",
    show_default=True,
    help="A llama-quantize command line, the file --tensor-type-file reads, or one argument per line.",
)
@json_option
@remote_options
def recipe(file: str, fmt: str, as_json: bool) -> None:
    """The llama-quantize recipe that reproduces this file's per-tensor types: --pure, a base FTYPE
    and the fewest --tensor-type rules (first match wins, as llama-quantize applies them), plus
    --output-tensor-type / --token-embedding-type where needed. Run it on the same source model.

    \b
    Examples:
      ggufx recipe model.gguf
      ggufx recipe model.gguf --format tensor-type-file > types.txt
      ggufx recipe model.gguf --json | jq '{base, rules}'
    """
    import ggufx
    from ggufx import results
    from ggufx.render.text import recipe_text

    res = results.recipe(ggufx.open(file))
    if as_json:
        emit_json(res)
        return
    click.echo(recipe_text(res, fmt), nl=fmt != "tensor-type-file")
    if res["unreproducible"]:
        click.echo(
            f"note: llama-quantize cannot give these tensors their types: {', '.join(res['unreproducible'])}", err=True
        )


@click.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@json_option
@tablefmt_option
@remote_options
def diff_(a: str, b: str, as_json: bool, tablefmt: str) -> None:
    """Compare two quants: per-tensor type changes grouped by role and layer ranges, added and
    removed tensors, metadata changes, BPW and size change. Exit 1 when the tensors differ.

    \b
    Examples:
      ggufx diff model-Q4_K_M.gguf model-UD-Q4_K_XL.gguf
      ggufx diff old.gguf new.gguf --json | jq .type_changes
    """
    from ggufx import results
    from ggufx.render.text import diff_text

    res = results.diff(*open_many([a, b]))
    emit(res, as_json, lambda: diff_text(res, tablefmt))
    if not res["identical_tensors"]:
        sys.exit(EXIT_CHECK_FAILED)


__all__: list[Any] = ["roles", "layers", "recipe", "diff_"]


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--ctx", type=int, default=0, show_default=True, help="Context length in tokens (0: the model's training context)."
)
@click.option(
    "--cache-type-k", "-ctk", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="K cache type."
)
@click.option(
    "--cache-type-v", "-ctv", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="V cache type."
)
@click.option(
    "--flash-attn/--no-flash-attn",
    default=True,
    show_default=True,
    help="Flash attention (needed for a quantized V cache).",
)
@click.option("--parallel", "-np", default=1, show_default=True, help="Sequences (slots) served in parallel.")
@click.option("--ubatch", "-ub", default=512, show_default=True, help="Physical batch size in tokens.")
@click.option(
    "--n-gpu-layers",
    "-ngl",
    default=-1,
    show_default=True,
    help="Layers offloaded to the GPU (-1: all, and the output layer).",
)
@click.option(
    "--fit",
    "fit_budget",
    metavar="SIZE",
    help="Instead: the largest context per cache type that fits SIZE of GPU memory (24GiB, 16GB).",
)
@json_option
@tablefmt_option
@remote_options
def mem(
    file: str,
    ctx: int,
    cache_type_k: str,
    cache_type_v: str,
    flash_attn: bool,
    parallel: int,
    ubatch: int,
    n_gpu_layers: int,
    fit_budget: str | None,
    as_json: bool,
    tablefmt: str,
) -> None:
    """Memory as llama.cpp allocates it: weights (offloaded vs host), KV cache (attention layers
    only, sliding-window layers hold only the window), recurrent state (Mamba, Gated DeltaNet,
    RWKV layers), and an estimate of the compute buffer. --fit answers the inverse question: the
    largest context that fits a GPU, for f16, q8_0 and q4_0 caches. 1 MiB = 1,048,576 bytes.

    \b
    Examples:
      ggufx mem model.gguf --ctx 32768
      ggufx mem model.gguf --ctx 262144 -ctk q4_0 -ctv q4_0
      ggufx mem model.gguf --fit 24GiB
    """
    import ggufx
    from ggufx import results
    from ggufx.render.text import fit_text, memory_text

    model = ggufx.open(file)
    try:
        if fit_budget is not None:
            res = results.fit(model, fit_budget, flash_attn, parallel, ubatch, n_gpu_layers)
            emit(res, as_json, lambda: fit_text(res, tablefmt))
            return
        res = results.memory(model, ctx, cache_type_k, cache_type_v, flash_attn, parallel, ubatch, n_gpu_layers)
    except results.InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    emit(res, as_json, lambda: memory_text(res, tablefmt))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report here (default: stdout).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md"]),
    default=None,
    help="html or md (default: from the output's extension, else html).",
)
@json_option
@remote_options
def report(file: str, output: str | None, fmt: str | None, as_json: bool) -> None:
    """One page about a model: summary, type histogram, where the bits go, a layer heat map (inline
    SVG, no JavaScript, no network), memory at a few context lengths, chat template facts.

    \b
    Examples:
      ggufx report model.gguf -o report.html
      ggufx report model.gguf --format md > REPORT.md
      ggufx report model.gguf --json   # the data behind the page
    """
    import ggufx
    from ggufx import results
    from ggufx.render.pages import render

    res = results.report(ggufx.open(file))
    if as_json:
        emit_json(res)
        return
    if fmt is None:
        fmt = "md" if output and output.endswith((".md", ".markdown")) else "html"
    text = render(res, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = f"{output}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, output)
    click.echo(f"wrote {output} ({len(text):,} characters)", err=True)
