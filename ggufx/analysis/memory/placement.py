"""Where llama.cpp puts each weight: the device of every layer and the buffer type of every tensor.

This follows llama.cpp 11434 (``src/llama-model.cpp`` ``load_tensors``, ``src/llama-model-loader.cpp``
``create_tensor``/``select_weight_buft``; the notes in ``docs/memory-model-research.md`` cite lines):

* ``-ngl N`` offloads the last N of ``n_layer + 1`` layers, the output layer counting as one
  (``i_gpu_start = max(n_layer + 1 - N, 0)``); the input layer (``token_embd``...) stays on the host.
  ``n_layer`` there is llama.cpp's ``n_layer_all``: Granite Switch adds a router layer without weights after
  its blocks, which -ngl counts and whose KV cache goes to its own device (``Placement.weightless``).
  A tensor without a block number goes by its llama-arch.cpp class: the input layer's, the output layer's,
  or, for a repeating one, the layer it is created with (HRM-Text's ``hrm.z_l_init``: block 0).
* Several GPUs split the offloaded layers by ``-ts`` or, by default, in proportion to each GPU's free
  memory: layer ``il`` goes to the first GPU whose cumulative share exceeds ``(il - i_gpu_start) / N``.
  ``-sm none`` keeps only ``-mg``'s GPU; ``-sm row`` is refused by this llama.cpp's CUDA backend;
  ``-sm tensor``: one Meta device takes every layer, each tensor on it sliced across the GPUs (:func:`meta_split`);
  host layers, ``-ot`` and the architectures llama.cpp refuses it for are refused.
* ``-ot REGEX=BUFT`` (and ``--cpu-moe``, ``--n-cpu-moe N``, which are such overrides): the first
  regex found in the tensor name wins. A weight on the host is memory-mapped (``CPU_Mapped``); in a
  build without GPUs, matrices of repackable types also get a ``CPU_REPACK`` copy.
* A tied output (no ``output.weight``) is ``token_embd`` loaded a second time as the output layer,
  once per buffer type; ``rope_freqs`` is loaded once per buffer type its layers use.
"""

from __future__ import annotations

import math
import re
import struct
import weakref
from dataclasses import dataclass, field, replace
from functools import lru_cache

