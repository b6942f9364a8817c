"""Which quant to download: every model of a repository or folder held against the user's GPUs.

``pick(sources, gpus, n_ctx=...)`` reads the headers of every GGUF file of the sources (a Hub
repository ``hf://ORG/REPO[@REV]``, its web address ``https://huggingface.co/ORG/REPO[/tree/REV]``,
local folders, or files), groups split shards into one model, recognises companions (projectors are
offered to the models with ``mmproj="auto"``; adapters, imatrices and control vectors are listed, not
ranked) and, for every model:

* its quant label, file size, BPW and parameters (as ``ggufx info``, i.e. as llama.cpp prints them);
* at the requested context (``-c``; or none: llama.cpp's ``--fit`` chooses from the training context
  down): whether it fits entirely on the GPUs, decided as llama.cpp's fit decides it
  (:func:`~ggufx.analysis.memory.fit.llama_fit`, keeping ``margin``, ``-fitt``, free per GPU), and if
  not, what llama.cpp's fit sets (``-ngl``, ``-ts``, ``-ot`` of experts, a smaller context);
* the largest context per KV cache type with everything on the GPUs
  (:func:`~ggufx.analysis.memory.fit.fit_devices`, a multiple of 256 up to the training context);
* the ``llama-server`` command line that runs it that way, and what that command allocates on each
  GPU (the command is parsed back with :func:`~ggufx.analysis.memory.llamaargs.parse_args`, so the
  figures are those ``ggufx mem --llama-args "<command>"`` gives);
* a recommendation: the highest-BPW model that fits entirely, and the runner-up, a higher-BPW model
  that runs with part of it (experts, or layers) on the host.

A projector (``--mmproj``) is counted on the first GPU as llama-server counts it: its weights and
compute buffers are kept free there before fitting (tools/server/server-context.cpp, ``mtmd_get_memory_usage``),
as ``ggufx mem --fit --mmproj`` does. Only headers are read, each once; remote headers go through the
header cache of :mod:`ggufx.io.remote`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ggufx.analysis.filekind import file_kind
from ggufx.analysis.memory.buffers import Breakdown, alloc_size, breakdown, is_cuda, refused_cache_types
from ggufx.analysis.memory.fit import MARGIN, N_CTX_MIN, LlamaFit, fit_devices, free_seen, llama_fit
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.llamaargs import argument_names, parse_args
from ggufx.analysis.memory.placement import Device
from ggufx.analysis.scan import discover, name_stem
from ggufx.analysis.summary import summarize
from ggufx.errors import GGUFError, InputError, SourceError
from ggufx.model.shards import SHARD_RE

if TYPE_CHECKING:
    from ggufx.io.remote import RemoteConfig
    from ggufx.model import GGUFModel

MiB = 1 << 20
SEARCH_TYPES = ("f16", "q8_0", "q4_0")  # the cache types of the largest-context column
TOOLS = ("llama-server",)
PROJECTOR_PREFERENCE = ("F16", "BF16", "F32")  # --mmproj auto: as users choose, the rest after these
Progress = Callable[[int, int, str], None]  # (done, total, name) after each header read
# llama.cpp options ``llama_args`` may not give (by the first name llama.cpp gives each): pick writes them itself
DECIDED = {
    **dict.fromkeys(
        ("-m", "-mu", "-hf", "-hff", "-dr", "--models-dir", "--models-preset"), "the models are pick's sources"
    ),
    **dict.fromkeys(
        ("-mm", "-mmu", "--mmproj-auto", "--mmproj-offload", "-mmdev"),
        "the projector is pick's --mmproj, counted on the first GPU",
    ),
    "-c": "the context is pick's -c (or --fit)",
    "-ctk": "the K cache type is pick's -ctk",
    "-ctv": "the V cache type is pick's -ctv",
    **dict.fromkeys(
        ("-ngl", "-ts", "-ot", "-cmoe", "-ncmoe", "-sm", "-mg", "-dev"),
        "llama.cpp's fit places the model on the GPUs given (--gpus)",
    ),
    **dict.fromkeys(("-fit", "-fitc"), "pick answers as llama.cpp's -fit on"),
    "-fitt": "the margin is pick's -fitt",
    **dict.fromkeys(
        ("--spec-draft-model", "--spec-draft-hf", "--spec-type"),
        "pick does not size speculative decoding (ggufx mem -md / --spec-type does)",
    ),
}


def parse_gpus(text: str) -> list[Device]:
    """``24GiB,24GiB`` -> one CUDA device per size (its free memory); ``none`` -> no GPU. Anything
    else is an :class:`InputError` naming ``--gpus``."""
    from ggufx.analysis.memory.estimate import parse_size

    t = text.strip()
    if t.lower() in ("none", "cpu"):
        return []
    if not t:
        raise InputError("expected GPU sizes such as 24GiB or 24GiB,24GiB, or none", "--gpus")
    devices = []
    for i, part in enumerate(t.split(",")):
        if re.fullmatch(r"\s*[\d.]*[1-9][\d.]*(?:e\d+)?\s*", part):  # as bytes, --gpus 24 would be a 24-byte GPU
            raise InputError(f"{part.strip()!r} has no unit: give the free memory as 24GiB, 24GB or 24000MiB", "--gpus")
        try:
            size = parse_size(part)
        except ValueError as e:
            raise InputError(f"{e}, or none", "--gpus") from None
        if size <= 0:
            raise InputError(f"{part.strip()!r}: a GPU needs some memory (or say --gpus none)", "--gpus")
        devices.append(Device(f"CUDA{i}", size))
    return devices


# -- sources --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One file (the first shard of a split set) found in the sources."""

    name: str  # as the table shows it: the path inside the repository or folder
    path: str  # what open_model takes
    group: str  # the folder (repository folder) it sits in: projectors pair within a group


