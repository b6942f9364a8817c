"""``ggufx pick``: which quant of a repository or folder to download for given GPUs and context."""

from __future__ import annotations

import sys

import click

from ggufx.cli._common import EXIT_USAGE, emit, json_option, network_options, remote_config, tablefmt_option
from ggufx.results import CACHE_TYPES


def _fail(param: str | None, message: str) -> None:
    """One line on stderr, exit 2 (bad input, not a bad file)."""
    click.echo(f"ggufx: error: {param + ': ' if param else ''}{message}", err=True)
    sys.exit(EXIT_USAGE)


@click.command("pick")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--gpus",
    metavar="SIZE[,SIZE...]|none",
    help="Free memory of each GPU (24GiB; 24GiB,24GiB for two), or none. Required.",
)
@click.option(
    "--ctx-size",
    "-c",
    "ctx",
    type=click.IntRange(min=1),
    default=None,
    help="The context you need (tokens). Default, or with --fit: no -c, llama.cpp's --fit chooses one.",
)
@click.option("--fit", "fit_ctx", is_flag=True, help="No -c: llama.cpp's --fit reduces the training context to fit.")
@click.option(
    "--cache-type-k", "-ctk", type=click.Choice(CACHE_TYPES), default="f16", show_default=True, help="K cache type."
)
@click.option(
    "--cache-type-v", "-ctv", type=click.Choice(CACHE_TYPES), default="f16", show_default=True, help="V cache type."
)
@click.option(
    "--mmproj",
    default="auto",
    show_default=True,
    metavar="auto|FILE|none",
    help="The vision/audio projector counted on the first GPU: auto = the repository's own (F16, then BF16, "
    "then F32), a file, or none.",
)
@click.option(
    "--fit-target",
    "-fitt",
    type=click.FloatRange(min=0),
    default=1024.0,
    show_default=True,
    metavar="MiB",
    help="MiB kept free on each GPU (llama.cpp's -fitt).",
)
@click.option(
    "--tool",
    type=click.Choice(["llama-server"]),
    default="llama-server",
    show_default=True,
    help="The program the command lines are written for (its defaults size the buffers).",
)
@click.option(
    "--llama-args",
    metavar="'ARGS'",
    default="",
    help="The other llama-server options you run with (-np 1 -ub 1024 -fa on ...): they size every figure and "
    "are kept in the command lines. Not those pick writes (-m, -c, -ctk, -ctv, -ngl, -ts, -ot, -fitt...).",
)
@json_option
@tablefmt_option
@network_options
def pick(
    sources: tuple[str, ...],
    gpus: str | None,
    ctx: int | None,
    fit_ctx: bool,
    cache_type_k: str,
    cache_type_v: str,
    mmproj: str,
    fit_target: float,
    tool: str,
    llama_args: str,
    as_json: bool,
    tablefmt: str,
) -> None:
    """Which quant to download: every model of a Hub repository, a folder or files, held against your
    GPUs and context from headers alone, with the llama-server command line that runs each.

    \b
    For each model (split shards are one; projectors and other companions are not ranked): quant,
    size, BPW; whether it runs entirely on the GPUs at -c (as llama.cpp's --fit decides, keeping
    -fitt MiB free per GPU) or what --fit moves to the host (-ngl, -ts, -ot); the largest context per
    KV cache type with everything on the GPUs; the command line, and what it allocates per GPU.
    The first line names the highest-BPW model that fits entirely (and a higher one that runs with
    part on the host). Remote repositories: headers only, each read once (and cached).

    \b
    Examples:
      ggufx pick hf://unsloth/Qwen3-30B-A3B-GGUF --gpus 24GiB,24GiB -c 65536
      ggufx pick https://huggingface.co/ggml-org/gemma-3-4b-it-GGUF --gpus 8GiB --fit
      ggufx pick ./models/ --gpus 16GiB -c 32768 -ctk q8_0 -ctv q8_0 --tablefmt github
      ggufx pick a.gguf b-00001-of-00002.gguf --gpus 24GiB --mmproj none --json
      ggufx pick ./models/ --gpus 24GiB -c 32768 --llama-args '-np 1 -ub 2048'
    """
    from ggufx import results
    from ggufx.errors import InputError
    from ggufx.io.sources import is_remote
    from ggufx.render.pick import pick_text

    if gpus is None:
        _fail("--gpus", "give the free memory of your GPUs, e.g. --gpus 24GiB or --gpus 24GiB,24GiB (or none)")
        return
    if fit_ctx and ctx is not None:
        _fail("-c", "give either -c N or --fit, not both")
    remote = remote_config() if any(is_remote(s) for s in sources) or is_remote(mmproj) else None

    def progress(done: int, total: int, name: str) -> None:
        click.echo(f"ggufx: header {done}/{total}: {name}", err=True)

    try:
        res = results.pick(
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
    except InputError as e:
        _fail(e.param, str(e))
        return
    emit(res.to_json(), as_json, lambda: pick_text(res, tablefmt))