from ggufx.analysis.layers import layer_kinds, swa_layers
from ggufx.analysis.memory.archs import arch_of
from ggufx.analysis.memory.hparams import hparams, n_loops, n_nextn
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
# tensors without a block number that llama-arch.cpp's table puts in a layer all the same: Gemma 3n's
# per-layer projection and its norm are created with block 0 (LLM_TENSOR_LAYER_REPEATING, gemma3n.cpp:40-41),
# its AltUp projections in the output layer (LLM_TENSOR_LAYER_OUTPUT, llama-arch.cpp:958-961)
_LAYER0 = frozenset({"per_layer_model_proj", "per_layer_proj_norm"})
# tensors without a block number that every layer creates (LLM_TENSOR_LAYER_REPEATING, llama-arch.cpp:779-780),
# layer 0 its own and the others TENSOR_DUPLICATED (phi3.cpp:52-53, llama.cpp's rope_freqs the same way):
# one copy per buffer type the layers use, on the layers' devices, not in the input layer on the host
_PER_LAYER = frozenset({"rope_freqs", "rope_factors_long", "rope_factors_short"})
# CLEF's decision head too (:759-771), and the EAGLE3/DFlash heads' fc and d2t (:1034-1035)
_OUTPUT_LAYER = frozenset({"altup_proj", "altup_unembd_proj", "decision", "fc", "d2t"})
# the decoder's and the encoder's output norms (LLM_TENSOR_DEC_OUTPUT_NORM / _ENC_OUTPUT_NORM, llama-arch.cpp:776-777)
# and a drafter's projection back to the target's width (LLM_TENSOR_NEXTN_PROJ_POST, :1014): the output layer's
_OUTPUT_NAMES = ("dec.output_norm", "enc.output_norm", "nextn.post_projection.")
# the architectures whose loaders create no output head (src/models/<arch>.cpp: no ``output`` tensor, so no tied copy
# of token_embd on the output layer's device, TENSOR_DUPLICATED): their embeddings stay on the host alone. The
# encoders have no head at all; BitNet multiplies its output by token_embd itself (bitnet.cpp:163-164, "FIXME: do not
# use model.tok_embd directly"), the only builder of src/models/*.cpp that does (build_lora_mm(model.tok_embd, ...)):
# the head's matmul reads the host copy
_NO_OUTPUT_HEAD = frozenset(
    {"bert", "eurobert", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert", "nomic-bert", "nomic-bert-moe",
     "bitnet"}
)  # fmt: skip
# a drafter's projection of the target's rows (LLM_TENSOR_NEXTN_PROJ_PRE, llama-arch.cpp:1013): a repeating tensor of
# layer 0
_NEXTN_LAYER0 = ("nextn.pre_projection.",)
# HRM-Text's low-stack initial state: hrm-text.cpp:46 creates it with block 0 (``tn(LLM_TENSOR_HRM_Z_L_INIT, 0)``),
# a LLM_TENSOR_LAYER_REPEATING tensor (llama-arch.cpp:753), so create_tensor gives it layer 0's buffer types
# (llama-model.cpp:1969), not the input layer's host: on CUDA at -ngl 99 it is a CUDA0 weight
_BLOCK0_NAMES = frozenset({"hrm.z_l_init"})
# WavTokenizer's decoder: posnet.N.* and convnext.N.* are created with block N, conv1d with block 0 (wavtokenizer-dec.cpp,
# LLM_TENSOR_LAYER_REPEATING in llama-arch.cpp:975-990): layer N's buffer types, not the input layer's host
_WAV_BLOCK = r"(posnet|convnext)\.(\d+)\.|(conv1d)\."  # compiled by re at its first use: WavTokenizer's only
# LFM2's output norm is stored as token_embd_norm (LLM_TENSOR_OUTPUT_NORM_LFM2, llama-arch.cpp:447, :775):
# the output layer's
_OUTPUT_NORM_AS_TOKEN_EMBD_NORM = frozenset({"lfm2", "lfm2moe"})
# select_weight_buft (llama-model-loader.cpp:1067-1080) skips a buffer type whose device refuses the weight's op,
# tried on a dummy graph of 512 tokens and 3 sequences (weight_buft_supported, :927-1060); CUDA refuses two of the
# ops a weight is classed with (llama-arch.cpp LLM_TENSOR_INFOS): GGML_OP_SSM_SCAN of ssm_a (:880; the builders that
# create LLM_TENSOR_SSM_A rather than _NOSCAN, a MUL: these architectures) and GGML_OP_SSM_CONV of the convolutions
# (:826, :879, :991), then the layer's weight goes to the next buffer type of its list, the host's
_SSM_SCAN_ARCHS = frozenset(
    {"mamba", "mamba2", "jamba", "falcon-h1", "plamo2", "nemotron_h", "nemotron_h_moe", "granitehybrid"}
)  # fmt: skip
_SSM_A_NAME = re.compile(r"blk\.\d+\.ssm_a")
_SSM_CONV_NAME = re.compile(r"blk\.\d+\.(ssm_conv1d|shortconv\.conv|ple_conv1d)\.weight")
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
    repack: bool = True  # --no-repack turns it off (no CPU_REPACK copies: params.no_extra_bufts)
    # the NextN/MTP blocks' tensors loaded (mparams.load_mtp: --spec-type draft-mtp or --mtp, common.cpp:1683);
    # otherwise the loaders create them with TENSOR_SKIP (``Placement.skipped``)
    mtp: bool = False


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
    # tensors whose only host copy is the repacked one: they are not in the CPU_Mapped span (the span
    # covers the tensors of the CPU context alone, llama-model-loader.cpp:1449-1463)
    repacked_only: set[str] = field(default_factory=set)
    skipped: list[TensorInfo] = field(default_factory=list)  # not loaded: NextN/MTP tensors (TENSOR_SKIP)
    unmatched_overrides: list[str] = field(default_factory=list)
    meta: list[Device] = field(default_factory=list)  # -sm tensor: the GPUs behind the Meta device
    layout: MetaLayout | None = None  # -sm tensor: what decides each tensor's slices
    # layers past block_count that llama.cpp's load_tensors splits with the others but that hold no weights (index
    # -> device): Granite Switch's router layer, whose KV cache and attention go to its own layer's device
    weightless: dict[int, str | None] = field(default_factory=dict)

    @property
    def n_offloaded(self) -> int:
        """The blocks and the output layer on a GPU (a weightless layer not counted)."""
        return sum(d is not None for d in self.layer_device)

    @property
    def n_layer_all(self) -> int:
        """llama.cpp's ``n_layer_all``: the blocks and the weightless layers after them (Granite Switch's router:
        granite-switch.cpp load_arch_hparams sets it to block_count + 1), the output layer not counted."""
        return self.n_layer + len(self.weightless)

    @property
    def n_offloaded_all(self) -> int:
        """The layers ``load_tensors`` counts in ``offloaded N/M layers to GPU`` (llama-model.cpp:1913-1927): N of
        ``M = n_layer_all + 1``, a weightless layer on a GPU included (Granite Switch's router at -ngl 2: 2/6)."""
        return self.n_offloaded + sum(d is not None for d in self.weightless.values())

    @property
    def output_device(self) -> str | None:
        return self.layer_device[self.n_layer]

    def dev_layer(self, il: int) -> str | None:
        """``model.dev_layer(il)``: the device of llama.cpp's layer ``il``, which its KV cache (llama-kv-cache.cpp)
        and the -fa auto probe (resolve_fused_ops) use; a block's, or a weightless layer's (Granite Switch's
        router); None = the host."""
        if il in self.weightless:
            return self.weightless[il]
        return self.layer_device[il] if il < len(self.layer_device) else None

    def dev_layers(self) -> list[str | None]:
        """:meth:`dev_layer` of layers 0..n_layer (index n_layer: a weightless layer there, else the output
        layer's device, which no cache uses)."""
        return [self.dev_layer(il) for il in range(len(self.layer_device))]


def host_buft(device: str | None) -> str:
    """The pinned host buffer type of a GPU's backend (``CUDA0`` -> ``CUDA_Host``); ``CPU`` without one."""
    return f"{device.rstrip('0123456789')}_Host" if device is not None else CPU