def hub_repository(url: str) -> tuple[str, str] | None:
    """``https://huggingface.co/ORG/REPO[/tree/REV[/DIR]]`` (the Hub's page of a repository, at
    ``HF_ENDPOINT``) -> (``hf://ORG/REPO@REV``, ``DIR``); None for any other URL."""
    from ggufx.io.hub import hf_endpoint

    ep = hf_endpoint().rstrip("/")
    if not url.startswith(ep + "/"):
        return None
    rest = url[len(ep) + 1 :].split("?")[0].split("#")[0].strip("/")
    m = re.fullmatch(r"(?P<repo>[^/]+/[^/]+)(?:/tree/(?P<rev>[^/]+)(?:/(?P<dir>.+))?)?", rest)
    if m is None or m["repo"].startswith(("api/", "datasets/", "spaces/")):
        return None
    from urllib.parse import unquote

    rev = unquote(m["rev"]) if m["rev"] else None
    return f"hf://{m['repo']}" + (f"@{rev}" if rev else ""), unquote(m["dir"] or "")


_HF_REPO = re.compile(r"^hf://[^/@]+/[^/@]+(?:@[^/]+)?/?$")


def find_entries(sources: Sequence[str], remote: RemoteConfig | None = None) -> list[Entry]:
    """Every GGUF file of ``sources`` (split sets once). A repository or folder with no GGUF file,
    or a source that is neither, is a :class:`SourceError`."""
    out: list[Entry] = []
    seen: set[str] = set()

    def add(name: str, path: str, group: str) -> None:
        key = path if "://" in path else os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(Entry(name, path, group))

    for src in sources:
        before = len(out)
        repo = hub_repository(src) if src.startswith(("https://", "http://")) else None
        if repo is not None or _HF_REPO.match(src):
            root, subdir = repo or (src.rstrip("/"), "")
            base = root.rstrip("/")
            for _name, path, _source, group in discover([base], remote):
                inside = path[len(base) + 1 :]
                if subdir and not inside.startswith(subdir.rstrip("/") + "/"):
                    continue
                add(_display(inside), path, group)
            if len(out) == before:
                raise SourceError(src, None, "no GGUF file in this repository" + (f" under {subdir}" if subdir else ""))
        elif "://" in src:  # one remote file (a shard: its set, named by the first shard, as llama.cpp wants -m)
            src = _first_shard(src)
            add(_display(src.rpartition("/")[2]), src, src.rpartition("/")[0])
        elif os.path.isdir(src):
            for _name, path, _source, group in discover([src], remote):
                add(_display(os.path.relpath(path, src)), path, group)
            if len(out) == before:
                raise SourceError(src, None, "no GGUF file in this folder")
        elif os.path.exists(src):
            src = _first_shard(src)
            add(_display(os.path.basename(src)), src, os.path.dirname(os.path.abspath(src)))
        else:
            raise SourceError(src, None, "no such file or folder")
    return out


def _first_shard(path: str) -> str:
    """``NAME-00002-of-00003.gguf`` -> ``NAME-00001-of-00003.gguf`` (llama.cpp loads a split model
    from its first shard); any other path as it is."""
    head, sep, base = (
        path.rpartition("/") if "://" in path else (*os.path.split(path)[:1], os.sep, os.path.basename(path))
    )
    m = SHARD_RE.match(base)
    if m is None:
        return path
    from ggufx.model.shards import shard_path

    first = shard_path(m["prefix"], 1, int(m["count"]))
    return f"{head}{sep}{first}" if head else first


def _display(inside: str) -> str:
    """A file's name in the table: the first shard of a split set becomes ``PREFIX-*-of-N.gguf``."""
    head, _, base = inside.rpartition("/")
    m = SHARD_RE.match(base)
    if m:
        base = f"{m['prefix']}-*-of-{base.rsplit('-of-', 1)[1]}"
    return f"{head}/{base}" if head else base


# -- results --------------------------------------------------------------------------------


