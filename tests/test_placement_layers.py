"""Where llama.cpp puts each layer, each KV cache layer and each host weight, against its own `-v` logs
(issue 25, h-place): the CUDA runs of HRM-Text, Granite Switch, PLaMo 2 and BitNet in
tests/fixtures/llamacpp-logs.

trim.py folds llama.cpp's per-layer debug lines into ``#~ load_tensors layers (N) -> DEV swa=S: a-b; ...``
(``get_layer_buft_list``: the device of every layer, the output layer last) and ``#~ llama_kv_cache layers
(N) -> DEV: a-b`` (each cache layer's device, ``model.dev_layer(il)``); ``done_getting_tensors`` counts the
weights that went to the host (``tensor 'X' (and N others) cannot be used with preferred buffer type
CUDA_Host, using CPU instead``: with mmap every host weight is moved from the pinned buffer type).

* HRM-Text: ``hrm.z_l_init`` has no block number in its name but hrm-text.cpp:46 creates it with block 0
  (a LLM_TENSOR_LAYER_REPEATING tensor): layer 0's device, not the input layer's host.
* Granite Switch: llama.cpp's layers are the blocks, the weightless router layer (index block_count) and the
  output layer; -ngl counts the router, and its KV cache goes to its own device (the host at -ngl 1).
* PLaMo 2 (h-place2): CUDA refuses the selective scan weight_buft_supported tries with ``ssm_a``, so its Mamba
  layers' ``ssm_a`` stay on the host at -ngl 99; its KV cache leaves the Mamba layers out (``filtered``) and its
  recurrent state the attention layers (``skipped``).
* BitNet (h-place2): the output is a product with token_embd itself, which is loaded once, on the host.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import ContextParams, MiB, breakdown
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import CPU_MAPPED, Device, OffloadParams, Placement, place

from .graph_arch_logs import cpu_models
from .llamacpp_logs import LOGS, RUNS, devices_of

MODELS = (
    "hrm_text",
    "hrm_text-l2",
    "hrm_text-noscale",
    "hrm_text-1b",
    "graniteswitch",
    "graniteswitch-plain",
    "graniteswitch-r12",
    "graniteswitch-3b",
    "plamo2",
    "bitnet",
)
# the measured runs (-fit off): a fit run's log keeps its decision, not the layers of a load
CUDA_RUNS = sorted(
    rid
    for rid, r in RUNS.items()
    if r["model"] in MODELS and r["exit_status"] == 0 and not rid.startswith(("fit-", "fit2g-", "fiton"))
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The header-only models, each checked against the header the GPU machine loaded."""
    paths = cpu_models(MODELS, smollm2_path, tmp_path_factory, "placement")
    manifest = {
        name: (int(size), int(head), sha)
        for name, size, head, sha in (
            line.split("\t") for line in (LOGS / "headers-manifest-cpu-models.tsv").read_text().splitlines()
        )
    }
    for name, path in paths.items():
        size, head, sha = manifest[name]
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read(head)).hexdigest() == sha, f"{name}: not the header llama.cpp loaded"
        assert path.stat().st_size == size, name
    return paths