@lru_cache(maxsize=16384)
def layer_of(name: str, n_layer: int, arch: str | None = None) -> int | str:
    """The llama.cpp layer a tensor belongs to: a block index, ``n_layer`` for the output layer,
    ``"input"`` for the input layer or ``"repeating"`` for per-layer duplicates such as rope_freqs."""
    # dec.blk.N / enc.blk.N: a decoder / encoder block of layer N (LLM_TENSOR_LAYER_REPEATING, llama-arch.cpp:834-974)
    m = re.match(r"(?:dec\.|enc\.)?blk\.(\d+)\.", name)
    if m:
        return min(int(m.group(1)), n_layer)
    if arch == "wavtokenizer-dec":  # its blocks: LLM_TENSOR_LAYER_REPEATING, created with their number as bid
        m = re.match(_WAV_BLOCK, name)  # (wavtokenizer-dec.cpp:14-108; conv1d with bid 0): that layer's buffer types
        if m:
            return min(int(m.group(2)), n_layer) if m.group(2) else 0
    if name.startswith(_NEXTN_LAYER0) or name in _BLOCK0_NAMES:
        return 0
    base = name.split(".")[0]
    if base in _INPUT:
        return "input"
    if base in _PER_LAYER:
        return "repeating"
    if base in _LAYER0:
        return 0
    if base == "token_embd_norm":  # LLM_TENSOR_LAYER_REPEATING: "do the norms on the first layer" (llama-arch.cpp:754)
        return n_layer if arch in _OUTPUT_NORM_AS_TOKEN_EMBD_NORM else 0
    if base in _OUTPUT_LAYER or base.startswith(_OUTPUT_PREFIXES) or name.startswith(_OUTPUT_NAMES):
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


# the -ot regexes, compiled once per process, and per model (held weakly) the tensor names each pattern
# matches: --fit's layer search places the same model with override lists that share most patterns
_COMPILED: dict[str, re.Pattern[str]] = {}
_MATCHES: weakref.WeakKeyDictionary[GGUFModel, dict[str, frozenset[str]]] = weakref.WeakKeyDictionary()


def _compile(rx: str) -> re.Pattern[str]:
    compiled = _COMPILED.get(rx)
    if compiled is None:
        if len(_COMPILED) >= 4096:
            _COMPILED.clear()
        compiled = _COMPILED[rx] = re.compile(rx)
    return compiled


def _first_matches(model: GGUFModel, patterns: list[tuple[re.Pattern[str], str]]) -> dict[str, int]:
    """Tensor name -> the index of the first pattern that matches it (``std::regex_search``, in order);
    names no pattern matches are absent."""
    matches = _MATCHES.setdefault(model, {})
    if len(matches) >= 4096:
        matches.clear()
    first: dict[str, int] = {}
    for k, (rx, _) in enumerate(patterns):
        names = matches.get(rx.pattern)
        if names is None:
            names = matches[rx.pattern] = frozenset(t.name for t in model.tensors if rx.search(t.name))
        for name in names:
            first.setdefault(name, k)
    return first


def _override(
    name: str, patterns: list[tuple[re.Pattern[str], str]], hits: dict[str, int], first: dict[str, int]
) -> str | None:
    i = first.get(name)
    if i is None:
        return None
    rx, buft = patterns[i]
    hits[rx.pattern] += 1
    return buft


# llama-arch.cpp:829, :1008, :1012: DeepSeek V4's weights that llama.cpp reads with GGML_OP_GET_ROWS, which the
# repack buffer type does not take (its supports_op is MUL_MAT / MUL_MAT_ID only)
_GET_ROWS_WEIGHTS = ("attn_compressor_ape.weight", "indexer_compressor_ape.weight", "ffn_gate_tid2eid.weight")


def _cuda_refuses(t: TensorInfo, model: GGUFModel, arch: str | None) -> bool:
    """Whether CUDA's ``supports_op`` (ggml-cuda.cu:5602-5623) refuses the op ``weight_buft_supported`` builds for
    this weight, so that llama.cpp keeps it on the host although its layer is on the GPU.

    * ``ssm_a`` (SSM_SCAN): d_state is ``ne[0]``, or the header's ssm.state_size when ``ne[0]`` is 1 (Mamba-2), the
      heads ``ne[1]``, the head ``ssm.inner_size / heads``. Mamba-2's kernel wants d_state 96, 128 or 256 and a head
      that is a multiple of 16; Mamba-1's d_state 16, heads of 1, a multiple of 128 of them and one group. PLaMo 2's
      ``ssm_a`` is one row of its heads (``ne[0]`` 32), which CUDA takes for Mamba-1 with d_state 32: refused.
    * a convolution (SSM_CONV): its channels ``ne[1]`` a multiple of 128.
    * an EAGLE3 head's ``d2t`` (GET_ROWS, llama-arch.cpp:1035) of type I64, which CUDA's GET_ROWS does not take
      (ggml-cuda.cu:5380-5400): on the host.
    """
    name = t.name
    if name == "d2t":
        return t.type.name == "I64"
    if "ssm_a" not in name and "conv" not in name:  # the cheap test first: every tensor of every fit passes here
        return False
    if _SSM_A_NAME.fullmatch(name):
        if arch not in _SSM_SCAN_ARCHS:
            return False
        ne0 = t.shape[0]
        n_head = t.shape[1] if len(t.shape) > 1 else 1
        meta = model.metadata
        d_inner = meta.get_int(f"{arch}.ssm.inner_size") or 0
        head_dim = d_inner // n_head
        if ne0 == 1:
            d_state = meta.get_int(f"{arch}.ssm.state_size") or 0
            return not (d_state in (96, 128, 256) and head_dim % 16 == 0)
        n_group = meta.get_int(f"{arch}.ssm.group_count") or 1
        return not (ne0 == 16 and head_dim == 1 and n_head % 128 == 0 and n_group == 1)
    if _SSM_CONV_NAME.fullmatch(name):
        return len(t.shape) < 2 or t.shape[1] % 128 != 0
    return False


