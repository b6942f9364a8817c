"""Quant analysis commands: roles, layers, recipe, diff."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ggufx.results import CACHE_TYPES
from ggufx.cli._common import EXIT_CHECK_FAILED, emit_json, json_option, open_many, remote_options, tablefmt_option


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
    from ggufx.render import table
    from ggufx import results
    from ggufx.analysis.tables import role_table

    model = ggufx.open(file)
    if as_json:
        emit_json(results.roles(model))
        return
    rows = role_table(model)
    click.echo(table.render(
        [(r.role, r.tensors, ", ".join(f"{t} {n}" for t, n in r.types.items()), r.parameters, r.bytes,
          f"{100 * r.share:.2f}%", f"{r.bpw:.2f}") for r in rows],
        ("role", "tensors", "types", "parameters", "bytes", "share", "BPW"), tablefmt, align="lrlrrrr"))


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
    from ggufx.render import table
    from ggufx import results
    from ggufx.analysis.tables import layer_grid

    model = ggufx.open(file)
    if as_json:
        emit_json(results.layers(model, collapse=not no_collapse))
        return
    grid = layer_grid(model, collapse=not no_collapse)
    rows = []
    for r in grid.rows:
        span = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
        rows.append([span, r.kind, *[r.types[role] or "-" for role in grid.roles], f"{r.bpw:.2f}"])
    click.echo(table.render(rows, ["layers", "kind", *grid.roles, "BPW"], tablefmt,
                            align="ll" + "l" * len(grid.roles) + "r"))
    counts = ", ".join(f"{n} {kind}" for kind, n in grid.counts().items())
    click.echo(f"\n{len(grid.kinds)} layers: {counts}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["command", "tensor-type-file", "args"]), default="command",
              show_default=True, help="A llama-quantize command line, the file --tensor-type-file reads, or one argument per line.")
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
    from ggufx.analysis.tables import recipe as make_recipe

    model = ggufx.open(file)
    if as_json:
        d = results.recipe(model)
        emit_json(d)
        return
    rec = make_recipe(model)
    if fmt == "tensor-type-file":
        click.echo(rec.tensor_type_file(), nl=False)
    elif fmt == "args":
        click.echo("\n".join(rec.args()))
    else:
        click.echo(rec.command())
    if rec.unreproducible:
        click.echo(f"note: llama-quantize cannot give these tensors their types: {', '.join(rec.unreproducible)}", err=True)


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
    from ggufx.render import table
    from ggufx.analysis.tables import diff as model_diff

    d = model_diff(*open_many([a, b]))
    if as_json:
        emit_json(d.to_dict())  # = ggufx.results.diff
    else:
        if d.type_changes:
            click.echo(table.render([(c.role, c.layers or "-", c.before, c.after, c.tensors) for c in d.type_changes],
                                    ("role", "layers", "A", "B", "tensors"), tablefmt, align="lllll"))
        for label, names in (("added tensors", d.added), ("removed tensors", d.removed), ("shape changes", d.shape_changes),
                             ("metadata added", d.metadata_added), ("metadata removed", d.metadata_removed),
                             ("metadata changed", d.metadata_changed)):
            if names:
                click.echo(f"{label}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
        click.echo(f"BPW {d.a_bpw:.4f} -> {d.b_bpw:.4f} ({d.b_bpw - d.a_bpw:+.4f}); tensor bytes {d.a_bytes:,} -> "
                   f"{d.b_bytes:,} ({d.b_bytes - d.a_bytes:+,}); file {d.a_file_bytes:,} -> {d.b_file_bytes:,}")
        if d.identical_tensors:
            click.echo("tensors: same names, shapes and types")
    if not d.identical_tensors:
        sys.exit(EXIT_CHECK_FAILED)


__all__: list[Any] = ["roles", "layers", "recipe", "diff_"]


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--ctx", type=int, default=0, show_default=True, help="Context length in tokens (0: the model's training context).")
@click.option("--cache-type-k", "-ctk", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="K cache type.")
@click.option("--cache-type-v", "-ctv", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="V cache type.")
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True, help="Flash attention (needed for a quantized V cache).")
@click.option("--parallel", "-np", default=1, show_default=True, help="Sequences (slots) served in parallel.")
@click.option("--ubatch", "-ub", default=512, show_default=True, help="Physical batch size in tokens.")
@click.option("--n-gpu-layers", "-ngl", default=-1, show_default=True, help="Layers offloaded to the GPU (-1: all, and the output layer).")
@click.option("--fit", "fit_budget", metavar="SIZE", help="Instead: the largest context per cache type that fits SIZE of GPU memory (24GiB, 16GB).")
@json_option
@tablefmt_option
@remote_options
def mem(file: str, ctx: int, cache_type_k: str, cache_type_v: str, flash_attn: bool, parallel: int, ubatch: int,
        n_gpu_layers: int, fit_budget: str | None, as_json: bool, tablefmt: str) -> None:
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
    from ggufx.render import table
    from ggufx.analysis.memory import MiB, estimate, fit, parse_size

    model = ggufx.open(file)
    kw = {"parallel": parallel, "n_ubatch": ubatch, "flash_attn": flash_attn, "n_gpu_layers": n_gpu_layers}
    if fit_budget is not None:
        try:
            budget = parse_size(fit_budget)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--fit") from None
        if as_json:
            emit_json(results.fit(model, budget, flash_attn, parallel, ubatch, n_gpu_layers))
            return
        fits = fit(model, budget, **kw)
        click.echo(table.render([(f.cache_type, f"{f.n_ctx:,}" + (" (training context)" if f.capped else ""),
                                  f"{f.gpu_total / MiB:,.0f}") for f in fits],
                                ("KV cache type", "largest context", "GPU MiB"), tablefmt, align="lrr"))
        return
    if as_json:
        emit_json(results.memory(model, ctx, cache_type_k, cache_type_v, flash_attn, parallel, ubatch, n_gpu_layers))
        return
    e = estimate(model, ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v, **kw)
    rows = [
        ("weights on GPU", e.weights_gpu / MiB, "all layers and the output layer offloaded" if n_gpu_layers < 0
         else f"{e.n_gpu_layers} layers offloaded"),
        ("weights on host", e.weights_host / MiB, "token embedding and layers not offloaded"),
        ("KV cache (full attention)", e.kv / MiB, f"{e.kv_layers} layers x {e.kv_cells:,} cells, K {e.cache_type_k} V {e.cache_type_v}"),
    ]
    if e.kv_swa_layers:
        rows.append(("KV cache (sliding window)", e.kv_swa / MiB, f"{e.kv_swa_layers} layers x {e.kv_swa_cells:,} cells"))
    if e.recurrent_layers:
        rows.append(("recurrent state", e.recurrent / MiB, f"{e.recurrent_layers} layers x {e.parallel} sequence(s), f32"))
    rows.append(("compute buffer (estimate)", e.compute_estimate / MiB, f"ubatch {e.n_ubatch}, flash attention {'on' if e.flash_attn else 'off'}"))
    rows.append(("GPU total", e.gpu_total / MiB, f"n_ctx {e.n_ctx:,}"))
    click.echo(table.render([(a, f"{b:,.2f}", c) for a, b, c in rows], ("part", "MiB", "how"), tablefmt, align="lrl"))
    for note in e.notes:
        click.echo(f"note: {note}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report here (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default=None,
              help="html or md (default: from the output's extension, else html).")
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

    model = ggufx.open(file)
    if as_json:
        emit_json(results.report(model))
        return
    if fmt is None:
        fmt = "md" if output and output.endswith((".md", ".markdown")) else "html"
    text = render(model, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = f"{output}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, output)
    click.echo(f"wrote {output} ({len(text):,} characters)", err=True)
