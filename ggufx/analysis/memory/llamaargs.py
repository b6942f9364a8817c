"""llama.cpp command lines, read whole into ggufx's parameter objects.

``parse_args("llama-server -m model.gguf -ngl 99 -c 32768 -ctk q8_0")`` gives the
:class:`OffloadParams` and :class:`ContextParams` llama.cpp would use, with its defaults
(``common/common.h``) and the ``llama-server`` differences (``-np`` unset means 4 slots with a unified
KV cache; logits are reserved for one token per slot, not for a whole micro-batch).

The line is read as llama.cpp's ``common_params_parse`` reads it, from the table of every argument the
pinned llama.cpp defines (:mod:`ggufx.analysis.memory.llama_arg_table`, generated from
``common/arg.cpp``):

* a first word that is not an option is the program (``llama-server``, ``./build/bin/llama-cli``...):
  it decides which arguments are accepted and the llama-server semantics; it is returned as ``tool``;
* every argument is looked up by its name (``--ctx_size`` is ``--ctx-size``, as in llama.cpp); one the
  tool does not define is an :class:`InputError` worded as llama.cpp words it (``invalid argument:
  --bogus``), as is an argument whose value is missing;
* the arguments that decide memory are read; every other argument is accepted and skipped with its
  values (listed in ``others``; those that change memory in a way ggufx does not model yet, in
  ``unmodelled``); ``-m``, ``--mmproj`` and ``-md`` name the files (``model``, ``mmproj``, ``draft``).

Without a program name (and no ``tool``), an argument is accepted when any of the tools ggufx reads but
``llama-embedding`` accepts it (name that program for its own options, such as ``--attention``). Environment
variables (``LLAMA_ARG_*``) are not read.

Embedding runs: ``llama-server --embedding`` (or ``--rerank``, with ``--pooling``) and ``llama-embedding`` set
:class:`ContextParams`' ``embeddings`` and ``pooling``, and each tool's own changes to the batch, the sequences and
the outputs (:func:`embedding_context`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache

from ggufx.analysis.memory.buffers import ContextParams
from ggufx.analysis.memory.llama_arg_table import ARGS, LLAMA_CPP_VERSION, TOOLS
from ggufx.analysis.memory.options import POOLING_TYPES, ProjectorOptions
from ggufx.analysis.memory.placement import CPU_MOE_PATTERN, OffloadParams, n_cpu_moe_patterns
from ggufx.errors import InputError

__all__ = ["TOOL_NAMES", "LlamaArgs", "accepted", "argument_names", "embedding_context", "parse_args", "program_tool"]

# program name -> the LLAMA_EXAMPLE_* it parses its arguments as: the generated table's tools (llama-embedding's from
# examples/embedding/embedding.cpp: common_params_parse(..., LLAMA_EXAMPLE_EMBEDDING))
_TOOLS: dict[str, str] = dict(TOOLS)
TOOL_NAMES: tuple[str, ...] = tuple(_TOOLS)  # the programs whose command lines ggufx reads
# a line without a program is read as any of the tools would read it but llama-embedding (not its own options, such
# as --attention: name the program for those)
_ANY_TOOL: tuple[str, ...] = tuple(t for t in TOOLS if t != "llama-embedding")
LLAMA_MAX_SEQ = 256  # llama_max_parallel_sequences() (llama-cparams.h): llama-embedding's sequences by default
PARAM = "--llama-args"  # the option every InputError names (the CLI's option for a llama.cpp command line)

# arguments that change memory in ways ggufx does not model yet (by the first name arg.cpp gives)
NOT_MODELLED = frozenset(
    {
        "-ncffn",  # dense FFN weights of the first N layers kept on the CPU
        "--spec-draft-override-tensor",  # -otd: the draft model's tensor placement
        "--spec-draft-cpu-moe",  # -cmoed
        "--spec-draft-n-cpu-moe",  # -ncmoed
        "--spec-draft-device",  # -devd
    }
)


@dataclass(slots=True)
class LlamaArgs:
    """What a llama.cpp command line says about memory."""

    offload: OffloadParams
    context: ContextParams
    model: str | None = None  # -m FILE
    no_devices: bool = False  # -dev none
    mmproj: str | None = None  # --mmproj FILE
    draft: str | None = None  # -md FILE: the draft model of speculative decoding
    draft_offload: OffloadParams | None = None  # -ngld
    draft_context: ContextParams | None = None  # -ctkd, -ctvd
    projector: ProjectorOptions = field(default_factory=ProjectorOptions)  # --image-*-tokens, --no-mmproj-offload
    others: list[str] = field(default_factory=list)  # arguments (with their values) that change no buffer
    tool: str | None = None  # the program the line runs (its first word), or the tool asked for
    unmodelled: list[str] = field(default_factory=list)  # arguments that change memory ggufx does not model
    spec_types: tuple[str, ...] = ()  # --spec-type a,b (each occurrence adds): draft-mtp makes the MTP context
    spec_n_max: int = 3  # --spec-draft-n-max
    spec_cache: tuple[str, str] = ("f16", "f16")  # -ctkd, -ctvd: the draft (or MTP) context's cache types


@dataclass(frozen=True, slots=True)
class _Option:
    first: str  # the first name arg.cpp gives: the key of the memory options below
    values: int  # words after the name
    positive: bool  # False for a --no- form


def _accepts(example: str, examples: tuple[str, ...], excludes: tuple[str, ...], when: str | None) -> bool:
    """``common_params_parser_init``'s add_opt filter, and the ``if (ex == ...)`` around an option."""
    if when is not None and (when.lstrip("!") == example) == when.startswith("!"):
        return False  # "SERVER" holds for llama-server only, "!SERVER" for every other tool
    inherit_common = example != "DOWNLOAD"
    return (example in examples or (inherit_common and "COMMON" in examples)) and example not in excludes