def _repackable(t: TensorInfo, arch: str | None = None) -> bool:
    """A weight the CPU_REPACK buffer type takes (ggml-cpu/repack.cpp:5191-5225 ``supports_op``): a
    matrix of ``MUL_MAT`` (2 dimensions) or an expert stack of ``MUL_MAT_ID`` (3), of a repackable
    type whose rows come in groups of 8; not a bias (``ADD``/``ADD_ID``) nor a 3-D ``MUL_MAT`` weight
    such as DeepSeek's ``attn_k_b``."""
    dims = len(t.shape)
    while dims > 1 and t.shape[dims - 1] == 1:
        dims -= 1
    experts = "_exps." in t.name or "_chexps." in t.name
    # Granite Switch's stacked adapters: llama-model-loader.cpp:1193 gives its .lora_a / .lora_b MUL_MAT_ID
    lora = arch == "graniteswitch" and t.name.endswith((".lora_a", ".lora_b"))
    return (
        (t.name.endswith(".weight") or lora)
        and not t.name.endswith(_GET_ROWS_WEIGHTS)
        and t.type.name in _REPACK_TYPES
        and dims == (3 if experts or lora else 2)
        and t.shape[1] % 8 == 0
    )


# per model (held weakly: a model collected takes its entries along), the placements made, by the devices (names
# and free memory: several GPUs share the layers by it, and the placement holds them) and the options: --fit's
# searches place the same model with the same options again and again (DeepSeek-V4-Flash's fit: 42 placements of
# 9 distinct, 0.45 G instructions; issue 21). A placement is shared: its callers read it and never change it
_PLACED: weakref.WeakKeyDictionary[GGUFModel, dict[tuple[tuple[Device, ...], OffloadParams], Placement]] = (
    weakref.WeakKeyDictionary()
)
PLACED_MOST = 64  # placements kept per model, the oldest dropped first


def place(model: GGUFModel, devices: list[Device], p: OffloadParams) -> Placement:
    """Decide the buffer type of every weight (``CUDA0``, ``CPU``...) for these devices and options.

    Made once per model, devices and options in a process: the same :class:`Placement` is returned for the same
    question, which its callers must not change."""
    key = (tuple(devices), p)
    placed = _PLACED.get(model)
    if placed is None:
        placed = _PLACED[model] = {}
    pl = placed.get(key)
    if pl is None:
        pl = _place(model, list(devices), p)
        if len(placed) >= PLACED_MOST:
            del placed[next(iter(placed))]
        placed[key] = pl
    return pl


