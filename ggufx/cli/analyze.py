"""Quant analysis commands: roles, layers, recipe, diff, report (``mem`` is :mod:`ggufx.cli.memory`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ggufx.cli._common import (
    EXIT_CHECK_FAILED,
    emit,
    emit_json,
    fail_usage,
    json_option,
    open_many,
    open_model,
    pick_sizing_given,
    pick_sizing_options,
    remote_options,
    run_pick,
    tablefmt_option,
    write_text_atomic,
)


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
    from ggufx import results
    from ggufx.render.text import roles_text

    res = results.roles(open_model(file))
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
    from ggufx import results
    from ggufx.render.text import layers_text

    res = results.layers(open_model(file), collapse=not no_collapse)
    emit(res, as_json, lambda: layers_text(res, tablefmt))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--imatrix",
    "imatrix_path",
    type=click.Path(dir_okay=False),
    help="An importance matrix of this model (llama-imatrix's GGUF); with --budget, plan promotions.",
)
@click.option(
    "--budget",
    type=float,
    metavar="BPW",
    help="Target bits per weight as llama.cpp prints them (8 x tensor bytes / parameters), at least the file's.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["command", "tensor-type-file", "args"]),
    default="command",
    show_default=True,
    help="A llama-quantize command line (with --budget: after the table of promotions), the file "
    "--tensor-type-file reads, or one argument per line.",
)
@json_option
@tablefmt_option
@remote_options
def recipe(file: str, imatrix_path: str | None, budget: float | None, fmt: str, as_json: bool, tablefmt: str) -> None:
    """The llama-quantize recipe that reproduces this file's per-tensor types: --pure, a base FTYPE
    and the fewest --tensor-type rules (first match wins, as llama-quantize applies them), plus
    --output-tensor-type / --token-embedding-type where needed. Run it on the same source model.

    With --imatrix and --budget: promote the most important tensors to larger types until the
    budget is spent, as --tensor-type rules placed first. The rule: each step up a tensor's ladder
    (IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S Q2_K IQ3_XXS IQ3_S Q3_K IQ4_XS Q4_K Q5_K Q6_K Q8_0, each
    after llama-quantize's fallback for a row length its block does not divide: Q4_K -> Q5_0,
    Q5_K -> Q5_1, Q6_K -> Q8_0, IQ* -> IQ4_NL) is worth importance x (4^-bpw_from - 4^-bpw_to)
    per added bit per weight, importance being the mean of in_sum2 / counts (ggufx imatrix);
    the best steps are taken first, greedily, and a step that would pass the budget ends that
    tensor's climb. Exit 2 when the budget is below the file's BPW or the imatrix is not this
    model's.

    \b
    Examples:
      ggufx recipe model.gguf
      ggufx recipe model.gguf --format tensor-type-file > types.txt
      ggufx recipe model.gguf --json | jq '{base, rules}'
      ggufx recipe model-Q4_K_M.gguf --imatrix imatrix.gguf --budget 5.2
      ggufx recipe model-Q4_K_M.gguf --imatrix imatrix.gguf --budget 5.2 --json | jq .promotions
    """
    from ggufx import results
    from ggufx.cli._common import EXIT_USAGE
    from ggufx.render.text import recipe_output

    model = open_model(file)
    try:
        res = results.recipe_or_promotions(model, open_model(imatrix_path) if imatrix_path else None, budget)
    except results.InputError as e:
        click.echo(f"ggufx: error: {e.param + ': ' if e.param else ''}{e}", err=True)
        sys.exit(EXIT_USAGE)
    if as_json:
        emit_json(res)
        return
    click.echo(
        recipe_output(res, fmt, tablefmt), nl=budget is not None and fmt == "command" or fmt != "tensor-type-file"
    )
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


# pick's sizing options a model file's report takes too (the others size a folder's ranking only)
MODEL_SIZING = ("fit_target", "tool", "llama_args")


@click.command()
@click.argument("file", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report here (default: stdout).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md"]),
    default=None,
    help="html or md (default: from the output's extension, else html).",
)
@click.option(
    "--gpus",
    metavar="SIZE[,SIZE...]|none",
    help="The GPUs' free memory (24GiB,24GiB): the memory chart draws the budget and llama.cpp's --fit point; "
    "a folder's quants are ranked against it (required there).",
)
@pick_sizing_options
@json_option
@remote_options
def report(file: str, output: str | None, fmt: str | None, gpus: str | None, as_json: bool, **sizing: Any) -> None:
    """One page about a model: summary, type histogram, where the bits go, a layer heat map (inline
    SVG, no JavaScript, no network), memory at a few context lengths, chat template facts.

    A folder: every quant in it ranked against --gpus as `ggufx pick` ranks them (the same JSON), sized
    by pick's options (-c, --fit, -ctk, -ctv, --mmproj, -fitt, --tool, --llama-args). A model file's
    report takes --llama-args (the other options you run with: -np, -ub, -fa...), --tool (default
    llama-cli's defaults) and -fitt (the chart's --fit point); the others are a folder's (exit 2).

    \b
    Examples:
      ggufx report model.gguf -o report.html
      ggufx report model.gguf --gpus 24GiB -o report.html   # the chart with the GPU's budget
      ggufx report model.gguf --format md > REPORT.md
      ggufx report model.gguf --json   # the data behind the page
      ggufx report model.gguf --gpus 24GiB --tool llama-server --llama-args '-np 1 -ub 2048' -o report.html
      ggufx report ./models/ --gpus 24GiB,24GiB -o quants.html   # a folder: every quant against the GPUs
      ggufx report ./models/ --gpus 24GiB -c 65536 --llama-args '-np 1 -fa on' -o quants.html
    """
    from ggufx import results
    from ggufx.render.pages import render

    if fmt is None:
        fmt = "md" if output and output.endswith((".md", ".markdown")) else "html"
    if os.path.isdir(file):
        text = _folder_page(file, gpus, fmt, as_json, sizing)
    else:
        ctx = click.get_current_context()
        given = pick_sizing_given(ctx, but=MODEL_SIZING)
        if given:  # the report shows every context and three cache types, the model alone
            fail_usage(given[0], "sizes a folder's ranking (ggufx pick's); a model file's report does not take it")
        # --tool's default is pick's (llama-server); a model's report, untold, sizes with llama.cpp's own defaults
        tool = sizing["tool"] if pick_sizing_given(ctx, but=tuple(set(MODEL_SIZING) - {"tool"})) else "llama-cli"
        try:
            res = results.report(
                open_model(file), gpus, fit_target_mib=sizing["fit_target"], llama_args=sizing["llama_args"], tool=tool
            )
        except results.InputError as e:
            raise click.BadParameter(str(e), param_hint=e.param) from None
        text = "" if as_json else render(res, fmt)
        if as_json:
            emit_json(res)
    if as_json:
        return
    if output is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(output, text)
    click.echo(f"wrote {output} ({len(text):,} characters)", err=True)


def _folder_page(folder: str, gpus: str | None, fmt: str, as_json: bool, sizing: dict[str, Any]) -> str:
    """A folder's page: ``pick``'s ranking of every quant in it against ``--gpus`` (needed here), sized
    by pick's options, with pick's checks and errors."""
    from ggufx.render.pick import pick_page

    if gpus is None:
        fail_usage("--gpus", "a folder's report ranks its quants against your GPUs: give --gpus")
    data = run_pick([folder], gpus, **sizing).to_json()
    if as_json:
        emit_json(data)
        return ""
    return pick_page(data, fmt)