@cache
def _options(tool: str | None) -> dict[str, _Option]:
    """Every name ``tool`` accepts (any of the tools ggufx reads when None), as llama.cpp maps them
    (a later definition of a name wins, as in ``arg_to_options``)."""
    examples = [_TOOLS[tool]] if tool is not None else [_TOOLS[t] for t in _ANY_TOOL]
    out: dict[str, _Option] = {}
    for names, negated, values, ex, excludes, when in ARGS:
        if not any(_accepts(e, ex, excludes, when) for e in examples):
            continue
        for n in names:
            out[n] = _Option(names[0], values, True)
        for n in negated:
            out[n] = _Option(names[0], values, False)
    return out


def accepted(name: str, tool: str | None = None) -> bool:
    """Whether ``tool`` (when None: any of the tools a line without a program may be for) accepts ``name``."""
    return _canonical(name) in _options(tool)


def _canonical(word: str) -> str:
    """llama.cpp reads ``--ctx_size`` as ``--ctx-size`` (``_`` -> ``-`` in long names only)."""
    return word.replace("_", "-") if word.startswith("--") else word


def program_tool(word: str) -> str:
    """The tool a program name runs: ``llama-server``, ``/opt/llama.cpp/build/bin/llama-cli``,
    ``llama-server.exe``; anything else is an InputError naming the programs ggufx reads."""
    base = os.path.basename(word.replace("\\", "/"))
    if base.lower().endswith(".exe"):
        base = base[:-4]
    if base not in _TOOLS:
        raise InputError(
            f"{word!r} is not a llama.cpp program whose command line ggufx reads ({', '.join(TOOL_NAMES)}); "
            "give the options alone, or one of those programs first",
            PARAM,
        )
    return base


def _refusal(word: str, tool: str | None) -> str:
    """llama.cpp's message for an argument it does not know, and who would accept it."""
    name = _canonical(word)
    msg = f"invalid argument: {word}"
    if not word.startswith("-"):
        return msg + " (llama.cpp takes no positional arguments: the model is -m FILE)"
    others = [t for t in TOOL_NAMES if t != tool and name in _options(t)]
    if tool is not None and others:
        return msg + f" ({tool} does not accept it; {', '.join(others)} {'does' if len(others) == 1 else 'do'})"
    if any(name in names or name in neg for names, neg, *_ in ARGS):
        return msg + f" ({tool or ', '.join(_ANY_TOOL)} {'does' if tool else 'do'} not accept it)"
    return msg + f" (llama.cpp {LLAMA_CPP_VERSION} has no such argument)"


def parse_args(argv: list[str] | str, server: bool = False, tool: str | None = None) -> LlamaArgs:
    """Read a llama.cpp command line: options alone, or a program name and its options.

    ``tool`` (one of :data:`TOOL_NAMES`) is the program when the line names none; a line that names
    another is an InputError. ``server`` is the older way to say ``tool="llama-server"``."""
    try:
        words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    except ValueError as e:  # an unclosed quote
        raise InputError(f"cannot split the command line: {e}", PARAM) from None
    if tool is not None and tool not in _TOOLS:
        raise InputError(f"unknown tool {tool!r} (one of {', '.join(TOOL_NAMES)})", "--tool")
    if words and not words[0].startswith("-"):
        program = program_tool(words.pop(0))
        if tool is not None and program != tool:
            raise InputError(f"the command line runs {program}, but the tool asked for is {tool}", "--tool")
        tool = program
    if tool is None and server:
        tool = "llama-server"
    st = _State()
    for word, opt, values in _arguments(words, tool):
        handler = _MEMORY.get(opt.first)
        if handler is not None:
            handler(st, _Value(word, values[0] if values else "", opt.positive))
        else:
            st.others += [word, *values]
            if opt.first in NOT_MODELLED:
                st.unmodelled.append(word)
    return st.result(tool)