def _place(model: GGUFModel, devices: list[Device], p: OffloadParams) -> Placement:
    if p.split_mode not in SPLIT_MODES:
        raise InputError(f"split mode must be one of {', '.join(SPLIT_MODES)}", "-sm")
    if p.split_mode == "tensor" and devices:
        return _place_meta(model, devices, p)
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
    # nanbeige's num_loops: load_tensors splits n_layer_all = block_count x num_loops layers; the blocks' weights sit
    # on their first pass's devices, the later passes' caches on their own
    n_layer = (model.metadata.get_int(f"{model.architecture}.block_count") or 0) * n_loops(model)
    weightless: dict[int, str | None] = {}
    if model.architecture == "graniteswitch":
        # granite-switch.cpp load_arch_hparams sets n_layer_all = block_count + 1 (router_layer = block_count), and
        # load_tensors (llama-model.cpp:1591-1616) splits n_layer_all + 1 layers: the blocks, the router layer at
        # index block_count (dev_layer, no weights), the output layer. -ngl N counts the router: at -ngl 1 only the
        # output layer is offloaded and the router stays on the host with its KV cache
        split = layer_devices(n_layer + 1, devices, p)
        layer_dev = [*split[:n_layer], split[n_layer + 1]]
        weightless[n_layer] = split[n_layer]
    else:
        layer_dev = layer_devices(n_layer, devices, p)
    names = {d.name for d in devices}
    patterns = []
    for rx, buft in p.overrides:
        if buft != CPU and buft not in names:
            raise InputError(
                f"-ot {rx}={buft}: no buffer type {buft} (devices: {', '.join(sorted(names)) or 'none'})", "-ot"
            )
        try:
            patterns.append((_compile(rx), buft))
        except re.error as e:
            raise InputError(f"-ot {rx}: invalid regular expression: {e}", "-ot") from None
    hits = {rx.pattern: 0 for rx, _ in patterns}
    first = _first_matches(model, patterns)

    host = CPU_MAPPED if p.mmap else host_buft(devices[0].name if devices else None)
    placement = Placement(devices, n_layer, layer_dev, weightless=weightless)

    def buft_for(t: TensorInfo, layer: int | str) -> str:
        forced = _override(t.name, patterns, hits, first)
        if forced is not None:
            return host if forced == CPU else forced
        dev = layer_dev[layer] if isinstance(layer, int) else None
        if dev is not None and dev.startswith("CUDA") and _cuda_refuses(t, model, arch_name):
            return host
        return dev if dev is not None else host

    seen_rope: set[tuple[str, str]] = set()
    arch_name = model.architecture  # read once: a metadata lookup per tensor is a few % of a fit
    tied = arch_name not in _NO_OUTPUT_HEAD and not any(t.name == "output.weight" for t in model.tensors)
    arch = arch_of(arch_name)
    n_main = n_layer - min(n_nextn(model), n_layer) if arch is not None and arch.skips_nextn else n_layer
    repack = p.repack and not devices
    for t in model.tensors:
        layer = layer_of(t.name, n_layer, arch_name)
        if isinstance(layer, int) and n_main <= layer < n_layer and t.name.startswith("blk.") and not p.mtp:
            placement.skipped.append(t)  # src/models/*.cpp: mtp_flags |= TENSOR_SKIP unless --mtp
            continue
        if layer == "repeating":
            # gemma4.cpp:94-97 creates rope_freqs for its full-attention layers only
            full_only = arch_name == "gemma4" and t.name.startswith("rope_freqs.")
            swa = swa_layers(model, n_layer) if full_only else []
            for il in range(n_layer):
                if full_only and swa[il]:
                    continue
                buft = layer_dev[il] or host
                if (t.name, buft) not in seen_rope:  # each tensor once per buffer type
                    seen_rope.add((t.name, buft))
                    placement.tensors.append((t, buft))
            continue
        buft = buft_for(t, layer)
        placement.tensors.append((t, buft))
        if repack and buft in (CPU_MAPPED, CPU) and isinstance(layer, int) and _repackable(t, arch_name):
            placement.repack.append(t)
            placement.repacked_only.add(t.name)
        if tied and t.name == "token_embd.weight":
            out = buft_for(t, n_layer) if layer_dev[n_layer] is not None else host
            if out != buft:  # the output layer's copy of the tied embedding
                placement.tensors.append((t, out))
            elif repack and _repackable(t):
                placement.repack.append(t)
    placement.unmatched_overrides = [rx for rx, n in hits.items() if n == 0]
    return placement


def _place_meta(model: GGUFModel, devices: list[Device], p: OffloadParams) -> Placement:
    """``-sm tensor``: the layers go to one Meta device spanning the GPUs, as to one GPU; each weight on
    it is then cut per GPU by :func:`meta_split` (``Placement.meta``)."""
    arch = model.architecture or ""
    if arch in _NO_SM_TENSOR:
        raise InputError(f"-sm tensor: llama.cpp does not implement it for the {arch!r} architecture", "-sm")
    if arch in _OWN_SPLIT_RULES:
        raise InputError(
            f"-sm tensor on {arch!r} is not modelled: llama.cpp gives it its own split rules "
            "(llama-model.cpp:458-499) that ggufx does not follow",
            "-sm",
        )
    if p.tensor_split and len(p.tensor_split) > len(devices):
        raise InputError(f"-ts has {len(p.tensor_split)} entries for {len(devices)} GPU(s)", "-ts")
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    if p.overrides or 0 <= p.n_gpu_layers <= n_layer:
        raise InputError(
            "-sm tensor is modelled with every layer on the GPUs (-ngl above the layer count) and no -ot: "
            "llama.cpp's compute buffers with host layers beside a Meta device were never recorded",
            "-ngl" if not p.overrides else "-ot",
        )
    meta = Device(META, sum(d.free for d in devices))
    pl = _place(model, [meta], replace(p, split_mode="layer", tensor_split=()))  # made here, not shared
    pl.meta = devices
    pl.layout = meta_layout(model, len(devices), p.tensor_split)
    return pl


def check_cache_type(name: str, option: str) -> str:
    """A KV cache type llama.cpp accepts, or an InputError naming the option."""
    try:
        return ggml_type_by_name(name).name.lower()
    except ValueError:
        raise InputError(f"{option} {name}: not a ggml type", option) from None


# -sm tensor: llama.cpp makes one Meta device of the GPUs (src/llama.cpp:193-220); the Meta buffer
# type holds one buffer per GPU and prints the largest (ggml-backend-meta.cpp:1722-1774). Its name is
# "Meta()": the constructor lists the GPUs from a moved-from vector (ggml-backend-meta.cpp:255-264).
META = "Meta()"
# llama-arch.cpp:1196 llm_arch_supports_sm_tensor: the architectures that refuse -sm tensor
_NO_SM_TENSOR = frozenset(
    {
        "grok", "mpt", "plamo2", "minicpm3", "gemma3n", "mamba", "mamba2", "jamba", "falcon-h1", "olmo2",
        "olmoe", "deepseek2", "deepseek32", "hy_v4", "dots3note", "glm-dsa", "bitnet", "t5", "nemotron_h",
        "nemotron_h_moe", "granitehybrid", "minimax-01", "minimax-m2", "minimax-m3", "mistral4", "kimi-linear",
        "bailingmoe3", "kimi-k3", "glm5-next", "qwen3tts",
    }
)  # fmt: skip
# llama-model.cpp:383-384, :458-499: architectures with split rules of their own (not followed here)
_OWN_SPLIT_RULES = frozenset({"deepseek4", "dflash", "hrm_text"})
# llama-model.cpp:606-608, :654: the architectures whose Q carries a gate (granularity doubled, segments)
_QGATE_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe", "clef", "qwen4exp"})
MIRRORED = -1  # GGML_BACKEND_SPLIT_AXIS_MIRRORED (and PARTIAL): the whole tensor on every GPU


