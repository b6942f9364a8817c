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
    open_model,
    remote_options,
    tablefmt_option,
    write_text_atomic,
)
from ggufx.results import CACHE_TYPES
from ggufx.results.memory import FLASH_ATTN, POOLING_TYPES, SPLIT_MODES, TOOLS


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


@click.command()
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--ctx",
    "-c",
    "--ctx-size",
    "ctx",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Context length in tokens (0: the model's training context).",
)
@click.option(
    "--cache-type-k", "-ctk", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="K cache type."
)
@click.option(
    "--cache-type-v", "-ctv", default="f16", show_default=True, type=click.Choice(CACHE_TYPES), help="V cache type."
)
@click.option(
    "--flash-attn",
    "-fa",
    "fa",
    type=click.Choice(FLASH_ATTN),
    is_flag=False,
    flag_value="auto",
    default=None,
    help="llama.cpp's -fa on|off|auto (default auto); a quantized V cache needs it.",
)
@click.option("--no-flash-attn", is_flag=True, hidden=True)  # the earlier spelling of -fa off
@click.option(
    "--parallel",
    "-np",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sequences (slots) served in parallel.",
)
@click.option(
    "--ubatch",
    "-ub",
    "--ubatch-size",
    "ubatch",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Physical batch size in tokens.",
)
@click.option(
    "--batch-size",
    "-b",
    "batch",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Logical batch size in tokens.",
)
@click.option(
    "--n-gpu-layers",
    "-ngl",
    type=int,
    default=-1,
    show_default=True,
    help="The last N of n_layer + 1 layers on the GPUs, the output layer counting as one (-1: all).",
)
@click.option("--tensor-split", "-ts", metavar="A,B,...", help="Share of the layers per GPU (default: by free memory).")
@click.option(
    "--split-mode",
    "-sm",
    type=click.Choice(SPLIT_MODES),
    default="layer",
    show_default=True,
    help="How several GPUs share the model (row is refused by this llama.cpp with CUDA).",
)
@click.option(
    "--main-gpu", "-mg", type=click.IntRange(min=0), default=0, show_default=True, help="The GPU of -sm none."
)
@click.option(
    "--override-tensor",
    "-ot",
    "overrides",
    multiple=True,
    metavar="REGEX=BUFT",
    help="Put tensors matching REGEX in buffer type BUFT (CPU, CUDA1...); repeatable, first match wins.",
)
@click.option("--cpu-moe", "-cmoe", is_flag=True, help="Keep every MoE expert tensor on the CPU.")
@click.option(
    "--n-cpu-moe",
    "-ncmoe",
    type=click.IntRange(min=0),
    default=0,
    help="Keep the experts of the first N layers on the CPU.",
)
@click.option("--no-kv-offload", "-nkvo", is_flag=True, help="KV cache and recurrent state on the host.")
@click.option("--swa-full", is_flag=True, help="Sliding-window layers keep the full context.")
@click.option("--kv-unified", "-kvu", is_flag=True, help="One KV stream shared by all sequences.")
@click.option("--no-mmap", is_flag=True, help="Host weights in pinned memory instead of a mapping of the file.")
@click.option("--no-repack", "-nr", is_flag=True, help="No repacked CPU_REPACK copies of host weights (CPU builds).")
@click.option(
    "--gpus", metavar="SIZE,SIZE|none", help="The GPUs' free memory, e.g. 24GiB,24GiB (default: one GPU); none: no GPU."
)
@click.option(
    "--tool",
    type=click.Choice(TOOLS),
    default=None,
    help="The program whose buffers to give (default: the one --llama-args names, else llama-cli; llama-server "
    "with --embedding): llama-server reserves logits for one token per slot, the CLI tools for a whole micro-batch; "
    "llama-embedding computes embeddings (256 sequences unless -np, the micro-batch the batch).",
)
@click.option(
    "--embedding",
    "--embeddings",
    "embedding",
    is_flag=True,
    help="An embedding run (llama-server's --embedding; llama-embedding always is one): the output buffer holds "
    "embeddings beside the logits, the graph ends with the pooling, the batch is cut to the micro-batch.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLING_TYPES),
    default=None,
    help="With --embedding or --tool llama-embedding: llama.cpp's pooling type (default: the file's pooling_type).",
)
@click.option(
    "--mmproj", "mmproj_file", type=click.Path(dir_okay=False), help="A vision/audio projector loaded beside the model."
)
@click.option(
    "--image-min-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="With --mmproj: the fewest image tokens (llama.cpp's option; default: the projector's).",
)
@click.option(
    "--image-max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="With --mmproj: the most image tokens; a smaller warmup image, a smaller compute buffer.",
)
@click.option(
    "--no-mmproj-offload", is_flag=True, help="With --mmproj: the projector's weights and graph stay on the CPU."
)
@click.option(
    "--model-draft",
    "-md",
    "draft_file",
    type=click.Path(dir_okay=False),
    help="A draft model for speculative decoding.",
)
@click.option("--n-gpu-layers-draft", "-ngld", type=int, default=-1, show_default=True, help="-ngl of the draft model.")
@click.option(
    "--ctx-size-draft", "-cd", type=click.IntRange(min=0), default=0, hidden=True
)  # refused: llama.cpp has none
@click.option(
    "--cache-type-k-draft",
    "-ctkd",
    type=click.Choice(CACHE_TYPES),
    default="f16",
    show_default=True,
    help="The draft model's K cache type.",
)
@click.option(
    "--cache-type-v-draft",
    "-ctvd",
    type=click.Choice(CACHE_TYPES),
    default="f16",
    show_default=True,
    help="The draft model's V cache type.",
)
@click.option(
    "--spec-type",
    metavar="TYPES",
    help="Speculative decoding types (llama.cpp's --spec-type); draft-mtp adds the MTP draft context "
    "(the model's NextN block; its cache types: -ctkd/-ctvd); draft-eagle3 / draft-dflash with -md HEAD: the head's "
    "context and the target's extracted layers.",
)
@click.option(
    "--spec-draft-n-max", type=click.IntRange(min=0), default=3, show_default=True, help="Tokens drafted per step."
)
@click.option("--llama-args", metavar="'ARGS'", help="llama.cpp's own options as one string (they override the above).")
@click.option(
    "--fit",
    "fit_budget",
    metavar="SIZE",
    help="Instead: what llama.cpp's --fit sets (-c -ngl -ts -ot) for GPUs of SIZE free memory (24GiB; "
    "24GiB,24GiB), and the largest context per cache type.",
)
@click.option(
    "--fit-target",
    "-fitt",
    metavar="MiB[,MiB...]",
    help="MiB to keep free per GPU when fitting (one value, or one per GPU). Default: llama.cpp's 1024 "
    "for its answer, 0 for ggufx's largest context.",
)
@click.option(
    "--fit-ctx",
    "-fitc",
    "fit_ctx",
    type=click.IntRange(min=0),
    default=4096,
    show_default=True,
    help="With --fit and no -c: the smallest context llama.cpp's --fit may reduce to.",
)
@click.option("--fit-layers", is_flag=True, help="With --fit: the most layers (-ngl) that fit at -c, not the context.")
@click.option(
    "--check",
    "check_log",
    type=click.Path(dir_okay=False, exists=True),
    help="Compare with a llama.cpp log (-v) of the same model and options; exit 1 beyond the tolerance.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Percent allowed on computed buffers for --check.",
)
@json_option
@tablefmt_option
@remote_options
def mem(file: str | None, as_json: bool, tablefmt: str, **options: Any) -> None:
    """Memory as llama.cpp allocates it, per device: weights, KV cache, recurrent state, output and
    compute buffers, in the shape of llama.cpp's own "memory breakdown" table. Options are
    llama.cpp's (-c, -ngl, -ts, -sm, -mg, -ot, --cpu-moe, -nkvo, -np, -ub, -fa, -ctk, -ctv...).

    \b
    Exact (as llama.cpp allocates them, checked against recorded CUDA logs): weights per buffer
    type (CUDA padding, memory-mapped host span, tied output copies), KV cache, recurrent state,
    output buffer. Computed (labelled so): compute buffers, from llama.cpp's graph rebuilt, split and
    allocated as llama.cpp does (llama-style, Gemma 3, Qwen 3 MoE, Qwen 3.5 hybrid: equal to every
    recorded log; other architectures: an estimate of the allocator's peak). 1 MiB = 1,048,576 bytes.

    \b
    Examples:
      ggufx mem model.gguf -c 32768
      ggufx mem model.gguf -c 262144 -ctk q4_0 -ctv q4_0 --gpus 24GiB   # exit 1 if it does not fit
      ggufx mem model.gguf --gpus 24GiB,24GiB -ngl 40 --n-cpu-moe 20
      ggufx mem model.gguf --llama-args "-ngl 99 -c 65536 -fa on" --check llama.log
      ggufx mem --llama-args "llama-server -m model.gguf -ngl 99 -c 32768 -np 2"
      ggufx mem model.gguf -c 32768 --mmproj mmproj.gguf -md draft.gguf -ngld 99
      ggufx mem model.gguf -c 65536 --spec-type draft-mtp
      ggufx mem --llama-args "llama-server -m llama-3.1-8b.gguf -md eagle3.gguf --spec-type draft-eagle3 -c 32768"
      ggufx mem model.gguf --fit 24GiB
      ggufx mem model.gguf --fit 24GiB,24GiB -fitt 1024 -ctk q8_0 -ctv q8_0
      ggufx mem model.gguf --fit 24GiB --fit-layers -c 131072
      ggufx mem bge-base.gguf --embedding -c 512 -ub 512   # llama-server --embedding (file's pooling)
      ggufx mem qwen3-embedding.gguf --embedding --pooling last -c 8192 -np 4
      ggufx mem --llama-args "llama-embedding -m nomic-embed.gguf -c 2048 --pooling mean"
    """
    from ggufx import results
    from ggufx.render.text import fit_text, memory_check_text, memory_devices_text

    if options["llama_args"] is not None:
        _no_options_beside_llama_args(click.get_current_context())
    request = results.MemoryRequest(flash_attn=not options.pop("no_flash_attn"), **options)
    try:
        model = open_model(request.model_file(file))
        if request.fit_budget is not None:
            fitted = results.fit(model, request, open_model)
            emit(fitted, as_json, lambda: fit_text(fitted, tablefmt))
        elif request.check_log is not None:
            with open(request.check_log, encoding="utf-8", errors="replace") as f:
                checked = results.check(model, request, f.read(), open_model)
            emit(checked, as_json, lambda: memory_check_text(checked, tablefmt))
            if not checked["ok"]:
                sys.exit(EXIT_CHECK_FAILED)
        else:
            res = results.memory(model, request, open_model)
            emit(res, as_json, lambda: memory_devices_text(res, tablefmt))
            for line in [] if as_json else res["warnings"]:
                click.echo(f"warning: llama.cpp will log: {line}", err=True)
            if results.short_devices(res):  # --gpus sizes the model does not fit: a failed check
                sys.exit(EXIT_CHECK_FAILED)
    except results.InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None