def _arguments(words: list[str], tool: str | None) -> Iterator[tuple[str, _Option, list[str]]]:
    """Each argument of ``words`` (no program name) as written, what it is, and its values; an argument
    ``tool`` does not define, or one whose value is missing, is an InputError worded as llama.cpp words it."""
    options = _options(tool)
    i = 0
    while i < len(words):
        word = words[i]
        opt = options.get(_canonical(word))
        if opt is None:
            raise InputError(_refusal(word, tool), PARAM)
        if i + opt.values >= len(words):
            raise InputError(f'error while handling argument "{word}": expected value for argument', PARAM)
        yield word, opt, words[i + 1 : i + 1 + opt.values]
        i += 1 + opt.values


def argument_names(argv: list[str] | str, tool: str | None = None) -> list[tuple[str, str]]:
    """The arguments of a llama.cpp command line's options (no program name), each as written and by the first
    name llama.cpp gives it (``--n-gpu-layers`` is ``-ngl``); an InputError as :func:`parse_args` words it."""
    try:
        words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    except ValueError as e:
        raise InputError(f"cannot split the command line: {e}", PARAM) from None
    if tool is not None and tool not in _TOOLS:
        raise InputError(f"unknown tool {tool!r} (one of {', '.join(TOOL_NAMES)})", "--tool")
    return [(word, opt.first) for word, opt, _ in _arguments(words, tool)]


@dataclass(frozen=True, slots=True)
class _Value:
    name: str  # as written
    text: str  # its value ("" for a flag)
    positive: bool

    def integer(self, lo: int | None = None) -> int:
        try:
            n = int(self.text)
        except ValueError:
            raise InputError(
                f'error while handling argument "{self.name}": {self.text!r} is not an integer', PARAM
            ) from None
        if lo is not None and n < lo:
            raise InputError(f'error while handling argument "{self.name}": invalid value {n}', PARAM)
        return n

    def layers(self) -> int:
        """-ngl N, auto or all (ggufx reads both as every layer)."""
        return -1 if self.text in ("auto", "all") else self.integer()

    def cache_type(self) -> str:
        """-ctk/-ctv TYPE: one of llama.cpp's kv_cache_types (arg.cpp kv_cache_type_from_str)."""
        from ggufx.format.ggmltypes import CACHE_TYPES

        if self.text not in CACHE_TYPES:
            raise InputError(
                f'error while handling argument "{self.name}": Unsupported cache type: {self.text} '
                f"(one of {', '.join(CACHE_TYPES)})",
                PARAM,
            )
        return self.text

    def choice(self, *allowed: str) -> str:
        if self.text not in allowed:
            raise InputError(
                f'error while handling argument "{self.name}": invalid value {self.text!r} '
                f"(one of {', '.join(allowed)})",
                PARAM,
            )
        return self.text


_TRUTHY, _FALSEY, _AUTO = ("on", "enabled", "true", "1"), ("off", "disabled", "false", "0"), ("auto", "-1")