class _LazyRx:
    """A pattern compiled on its first ``fullmatch`` (only ``-sm tensor`` reads these: the ~30 compiles
    stay off every other start-up)."""

    __slots__ = ("_pattern", "_compiled")

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._compiled: re.Pattern[str] | None = None

    def fullmatch(self, name: str) -> re.Match[str] | None:
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = re.compile(self._pattern)
        return compiled.fullmatch(name)


def _rx(pattern: str) -> _LazyRx:
    return _LazyRx(pattern)


# llama-model.cpp:386-430, the patterns of llama_meta_device_get_split_state (std::regex_match)
_Q = _rx(r"blk\.\d*\.attn_q.weight")
_KV = _rx(r"blk\.\d*\.attn_(k|v).weight")
_QKV = _rx(r"blk\.\d*\.attn_qkv.weight")
_Q_B = _rx(r"blk\.\d*\.attn_q\.bias")
_KV_B = _rx(r"blk\.\d*\.attn_(k|v)\.bias")
_QKV_B = _rx(r"blk\.\d*\.attn_qkv.bias")
_QK_NORM = _rx(r"blk\.\d*\.attn_(q|k)_norm\.weight")
_KV_CACHE = _rx(r"cache_(k|v)_l\d*")
_SINKS = _rx(r"blk\.\d*\.attn_sinks.weight")
_ATTN_OUT = _rx(r"blk\.\d*\.attn_output.weight")
_ATTN_OUT_B = _rx(r"blk\.\d*\.attn_output.bias")
_ATTN_GATE = _rx(r"blk\.\d*\.attn_gate.weight")
_SSM_DT = _rx(r"blk\.\d*\.ssm_dt.bias")
_SSM_A = _rx(r"blk\.\d*\.ssm_a")
_SSM_ALPHA = _rx(r"blk\.\d*\.ssm_alpha.weight")
_SSM_BETA = _rx(r"blk\.\d*\.ssm_beta.weight")
_SSM_BA = _rx(r"blk\.\d*\.ssm_ba.weight")
_R_CACHE = _rx(r"cache_r_l\d*")
_S_CACHE = _rx(r"cache_s_l\d*")
_SSM_CONV = _rx(r"blk\.\d*\.ssm_conv1d.weight")
_SSM_OUT = _rx(r"blk\.\d*\.ssm_out.weight")
_FFN_UP = _rx(r"blk\.\d*\.ffn_up(_exps)?.weight")
_FFN_UP_B = _rx(r"blk\.\d*\.ffn_up(_exps)?.bias")
_FFN_GATE = _rx(r"blk\.\d*\.ffn_gate(_exps)?.weight")
_FFN_GATE_B = _rx(r"blk\.\d*\.ffn_gate(_exps)?.bias")
_FFN_GATE_UP = _rx(r"blk\.\d*\.ffn_gate_up(_exps)?.weight")
_FFN_DOWN = _rx(r"blk\.\d*\.ffn_down(_exps)?.weight")
_FFN_DOWN_EXPS_B = _rx(r"blk\.\d*\.ffn_down_exps.bias")
_OUTPUT = _rx(r"output\.weight")
_OUTPUT_B = _rx(r"output\.bias")


def _is(name: str, *patterns: _LazyRx) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def _f32(x: float) -> float:
    """A value rounded to a C ``float`` (llama.cpp splits with float arithmetic)."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


@dataclass(frozen=True, slots=True)
class MetaLayout:
    """What ``llama_meta_device_get_split_state`` reads: the layers' kinds and sizes, the GPUs, ``-ts``."""

    arch: str
    n_devices: int
    tensor_split: tuple[float, ...]
    recurrent: tuple[bool, ...]
    swa: tuple[bool, ...]
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_k: tuple[int, ...]
    head_v: tuple[int, ...]
    n_ff: int
    n_ff_exp: int
    n_layer: int  # llama_hparams::n_layer(): without the next-token-prediction layers
    ssm_d_state: int
    ssm_n_group: int
    ssm_dt_rank: int
    ssm_d_conv: int
    block_size: dict[str, int]  # tensor name -> its type's block size (for the tensor_axis_0 lookups)

    def il_eff(self, il: int) -> int:
        """Earlier layers of the same kind (llama-model.cpp:435-444): the rotation counts only these."""
        kind = (self.recurrent[il], self.swa[il])
        return sum((self.recurrent[i], self.swa[i]) == kind for i in range(il))


