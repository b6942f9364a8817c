"""``ggufx pick``: which quant of a repository or folder to download for given GPUs and context."""

from __future__ import annotations

import click

from ggufx.cli._common import (
    emit,
    fail_usage,
    json_option,
    network_options,
    pick_sizing_options,
    run_pick,
    tablefmt_option,
)


@click.command("pick")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--gpus",
    metavar="SIZE[,SIZE...]|none",
    help="Free memory of each GPU (24GiB; 24GiB,24GiB for two), or none. Required. G and GiB are binary, GB decimal "
    "(24GB: 22,888 MiB).",
)
@pick_sizing_options
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
    from ggufx.render.pick import pick_text

    if gpus is None:
        fail_usage("--gpus", "give the free memory of your GPUs, e.g. --gpus 24GiB or --gpus 24GiB,24GiB (or none)")
    res = run_pick(
        sources,
        gpus,
        ctx=ctx,
        fit_ctx=fit_ctx,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        mmproj=mmproj,
        fit_target=fit_target,
        tool=tool,
        llama_args=llama_args,
    )
    emit(res.to_json(), as_json, lambda: pick_text(res, tablefmt))