@dataclass(slots=True)
class _State:
    """What the memory arguments of one command line set (unset keys keep llama.cpp's defaults)."""

    v: dict[str, object] = field(default_factory=dict)
    overrides: list[tuple[str, str]] = field(default_factory=list)
    tensor_split: tuple[float, ...] = ()
    no_devices: bool = False
    others: list[str] = field(default_factory=list)
    unmodelled: list[str] = field(default_factory=list)

    def result(self, tool: str | None) -> LlamaArgs:
        v = self.v
        server = tool == "llama-server"
        overrides = list(self.overrides)
        n_parallel = int(v.get("n_parallel", 4 if server else 1))  # type: ignore[call-overload]
        unified = bool(v["kv_unified"]) if "kv_unified" in v else server and "n_parallel" not in v
        offload = OffloadParams(
            n_gpu_layers=int(v.get("n_gpu_layers", -1)),  # type: ignore[call-overload]
            split_mode=str(v.get("split_mode", "layer")),
            main_gpu=int(v.get("main_gpu", 0)),  # type: ignore[call-overload]
            tensor_split=self.tensor_split,
            overrides=tuple(overrides),
            mmap=bool(v.get("mmap", True)),
            repack=bool(v.get("repack", True)),
        )
        context = ContextParams(
            n_ctx=int(v.get("n_ctx", 0)),  # type: ignore[call-overload]
            n_batch=int(v.get("n_batch", 2048)),  # type: ignore[call-overload]
            n_ubatch=int(v.get("n_ubatch", 512)),  # type: ignore[call-overload]
            n_parallel=n_parallel,
            kv_unified=unified,
            flash_attn=str(v.get("flash_attn", "auto")),
            cache_type_k=str(v.get("cache_type_k", "f16")),
            cache_type_v=str(v.get("cache_type_v", "f16")),
            no_kv_offload=bool(v.get("no_kv_offload", False)),
            swa_full=bool(v.get("swa_full", False)),
            n_outputs_max=n_parallel if server else 0,
            embeddings=bool(v.get("embedding", False)),
            pooling=None if v.get("pooling") is None else str(v.get("pooling")),
        )
        context = embedding_context(context, tool, causal=v.get("attention") == "causal")
        draft = v.get("draft")
        draft_offload = draft_context = None
        if draft is not None:
            # the target's parameters but for -ngld and -otd (common_base_params_to_speculative, speculative.cpp)
            draft_offload = replace(offload, n_gpu_layers=int(v.get("draft_ngl", -1)), overrides=())  # type: ignore[call-overload]
            draft_context = replace(
                context,
                cache_type_k=str(v.get("draft_ctk", "f16")),
                cache_type_v=str(v.get("draft_ctv", "f16")),
            )
        mmproj, model = v.get("mmproj"), v.get("model")
        return LlamaArgs(
            offload,
            context,
            None if model is None else str(model),
            self.no_devices,
            None if mmproj is None else str(mmproj),
            None if draft is None else str(draft),
            draft_offload,
            draft_context,
            ProjectorOptions(
                v.get("image_min"),  # type: ignore[arg-type]
                v.get("image_max"),  # type: ignore[arg-type]
                bool(v.get("mmproj_offload", True)),
            ),
            self.others,
            tool,
            self.unmodelled,
            tuple(v.get("spec_types", ())),  # type: ignore[arg-type]
            int(v.get("spec_n_max", 3)),  # type: ignore[call-overload]
            (str(v.get("draft_ctk", "f16")), str(v.get("draft_ctv", "f16"))),
        )


def embedding_context(cp: ContextParams, tool: str | None, causal: bool = False) -> ContextParams:
    """What llama.cpp's tools do to the context of an embedding run, before llama.cpp sees it:

    * ``llama-embedding`` (examples/embedding/embedding.cpp:107-129) always computes embeddings; with ``-np 1``
      (its default) it serves ``llama_max_parallel_sequences()`` (256) sequences over a unified cache; a batch
      below the context becomes the context; unless ``--attention causal``, the micro-batch is the batch;
    * ``llama-server --embedding`` (tools/server/server.cpp:159-166) makes the batch the micro-batch where it is
      larger, and reserves outputs for a whole batch, one per sequence (server-context.cpp:42-46
      ``server_output_limits``: also with a ``--pooling`` other than none).

    Every tool's ``common_init_from_params`` then does the server's batch rule again (common.cpp:1297-1303:
    :func:`ggufx.analysis.memory.buffers.breakdown` applies it)."""
    if tool == "llama-embedding":
        cp = replace(cp, embeddings=True)
        if cp.n_parallel == 1:
            cp = replace(cp, n_parallel=LLAMA_MAX_SEQ, kv_unified=True)
        if cp.n_batch < cp.n_ctx:
            cp = replace(cp, n_batch=cp.n_ctx)
        if not causal:
            cp = replace(cp, n_ubatch=cp.n_batch)
    elif tool == "llama-server":
        if cp.embeddings and cp.n_batch > cp.n_ubatch:
            cp = replace(cp, n_batch=cp.n_ubatch)
        if cp.embeddings or cp.pooling not in (None, "none"):
            cp = replace(cp, n_outputs_max=0)  # 0: n_batch
    return cp


def _set(key: str, read: Callable[[_Value], object]) -> Callable[[_State, _Value], None]:
    def handle(st: _State, a: _Value) -> None:
        st.v[key] = read(a)

    return handle


def _flash_attn(a: _Value) -> str:
    """-fa on|off|auto, with llama.cpp's synonyms (is_truthy, is_falsey, is_autoy)."""
    if a.text in _TRUTHY:
        return "on"
    if a.text in _FALSEY:
        return "off"
    if a.text in _AUTO:
        return "auto"
    raise InputError(f'error while handling argument "{a.name}": unknown value for --flash-attn: {a.text!r}', PARAM)