@dataclass(slots=True)
class GPUUse:
    """What the printed command allocates on one GPU (bytes): llama.cpp's memory breakdown row
    (model, context, compute) and the projector's buffers; ``free`` as given, ``headroom`` left."""

    name: str
    free: int
    model: int
    context: int
    compute: int
    projector: int

    @property
    def total(self) -> int:
        return self.model + self.context + self.compute + self.projector

    @property
    def headroom(self) -> int:
        return self.free - self.total

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "free": self.free,
            "model": self.model,
            "context": self.context,
            "compute": self.compute,
            "projector": self.projector,
            "total": self.total,
            "headroom": self.headroom,
        }


@dataclass(slots=True)
class ModelPick:
    """One model of the sources, as ``pick`` ranks it. ``to_json()`` is one row of ``pick --json``."""

    name: str
    path: str
    group: str
    shards: int = 1
    quant: str | None = None
    architecture: str | None = None
    file_bytes: int | None = None
    bpw: float | None = None
    parameters: int | None = None
    n_ctx_train: int | None = None
    experts: int = 0
    error: str | None = None  # the header could not be read or sized: the row says why, unranked
    projector: str | None = None  # the --mmproj path used
    projector_bytes: int = 0  # what llama-server keeps free for it on the first GPU
    fits: bool = False  # entirely on the GPUs (every layer, at the context of the command)
    status: str | None = None  # llama.cpp's fit: unchanged, context, layers, failed
    fit_args: str | None = None  # as llama-fit-params prints them
    fit_message: str = ""
    n_ctx: int = 0  # the context of the command
    n_gpu_layers: int | None = None  # of n_layer + 1; None: all
    n_layer: int = 0
    overrides: list[tuple[str, str]] = field(default_factory=list)
    gpus: list[GPUUse] = field(default_factory=list)  # what the command allocates per GPU
    host_bytes: int = 0  # weights, KV, compute and output buffers on the host
    largest_context: dict[str, int] = field(default_factory=dict)  # cache type -> tokens (0: none)
    command: list[str] | None = None  # argv of the command that runs it that way
    notes: list[str] = field(default_factory=list)

    @property
    def command_line(self) -> str | None:
        return None if self.command is None else shlex.join(self.command)

    @property
    def runs(self) -> bool:
        """Runs at all: entirely on the GPUs, or with what llama.cpp's fit moves to the host."""
        return self.error is None and self.command is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "shards": self.shards,
            "quant": self.quant,
            "architecture": self.architecture,
            "file_bytes": self.file_bytes,
            "bpw": None if self.bpw is None else round(self.bpw, 4),
            "parameters": self.parameters,
            "n_ctx_train": self.n_ctx_train,
            "experts": self.experts,
            "error": self.error,
            "projector": self.projector,
            "projector_bytes": self.projector_bytes,
            "fits": self.fits,
            "llama_cpp_fit": None
            if self.status is None
            else {"status": self.status, "args": self.fit_args, "message": self.fit_message},
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "n_layer": self.n_layer,
            "overrides": [list(o) for o in self.overrides],
            "gpus": [g.to_json() for g in self.gpus],
            "host_bytes": self.host_bytes,
            "largest_context": dict(self.largest_context),
            "command": None if self.command is None else list(self.command),
            "command_line": self.command_line,
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class PickResult:
    """``ggufx pick``: the models ranked (entirely on the GPUs first, highest BPW first; then those
    that run with part on the host; then the rest), the recommendation and the runner-up.

    ``to_json()`` (``pick --json``, stable; keys are only ever added):

    * ``sources``, ``gpus`` ([{name, free}]), ``margin`` (bytes kept free per GPU, ``-fitt``),
      ``n_ctx`` (requested; null: llama.cpp's fit chooses), ``cache_type_k``/``cache_type_v``,
      ``mmproj`` (``auto``, ``none`` or the file), ``tool``, ``llama_args`` (the user's other options of
      the tool, words, in every command line);
    * ``recommendation`` / ``runner_up``: the ``name`` of a row, or null; ``summary``: the one line;
    * ``models``: rows (``ModelPick.to_json``): ``name``, ``path``, ``shards``, ``quant``, ``architecture``,
      ``file_bytes``, ``bpw``, ``parameters``, ``n_ctx_train``, ``experts``, ``error``, ``projector``,
      ``projector_bytes``, ``fits`` (every layer on the GPUs with ``margin`` left),
      ``llama_cpp_fit`` ({status, args, message}), ``n_ctx``, ``n_gpu_layers`` (null: all), ``n_layer``,
      ``overrides`` ([pattern, buffer type]), ``gpus`` ([{name, free, model, context, compute, projector,
      total, headroom}]: what ``command`` allocates), ``host_bytes``, ``largest_context`` ({cache type:
      tokens}), ``command`` (argv), ``command_line`` (shell-quoted), ``notes``;
    * ``companions``: [{name, path, kind, quant}] (projectors, adapters... not ranked); ``notes``."""

    sources: list[str]
    gpus: list[Device]
    margin: int
    n_ctx: int | None
    cache_type_k: str
    cache_type_v: str
    mmproj: str
    tool: str
    models: list[ModelPick]
    companions: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recommendation: ModelPick | None = None
    llama_args: list[str] = field(default_factory=list)  # the user's other options of the tool
    runner_up: ModelPick | None = None

    @property
    def summary(self) -> str:
        """The one line at the top: what to download."""
        where = _gpus_text(self.gpus)
        at = f"{self.n_ctx:,} tokens" if self.n_ctx else "the context llama.cpp's --fit chooses"
        r, u = self.recommendation, self.runner_up
        if not self.gpus:
            return (
                f"No GPU: {r.name} ({_quant(r)}) is the highest-BPW model; it runs on the CPU."
                if r
                else "No GPU, and no model could be read."
            )
        if r is not None:
            line = f"Pick {r.name} ({_quant(r)}): the highest BPW that runs entirely on {where} at {r.n_ctx:,} tokens"
        else:
            line = f"No model runs entirely on {where} at {at}"
        if u is not None:
            line += f"; {'higher' if r else 'best'} with part on the host: {u.name} ({_quant(u)}, {offload_text(u)})"
        return line + "."

    def to_json(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "gpus": [{"name": d.name, "free": d.free} for d in self.gpus],
            "margin": self.margin,
            "n_ctx": self.n_ctx,
            "cache_type_k": self.cache_type_k,
            "cache_type_v": self.cache_type_v,
            "mmproj": self.mmproj,
            "tool": self.tool,
            "llama_args": list(self.llama_args),
            "summary": self.summary,
            "recommendation": None if self.recommendation is None else self.recommendation.name,
            "runner_up": None if self.runner_up is None else self.runner_up.name,
            "models": [m.to_json() for m in self.models],
            "companions": list(self.companions),
            "notes": list(self.notes),
        }


