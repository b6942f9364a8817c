"""Where llama.cpp puts each weight: the device of every layer and the buffer type of every tensor.

This follows llama.cpp 11434 (``src/llama-model.cpp`` ``load_tensors``, ``src/llama-model-loader.cpp``
``create_tensor``/``select_weight_buft``; the notes in ``docs/memory-model-research.md`` cite lines):

* ``-ngl N`` offloads the last N of ``n_layer + 1`` layers, the output layer counting as one
  (``i_gpu_start = max(n_layer + 1 - N, 0)``); the input layer (``token_embd``...) stays on the host.
* Several GPUs split the offloaded layers by ``-ts`` or, by default, in proportion to each GPU's free
  memory: layer ``il`` goes to the first GPU whose cumulative share exceeds ``(il - i_gpu_start) / N``.
  ``-sm none`` keeps only ``-mg``'s GPU; ``-sm row`` is refused by this llama.cpp's CUDA backend;
  ``-sm tensor`` (one Meta device, every tensor sliced across the GPUs) is refused as not modelled.
* ``-ot REGEX=BUFT`` (and ``--cpu-moe``, ``--n-cpu-moe N``, which are such overrides): the first
  regex found in the tensor name wins. A weight on the host is memory-mapped (``CPU_Mapped``); in a
  build without GPUs, matrices of repackable types also get a ``CPU_REPACK`` copy.
* A tied output (no ``output.weight``) is ``token_embd`` loaded a second time as the output layer,
  once per buffer type; ``rope_freqs`` is loaded once per buffer type its layers use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ggufx.errors import InputError
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.format.reader import TensorInfo
from ggufx.model import GGUFModel

CPU = "CPU"
CPU_MAPPED = "CPU_Mapped"
CPU_REPACK = "CPU_REPACK"
SPLIT_MODES = ("none", "layer", "row", "tensor")

# llama-arch.cpp: tensors of the input layer (always on the host) and of the output layer
_INPUT = frozenset({"token_embd", "pos_embd", "token_types", "per_layer_token_embd"})
_OUTPUT_PREFIXES = ("output", "cls", "dense_2", "dense_3")
# common/common.h: the tensor-override patterns --cpu-moe and --n-cpu-moe stand for
CPU_MOE_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
# ggml-cpu/repack.cpp on x86 with AVX2: the types whose 2-D matrices get a repacked copy
_REPACK_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})


def n_cpu_moe_patterns(n: int) -> list[str]:
    """``--n-cpu-moe N``: the experts of the first N layers stay on the CPU."""
    return [rf"blk\.{i}{CPU_MOE_PATTERN}" for i in range(n)]


@dataclass(frozen=True, slots=True)
class Device:
    """A GPU as llama.cpp names it (``CUDA0``) and the memory it had free when the model loaded."""

    name: str
    free: int  # bytes


@dataclass(frozen=True, slots=True)
class OffloadParams:
    """The llama.cpp options that decide where weights go (llama.cpp's own option names)."""

    n_gpu_layers: int = -1  # -ngl; -1: all layers and the output layer
    split_mode: str = "layer"  # -sm
    main_gpu: int = 0  # -mg
    tensor_split: tuple[float, ...] = ()  # -ts
    overrides: tuple[tuple[str, str], ...] = ()  # -ot REGEX=BUFT, in order
    mmap: bool = True  # --no-mmap turns it off


@dataclass(slots=True)
class Placement:
    """The device of every layer (``None`` = the host) and the buffer type of every loaded tensor.

    ``tensors`` lists (tensor, buffer type) pairs, a tensor appearing again where llama.cpp loads it
    a second time (a tied output on the GPU, ``rope_freqs`` per buffer type)."""

    devices: list[Device]
    n_layer: int
    layer_device: list[str | None]  # index n_layer is the output layer
    tensors: list[tuple[TensorInfo, str]] = field(default_factory=list)
    repack: list[TensorInfo] = field(default_factory=list)  # CPU_REPACK copies (builds without GPUs)
    unmatched_overrides: list[str] = field(default_factory=list)

    @property
    def n_offloaded(self) -> int:
        return sum(d is not None for d in self.layer_device)

    @property
    def output_device(self) -> str | None:
        return self.layer_device[self.n_layer]


def host_buft(device: str | None) -> str:
    """The pinned host buffer type of a GPU's backend (``CUDA0`` -> ``CUDA_Host``); ``CPU`` without one."""
    return f"{device.rstrip('0123456789')}_Host" if device is not None else CPU


def layer_of(name: str, n_layer: int) -> int | str:
    """The llama.cpp layer a tensor belongs to: a block index, ``n_layer`` for the output layer,
    ``"input"`` for the input layer or ``"repeating"`` for per-layer duplicates such as rope_freqs."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return min(int(m.group(1)), n_layer)
    base = name.split(".")[0]
    if base in _INPUT:
        return "input"
    if base == "rope_freqs":
        return "repeating"
    if base.startswith(_OUTPUT_PREFIXES):
        return n_layer
    return "input"


def layer_devices(n_layer: int, devices: list[Device], p: OffloadParams) -> list[str | None]:
    """The device of layers 0..n_layer (the last is the output layer), as ``load_tensors`` decides."""
    if not devices:
        return [None] * (n_layer + 1)
    ngl = n_layer + 1 if p.n_gpu_layers < 0 else p.n_gpu_layers
    start = max(n_layer + 1 - ngl, 0)
    active = min(ngl, n_layer + 1)
    shares = list(p.tensor_split) if any(p.tensor_split) else [float(d.free) for d in devices]
    if len(shares) < len(devices):
        shares += [0.0] * (len(devices) - len(shares))
    total = sum(shares) or 1.0
    cumulative, acc = [], 0.0
    for s in shares:
        acc += s
        cumulative.append(acc / total)
    out: list[str | None] = []
    for il in range(n_layer + 1):
        if il < start or il - start >= active:
            out.append(None)
            continue
        x = (il - start) / active
        i = next((k for k, c in enumerate(cumulative) if c > x), len(devices) - 1)  # std::upper_bound
        out.append(devices[i].name)
    return out


def _override(name: str, patterns: list[tuple[re.Pattern[str], str]], hits: dict[str, int]) -> str | None:
    for rx, buft in patterns:
        if rx.search(name):
            hits[rx.pattern] += 1
            return buft
    return None


def _repackable(t: TensorInfo) -> bool:
    return t.type.name in _REPACK_TYPES and len(t.shape) >= 2 and t.shape[1] % 8 == 0


def place(model: GGUFModel, devices: list[Device], p: OffloadParams) -> Placement:
    """Decide the buffer type of every weight (``CUDA0``, ``CPU``...) for these devices and options."""
    if p.split_mode not in SPLIT_MODES:
        raise InputError(f"split mode must be one of {', '.join(SPLIT_MODES)}", "-sm")
    if p.split_mode == "tensor" and devices:
        raise InputError(
            "-sm tensor is not modelled: llama.cpp makes one Meta device of the GPUs and cuts every "
            "weight, the KV cache and the recurrent state into per-GPU slices by per-tensor granularity "
            "rules (llama-model.cpp:379-880) that ggufx does not follow yet; -sm layer is the nearest estimate",
            "-sm",
        )
    if p.split_mode == "row" and devices:
        raise InputError(
            f"-sm row: this llama.cpp's CUDA backend has no split buffers (it fails with 'device "
            f"{devices[0].name} does not support split buffers')",
            "-sm",
        )
    if p.split_mode == "none" and devices:
        if not 0 <= p.main_gpu < len(devices):
            raise InputError(f"-mg {p.main_gpu}: there are {len(devices)} GPU(s)", "-mg")
        devices = [devices[p.main_gpu]]
    if p.tensor_split and len(p.tensor_split) > max(len(devices), 1):
        raise InputError(f"-ts has {len(p.tensor_split)} entries for {len(devices)} GPU(s)", "-ts")
    n_layer = model.metadata.get_int(f"{model.architecture}.block_count") or 0
    layer_dev = layer_devices(n_layer, devices, p)
    names = {d.name for d in devices}
    patterns = []
    for rx, buft in p.overrides:
        if buft != CPU and buft not in names:
            raise InputError(
                f"-ot {rx}={buft}: no buffer type {buft} (devices: {', '.join(sorted(names)) or 'none'})", "-ot"
            )
        try:
            patterns.append((re.compile(rx), buft))
        except re.error as e:
            raise InputError(f"-ot {rx}: invalid regular expression: {e}", "-ot") from None
    hits = {rx.pattern: 0 for rx, _ in patterns}

    host = CPU_MAPPED if p.mmap else host_buft(devices[0].name if devices else None)
    placement = Placement(devices, n_layer, layer_dev)

    def buft_for(t: TensorInfo, layer: int | str) -> str:
        forced = _override(t.name, patterns, hits)
        if forced is not None:
            return host if forced == CPU else forced
        dev = layer_dev[layer] if isinstance(layer, int) else None
        return dev if dev is not None else host

    seen_rope: set[str] = set()
    tied = not any(t.name == "output.weight" for t in model.tensors)
    for t in model.tensors:
        layer = layer_of(t.name, n_layer)
        if layer == "repeating":
            for il in range(n_layer):
                buft = layer_dev[il] or host
                if buft not in seen_rope:
                    seen_rope.add(buft)
                    placement.tensors.append((t, buft))
            continue
        buft = buft_for(t, layer)
        placement.tensors.append((t, buft))
        if not devices and buft in (CPU_MAPPED, CPU) and isinstance(layer, int) and _repackable(t):
            placement.repack.append(t)
        if tied and t.name == "token_embd.weight":
            out = buft_for(t, n_layer) if layer_dev[n_layer] is not None else host
            if out != buft:  # the output layer's copy of the tied embedding
                placement.tensors.append((t, out))
            elif not devices and _repackable(t):
                placement.repack.append(t)
    placement.unmatched_overrides = [rx for rx, n in hits.items() if n == 0]
    return placement


def check_cache_type(name: str, option: str) -> str:
    """A KV cache type llama.cpp accepts, or an InputError naming the option."""
    try:
        return ggml_type_by_name(name).name.lower()
    except ValueError:
        raise InputError(f"{option} {name}: not a ggml type", option) from None