def _tensor_split(st: _State, a: _Value) -> None:
    try:
        st.tensor_split = tuple(float(x) for x in a.text.replace("/", ",").split(","))
    except ValueError:
        raise InputError(f"{a.name} {a.text}: expected numbers separated by commas", PARAM) from None


def _override_tensor(st: _State, a: _Value) -> None:
    for item in a.text.split(","):
        pattern, sep, buft = item.rpartition("=")
        if not sep or not pattern:
            raise InputError(f"{a.name} {item}: expected REGEX=BUFFER_TYPE", PARAM)
        st.overrides.append((pattern, buft))


def _cpu_moe(st: _State, a: _Value) -> None:
    st.overrides.append((CPU_MOE_PATTERN, "CPU"))


def _n_cpu_moe(st: _State, a: _Value) -> None:
    st.overrides += [(p, "CPU") for p in n_cpu_moe_patterns(a.integer(lo=0))]


def _device(st: _State, a: _Value) -> None:
    st.no_devices = a.text == "none"


def _rerank(st: _State, a: _Value) -> None:
    """--rerank (arg.cpp:3494-3499): embeddings with rank pooling."""
    st.v["embedding"], st.v["pooling"] = True, "rank"


def _load_mode(a: _Value) -> bool:
    """-lm: the modes that memory-map the model (llama-model-loader.cpp: mmap, mmap+mlock, auto)."""
    return a.choice("auto", "none", "mmap", "mlock", "mmap+mlock", "dio") in ("auto", "mmap", "mmap+mlock")


def _spec_type(st: _State, a: _Value) -> None:
    """--spec-type a,b: every occurrence adds its types (arg.cpp:4277-4281)."""
    from ggufx.analysis.memory.mtp import spec_types

    try:
        names = spec_types(a.text)
    except InputError as e:
        raise InputError(f'error while handling argument "{a.name}": {e}', PARAM) from None
    st.v["spec_types"] = (*st.v.get("spec_types", ()), *names)  # type: ignore[misc]


# the memory arguments, by the first name arg.cpp gives each (every one is checked against the table)
_MEMORY: dict[str, Callable[[_State, _Value], None]] = {
    "-ngl": _set("n_gpu_layers", _Value.layers),
    "-c": _set("n_ctx", lambda a: a.integer()),
    "-b": _set("n_batch", lambda a: a.integer()),
    "-ub": _set("n_ubatch", lambda a: a.integer()),
    "-np": _set("n_parallel", lambda a: a.integer()),
    "-mg": _set("main_gpu", lambda a: a.integer()),
    "--image-min-tokens": _set("image_min", lambda a: a.integer()),
    "--image-max-tokens": _set("image_max", lambda a: a.integer()),
    "-fa": _set("flash_attn", _flash_attn),
    "-ctk": _set("cache_type_k", _Value.cache_type),
    "-ctv": _set("cache_type_v", _Value.cache_type),
    "-sm": _set("split_mode", lambda a: a.choice("none", "layer", "row", "tensor")),
    "-kvo": _set("no_kv_offload", lambda a: not a.positive),
    "--swa-full": _set("swa_full", lambda a: True),
    "-kvu": _set("kv_unified", lambda a: a.positive),
    "-lm": _set("mmap", _load_mode),
    "--repack": _set("repack", lambda a: a.positive),
    "-ts": _tensor_split,
    "-ot": _override_tensor,
    "-cmoe": _cpu_moe,
    "-ncmoe": _n_cpu_moe,
    "-dev": _device,
    "-m": _set("model", lambda a: a.text),
    "-mm": _set("mmproj", lambda a: a.text),
    "--mmproj-offload": _set("mmproj_offload", lambda a: a.positive),
    "--spec-draft-model": _set("draft", lambda a: a.text),
    "--spec-draft-ngl": _set("draft_ngl", _Value.layers),
    "--spec-draft-type-k": _set("draft_ctk", _Value.cache_type),
    "--spec-draft-type-v": _set("draft_ctv", _Value.cache_type),
    "--embedding": _set("embedding", lambda a: True),
    "--rerank": _rerank,
    "--pooling": _set("pooling", lambda a: a.choice(*POOLING_TYPES)),
    "--attention": _set("attention", lambda a: a.choice("causal", "non-causal")),
    "--spec-type": _spec_type,
    "--spec-draft-n-max": _set("spec_n_max", lambda a: a.integer(lo=0)),
}