def _quant(m: ModelPick) -> str:
    return f"{m.quant or '?'}, {m.bpw or 0:.2f} BPW, {(m.file_bytes or 0) / (1 << 30):.2f} GiB"


def _gpus_text(gpus: list[Device]) -> str:
    sizes = [f"{d.free / (1 << 30):g} GiB" for d in gpus]
    if len(set(sizes)) == 1 and len(sizes) > 1:
        return f"{len(sizes)} GPUs of {sizes[0]}"
    return " + ".join(sizes) + (" GPU" if len(sizes) == 1 else " GPUs")


_OT_LAYER = re.compile(r"blk\\\.(\d+)")  # the layer an -ot pattern of llama.cpp's fit names


def offload_text(m: ModelPick) -> str:
    """What llama.cpp's fit moves to the host, in words: ``experts of 18 layer(s) on the host``,
    ``27 of 31 layers on the GPUs``."""
    on_host = {x[1] for p, b in m.overrides if b == "CPU" and (x := _OT_LAYER.search(p))}
    if on_host:
        return f"experts of {len(on_host)} layer(s) on the host"
    if m.n_gpu_layers is not None:
        return f"{m.n_gpu_layers} of {m.n_layer + 1} layers on the GPUs"
    return "as llama.cpp's fit sets it"


# -- the projector --------------------------------------------------------------------------