def meta_layout(model: GGUFModel, n_devices: int, tensor_split: tuple[float, ...]) -> MetaLayout:
    hp = hparams(model)
    kinds = layer_kinds(model)
    md, a = model.metadata, model.architecture or ""

    def get(suffix: str) -> int:
        return md.get_int(f"{a}.{suffix}") or 0

    n = hp.n_layer
    swa = tuple(k.is_swa for k in kinds)
    return MetaLayout(
        a,
        n_devices,
        tensor_split,
        tuple(k.is_recurrent for k in kinds),
        swa,
        tuple(hp.n_head),
        tuple(hp.n_head_kv),
        tuple(hp.head_k_swa if s else hp.head_k for s in swa),
        tuple(hp.head_v_swa if s else hp.head_v for s in swa),
        hp.n_ff,
        get("expert_feed_forward_length"),
        n - get("nextn_predict_layers"),
        get("ssm.state_size"),
        get("ssm.group_count"),
        get("ssm.time_step_rank"),
        get("ssm.conv_kernel"),
        {t.name: t.type.block_size or 1 for t in model.tensors},
    )


def _config(name: str, ne: tuple[int, ...], lay: MetaLayout) -> tuple[int, str, str]:
    """(axis, tensor_axis_0's suffix, its fallback) of a weight or cache tensor (llama-model.cpp:469-607);
    an empty suffix: the tensor itself."""
    if _is(name, _Q, _KV, _QKV):
        return 1, "attn_output.weight", "ssm_out.weight"
    if _is(name, _Q_B, _KV_B, _QKV_B):
        return 0, "attn_output.weight", "ssm_out.weight"
    if _is(name, _QK_NORM):
        return (MIRRORED if len(ne) < 2 or ne[1] == 1 else 1), "attn_output.weight", ""
    if _is(name, _KV_CACHE, _SINKS):
        return 0, "attn_output.weight", ""
    if _is(name, _ATTN_OUT):
        return 0, "", ""
    if _is(name, _ATTN_GATE):
        return 1, "attn_output.weight", "ssm_out.weight"
    if _is(name, _SSM_DT, _SSM_A):
        return 0, "ssm_out.weight", ""
    if _is(name, _SSM_ALPHA, _SSM_BETA, _SSM_BA, _SSM_CONV):
        return 1, "ssm_out.weight", ""
    if _is(name, _R_CACHE, _S_CACHE):
        return (MIRRORED, "", "") if lay.arch in ("lfm2", "lfm2moe") else (0, "ssm_out.weight", "")
    if _is(name, _SSM_OUT):
        return 0, "", ""
    if _is(name, _FFN_UP, _FFN_GATE, _FFN_GATE_UP):
        return 1, "ffn_down.weight", "ffn_down_exps.weight"
    if _is(name, _FFN_UP_B, _FFN_GATE_B):
        return 0, "ffn_down.weight", "ffn_down_exps.weight"
    if _is(name, _FFN_DOWN):
        return 0, "ffn_down.weight", "ffn_down_exps.weight"
    if _is(name, _OUTPUT):
        return 1, "", ""
    if _is(name, _OUTPUT_B):
        return 0, "", ""
    return MIRRORED, "", ""  # norms, routers, biases summed after the split (PARTIAL), embeddings...


def _segments(name: str, ne_axis: int, il: int, lay: MetaLayout) -> list[tuple[int, int]]:
    """(elements, repeats) of the fused parts of a tensor along its split axis (llama-model.cpp:633-720)."""
    if lay.arch in _QGATE_ARCHS:
        if not lay.recurrent[il] and _is(name, _QKV, _QKV_B):
            n_kv = lay.n_head_kv[il] * lay.head_v[il]
            return [(lay.n_head[il] * lay.head_k[il] * 2, 1), (n_kv, 2)]
        key_dim = lay.ssm_d_state * lay.ssm_n_group
        value_dim = lay.ssm_d_state * lay.ssm_dt_rank
        if lay.arch == "qwen3next":
            if _is(name, _QKV, _SSM_CONV):
                return [(key_dim, 2), (value_dim, 1)]
            if _is(name, _R_CACHE):
                return [(key_dim * (lay.ssm_d_conv - 1), 2), (value_dim * (lay.ssm_d_conv - 1), 1)]
        else:
            ratio = lay.ssm_dt_rank // lay.ssm_n_group if lay.ssm_n_group else 0
            if _is(name, _QKV, _SSM_CONV):
                return [(key_dim, 2 + ratio)]
            if _is(name, _ATTN_GATE, _SSM_OUT):
                return [(key_dim, ratio)]
            if _is(name, _SSM_DT, _SSM_A, _SSM_ALPHA, _SSM_BETA):
                return [(lay.ssm_n_group, ratio)]
            if _is(name, _R_CACHE):
                return [(key_dim * (lay.ssm_d_conv - 1), 2 + ratio)]
            if _is(name, _S_CACHE):
                return [(lay.ssm_n_group * lay.ssm_d_state * lay.ssm_d_state, ratio)]
        if _is(name, _FFN_GATE_UP):
            return [(lay.n_ff_exp, 2)]
        return [(ne_axis, 1)]
    if _is(name, _QKV, _QKV_B):
        q, k, v = (
            lay.n_head[il] * lay.head_k[il],
            lay.n_head_kv[il] * lay.head_k[il],
            lay.n_head_kv[il] * lay.head_v[il],
        )
        return [(q, 1), (k, 2)] if k == v else [(q, 1), (k, 1), (v, 1)]
    if _is(name, _FFN_UP, _FFN_UP_B):
        return [(lay.n_ff, 2)] if ne_axis == 2 * lay.n_ff else [(ne_axis, 1)]
    if _is(name, _FFN_GATE_UP):
        return [(lay.n_ff_exp, 2)]
    return [(ne_axis, 1)]