# the llama.cpp options that --llama-args replaces (results.MemoryRequest.setup takes its command line's context,
# offload, projector and draft settings whole); the companion files and --spec-type are merged instead
_REPLACED_BY_LLAMA_ARGS = frozenset(
    {
        "ctx", "cache_type_k", "cache_type_v", "fa", "no_flash_attn", "parallel", "ubatch", "batch", "n_gpu_layers",
        "tensor_split", "split_mode", "main_gpu", "overrides", "cpu_moe", "n_cpu_moe", "no_kv_offload", "swa_full",
        "kv_unified", "no_mmap", "no_repack", "embedding", "pooling", "image_min_tokens", "image_max_tokens",
        "no_mmproj_offload", "n_gpu_layers_draft", "cache_type_k_draft", "cache_type_v_draft",
    }
)  # fmt: skip


def _no_options_beside_llama_args(ctx: click.Context) -> None:
    """An option given beside ``--llama-args`` that its command line replaces would be dropped without a word
    (``-c 8192 --llama-args "--spec-type draft-mtp"`` sized the training context): refuse it, naming it."""
    from click.core import ParameterSource

    given = [
        min(p.opts, key=len)
        for p in ctx.command.params
        if p.name in _REPLACED_BY_LLAMA_ARGS and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.BadParameter(
            f"{', '.join(given)} beside --llama-args, whose command line sets every llama.cpp option: "
            "put them inside it",
            param_hint="--llama-args",
        )


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
    metavar="SIZE,SIZE",
    help="The GPUs' free memory (24GiB,24GiB): the memory chart draws the budget and llama.cpp's --fit point.",
)
@json_option
@remote_options
def report(file: str, output: str | None, fmt: str | None, gpus: str | None, as_json: bool) -> None:
    """One page about a model: summary, type histogram, where the bits go, a layer heat map (inline
    SVG, no JavaScript, no network), memory at a few context lengths, chat template facts.

    \b
    Examples:
      ggufx report model.gguf -o report.html
      ggufx report model.gguf --gpus 24GiB -o report.html   # the chart with the GPU's budget
      ggufx report model.gguf --format md > REPORT.md
      ggufx report model.gguf --json   # the data behind the page
      ggufx report ./models/ --gpus 24GiB,24GiB -o quants.html   # a folder: every quant against the GPUs
    """
    from ggufx import results
    from ggufx.render.pages import render

    if fmt is None:
        fmt = "md" if output and output.endswith((".md", ".markdown")) else "html"
    try:
        if os.path.isdir(file):
            text = _folder_page(file, gpus, fmt, as_json)
        else:
            res = results.report(open_model(file), gpus)
            text = "" if as_json else render(res, fmt)
            if as_json:
                emit_json(res)
    except results.InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    if as_json:
        return
    if output is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(output, text)
    click.echo(f"wrote {output} ({len(text):,} characters)", err=True)


def _folder_page(folder: str, gpus: str | None, fmt: str, as_json: bool) -> str:
    """A folder's page: ``pick``'s ranking of every quant in it against ``--gpus`` (needed here)."""
    from ggufx import results
    from ggufx.render.pick import pick_page

    if gpus is None:
        raise results.InputError("a folder's report ranks its quants against your GPUs: give --gpus", "--gpus")
    data = results.pick([folder], gpus).to_json()
    if as_json:
        emit_json(data)
        return ""
    return pick_page(data, fmt)