def projector_usage(model: GGUFModel, mmproj: GGUFModel, gpu: str | None, flash_attn: str = "auto") -> tuple[int, int]:
    """(what llama-server keeps free for the projector on ``gpu``: its tensors' bytes (``ggml_nbytes``,
    clip.cpp) and compute buffer (``mtmd_get_memory_usage``); the buffers it then allocates there:
    weights as the buffer type pads them and the compute buffer), as ``mem --fit --mmproj`` and
    ``mem --mmproj`` count them. A projector whose graph ggufx does not build counts its weights."""
    from ggufx.analysis.memory.graph.projector import projector_buffers, projector_unsupported

    if gpu is None:
        return 0, 0
    compute = 0
    if projector_unsupported(mmproj) is None:
        bufs = projector_buffers(mmproj, gpu, flash_attn=flash_attn)
        compute = sum(b.bytes for b in bufs if b.buft == gpu)
    usage = sum(t.nbytes for t in mmproj.tensors) + compute
    weights = sum(alloc_size(gpu, t.type, t.shape[0], t.n_elements // t.shape[0]) for t in mmproj.tensors if t.shape)
    return usage, weights + compute


def _projector_rank(label: str | None) -> int:
    return PROJECTOR_PREFERENCE.index(label) if label in PROJECTOR_PREFERENCE else len(PROJECTOR_PREFERENCE)


def _under(folder: str, top: str) -> bool:
    """``folder`` is ``top`` or inside it (a Hub repository keeps split quants in folders of their own,
    their projector beside those folders)."""
    folder, top = folder.rstrip("/" + os.sep), top.rstrip("/" + os.sep)
    return folder == top or folder.startswith((top + "/", top + os.sep))


def _meant_for(projector: Entry, model: Entry) -> bool:
    """A projector goes with the models of its folder (and the folders below it) whose name it
    shares (all, if it names none)."""
    if not _under(model.group, projector.group):
        return False
    a, b = name_stem(projector.name), name_stem(model.name)
    if not a:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= 4 and long.startswith(short)


# -- one model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What the user asked: GPUs, context, cache types, margin, tool."""

    gpus: tuple[Device, ...]
    n_ctx: int | None = None  # None: llama.cpp's fit chooses (no -c)
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    margin: int = MARGIN
    tool: str = "llama-server"
    cache_types: tuple[str, ...] = SEARCH_TYPES
    n_ctx_min: int = N_CTX_MIN  # -fitc
    llama_args: tuple[str, ...] = ()  # the user's other options of the tool (-np 1 -ub 1024 ...)


def base_args(path: str, req: Request, mmproj: str | None) -> list[str]:
    """The options that say what the user asked (the model, projector, context, cache types and the other
    options of the tool)."""
    argv = ["-m", path]
    if mmproj:
        argv += ["--mmproj", mmproj]
    if req.n_ctx is not None:
        argv += ["-c", str(req.n_ctx)]
    return argv + ["-ctk", req.cache_type_k, "-ctv", req.cache_type_v, *req.llama_args]


def _with_ctx(argv: list[str], n_ctx: int) -> list[str]:
    out = list(argv)
    if "-c" in out:
        out[out.index("-c") + 1] = str(n_ctx)
        return out
    i = out.index("-ctk")
    return out[:i] + ["-c", str(n_ctx)] + out[i:]


def gpu_use(
    model: GGUFModel, devices: list[Device], argv: list[str], mmproj: GGUFModel | None, server: bool = True
) -> tuple[list[GPUUse], int, Breakdown]:
    """What the command ``argv`` allocates per GPU (``ggufx mem --llama-args`` of it) and on the host."""
    parsed = parse_args(argv, server=server)
    b = breakdown(model, devices, parsed.offload, parsed.context)
    table = b.table()
    proj = 0
    if mmproj is not None and devices and parsed.projector.offload:
        proj = projector_usage(model, mmproj, devices[0].name, parsed.context.flash_attn)[1]
    out = []
    for i, d in enumerate(devices):
        r = table.get(d.name, {})
        out.append(
            GPUUse(d.name, d.free, r.get("model", 0), r.get("context", 0), r.get("compute", 0), proj if i == 0 else 0)
        )
    host = sum(x.bytes for x in b.buffers if not is_cuda(x.buft))
    return out, host, b


def assess(model: GGUFModel, entry: Entry, req: Request, mmproj: GGUFModel | None = None) -> ModelPick:
    """One model against the request: the fit, the largest contexts, the command and its buffers."""
    s = summarize(model)
    hp = hparams(model)
    row = ModelPick(
        entry.name,
        entry.path,
        entry.group,
        len(model.shards),
        s.file_type_label,
        s.architecture,
        s.file_bytes,
        s.bpw,
        s.parameters,
        hp.n_ctx_train or None,
        model.metadata.get_int(f"{model.architecture}.expert_count") or 0,
        n_layer=hp.n_layer,
    )
    devices = list(req.gpus)
    server = req.tool == "llama-server"
    argv = base_args(entry.path, req, mmproj.path if mmproj is not None else None)
    parsed = parse_args(argv, server=server)
    offload, cp = parsed.offload, parsed.context
    if mmproj is not None:
        row.projector = mmproj.path
    if not devices:  # no GPU: everything on the host
        n_ctx = req.n_ctx if req.n_ctx is not None else hp.n_ctx_train or 4096
        row.command = [req.tool, *_with_ctx(argv, n_ctx), "-ngl", "0"]
        row.fits, row.n_ctx, row.n_gpu_layers = True, n_ctx, 0
        row.gpus, row.host_bytes, _ = gpu_use(model, devices, row.command[1:], mmproj, server)
        return row
    usage = {}
    if mmproj is not None:
        row.projector_bytes = projector_usage(model, mmproj, devices[0].name, cp.flash_attn)[0]
        usage = {devices[0].name: row.projector_bytes}
    margins = [req.margin + usage.get(d.name, 0) for d in devices]
    devices_left = [Device(d.name, d.free - usage.get(d.name, 0)) for d in devices]
    decision = llama_fit(
        model, free_seen(model, devices, offload, cp), offload, cp, margins=margins, n_ctx_min=req.n_ctx_min
    )
    row.status, row.fit_message = decision.status, decision.message
    row.fit_args = None if decision.status == "failed" else decision.args
    row.fits = decision.status in ("unchanged", "context")
    # ggufx's own search, as `mem --fit` makes it: every layer on the GPUs, the largest context per cache type
    found = fit_devices(
        model,
        devices_left,
        offload,
        replace(cp, n_ctx=0),
        target="context",
        margin=req.margin,
        cache_types=req.cache_types,
    )
    row.largest_context = {f.cache_type: f.value for f in found}
    for reason in refused_cache_types(model, cp, req.cache_types).values():
        row.notes.append(f"left out of the search: {reason}")
    if decision.status == "failed":
        row.notes.append(f"llama.cpp's fit gives up: {decision.message}")
        return row
    names = [t.name for t in model.tensors]
    row.command = [req.tool, *_command(argv, decision, len(devices), devices, names)]
    row.n_ctx = decision.n_ctx
    row.overrides = [(p, b) for p, b in decision.overrides if any(re.search(p, n) for n in names)]
    row.n_gpu_layers = None if decision.layers is None else decision.n_gpu_layers
    row.gpus, row.host_bytes, _ = gpu_use(model, devices, row.command[1:], mmproj, server)
    if row.fits and len(devices) > 1 and any(g.total > g.free - req.margin for g in row.gpus):
        # the explicit -ts of the sizes given splits as llama.cpp's default would; if rounding moved
        # a layer past the margin, leave the split to llama.cpp (the free memory it reads)
        i = row.command.index("-ts")
        plain = row.command[:i] + row.command[i + 2 :]
        row.command = plain
        row.gpus, row.host_bytes, _ = gpu_use(model, devices, plain[1:], mmproj, server)
    ct = req.cache_type_k if req.cache_type_k == req.cache_type_v else None
    if not row.fits and ct and row.largest_context.get(ct):
        row.notes.append(f"entirely on the GPUs up to {row.largest_context[ct]:,} tokens ({ct} cache)")
    if row.fits and req.n_ctx is None and decision.status == "context":
        row.notes.append(f"llama.cpp's fit reduces the context to {decision.n_ctx:,} tokens")
    return row


def _command(argv: list[str], decision: LlamaFit, nd: int, devices: list[Device], names: list[str]) -> list[str]:
    """The options that run the model as llama.cpp's fit decided: ``-c``, ``-ngl``, ``-ts``, ``-ot``.

    A pattern of fit's that matches no tensor (the experts of the output layer, which has none) is
    left out: llama.cpp ignores it (common/fit.cpp:548-586 writes it, the loader matches nothing)."""
    out = _with_ctx(argv, decision.n_ctx)
    if decision.layers is None:
        out += ["-ngl", "all"]
        if nd > 1:  # the default split, by the free memory given (MiB), written out
            out += ["-ts", ",".join(str(d.free // MiB) for d in devices)]
        return out
    out += ["-ngl", str(decision.n_gpu_layers)]
    ts = list(decision.tensor_split)
    while len(ts) > 1 and ts[-1] == 0:
        ts.pop()
    if len(ts) > 1:
        out += ["-ts", ",".join(str(n) for n in ts)]
    live = [(p, b) for p, b in decision.overrides if any(re.search(p, n) for n in names)]
    if live:
        out += ["-ot", ",".join(f"{p}={b}" for p, b in live)]
    return out


# -- everything -----------------------------------------------------------------------------


def _open_all(
    entries: list[Entry], remote: RemoteConfig | None, progress: Progress | None
) -> list[GGUFModel | GGUFError]:
    from ggufx.model import open_model

    total = len(entries)
    done = [0]

    def one(e: Entry) -> GGUFModel | GGUFError:
        try:
            m: GGUFModel | GGUFError = open_model(e.path, remote=remote)
        except GGUFError as err:
            m = err
        except OSError as err:
            m = SourceError(e.path, None, err.strerror or str(err))
        done[0] += 1
        if progress is not None:
            progress(done[0], total, e.name)
        return m

    if any("://" in e.path for e in entries) and len(entries) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(8, len(entries))) as pool:
            return list(pool.map(one, entries))
    return [one(e) for e in entries]


def pick(
    sources: Sequence[str],
    gpus: Sequence[Device],
    *,
    n_ctx: int | None = None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    mmproj: str = "auto",
    tool: str = "llama-server",
    margin: int = MARGIN,
    cache_types: tuple[str, ...] = SEARCH_TYPES,
    n_ctx_min: int = N_CTX_MIN,
    llama_args: str | Sequence[str] = (),
    remote: RemoteConfig | None = None,
    progress: Progress | None = None,
    allow: Callable[[str], str | None] | None = None,
) -> PickResult:
    """Every model of ``sources`` against ``gpus`` (their free bytes) at ``n_ctx`` tokens (None: no
    ``-c``, llama.cpp's fit chooses), ranked, with the command line that runs each.

    ``mmproj``: ``auto`` (each model's projector from its folder, F16 before BF16 before F32),
    ``none``, or a projector file used for every model. Raises :class:`SourceError` for a source with
    no GGUF file and :class:`InputError` for a bad option; a file that cannot be read is a row with
    its ``error``. ``allow(path)``: None, or why a local file may not be read (the MCP server's roots);
    asked for every file found and every shard of a split model, before any is read. ``llama_args``: the
    other options of the tool the models run with (``-np 1 -ub 1024 -fa on``...), as one string or words:
    they size every figure and are kept in the command lines; the options pick writes itself (the model,
    ``-c``, ``-ctk``/``-ctv``, the placement, the fit's) are an InputError naming ``--llama-args``."""
    from ggufx.format.ggmltypes import CACHE_TYPES

    if tool not in TOOLS:
        raise InputError(f"{tool!r}: the command line is written for {', '.join(TOOLS)}", "--tool")
    for opt, v in (("-ctk", cache_type_k), ("-ctv", cache_type_v), *(("--cache-types", c) for c in cache_types)):
        if v not in CACHE_TYPES:
            raise InputError(f"{opt} {v}: not one of {', '.join(CACHE_TYPES)}", opt)
    if n_ctx is not None and n_ctx < 0:
        raise InputError("the context cannot be negative", "-c")
    if margin < 0:
        raise InputError("a margin cannot be negative", "-fitt")
    extra, unmodelled = checked_llama_args(llama_args, tool)
    if cache_type_k == cache_type_v and cache_type_k not in cache_types:  # the requested type's largest context too
        cache_types = (*cache_types, cache_type_k)
    req = Request(tuple(gpus), n_ctx, cache_type_k, cache_type_v, margin, tool, cache_types, n_ctx_min, extra)
    entries = find_entries(sources, remote)
    explicit: GGUFModel | None = None
    if mmproj not in ("auto", "none"):
        from ggufx.model import open_model

        explicit = open_model(mmproj, remote=remote)
        if file_kind(explicit) != "projector":
            raise InputError(f"{mmproj}: not a multimodal projector ({file_kind(explicit)})", "--mmproj")
    refused: dict[str, str] = {}
    if allow is not None:
        for e in entries:
            for path in _local_shards(e.path):
                denied = allow(path)
                if denied is not None:
                    refused.setdefault(e.path, denied)
    opened = _open_all([e for e in entries if e.path not in refused], remote, progress)
    by_path = {e.path: m for e, m in zip([e for e in entries if e.path not in refused], opened, strict=True)}
    opened = [by_path.get(e.path) or SourceError(e.path, None, refused[e.path]) for e in entries]
    if allow is not None:  # the shards the headers named, checked too
        for i, m in enumerate(opened):
            if not isinstance(m, GGUFError):
                denied = next((w for sh in m.shards if "://" not in sh.path and (w := allow(sh.path))), None)
                if denied is not None:
                    opened[i] = SourceError(m.path, None, denied)
    rows: list[ModelPick] = []
    companions: list[tuple[Entry, GGUFModel, str]] = []
    models: list[tuple[Entry, GGUFModel]] = []
    for e, m in zip(entries, opened, strict=True):
        if isinstance(m, GGUFError):
            rows.append(ModelPick(e.name, e.path, e.group, error=m.one_line()))
            continue
        kind = file_kind(m)
        if kind == "model":
            models.append((e, m))
        else:
            companions.append((e, m, kind))
    result = PickResult(list(sources), list(gpus), margin, n_ctx, cache_type_k, cache_type_v, mmproj, tool, rows)
    result.llama_args = list(extra)
    if unmodelled:
        result.notes.append(
            "ggufx does not model what these llama.cpp options change in memory: " + ", ".join(unmodelled)
        )
    result.companions = [
        {"name": e.name, "path": e.path, "kind": kind, "quant": summarize(m).file_type_label}
        for e, m, kind in companions
    ]
    projectors = [(e, m) for e, m, kind in companions if kind == "projector"]
    if not models:
        failed = [m for m in opened if isinstance(m, GGUFError)]
        if len(failed) == 1 and not companions:  # the one file could not be read: why, not "no model in it"
            raise failed[0]
        raise SourceError(
            ", ".join(sources),
            None,
            "no GGUF model in it"
            + (f" ({len(companions)} companion file(s) only)" if companions else "")
            + (f"; {len(failed)} file(s) unreadable, the first: {failed[0].one_line()}" if failed else ""),
        )
    offered: list[tuple[str, GGUFModel]] = []  # (label, projector): what --mmproj offers the models
    if explicit is not None:
        offered = [(mmproj, explicit)]
    elif mmproj == "auto":
        offered = [(pe.name, pm) for pe, pm in projectors]
    meant = _projector_candidates(
        mmproj if explicit is not None else None, projectors if offered else [], [e for e, _ in models]
    )
    fitted: set[str] = set()  # projectors that fit at least one model
    mismatch: dict[str, str] = {}  # projector -> the first model it does not fit, and why
    for e, m in models:
        chosen, why = _choose_projector(m, [(label, pm) for label, pm in offered if e.name in meant[label]])
        fitted.update(label for label, _ in offered if e.name in meant[label] and label not in why)
        for label, reason in why.items():
            mismatch.setdefault(label, f"{e.name}: {reason}")
        try:
            row = assess(m, e, req, chosen)
        except (GGUFError, InputError) as err:
            row = ModelPick(e.name, e.path, e.group, quant=summarize(m).file_type_label, error=_one_line(err))
        if chosen is None and why:
            row.notes.append("no projector fits it: " + "; ".join(f"{k}: {v}" for k, v in why.items()))
        rows.append(row)
    for label, _pm in offered:
        if label not in fitted:
            why_not = mismatch.get(label)
            result.notes.append(f"the projector {label} fits none of the models" + (f" ({why_not})" if why_not else ""))
    _rank(result)
    return result


def checked_llama_args(
    llama_args: str | Sequence[str], tool: str, decided: Mapping[str, str] = DECIDED
) -> tuple[tuple[str, ...], list[str]]:
    """The words of ``llama_args``, each an option ``tool`` defines (with its values) that pick does not write
    itself (``decided``: those options, by llama.cpp's first name, with why; the report's, for its own), and those
    of them whose effect on memory ggufx does not model; an InputError naming ``--llama-args`` otherwise."""
    try:
        words = shlex.split(llama_args) if isinstance(llama_args, str) else list(llama_args)
    except ValueError as e:  # an unclosed quote
        raise InputError(f"cannot split the command line: {e}", "--llama-args") from None
    for word, first in argument_names(words, tool):
        why = decided.get(first)
        if why is not None:
            raise InputError(f"{word}: {why}", "--llama-args")
    parsed = parse_args(["-m", "model.gguf", *words], tool=tool)  # the values, as llama.cpp reads them
    return tuple(words), parsed.unmodelled


def _local_shards(path: str) -> list[str]:
    """A local file and, if it is the first shard of a split set, the other shards its name implies."""
    if "://" in path:
        return []
    m = SHARD_RE.match(os.path.basename(path))
    if m is None:
        return [path]
    from ggufx.model.shards import shard_path

    prefix = os.path.join(os.path.dirname(path), m["prefix"])
    return [shard_path(prefix, i, int(m["count"])) for i in range(1, int(m["count"]) + 1)]


def _one_line(err: Exception) -> str:
    if isinstance(err, GGUFError):
        return err.one_line()
    param = getattr(err, "param", None)
    return f"{param}: {err}" if param else str(err)


def _projector_candidates(
    explicit: str | None, projectors: list[tuple[Entry, GGUFModel]], models: list[Entry]
) -> dict[str, set[str]]:
    """Projector -> the names of the models it is offered to: a ``--mmproj FILE`` to every model; a
    projector of the sources to the models of its folder and the folders below it whose name it
    shares, or to all of them when it shares none (as ``scan`` pairs companions)."""
    if explicit is not None:
        return {explicit: {e.name for e in models}}
    out = {}
    for pe, _pm in projectors:
        folder = [e for e in models if _under(e.group, pe.group)]
        named = [e for e in folder if _meant_for(pe, e)]
        out[pe.name] = {e.name for e in (named or folder)}
    return out


def _choose_projector(
    model: GGUFModel, offered: list[tuple[str, GGUFModel]]
) -> tuple[GGUFModel | None, dict[str, str]]:
    """The projector for ``model`` among those offered to it (F16 before BF16 before F32, the rest
    after), and why the others do not fit it (label -> reason). Every offered projector is checked."""
    from ggufx.analysis.companions import projector_incompatibility

    why: dict[str, str] = {}
    chosen = None
    for label, pm in sorted(offered, key=lambda x: (_projector_rank(summarize(x[1]).file_type_label), x[0])):
        reason = projector_incompatibility(model, pm)
        if reason is not None:
            why[label] = reason
        elif chosen is None:
            chosen = pm
    return chosen, why


def _rank(result: PickResult) -> None:
    """Entirely on the GPUs first, then runs with part on the host, then the rest; highest BPW first."""

    def key(m: ModelPick) -> tuple[int, float, str]:
        tier = 0 if m.fits and m.runs else 1 if m.runs else 2 if m.error is None else 3
        return (tier, -(m.bpw or 0.0), m.name)

    result.models.sort(key=key)
    fitting = [m for m in result.models if m.fits and m.runs]
    result.recommendation = fitting[0] if fitting else None
    best = (result.recommendation.bpw or 0.0) if result.recommendation else -1.0
    partial = [m for m in result.models if m.runs and not m.fits and (m.bpw or 0.0) > best]
    result.runner_up = partial[0] if partial else None