def _granularity(name: str, blck: int, il: int, n_segments: int, lay: MetaLayout) -> list[int]:
    """The slice boundaries' multiple per segment (llama-model.cpp:722-832)."""
    if lay.recurrent[il]:
        head_dim = lay.ssm_d_state
        qkv = math.lcm(math.lcm(blck, 128), head_dim)
        if _is(name, _QKV, _ATTN_GATE, _SSM_CONV, _SSM_OUT):
            return [qkv] * n_segments
        if _is(name, _SSM_DT, _SSM_A, _SSM_ALPHA, _SSM_BETA):
            return [qkv // head_dim] * n_segments
        if _is(name, _SSM_BA):
            return [2 * (qkv // head_dim)] * n_segments
        if _is(name, _R_CACHE):
            return [qkv * (lay.ssm_d_conv - 1)] * n_segments
        if _is(name, _S_CACHE):
            return [qkv * head_dim] * n_segments
    elif _is(name, _SINKS, _Q, _Q_B, _ATTN_OUT, _ATTN_GATE, _KV, _KV_B, _KV_CACHE, _QKV, _QKV_B):
        n_gqa = lay.n_head[il] // lay.n_head_kv[il] if lay.n_head_kv[il] else 0
        n_embd_q = n_gqa * lay.head_k[il]
        perf = blck
        while perf < 128 and perf * lay.n_devices < n_embd_q:  # head sizes like 80
            perf *= 2
        g_q = math.lcm(n_embd_q, perf)
        g_head = g_q // lay.head_k[il]
        if _is(name, _SINKS):
            return [g_head]
        if _is(name, _Q, _Q_B):
            return [math.lcm(2 * n_embd_q, perf) if lay.arch in _QGATE_ARCHS else g_q]
        if _is(name, _ATTN_OUT):
            return [g_head * lay.head_v[il]]
        if _is(name, _ATTN_GATE):
            return [g_q]  # a per-head gate (ne[1] == n_head) takes g_head; not in these architectures
        g_kv = g_q // n_gqa
        g_v = g_kv // lay.head_k[il] * lay.head_v[il]
        if _is(name, _KV, _KV_B, _KV_CACHE):
            return [g_v if ("attn_v" in name or "cache_v" in name) else g_kv]
        if lay.arch in _QGATE_ARCHS:
            return [math.lcm(2 * n_embd_q, perf), g_kv]
        return [g_q, g_kv, g_v] if n_segments == 3 else [g_q, g_kv]
    if _is(name, _FFN_UP, _FFN_UP_B, _FFN_GATE, _FFN_GATE_B, _FFN_GATE_UP, _FFN_DOWN):
        return [math.lcm(blck, 128)]
    return [1]


def meta_split(name: str, ne: tuple[int, ...], lay: MetaLayout) -> tuple[int, list[int]]:
    """How the Meta device cuts a tensor: (axis, elements along it per GPU), or (MIRRORED, []) for a
    tensor every GPU holds whole (llama-model.cpp:379-880 ``llama_meta_device_get_split_state``)."""
    axis, suffix, fallback = _config(name, ne, lay)
    if axis == MIRRORED or axis >= len(ne):
        return MIRRORED, []
    n = lay.n_devices
    if name.startswith("blk."):
        il = int(name.split(".")[1])
        rotation = lay.il_eff(il) % n
    elif name.startswith("cache_"):
        il = int(name.rsplit("_l", 1)[1])
        rotation = lay.il_eff(il) % n
    else:
        il, rotation = 0, lay.n_layer % n
    prefix = f"blk.{il}."
    if suffix:
        axis0 = lay.block_size.get(prefix + suffix) or lay.block_size.get(prefix + fallback)
    else:
        axis0 = lay.block_size.get(name)
    blck = axis0 or 1
    ts = [_f32(x) for x in lay.tensor_split] + [0.0] * n
    scan: list[float] = []
    for j in range(n):  # tensor_split_scan: float partial sums of -ts, rotated
        scan.append(_f32(ts[(j + rotation) % n] + (scan[-1] if scan else 0.0)))
    segments = _segments(name, ne[axis], il, lay)
    grains = _granularity(name, blck, il, len(segments), lay)
    out = [0] * n
    for (ne_s, nr_s), g in zip(segments, grains, strict=True):
        low = 0
        for j in range(n - 1):
            high = ne_s * (j + 1) // n if scan[-1] == 0 else int(_f32(_f32(_f32(ne_s) * scan[j]) / scan[-1]))
            high -= high % g
            out[(j + rotation) % n] += (high - low) * nr_s
            low = high
        out[(n - 1 + rotation) % n] += (ne_s - low) * nr_s
    return axis, out
