"""The memory command: ``ggufx mem`` (llama.cpp's buffers per device, ``--fit``, ``--check``).

Its own module, apart from the other analysis commands (:mod:`ggufx.cli.analyze`), so that ``ggufx mem``
builds only its own options (issue 21: the option objects of the five others were 3.8 M instructions of its start).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ggufx.cli._common import json_option, open_model, remote_options, tablefmt_option
from ggufx.cli._memory import REPLACED_BY_LLAMA_ARGS
from ggufx.results import CACHE_TYPES
from ggufx.results.memory import FLASH_ATTN_WORDS, LAYERS_WORDS, POOLING_TYPES, SPLIT_MODES, TOOLS

if TYPE_CHECKING:  # generic for the type checker in click 8.2 and later; a plain class in click 8.1
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class Spelled(_ParamType):
    """A value given as one of llama.cpp's words for it (``words``: word -> value) or, with ``integers``, a whole
    number. tools/gen_cli_specs.py copies its reading into the fast start's table."""

    def __init__(self, words: dict[str, Any], metavar: str, wanted: str, integers: bool = False) -> None:
        self.words, self.metavar, self.wanted, self.integers = dict(words), metavar, wanted, integers
        self.name = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default
        if value in self.words:
            return self.words[value]
        if self.integers:
            try:
                return int(value)
            except ValueError:
                pass
        self.fail(f"{value!r} is not {self.wanted}.", param, ctx)


# -ngl and -ngld: a number of layers, or llama.cpp's auto and all
LAYERS = Spelled(LAYERS_WORDS, "N|auto|all", "a number of layers, auto or all", integers=True)


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
    type=Spelled(
        FLASH_ATTN_WORDS, "[on|off|auto]", "on, off or auto (or llama.cpp's enabled/true/1, disabled/false/0)"
    ),
    is_flag=False,
    flag_value="auto",
    default=None,
    help="llama.cpp's -fa on|off|auto (default auto; its synonyms too); a quantized V cache needs it.",
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
    type=LAYERS,
    default=-1,
    show_default=True,
    help="The last N of n_layer + 1 layers on the GPUs, the output layer counting as one (-1, auto, all: every "
    "layer; llama.cpp's -fit chooses for auto: see --fit).",
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
    "--gpus",
    metavar="SIZE[,SIZE...]|none",
    help="The GPUs' free memory, e.g. 24GiB,24GiB (default: one GPU); none: no GPU. G and GiB are binary, GB decimal "
    "(24GB: 22,888 MiB).",
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
@click.option(
    "--n-gpu-layers-draft",
    "-ngld",
    type=LAYERS,
    default=-1,
    show_default=True,
    help="-ngl of the draft model.",
)
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
    from ggufx.cli._memory import run

    if options["llama_args"] is not None:
        _no_options_beside_llama_args(click.get_current_context())
    try:
        code = run(file, as_json, tablefmt, options, open_model, click.echo)
    except results.InputError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    if code:
        sys.exit(code)


def _no_options_beside_llama_args(ctx: click.Context) -> None:
    """An option given beside ``--llama-args`` that its command line replaces would be dropped without a word
    (``-c 8192 --llama-args "--spec-type draft-mtp"`` sized the training context): refuse it, naming it."""
    from click.core import ParameterSource

    given = [
        min(p.opts, key=len)
        for p in ctx.command.params
        if p.name in REPLACED_BY_LLAMA_ARGS and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.BadParameter(
            f"{', '.join(given)} beside --llama-args, whose command line sets every llama.cpp option: "
            "put them inside it",
            param_hint="--llama-args",
        )