def _indices(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


_NOT_CACHED = "-"  # a layer the cache leaves out (``filtered``: no KV heads; ``skipped``: not recurrent)


def _layers(text: str, func: str) -> list[str | None]:
    """A ``#~ {func} layers`` line as the device of each layer (None: the host, ``_NOT_CACHED``: a layer the
    cache filters out or skips)."""
    m = re.search(rf"^#~ {func} layers \((\d+)\) -> (.*)$", text, re.M)
    assert m, f"no {func} layers line"
    devices: list[str | None] = [""] * int(m[1])
    for part in m[2].split("; "):
        where, _, ranges = part.rpartition(": ")
        dev = where.split(" ")[0]
        for il in _indices(ranges):
            devices[il] = None if dev == "CPU" else _NOT_CACHED if dev in ("filtered", "skipped") else dev
    assert "" not in devices, m[0]
    return devices


def _placed(rid: str, models: dict[str, Path]) -> tuple[str, Placement]:
    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    args = parse_args(run["args"].replace("@", ""))
    return text, place(ggufx.open(models[args.model]), devices_of(run, parse_log(text).devices), args.offload)


def test_the_runs_cover_both_architectures_fully_and_partly_offloaded() -> None:
    for arch in ("hrm_text", "graniteswitch"):
        runs = [r for r in CUDA_RUNS if r.startswith(f"g-{arch}")]
        assert any("-ngl99-" in r for r in runs) and any(re.search(r"-ngl[0-9]-", r) for r in runs), arch
    assert "g-graniteswitch-ngl1-c32768" in CUDA_RUNS and "g-graniteswitch-ngl2-c32768" in CUDA_RUNS


@pytest.mark.parametrize("rid", CUDA_RUNS)
def test_every_layer_is_on_llama_cpps_device(rid: str, models: dict[str, Path]) -> None:
    """``load_tensors``'s layers: the blocks, Granite Switch's router layer, the output layer."""
    text, pl = _placed(rid, models)
    n_layer_all = pl.n_layer + len(pl.weightless)
    assert [pl.dev_layer(il) for il in range(n_layer_all)] + [pl.output_device] == _layers(text, "load_tensors")


@pytest.mark.parametrize("rid", CUDA_RUNS)
def test_every_kv_cache_layer_is_on_llama_cpps_device(rid: str, models: dict[str, Path]) -> None:
    """``llama_kv_cache``'s layers (Granite Switch's router last) on ``model.dev_layer(il)``."""
    text, pl = _placed(rid, models)
    want = _layers(text, "llama_kv_cache")
    assert [_NOT_CACHED if w == _NOT_CACHED else pl.dev_layer(il) for il, w in enumerate(want)] == want
    if "#~ llama_memory_recurrent layers" in text:  # PLaMo 2's Mamba layers: the recurrent state's layers
        rs = _layers(text, "llama_memory_recurrent")
        assert [_NOT_CACHED if w == _NOT_CACHED else pl.dev_layer(il) for il, w in enumerate(rs)] == rs
        assert [il for il, w in enumerate(rs) if w != _NOT_CACHED] == [
            il for il, w in enumerate(want) if w == _NOT_CACHED
        ]


@pytest.mark.parametrize("rid", CUDA_RUNS)
def test_the_host_holds_the_weights_llama_cpp_moved_there(rid: str, models: dict[str, Path]) -> None:
    """The weights on the host are the ones ``done_getting_tensors`` counts (the output layer is offloaded in
    every run, so no weight is created twice on the host)."""
    text, pl = _placed(rid, models)
    m = re.search(
        r"done_getting_tensors: tensor '([^']+)' \(\w+\) \(and (\d+) others\) cannot be used with preferred "
        r"buffer type CUDA_Host, using CPU instead",
        text,
    )
    assert m, rid
    assert pl.output_device is not None
    host = [t.name for t, buft in pl.tensors if buft == CPU_MAPPED]
    assert m[1] in host
    assert len(host) == int(m[2]) + 1, host


@pytest.mark.parametrize("ngl", range(6))
def test_hrm_z_l_init_goes_with_block_0(ngl: int, models: dict[str, Path]) -> None:
    """At every -ngl (4 blocks, 5 layers: -ngl 5 and up offloads block 0), ``hrm.z_l_init`` has block 0's
    buffer type, never the input layer's host buffer beside a GPU block 0."""
    model = ggufx.open(models["hrm_text"])
    pl = place(model, [Device("CUDA0", 80 * 1024 * MiB)], OffloadParams(n_gpu_layers=ngl))
    buft = {t.name: b for t, b in pl.tensors}
    assert buft["hrm.z_l_init"] == buft["blk.0.attn_q.weight"] == ("CUDA0" if ngl >= 5 else CPU_MAPPED)


def test_the_router_layer_keeps_its_own_gpu_when_the_output_layer_goes_to_the_next(models: dict[str, Path]) -> None:
    """Two GPUs split 3:1: of llama.cpp's 6 layers (4 blocks, the router, the output layer) layer il goes to the
    first GPU whose cumulative share exceeds il / 6 (load_tensors' upper_bound): the router (4/6 < 0.75) to
    CUDA0, the output layer (5/6) to CUDA1; the router's KV cache (16 MiB at 32,768 cells: one head of 128, K
    and V in f16) stays beside the blocks' (4 x 32 MiB) on CUDA0, and its attention with it."""
    model = ggufx.open(models["graniteswitch"])
    gpus = [Device("CUDA0", 80 * 1024 * MiB), Device("CUDA1", 80 * 1024 * MiB)]
    offload = OffloadParams(n_gpu_layers=99, tensor_split=(3.0, 1.0))
    pl = place(model, gpus, offload)
    assert pl.layer_device == ["CUDA0"] * 4 + ["CUDA1"]
    assert pl.weightless == {4: "CUDA0"}
    bd = breakdown(model, gpus, offload, ContextParams(n_ctx=32768))
    assert {b.buft: b.bytes for b in bd.buffers if b.kind == "kv"} == {"CUDA0": (4 * 32 + 16) * MiB}
    assert not any("turns flash attention off" in n for n in bd.notes)


FA_AUTO = [r for r in CUDA_RUNS if r.startswith("g-graniteswitch") and "-fa " not in RUNS[r]["args"]]


@pytest.mark.parametrize("rid", FA_AUTO)
def test_the_flash_attention_probe_finds_the_router_on_its_own_device(rid: str, models: dict[str, Path]) -> None:
    """-fa auto: resolve_fused_ops compares each attention's device with ``model.dev_layer(il)``; the router's
    attention runs beside its cache on the router layer's device (the host at -ngl 1), so llama.cpp keeps flash
    attention on in every run, and ggufx's probe must find it there too."""
    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    assert "resolve_fused_ops: Flash Attention enabled" in text
    args = parse_args(run["args"].replace("@", ""))
    bd = breakdown(ggufx.open(models[args.model]), devices_of(run, parse_log(text).devices), args.offload, args.context)
    assert not any("turns flash attention off" in n for n in bd.notes), bd.notes


def _model_mib(text: str) -> dict[str, float]:
    return {b: float(v) for b, v in re.findall(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB", text)}


@pytest.mark.parametrize("rid", [r for r in CUDA_RUNS if r.startswith("g-bitnet-")])
def test_bitnet_loads_token_embd_once_on_the_host(rid: str, models: dict[str, Path]) -> None:
    """bitnet.cpp:163-164 multiplies the output by ``model.tok_embd`` itself (no ``output`` tensor, no
    TENSOR_DUPLICATED copy): token_embd is loaded once, on the host, however many layers are offloaded, and the
    GPU's weights are the offloaded blocks' and output norm's alone (llama.cpp's CUDA0 model buffer)."""
    text, pl = _placed(rid, models)
    assert pl.output_device == "CUDA0"
    assert [buft for t, buft in pl.tensors if t.name == "token_embd.weight"] == [CPU_MAPPED]
    gpu = sum(t.nbytes for t, buft in pl.tensors if buft == "CUDA0")  # without the buffer's alignment padding
    assert abs(gpu / MiB - _model_mib(text)["CUDA0"]) < 0.02, gpu / MiB


@pytest.mark.parametrize("rid", [r for r in CUDA_RUNS if r.startswith("g-plamo2-ngl99")])
def test_plamo2_keeps_its_scan_weights_on_the_host(rid: str, models: dict[str, Path]) -> None:
    """PLaMo 2's ``ssm_a`` is one row of its 32 heads: weight_buft_supported (llama-model-loader.cpp:1008-1025)
    tries GGML_OP_SSM_SCAN with it as Mamba-1's A of d_state 32, which CUDA refuses (ggml-cuda.cu:5615-5617: d_state
    16 only), so both Mamba layers' ``ssm_a`` stay on the host beside token_embd at -ngl 99; the mapped host buffer
    spans the file from token_embd to blk.2.ssm_a (22.67 MiB, not token_embd's 8.50). The convolution (2,048
    channels, a multiple of 128) stays on the GPU."""
    text, pl = _placed(rid, models)
    host = sorted(t.name for t, buft in pl.tensors if buft == CPU_MAPPED)
    assert host == ["blk.0.ssm_a", "blk.2.ssm_a", "token_embd.weight"]
    assert {buft for t, buft in pl.tensors if "ssm_conv1d" in t.name} == {"CUDA0"}
    on_host = [t for t, buft in pl.tensors if buft == CPU_MAPPED]
    span = max(t.file_offset + t.nbytes for t in on_host) - min(t.file_offset for t in on_host)
    mib = _model_mib(text)
    assert round(span / MiB, 2) == mib["CPU_Mapped"] == 22.67
    assert abs(sum(t.nbytes for t, buft in pl.tensors if buft == "CUDA0") / MiB - mib["CUDA0"]) < 0.02


def _offloaded(text: str) -> tuple[int, int]:
    m = re.search(r"load_tensors: offloaded (\d+)/(\d+) layers to GPU", text)
    assert m, "no offloaded line"
    return int(m[1]), int(m[2])


@pytest.mark.parametrize("rid", CUDA_RUNS)
def test_the_offloaded_layers_are_llama_cpps_count(rid: str, models: dict[str, Path]) -> None:
    """``load_tensors: offloaded N/M layers to GPU`` (llama-model.cpp:1913-1927: M = n_layer_all + 1): Granite
    Switch's weightless router layer is one of llama.cpp's layers, counted in M and, on a GPU, in N (2/6 at -ngl 2,
    not 1/5); the breakdown's ``layers_offloaded`` and ``n_layer`` say the same."""
    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    args = parse_args(run["args"].replace("@", ""))
    model = ggufx.open(models[args.model])
    bd = breakdown(model, devices_of(run, parse_log(text).devices), args.offload, args.context)
    assert (bd.layers_offloaded, bd.n_layer + 1) == _offloaded(text)


@pytest.mark.parametrize("rid", ["g-graniteswitch-ngl1-c32768", "g-graniteswitch-ngl2-c32768"])
def test_mem_prints_llama_cpps_offloaded_layers(rid: str, cli, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    """`ggufx mem` at -ngl 1 and 2 prints the ``N/M layers offloaded`` of llama.cpp's log line."""
    text = (LOGS / f"{rid}.log").read_text()
    ngl = re.search(r"-ngl (\d+)", RUNS[rid]["args"])
    assert ngl
    out = cli("mem", str(models["graniteswitch"]), "-ngl", ngl[1], "-c", "32768", "--gpus", "80GiB").output
    n, m = _offloaded(text)
    assert f", {n}/{m} layers offloaded, " in out, out
