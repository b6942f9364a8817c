"""``mem``: every buffer llama.cpp allocates per device (``memory``), what fits GPUs of a given
size (``fit``, llama.cpp's ``--fit``) and a comparison with a llama.cpp log (``check``).

The faces fill one :class:`MemoryRequest` with llama.cpp's own options (the CLI from its options,
the MCP server from its tool arguments, either with a llama.cpp command line in ``llama_args``);
:meth:`MemoryRequest.setup` turns it into the memory model's parameters in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from ggufx.analysis.memory.options import POOLING_TYPES
from ggufx.errors import GGUFError, InputError
from ggufx.format.ggmltypes import CACHE_TYPES
from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from ggufx.analysis.memory.buffers import Breakdown, Buffer, ContextParams
    from ggufx.analysis.memory.llamaargs import LlamaArgs
    from ggufx.analysis.memory.mtp import MtpOptions
    from ggufx.analysis.memory.options import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

Opener = Callable[[str], GGUFModel]  # how a face opens a companion file it names (its remote options, its roots)

TOOLS = (  # llamaargs.TOOL_NAMES
    "llama-cli",
    "llama-server",
    "llama-completion",
    "llama-mtmd-cli",
    "llama-fit-params",
    "llama-embedding",
)
EMBEDDING_TOOLS = ("llama-server", "llama-embedding")  # the tools that compute embeddings (--embedding, always)


def parse_size(text: str) -> int:
    """The one size grammar of every option that takes one (``--gpus``, ``--fit``, ``--reserve``,
    a policy's ``budget``): ``4096`` (bytes), ``64K``/``64KiB`` and ``24G``/``24GiB`` binary,
    ``24GB`` decimal, ``1.5GiB``, ``8e9``. An :class:`InputError` names what is wrong. A GPU's free
    memory (``--gpus``, ``--fit``) needs its unit: :func:`gpu_size`."""
    from ggufx.analysis.memory.estimate import parse_size as parse

    if text.strip().isdigit():  # exact, however large
        return int(text)
    try:
        return parse(text)
    except ValueError:
        raise InputError(f"{text!r} is not a size such as 24GiB, 24GB or 16000MiB") from None


def gpu_size(text: str, param: str) -> int:
    """One GPU's free memory (``--gpus``, ``--fit``): a size with its unit. A bare number is refused
    rather than read as bytes: ``--gpus 24`` means 24 GiB to whoever types it, never 24 bytes."""
    t = text.strip()
    try:
        float(t)
    except ValueError:
        pass
    else:
        raise InputError(f"{t!r} has no unit: give the free memory as 24GiB, 24GB or 24000MiB", param)
    try:
        return parse_size(t)
    except InputError as e:
        raise InputError(str(e), param) from None


# -- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryRequest:
    """llama.cpp's options for a memory question, as the faces take them (field names are the CLI's
    option names; defaults are llama.cpp's). ``llama_args`` (a llama.cpp command line) overrides
    the rest, as ``--llama-args`` documents. ``fit_budget`` asks :func:`fit`, ``check_log``
    :func:`check`."""

    ctx: int = 0
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    fa: str | None = None  # -fa on|off|auto: wins over flash_attn
    parallel: int = 1
    ubatch: int = 512
    batch: int = 2048
    n_gpu_layers: int = -1
    tensor_split: str | None = None
    split_mode: str = "layer"
    main_gpu: int = 0
    overrides: tuple[str, ...] = ()
    cpu_moe: bool = False
    n_cpu_moe: int = 0
    no_kv_offload: bool = False
    swa_full: bool = False
    kv_unified: bool = False
    no_mmap: bool = False
    no_repack: bool = False
    gpus: str | None = None  # "24GiB,24GiB" or "none"; None: one GPU
    tool: str | None = None  # None: the program --llama-args names, else llama-cli
    llama_args: str | None = None
    mmproj_file: str | None = None
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    no_mmproj_offload: bool = False
    draft_file: str | None = None
    n_gpu_layers_draft: int = -1
    ctx_size_draft: int = 0
    cache_type_k_draft: str = "f16"
    cache_type_v_draft: str = "f16"
    spec_type: str | None = None  # --spec-type a,b: draft-mtp makes the MTP draft context
    spec_draft_n_max: int = 3  # --spec-draft-n-max
    fit_budget: str | None = None
    fit_target: str | None = None
    fit_ctx: int = 4096
    fit_layers: bool = False
    check_log: str | None = None
    tolerance: float = 5.0  # percent
    embedding: bool = False  # llama-server's --embedding (an embedding run; llama-embedding always is one)
    pooling: str | None = None  # --pooling none|mean|cls|last|rank (None: the file's pooling_type)

    def parsed_args(self) -> LlamaArgs | None:
        """``llama_args`` read whole (None without it): its program name sets the tool (an explicit
        ``tool`` must agree), an argument llama.cpp would refuse is an InputError."""
        if self.llama_args is None:
            return None
        from ggufx.analysis.memory.llamaargs import parse_args  # (its argument table: only when asked)

        return parse_args(self.llama_args, tool=self.tool)

    def model_file(self, file: str | None) -> str:
        """The model the question is about: ``file``, or the command line's ``-m`` when no file is
        given; both given, they must name the same file (InputError otherwise)."""
        parsed = self.parsed_args()
        named = parsed.model if parsed is not None else None
        if file is None:
            if named is None:
                raise InputError("give the model: FILE, or -m FILE in --llama-args", "FILE")
            return named
        if named is not None and not _same_file(named, file):
            raise InputError(f"the command line's -m {named} is not FILE ({file})", "--llama-args")
        return file

    def setup(self, open_model: Opener) -> MemorySetup:
        """The memory model's parameters, the companion files opened with ``open_model``."""
        from ggufx.analysis.memory.buffers import ContextParams
        from ggufx.analysis.memory.options import ProjectorOptions
        from ggufx.analysis.memory.placement import CPU_MOE_PATTERN, OffloadParams, n_cpu_moe_patterns

        for name, v in (
            ("--cache-type-k", self.cache_type_k),
            ("--cache-type-v", self.cache_type_v),
            ("--cache-type-k-draft", self.cache_type_k_draft),
            ("--cache-type-v-draft", self.cache_type_v_draft),
        ):
            if v not in CACHE_TYPES:
                raise InputError(f"cache type {v!r} is not one of {', '.join(CACHE_TYPES)}", name)
        if self.ctx < 0 or self.parallel < 1 or self.ubatch < 1:
            raise InputError("ctx must be >= 0, parallel and ubatch >= 1", "--ctx")
        if self.tool is not None and self.tool not in TOOLS:
            raise InputError(f"tool must be one of {', '.join(TOOLS)}", "--tool")
        if self.pooling is not None and self.pooling not in POOLING_TYPES:
            raise InputError(f"pooling must be one of {', '.join(POOLING_TYPES)}", "--pooling")
        parsed = self.parsed_args()
        embedding = self.embedding
        tool = (
            (parsed.tool if parsed is not None else None)
            or self.tool
            or ("llama-server" if embedding or self.pooling else "llama-cli")
        )
        if (embedding or self.pooling is not None) and tool not in EMBEDDING_TOOLS:
            raise InputError(
                f"{tool} computes no embeddings: --embedding and --pooling are llama-server's "
                "(llama-embedding always computes them)",
                "--embedding" if embedding else "--pooling",
            )
        if self.pooling is not None and tool == "llama-server" and not embedding:
            if parsed is None or not parsed.context.embeddings:
                raise InputError(
                    "--pooling needs --embedding: llama-server computes no embeddings without it", "--pooling"
                )
        embedding = embedding or self.pooling is not None
        ot = [_override(o) for o in self.overrides]
        if self.cpu_moe:
            ot.append((CPU_MOE_PATTERN, "CPU"))
        ot += [(p, "CPU") for p in n_cpu_moe_patterns(self.n_cpu_moe)]
        offload = OffloadParams(
            self.n_gpu_layers,
            self.split_mode,
            self.main_gpu,
            _split(self.tensor_split),
            tuple(ot),
            not self.no_mmap,
            not self.no_repack,
        )
        server = tool == "llama-server"
        context = ContextParams(
            n_ctx=self.ctx,
            n_batch=self.batch,
            n_ubatch=self.ubatch,
            n_parallel=self.parallel,
            kv_unified=self.kv_unified,
            flash_attn=self.fa or ("auto" if self.flash_attn else "off"),
            cache_type_k=self.cache_type_k,
            cache_type_v=self.cache_type_v,
            no_kv_offload=self.no_kv_offload,
            swa_full=self.swa_full,
            n_outputs_max=self.parallel if server else 0,
            embeddings=self.embedding,
            pooling=self.pooling,
        )
        if embedding or tool == "llama-embedding":
            from ggufx.analysis.memory.llamaargs import embedding_context

            context = embedding_context(context, tool)
        no_devices = False
        # the draft model's parameters are the target's but for its -ngld and -otd (common_base_params_to_speculative,
        # common/speculative.cpp): --no-mmap, --no-repack, -sm, -ts and -mg apply to it too
        draft_offload = replace(offload, n_gpu_layers=self.n_gpu_layers_draft, overrides=())
        if self.ctx_size_draft:
            raise InputError(
                "llama.cpp has no -cd: a draft model's context holds as many tokens as the target's "
                "(-c; common/speculative.cpp)",
                "--ctx-size-draft",
            )
        draft_context = replace(context, cache_type_k=self.cache_type_k_draft, cache_type_v=self.cache_type_v_draft)
        projector = ProjectorOptions(self.image_min_tokens, self.image_max_tokens, not self.no_mmproj_offload)
        mmproj_file, draft_file = self.mmproj_file, self.draft_file
        notes: list[str] = []
        if parsed is not None:
            if parsed.unmodelled:
                notes.append(
                    "ggufx does not model what these llama.cpp options change in memory: "
                    + ", ".join(parsed.unmodelled)
                )
            offload, context, no_devices, projector = (
                parsed.offload,
                parsed.context,
                parsed.no_devices,
                parsed.projector,
            )
            if embedding and not context.embeddings:  # --embedding / --pooling beside a line that lacks them
                from ggufx.analysis.memory.llamaargs import embedding_context

                context = embedding_context(
                    replace(context, embeddings=True, pooling=self.pooling or context.pooling), tool
                )
            mmproj_file, draft_file = parsed.mmproj or mmproj_file, parsed.draft or draft_file
            draft_offload, draft_context = parsed.draft_offload or draft_offload, parsed.draft_context or draft_context
        mtp = self._mtp(parsed, tool, draft_file, notes)
        draft = open_model(draft_file) if draft_file else None
        if draft is not None and draft.architecture in ("eagle3", "dflash"):  # a draft head: the target's outputs
            from ggufx.analysis.memory.drafthead import head_contexts

            n_max = parsed.spec_n_max if parsed is not None and parsed.spec_types else self.spec_draft_n_max
            context, draft_context = head_contexts(draft, context, draft_context, n_max, tool == "llama-server")
        return MemorySetup(
            offload=offload,
            context=context,
            devices=[] if no_devices else _gpus(self.gpus),
            devices_given=self.gpus is not None or no_devices,
            projector=projector,
            mmproj=open_model(mmproj_file) if mmproj_file else None,
            draft=draft,
            draft_offload=draft_offload,
            draft_context=draft_context,
            tool=tool,
            notes=notes,
            mtp=mtp,
        )

    def _mtp(self, parsed: LlamaArgs | None, tool: str, draft_file: str | None, notes: list[str]) -> MtpOptions | None:
        """``--spec-type draft-mtp`` (the command line's, else the option's): the MTP context's options."""
        if (parsed is None or not parsed.spec_types) and self.spec_type is None:
            return None  # no speculative decoding asked: the MTP module is not imported
        from ggufx.analysis.memory.mtp import MtpOptions, spec_types

        if parsed is not None and parsed.spec_types:
            types, n_max, (ctk, ctv) = parsed.spec_types, parsed.spec_n_max, parsed.spec_cache
        elif self.spec_type is not None:
            types, n_max = spec_types(self.spec_type), self.spec_draft_n_max
            ctk, ctv = self.cache_type_k_draft, self.cache_type_v_draft
            if tool not in ("llama-server", "llama-cli"):  # arg.cpp:4282: SPECULATIVE, SERVER, CLI
                raise InputError(
                    f"--spec-type: {tool} does not accept it (llama-server and llama-cli do)", "--spec-type"
                )
        else:
            return None
        if n_max < 0:
            raise InputError(f"--spec-draft-n-max {n_max}: invalid value", "--spec-draft-n-max")
        if "draft-mtp" not in types:
            return None
        if draft_file:  # common_speculative_init_result: a draft model wins, its context made of the MTP type
            notes.append(
                "--spec-type draft-mtp with a draft model (-md): llama.cpp drafts with that model, not the MTP "
                "block; ggufx sizes the draft model's context as an ordinary one"
            )
            return None
        return MtpOptions(n_max, ctk, ctv)


def _same_file(a: str, b: str) -> bool:
    import os

    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


@dataclass
class MemorySetup:
    """A :class:`MemoryRequest` resolved: the memory model's parameters and the companions opened."""

    offload: OffloadParams
    context: ContextParams
    devices: list[Device]
    devices_given: bool  # --gpus or -dev none (else --check takes the log's devices)
    projector: ProjectorOptions
    mmproj: GGUFModel | None
    draft: GGUFModel | None
    draft_offload: OffloadParams | None
    draft_context: ContextParams | None
    tool: str = "llama-cli"  # the program whose buffers these are
    notes: list[str] = field(default_factory=list)  # what the command line asks that ggufx does not model
    mtp: MtpOptions | None = None  # --spec-type draft-mtp: the MTP draft context's options


def _override(text: str) -> tuple[str, str]:
    pattern, sep, buft = text.rpartition("=")
    if not sep or not pattern or not buft:
        raise InputError(f"{text!r}: expected REGEX=BUFFER_TYPE, e.g. exps=CPU", "-ot")
    return pattern, buft


def _split(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        parts = tuple(float(x) for x in text.replace("/", ",").split(","))
    except ValueError:
        raise InputError(f"{text!r}: expected numbers separated by commas, e.g. 3,1", "-ts") from None
    if any(p < 0 for p in parts):
        raise InputError(f"{text!r}: shares cannot be negative", "-ts")
    return parts


def _gpus(text: str | None) -> list[Device]:
    """--gpus 24GiB,24GiB: one CUDA device per size (its free memory); none: no GPU."""
    from ggufx.analysis.memory.estimate import GPU
    from ggufx.analysis.memory.placement import Device

    if text is None:
        return [Device(GPU, 0)]
    if text.strip().lower() in ("none", "0", "cpu"):
        return []
    return [Device(f"CUDA{i}", gpu_size(part, "--gpus")) for i, part in enumerate(text.split(","))]


def _fit_margins(text: str) -> list[int]:
    """-fitt 1024 or 70000,74000 (MiB per GPU, as llama.cpp splits it at , and /) -> bytes."""
    from ggufx.analysis.memory.buffers import MiB

    try:
        values = [float(x) for x in text.replace("/", ",").split(",")]
    except ValueError:
        raise InputError(f"{text!r}: expected MiB, or MiB per GPU separated by commas", "-fitt") from None
    if any(v < 0 for v in values):
        raise InputError(f"{text!r}: a margin cannot be negative", "-fitt")
    return [int(v * MiB) for v in values]


# -- result types: made at their first use (ggufx.results._memory_types, issue 21) ------------

if TYPE_CHECKING:
    from ggufx.results._memory_types import CheckRow as CheckRow
    from ggufx.results._memory_types import DeviceRow as DeviceRow
    from ggufx.results._memory_types import DraftFit as DraftFit
    from ggufx.results._memory_types import FitResult as FitResult
    from ggufx.results._memory_types import MemoryCheckResult as MemoryCheckResult
    from ggufx.results._memory_types import MemoryResult as MemoryResult
else:
    _RESULT_TYPES = frozenset({"DeviceRow", "MemoryResult", "CheckRow", "MemoryCheckResult", "FitResult", "DraftFit"})

    def __getattr__(name: str) -> Any:
        """The result types (``from ggufx.results.memory import MemoryResult``), made at the first use of one."""
        if name in _RESULT_TYPES:
            from ggufx.results import _memory_types

            globals().update({n: getattr(_memory_types, n) for n in _RESULT_TYPES})
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the questions, from a request -------------------------------------------------------------


def memory(model: GGUFModel, request: MemoryRequest, open_model: Opener) -> MemoryResult:
    """Every buffer llama.cpp allocates for ``request``, per device."""
    s = request.setup(open_model)
    res = memory_breakdown(
        model,
        gpus=s.devices,
        offload=s.offload,
        context=s.context,
        mmproj=s.mmproj,
        draft=s.draft,
        draft_offload=s.draft_offload,
        draft_context=s.draft_context,
        projector=s.projector,
        tool=s.tool,
        mtp=s.mtp,
    )
    res["notes"] += s.notes
    if short_devices(res):  # what llama.cpp itself does then (common_fit_params, on by default)
        fit = f"--fit {request.gpus}" if request.gpus else "--fit SIZE"
        res["notes"].append(
            "it does not fit as asked: llama.cpp's -fit (on by default) changes the options left unset (-ngl, -c, "
            f"-ts, -ot) until it fits, and with none left fails to allocate; `ggufx mem FILE {fit}` with the same "
            "options shows what it sets"
        )
    return res


def fit(model: GGUFModel, request: MemoryRequest, open_model: Opener) -> FitResult:
    """What fits GPUs of ``request.fit_budget`` free memory."""
    if request.fit_budget is None:
        raise InputError("give the GPUs' free memory, e.g. 24GiB", "--fit")
    s = request.setup(open_model)
    return fit_budget(
        model,
        request.fit_budget,
        offload=s.offload,
        context=s.context,
        margin=None if request.fit_target is None else _fit_margins(request.fit_target),
        layers=request.fit_layers,
        n_ctx_min=request.fit_ctx,
        mmproj=s.mmproj,
        projector=s.projector,
        mtp=s.mtp,
        tool=s.tool,
        draft=s.draft,
        draft_offload=s.draft_offload,
        draft_context=s.draft_context,
    )


def check(model: GGUFModel, request: MemoryRequest, log_text: str, open_model: Opener) -> MemoryCheckResult:
    """ggufx's buffers for ``request`` beside those of a llama.cpp log of the same run."""
    s = request.setup(open_model)
    return memory_check(
        model,
        log_text,
        gpus=s.devices if s.devices_given else None,
        offload=s.offload,
        context=s.context,
        tolerance=request.tolerance / 100,
        mmproj=s.mmproj,
        draft=s.draft,
        draft_offload=s.draft_offload,
        draft_context=s.draft_context,
        projector=s.projector,
        mtp=s.mtp,
        tool=s.tool,
    )


def short_devices(res: MemoryResult) -> list[str]:
    """The devices of known free memory (``--gpus``) whose buffers do not fit it: the model does
    not load as asked (``mem --gpus`` exits 1, a check)."""
    return [d["name"] for d in res["devices"] if d["free"] and d["self"] + d["output"] + d["companions"] > d["free"]]


# -- the same, from the memory model's parameters ------------------------------------------------


def memory_breakdown(
    model: GGUFModel,
    *,
    gpus: Sequence[Device] | None = None,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    mmproj: GGUFModel | None = None,
    draft: GGUFModel | None = None,
    draft_offload: OffloadParams | None = None,
    draft_context: ContextParams | None = None,
    projector: ProjectorOptions | None = None,
    tool: str | None = None,
    mtp: MtpOptions | None = None,
) -> MemoryResult:
    """Every buffer llama.cpp allocates, per device, and the one-GPU summary of earlier versions.

    ``mmproj`` adds a projector's weights and compute buffers (on the first GPU, as ``mtmd`` loads
    it, with ``projector``'s ``--image-*-tokens`` / ``--no-mmproj-offload``); ``draft`` adds a draft
    model's buffers (the target's context, ``-ngld``/``-ctkd``/``-ctvd`` in ``draft_*``).
    ``mtp`` (``--spec-type draft-mtp``) adds the MTP draft context's buffers and the NextN weights (kinds
    ``mtp_*``, :mod:`ggufx.analysis.memory.mtp`) and gives the main context its rollback snapshots.
    ``gpus``: default one CUDA GPU; empty: a build without GPUs. ``warnings``: what llama.cpp (``tool``)
    logs about this context (beyond the training context, not divisible by the sequences)."""
    from ggufx.analysis.memory.buffers import ContextParams
    from ggufx.analysis.memory.context_warnings import context_warnings, draft_context_warnings
    from ggufx.analysis.memory.estimate import GPU, summarize_breakdown
    from ggufx.analysis.memory.options import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

    context = context or ContextParams()
    offload = offload or OffloadParams()
    devices = list(gpus) if gpus is not None else [Device(GPU, 0)]
    context, b, mtp_extra = _main_and_mtp(model, devices, offload, context, mtp, tool)
    extra = _companions(
        model,
        devices,
        offload,
        context,
        b,
        projector or ProjectorOptions(),
        mmproj,
        draft,
        draft_offload,
        draft_context,
    )
    extra += mtp_extra
    e = summarize_breakdown(model, b, context)
    b.buffers += extra
    res = {
        "path": model.path,
        **e.to_dict(),
        "n_gpu_layers_requested": offload.n_gpu_layers,
        **_details(b),
        "warnings": context_warnings(model, context, tool)
        + (draft_context_warnings(draft, draft_context or context, b.n_ctx) if draft is not None else []),
    }
    return cast("MemoryResult", res)


def _companions(
    model: GGUFModel,
    devices: Sequence[Device],
    offload: OffloadParams,
    context: ContextParams,
    b: Breakdown,
    projector: ProjectorOptions,
    mmproj: GGUFModel | None,
    draft: GGUFModel | None,
    draft_offload: OffloadParams | None,
    draft_context: ContextParams | None,
) -> list[Buffer]:
    """The projector's and the draft model's buffers beside the main context ``b`` (its notes take theirs)."""
    return companion_buffers(
        model, devices, context, mmproj, draft, draft_offload, draft_context, b.notes, projector, b.n_ctx, offload
    )


def _main_and_mtp(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    context: ContextParams,
    mtp: MtpOptions | None,
    tool: str | None,
) -> tuple[ContextParams, Breakdown, list[Buffer]]:
    """The main context's breakdown, and with ``mtp`` the MTP context's buffers: the main context then
    keeps ``n_max`` rollback snapshots of its recurrent state and, in llama-server, ``-np x (1 + n_max)``
    outputs (:mod:`ggufx.analysis.memory.mtp`)."""
    from ggufx.analysis.memory.buffers import breakdown
    from ggufx.analysis.memory.drafthead import alone_refusal

    alone = alone_refusal(model)
    if alone:  # an EAGLE3 / DFlash head: llama.cpp makes its context only beside a target's
        raise InputError(alone, "FILE")
    if mtp is None:
        return context, breakdown(model, devices, offload, context), []
    from ggufx.analysis.memory.mtp import main_context, mtp_buffers, no_mtp_reason, rollback_state

    why = no_mtp_reason(model)
    if why:
        raise InputError(f"--spec-type draft-mtp: {why}", "--spec-type")
    context = main_context(context, mtp, tool == "llama-server")
    b = breakdown(model, devices, offload, context)
    rollback_state(model, b, devices, offload, context, mtp.n_max)
    return context, b, mtp_buffers(model, devices, offload, context, b, mtp, b.notes)


def companion_buffers(
    model: GGUFModel,
    devices: Sequence[Device],
    context: ContextParams,
    mmproj: GGUFModel | None,
    draft: GGUFModel | None,
    draft_offload: OffloadParams | None,
    draft_context: ContextParams | None,
    notes: list[str],
    projector: ProjectorOptions,
    target_n_ctx: int = 0,
    target_offload: OffloadParams | None = None,
) -> list[Buffer]:
    """A projector's weights and compute buffers and a draft model's buffers (kinds ``projector``,
    ``projector_compute`` and ``draft_*``); a pair llama.cpp would refuse is an
    :class:`InputError` naming the reason. The draft context holds as many tokens as the target's
    (``target_n_ctx``, the main context's cells: ``cparams.n_ctx = llama_n_ctx(ctx_tgt)``,
    common/speculative.cpp); Gemma 4's drafter reads the target's cache, so its cache types and ``--swa-full``
    are the target's whatever ``-ctkd``/``-ctvd`` say."""
    from ggufx.analysis.memory.buffers import Buffer, alloc_size, breakdown
    from ggufx.analysis.memory.placement import OffloadParams

    out: list[Buffer] = []
    if mmproj is not None:
        from ggufx.analysis.companions import projector_incompatibility
        from ggufx.analysis.memory.graph.projector import projector_buffers, projector_unsupported

        reason = projector_incompatibility(model, mmproj)
        if reason:
            raise InputError(f"--mmproj {mmproj.path}: {reason}", "--mmproj")
        gpu = devices[0].name if devices and projector.offload else None
        buft = gpu or "CPU"
        size = sum(alloc_size(buft, t.type, t.shape[0], t.n_elements // t.shape[0]) for t in mmproj.tensors if t.shape)
        out.append(Buffer("projector", buft, size))
        why = projector_unsupported(mmproj)
        if why:
            notes.append(f"the projector's compute buffer is not counted: {why}")
        else:
            out += projector_buffers(
                mmproj,
                gpu,
                flash_attn=context.flash_attn,
                image_max_tokens=projector.image_max_tokens,
                image_min_tokens=projector.image_min_tokens,
            )
    if draft is not None:
        from ggufx.analysis.companions import draft_incompatibility

        reason = draft_incompatibility(model, draft)
        if reason:
            raise InputError(f"--model-draft {draft.path}: llama.cpp refuses this pair: {reason}", "--model-draft")
        dcp = draft_context or replace(context, cache_type_k="f16", cache_type_v="f16")
        dcp = replace(dcp, n_ctx=target_n_ctx or context.n_ctx)
        if draft.architecture == "gemma4-assistant":
            dcp = replace(
                dcp, cache_type_k=context.cache_type_k, cache_type_v=context.cache_type_v, swa_full=context.swa_full
            )
        db = breakdown(draft, list(devices), draft_offload or OffloadParams(), dcp)
        out += [Buffer(f"draft_{x.kind}", x.buft, x.bytes, x.exact) for x in db.buffers]
        if draft.architecture in ("eagle3", "dflash"):
            from ggufx.analysis.memory.drafthead import head_output, target_buffers

            out += target_buffers(model, draft, devices, target_offload, context, notes)
            out += head_output(draft, dcp, db.buffers, notes)
    return out


def _details(b: Breakdown) -> dict[str, Any]:
    """The per-device keys of ``mem --json``: llama.cpp's memory breakdown table and every buffer."""
    d = b.to_dict()
    outputs = b.by_kind("output")
    rows: list[DeviceRow] = []
    others: dict[str, int] = {}
    for x in b.buffers:
        if x.kind.startswith(("projector", "draft_", "mtp_")):
            others[b.row(x.buft)] = others.get(b.row(x.buft), 0) + x.bytes
    for name in others:
        d["table"].setdefault(name, {"model": 0, "context": 0, "compute": 0, "self": 0})
    for name, r in d["table"].items():
        free = next((dev.free for dev in b.devices if dev.name == name), None)
        out = sum(v for k, v in outputs.items() if b.row(k) == name)
        rows.append(
            {
                "name": name,
                "free": free or None,
                "model": r["model"],
                "context": r["context"],
                "compute": r["compute"],
                "self": r["self"],
                "output": out,
                "companions": others.get(name, 0),
            }
        )
    return {
        "devices": rows,
        "buffers": d["buffers"],
        "n_ctx_seq": d["n_ctx_seq"],
        "n_streams": d["n_streams"],
        "n_batch": d["n_batch"],
        "swa_cells": d["swa_cells"],
        "layers_offloaded": d["layers_offloaded"],
        "n_layer": d["n_layer"],
        "exact": ["model", "kv", "recurrent", "output"],
        "computed": ["compute", "projector_compute"],
        "embeddings": b.reservation is not None and b.reservation.pooling is not None,
        "pooling": None if b.reservation is None else b.reservation.pooling,
    }


def memory_check(
    model: GGUFModel,
    log_text: str,
    *,
    gpus: Sequence[Device] | None = None,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    tolerance: float = 0.05,
    mmproj: GGUFModel | None = None,
    draft: GGUFModel | None = None,
    draft_offload: OffloadParams | None = None,
    draft_context: ContextParams | None = None,
    projector: ProjectorOptions | None = None,
    mtp: MtpOptions | None = None,
    tool: str | None = None,
) -> MemoryCheckResult:
    """Compare ggufx's buffers with a llama.cpp log's (``-v``): per kind and buffer type, llama.cpp's
    MiB, ggufx's and the difference. Exact buffers must agree to llama.cpp's printed 0.01 MiB,
    computed ones within ``tolerance``; ``ok`` says whether all do. A draft model's buffers and a
    projector's weights and compute buffers are compared too when given; with ``mtp`` the MTP context's
    (``mtp_*``: the log's lines after ``creating MTP draft context``) and the model buffers with the NextN
    weights in them. ``gpus`` None: the devices the log reports."""
    from ggufx.analysis.memory.buffers import Buffer, ContextParams, MiB
    from ggufx.analysis.memory.llamalog import parse_log
    from ggufx.analysis.memory.options import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

    mtp_text = None
    if mtp is not None:
        from ggufx.analysis.memory.mtp import split_log

        log_text, mtp_text = split_log(log_text)
    log = parse_log(log_text)
    if not log.buffers:
        raise InputError("the log has no buffer lines: run llama.cpp with -v (--verbose)", "--check")
    if gpus is None:
        gpus = [Device(name, free * MiB) for name, free in log.devices]
    context = context or ContextParams()
    offload = offload or OffloadParams()
    context, b, mtp_bufs = _main_and_mtp(model, list(gpus), offload, context, mtp, tool)
    companions = _companions(
        model, gpus, offload, context, b, projector or ProjectorOptions(), mmproj, draft, draft_offload, draft_context
    )
    main_bufs = b.buffers
    if mtp_bufs:  # the NextN weights are in the model buffers llama.cpp prints
        nextn = {x.buft: x.bytes for x in mtp_bufs if x.kind == "mtp_model"}
        main_bufs = [replace(x, bytes=x.bytes + nextn.pop(x.buft, 0)) if x.kind == "model" else x for x in b.buffers]
        main_bufs += [Buffer("model", buft, n) for buft, n in nextn.items()]
    rows = _check_rows(main_bufs, log.buffers, "", tolerance)
    if mtp_text is not None:
        theirs = {f"mtp_{k}": v for k, v in parse_log(mtp_text).buffers.items()}
        rows += _check_rows([x for x in mtp_bufs if x.kind != "mtp_model"], theirs, "mtp_", tolerance)
    if draft is not None:
        if log.draft is None:
            raise InputError("the log loaded no draft model (no 'loading draft model' line)", "--model-draft")
        theirs = {f"draft_{k}": v for k, v in log.draft.buffers.items()}
        rows += _check_rows([x for x in companions if x.kind.startswith("draft_")], theirs, "draft_", tolerance)
    if mmproj is not None and "weights" in log.projector:
        mine = sum(t.nbytes for t in mmproj.tensors) / MiB  # mtmd prints the tensors' bytes, not the buffer
        rows.append(
            {
                "kind": "projector",
                "buft": "model size",
                "llama_cpp_mib": log.projector["weights"],
                "ggufx_mib": round(mine, 2),
                "difference_mib": round(mine - log.projector["weights"], 2),
                "difference_pct": round(100 * (mine - log.projector["weights"]) / log.projector["weights"], 2),
                "exact": True,
                "ok": round(mine, 2) == log.projector["weights"],
            }
        )
    if mmproj is not None:
        printed = {buft: mib for buft, mib in log.projector.items() if buft != "weights"}
        mine_compute = [x for x in companions if x.kind == "projector_compute"]
        if printed and mine_compute:
            rows += _check_rows(mine_compute, {"projector_compute": printed}, "projector_", tolerance)
    return {
        "path": model.path,
        "tolerance": tolerance,
        "ok": all(r["ok"] for r in rows),
        "rows": rows,
        "log_devices": [{"name": n, "free_mib": f} for n, f in log.devices],
        "pipeline_parallel": log.pipeline_parallel,
        "notes": b.notes,
    }


def _check_rows(
    buffers: list[Buffer], theirs_by_kind: dict[str, dict[str, float]], prefix: str, tolerance: float
) -> list[CheckRow]:
    from ggufx.analysis.memory.buffers import MiB

    rows: list[CheckRow] = []
    for kind in ("model", "kv", "recurrent", "state", "output", "compute"):
        theirs = {k: v for k, v in theirs_by_kind.get(prefix + kind, {}).items() if v > 0 or kind != "compute"}
        ours: dict[str, int] = {}
        # llama.cpp prints each cache's buffer on its own line to 0.01 MiB (an SWA cache beside the full
        # one, DeepSeek Sparse Attention's indexer keys beside the MLA cache): the log's figure per buffer
        # type is the sum of those rounded lines, so ggufx's is too (37.12 + 8.25, not 45.375 -> 45.38)
        printed: dict[str, float] = {}
        for x in buffers:
            if x.kind == prefix + kind:
                ours[x.buft] = ours.get(x.buft, 0) + x.bytes
                printed[x.buft] = printed.get(x.buft, 0.0) + round(x.bytes / MiB, 2)
        for buft in sorted(set(theirs) | {k for k, v in ours.items() if v}):
            t = theirs.get(buft)
            o = ours.get(buft, 0) / MiB
            exact = kind != "compute"
            if exact:
                o = printed.get(buft, 0.0)
            if t is None:
                ok = False
            elif exact:
                ok = round(o, 2) == round(t, 2)
            else:
                ok = abs(o - t) <= tolerance * max(t, 1.0)
            rows.append(
                {
                    "kind": prefix + kind,
                    "buft": buft,
                    "llama_cpp_mib": t,
                    "ggufx_mib": round(o, 2),
                    "difference_mib": None if t is None else round(o - t, 2),
                    "difference_pct": None if not t else round(100 * (o - t) / t, 2),
                    "exact": exact,
                    "ok": ok,
                }
            )
    return rows


def fit_budget(
    model: GGUFModel,
    budget: str | int,
    *,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    margin: int | list[int] | None = None,
    layers: bool = False,
    n_ctx_min: int = 4096,
    mmproj: GGUFModel | None = None,
    projector: ProjectorOptions | None = None,
    mtp: MtpOptions | None = None,
    tool: str | None = None,
    draft: GGUFModel | None = None,
    draft_offload: OffloadParams | None = None,
    draft_context: ContextParams | None = None,
) -> FitResult:
    """What fits GPUs of ``budget`` free memory (``"24GiB"`` or ``"24GiB,24GiB"``, or bytes).

    ``mmproj``: a projector loaded beside the model takes its weights and compute buffers from the
    first GPU first, as llama-server adds them to that GPU's ``-fitt`` margin
    (tools/server/server-context.cpp:1174-1198, ``mtmd_get_memory_usage``).

    ``llama_cpp``: what llama.cpp's ``--fit`` decides (``-c``, ``-ngl``, ``-ts``, ``-ot``), keeping
    ``margin`` bytes free per GPU (one value or one per GPU; None: llama.cpp's 1024 MiB), from the
    free memory llama.cpp's fit reads while its dry run holds the recurrent state (``free_seen``), with
    ``n_ctx_min`` as ``-fitc``; ``context.n_ctx`` 0 is ``-c`` not given. ``mtp`` (``--spec-type draft-mtp``):
    llama.cpp's fit loads the NextN weights and fits the MTP draft context beside the main one
    (:func:`ggufx.analysis.memory.mtp.fit_measure`). ``draft`` (``-md``, with ``draft_offload`` and
    ``draft_context``): llama.cpp's fit measures the draft model beside the target in every dry run, at the target's
    context (:func:`ggufx.analysis.memory.fit.with_extra`), unless it cannot (``extra_left_out``: then its buffers
    come on top, the answer's ``draft`` says so). ``fits``: ggufx's own
    search per KV cache type (``margin`` None: nothing kept free), the largest context, or with
    ``layers`` the most whole layers at ``context.n_ctx``, each with llama.cpp's answer beside it."""
    from ggufx.analysis.memory.buffers import ContextParams, refused_cache_types
    from ggufx.analysis.memory.fit import MARGIN, fit_devices
    from ggufx.analysis.memory.options import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

    sizes: list[int] = []
    for part in str(budget).split(","):  # bytes as a number (the library's callers), else sizes with their units
        sizes.append(int(part) if isinstance(budget, int) else gpu_size(part, "--fit"))
    devices = [Device(f"CUDA{i}", n) for i, n in enumerate(sizes)]
    context = context or ContextParams()
    offload = offload or OffloadParams()
    margins = [margin] if isinstance(margin, int) else list(margin or [])[: len(devices)]  # llama.cpp ignores extras
    own_margin = max(margins, default=0)
    llama_margins = margins or [MARGIN]
    vision = _projector_usage(model, devices, context, mmproj, projector or ProjectorOptions())
    if vision:
        per_device = llama_margins * len(devices) if len(llama_margins) == 1 else list(llama_margins)
        per_device += [MARGIN] * (len(devices) - len(per_device))
        llama_margins = [m + vision.get(d.name, 0) for m, d in zip(per_device, devices, strict=False)]
        devices_left = [Device(d.name, d.free - vision.get(d.name, 0)) for d in devices]
    else:
        devices_left = devices

    notes: list[str] = []
    if mtp is not None:
        from ggufx.analysis.memory.mtp import MODELLED as MTP_MODELLED
        from ggufx.analysis.memory.mtp import main_context, no_mtp_reason

        why = no_mtp_reason(model)
        if why:
            raise InputError(f"--spec-type draft-mtp: {why}", "--spec-type")
        context = main_context(context, mtp, tool == "llama-server")
        if (model.architecture or "") in MTP_MODELLED:
            notes.append(
                "--spec-type draft-mtp: llama.cpp's decision (llama_cpp) fits the MTP draft context beside the main "
                "one; ggufx's own search (fits) counts the main context alone"
            )
        else:
            notes.append(
                f"--spec-type draft-mtp: the MTP context of {model.architecture} is not modelled: llama.cpp's "
                "decision (llama_cpp) is without it, and would leave it less room"
            )

    # llama.cpp's draft context: the target's parameters with -ctkd/-ctvd (f16 unless given)
    draft_context = draft_context or replace(context, cache_type_k="f16", cache_type_v="f16")
    extra, draft_left_out = _draft_extra(draft, devices, draft_offload, draft_context, tool, notes)

    def decide(ct: str) -> Any:
        cp = replace(context, cache_type_k=ct, cache_type_v=ct)
        return _llama_fit(model, devices, offload, cp, llama_margins, n_ctx_min, mtp, extra)

    found = fit_devices(
        model, devices_left, offload, context, target="layers" if layers else "context", margin=own_margin
    )
    if not layers:
        for reason in refused_cache_types(model, context, ("f16", "q8_0", "q4_0")).values():
            notes.append(f"left out of the search: {reason}")
    decision = _llama_fit(model, devices, offload, context, llama_margins, n_ctx_min, mtp, extra)
    if mtp is not None and decision.status == "layers":
        notes.append(
            "--spec-type draft-mtp: llama.cpp counts the NextN layers in the layers it splits (hp_ngl + "
            "nextn_predict_layers, common/fit.cpp:140-143); ggufx's layer split does not yet, so its -ngl/-ot "
            "may be off by them"
        )
    out: FitResult = {
        "path": model.path,
        "budget": sizes[0] if len(sizes) == 1 else sizes,
        "margin": own_margin,
        "projector_bytes": vision or None,
        "fits": [],
        "llama_cpp": decision.to_dict(),
    }
    if draft is not None:
        use = _draft_use(draft, devices, draft_offload, draft_context, decision.n_ctx)
        out["draft"] = {
            "path": draft.path,
            "fitted": draft_left_out is None,
            "reason": draft_left_out or "",
            "bytes": {d.name: u.total for d, u in zip(devices, use, strict=True)},
        }
    if notes:
        out["notes"] = notes
    for f in found:
        d = f.to_dict()
        same = f.cache_type == context.cache_type_k == context.cache_type_v
        answer = decision if same else decide(f.cache_type)
        d["llama_cpp_args"] = None if answer.status == "failed" else answer.args
        if not layers:  # the keys of earlier versions, and llama.cpp's own choice
            d.update(
                {
                    "gpu_bytes": sum(f.use.values()),
                    "capped_at_training_context": f.capped,
                    "llama_cpp_n_ctx": None if context.n_ctx else answer.n_ctx,
                }
            )
        out["fits"].append(d)
    return out


def _llama_fit(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    context: ContextParams,
    margins: list[int],
    n_ctx_min: int,
    mtp: MtpOptions | None,
    extra: Callable[[int], Any] | None = None,
) -> Any:
    """llama.cpp's fit (:func:`ggufx.analysis.memory.fit.llama_fit`) from the free memory it reads during its
    first dry run; with ``mtp`` the dry runs of ``draft-mtp`` (the MTP context fitted beside the main one); with
    ``extra`` (a draft model's use per GPU at a context size) the draft fitted beside the target."""
    from ggufx.analysis.memory.fit import breakdown_measure, free_seen, llama_fit, with_extra

    if mtp is None:
        seen = free_seen(model, devices, offload, context)  # what llama.cpp's fit reads during its dry run
        if extra is None:
            return llama_fit(model, seen, offload, context, margins=margins, n_ctx_min=n_ctx_min)
        measure = with_extra(breakdown_measure(model, seen, offload, context), extra)
        out = llama_fit(model, seen, offload, context, margins=margins, n_ctx_min=n_ctx_min, measure=measure)
        if _last_trial(out) is None:  # no dry run at the decision (one GPU's interpolated context): the draft added
            more = extra(out.n_ctx)
            out.use = {d.name: out.use[d.name] + m.total for d, m in zip(out.devices, more, strict=True)}
        return _with_last_use(out)
    from ggufx.analysis.memory.mtp import fit_measure
    from ggufx.analysis.memory.mtp import free_seen as mtp_free_seen

    seen = mtp_free_seen(model, devices, offload, context, mtp)
    measure = fit_measure(model, seen, offload, context, mtp)
    out = llama_fit(
        model, seen, replace(offload, mtp=True), context, margins=margins, n_ctx_min=n_ctx_min, measure=measure
    )
    return _with_last_use(out)


def _with_last_use(out: Any) -> Any:
    """The decision's use with the extra context in it (the MTP context, a draft model: the last dry run of the
    decision's parameters; llama_fit's own figures would leave it out)."""
    last = _last_trial(out)
    if last is not None:
        out.use = {d.name: u.total for d, u in zip(out.devices, last.use, strict=True)}
    return out


def _last_trial(out: Any) -> Any:
    """The last dry run of the decision's context and layers (None: fit decided without measuring it)."""
    return next((t for t in reversed(out.trials) if t.run.n_ctx == out.n_ctx and t.run.layers == out.layers), None)


def _draft_extra(
    draft: GGUFModel | None,
    devices: list[Device],
    offload: OffloadParams | None,
    context: ContextParams,
    tool: str | None,
    notes: list[str],
) -> tuple[Callable[[int], Any] | None, str | None]:
    """A draft model (``-md``) in llama.cpp's fit: the extra model's use per GPU at a context size (None where the
    fit leaves it out) and why it is left out (None: fitted beside the target); the note that says which."""
    if draft is None:
        return None, None
    from ggufx.analysis.memory.fit import extra_left_out

    why = extra_left_out(draft, tool)
    if why is not None:
        notes.append(
            f"-md {draft.path}: the draft model's buffers come on top of llama.cpp's decision (llama_cpp), which "
            f"leaves the draft out: {why}"
        )
        return None, why
    notes.append(
        f"-md {draft.path}: llama.cpp's decision (llama_cpp) fits the draft model beside the target (its weights, "
        "KV cache and compute buffers measured at the target's context in every dry run, common_fit_extra_model); "
        "ggufx's own search (fits) counts the target alone"
    )
    return (lambda n_ctx: _draft_use(draft, devices, offload, context, n_ctx)), None


def _draft_use(
    draft: GGUFModel, devices: list[Device], offload: OffloadParams | None, context: ContextParams, n_ctx: int
) -> Any:
    """The draft model's dry run at ``n_ctx`` (``common_get_device_memory_data`` of the extra model): per GPU its
    weights, context and compute buffers, with its own ``-ngld`` and cache types."""
    from ggufx.analysis.memory.buffers import breakdown
    from ggufx.analysis.memory.fit import device_use
    from ggufx.analysis.memory.placement import OffloadParams

    b = breakdown(draft, devices, offload or OffloadParams(), replace(context, n_ctx=n_ctx))
    return device_use(b, devices)


def _projector_usage(
    model: GGUFModel,
    devices: list[Device],
    context: ContextParams,
    mmproj: GGUFModel | None,
    projector: ProjectorOptions,
) -> dict[str, int]:
    """What ``mtmd_get_memory_usage`` says a projector takes per GPU: its tensors' bytes
    (``ggml_nbytes``, clip.cpp:2181) and its compute buffers (clip.cpp:3819)."""
    if mmproj is None or not devices or not projector.offload:
        return {}
    notes: list[str] = []
    bufs = companion_buffers(model, devices, context, mmproj, None, None, None, notes, projector)
    gpu = devices[0].name
    usage = sum(t.nbytes for t in mmproj.tensors)
    return {gpu: usage + sum(x.bytes for x in bufs if x.kind == "projector_compute" and x.buft == gpu)}


REPORT_CONTEXTS = (4096, 32768, 131072)  # and the training context, where it is smaller or between


def report_memory(model: GGUFModel, context_length: Any, context: ContextParams | None = None) -> list[dict[str, Any]]:
    """One GPU, everything offloaded, at the report's contexts (up to the training context), for
    f16, q8_0 and q4_0 caches. ``context``: the other llama.cpp options the user runs with (``--llama-args``:
    slots, micro-batch, flash attention...), default llama.cpp's own."""
    from ggufx.analysis.memory.buffers import ContextParams, breakdown, flash_attn_default, refused_cache_types
    from ggufx.analysis.memory.estimate import GPU, summarize_breakdown
    from ggufx.analysis.memory.placement import Device, OffloadParams

    n_train = context_length if isinstance(context_length, int) and 0 < context_length < 1 << 32 else 0
    ctxs = sorted({c for c in (*REPORT_CONTEXTS, n_train) if c and (not n_train or c <= n_train)})
    try:
        types = ("f16", "q8_0", "q4_0")
        base = context or ContextParams(flash_attn=flash_attn_default(model))  # fa off where llama.cpp aborts (PLM)
        refused = refused_cache_types(model, base, types)  # no context with these
        rows = []
        for c in ctxs:
            for ct in types:
                if ct not in refused:
                    cp = replace(base, n_ctx=c, cache_type_k=ct, cache_type_v=ct)
                    b = breakdown(model, [Device(GPU, 0)], OffloadParams(), cp)
                    rows.append(summarize_breakdown(model, b, cp).to_dict())
        return rows
    except GGUFError:  # a file llama.cpp cannot size (no block count...): the rest of the page still stands
        return []


FLASH_ATTN = ("on", "off", "auto")  # llama.cpp's -fa (ggufx.analysis.memory.buffers.FLASH_ATTN)
# every word llama.cpp's -fa takes (common/arg.cpp: is_truthy, is_falsey, is_autoy), as the one of FLASH_ATTN it means
FLASH_ATTN_WORDS = {
    **dict.fromkeys(("on", "enabled", "true", "1"), "on"),
    **dict.fromkeys(("off", "disabled", "false", "0"), "off"),
    **dict.fromkeys(("auto", "-1"), "auto"),
}
# the words llama.cpp's -ngl takes beside a number: auto (its fit's choice) and all; ggufx puts every layer on the GPUs
# for both, as for -1 (llamaargs reads them so)
LAYERS_WORDS = {"auto": -1, "all": -1}
SPLIT_MODES = ("none", "layer", "row", "tensor")  # llama.cpp's -sm (ggufx.analysis.memory.placement.SPLIT_MODES)
