"""ggufx's KV cache, recurrent state, weights and output buffers against llama.cpp's CPU build, for one
small model of each registered architecture family (tests/fixtures/llamacpp-logs-cpu: MLA with and
without q_lora, NextN layers, leading dense layers and shared experts, each sliding-window rule, Gemma 3n's
shared-KV layers, per-layer head counts, Mamba-2, short convolutions, Gated DeltaNet, Falcon-H1's
attention-plus-state layers).

The models are header-only files rebuilt here from ``models.py`` (metadata) and ``tensors.json`` (the
tensors llama.cpp's loader asked for, found by ``discover.py``); ``record_cpu.py`` ran them in
``llama-completion -dev none``. Every buffer but compute must agree to the 0.01 MiB llama.cpp prints.
The compute buffer of these architectures is the generic decoder estimate: labelled, never missing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import ContextParams, MiB, breakdown
from ggufx.analysis.memory.fit import llama_fit
from ggufx.analysis.memory.graph.models.diffusion import DIFFUSION, tool_output_bytes
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device, OffloadParams, place

from .graph_arch_logs import CPU_MATRIX, replay_matrix_run
from .llamacpp_logs import LOGS

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from models import MODELS  # noqa: E402

RUNS = CPU_MATRIX
EXACT = ("model", "kv", "recurrent", "state", "output")


def replay(rid: str, models: dict[str, Path]):  # type: ignore[no-untyped-def]
    return replay_matrix_run(rid, models)


def test_the_cpu_matrix_is_recorded() -> None:
    """Every family the registry's layer rules cover has runs, with -ctk/-ctv, -fa off -np 3, --swa-full."""
    assert len(RUNS) >= 40
    families = {m for m, _ in RUNS.values()}
    assert {"deepseek2-mla", "deepseek2-noqlora", "glm4moe", "gpt-oss", "gemma2", "cohere2", "llama4"} <= families
    args = " ".join(a for _, a in RUNS.values())
    for option in ("-ctk q8_0", "-ctk q4_0", "-fa off", "-np 3", "--swa-full", "--no-repack"):
        assert option in args, option


@pytest.mark.parametrize("rid", sorted(RUNS))
def test_cpu_buffers_match_llama_cpp(rid: str, arch_models: dict[str, Path]) -> None:
    log, bd = replay(rid, arch_models)
    ours: dict[str, dict[str, int]] = {}
    printed: dict[str, dict[str, float]] = {}  # llama.cpp's lines: each cache's buffer rounded to 0.01 MiB
    for b in bd.buffers:
        ours.setdefault(b.kind, {}).setdefault(b.buft, 0)
        ours[b.kind][b.buft] += b.bytes
        printed.setdefault(b.kind, {}).setdefault(b.buft, 0.0)
        printed[b.kind][b.buft] += round(b.bytes / MiB, 2)
    for kind in EXACT:
        theirs = log.buffers.get(kind, {})
        if kind == "output" and MODELS[RUNS[rid][0]]["arch"] in DIFFUSION:
            # llama.cpp runs these through llama-diffusion-cli alone: ggufx's output buffer is that tool's after its
            # first decode (a row of logits per token of the micro-batch: test_graph_diffusion.py proves it on the
            # tool's allocations); llama-completion printed the context's, a row per sequence
            text = (CPU_LOGS / f"{rid}.log").read_text()
            n_vocab, n_ubatch, n_seq = (_log_int(text, k) for k in ("n_vocab", "n_ubatch", "n_seq_max"))
            assert theirs == {"CPU": round(4 * n_vocab * n_seq / MiB, 2)}
            theirs = {"CPU": round(tool_output_bytes(n_vocab, n_ubatch, n_seq) / MiB, 2)}
        mine = {k: round(v, 2) for k, v in printed.get(kind, {}).items() if v}
        assert mine == {k: v for k, v in theirs.items() if v}, (kind, mine, theirs)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and all(b.bytes > 0 and not b.exact for b in compute)
    if bd.compute_estimate is None:  # the architecture's graph is rebuilt: llama.cpp's buffer to the 0.01 MiB
        assert builder_of(MODELS[RUNS[rid][0]]["arch"]) is not None
        theirs = {k: v for k, v in log.buffers["compute"].items() if v}
        mine = {k: round(v / MiB, _decimals(theirs.get(k, 0))) for k, v in ours["compute"].items() if v}
        assert mine == theirs, (mine, theirs)
    else:  # the generic estimate, labelled as such in every compute buffer and in the notes
        assert all("generic decoder estimate" in b.reason for b in compute)
        assert any(bd.compute_estimate in n for n in bd.notes)


def _log_int(text: str, key: str) -> int:
    m = re.search(rf"(?:print_info|llama_context): {key} += (\d+)", text)
    assert m, key
    return int(m.group(1))


def _decimals(mib: float) -> int:
    """4 where the log has ~llama_context's 4-decimal compute line, 2 where a run ended before it."""
    return 4 if round(mib, 2) != mib else 2


def _kv_line(rid: str) -> list[str]:
    return [x for x in (CPU_LOGS / f"{rid}.log").read_text().splitlines() if "llama_kv_cache: size" in x]


def test_mla_caches_the_latent_and_the_rope_part_of_k_only(arch_models: dict[str, Path]) -> None:
    """DeepSeek V3 shape: kv_lora_rank 512 + rope 64 = 576 K values per cell and layer, no V; 4 of its
    5 blocks (the fifth is the NextN layer), so 8192 cells hold 4 x 8192 x 576 x 2 bytes = 36 MiB."""
    (line,) = _kv_line("deepseek2-mla-c8192")
    assert "4 layers" in line and "K (f16):   36.00 MiB, V (f16):    0.00 MiB" in line
    _, bd = replay("deepseek2-mla-c8192", arch_models)
    assert (bd.kv_bytes, bd.kv_layers) == (36 * MiB, 4)
    (q8,) = _kv_line("deepseek2-mla-c16384-q8_0")  # -ctk applies to the one K tensor
    assert "K (q8_0):   38.25 MiB" in q8


def test_nextn_layers_have_no_cache_and_are_not_loaded(arch_models: dict[str, Path]) -> None:
    text = (CPU_LOGS / "glm4moe-c8192.log").read_text()
    assert "filtered: 4" in text and "model has unused tensor blk.4." in text
    model = ggufx.open(arch_models["glm4moe"])
    kinds = layer_kinds(model)
    assert [k.kv for k in kinds] == [True] * 4 + [False] and kinds[4].nextn
    _, bd = replay("glm4moe-c8192", arch_models)
    blk4 = sum(t.nbytes for t in model.tensors if t.name.startswith("blk.4."))
    assert blk4 > 0 and bd.kv_layers == 4


def test_layer_kinds_of_the_hybrids(arch_models: dict[str, Path]) -> None:
    kinds = {name: layer_kinds(ggufx.open(arch_models[name])) for name in arch_models}
    if "nemotron_h" in kinds:  # Mamba-2, MLP, attention: no state and no cache for the MLP layers
        assert [(k.kv, k.state) for k in kinds["nemotron_h"]] == [
            (False, True), (False, False), (True, False), (False, True), (False, False), (True, False),
        ]  # fmt: skip
    if "falcon-h1" in kinds:  # every layer both
        assert all(k.kv and k.state for k in kinds["falcon-h1"])
    if "gemma3n" in kinds:  # layers from 20 on reuse 18's and 19's cache
        assert [k.kv for k in kinds["gemma3n"]] == [True] * 20 + [False] * 2
    if "lfm2" in kinds:
        assert [k.state for k in kinds["lfm2"]] == [True, True, False, True, True, False]


def test_n_cpu_moe_over_a_dense_leading_layer(arch_models: dict[str, Path]) -> None:
    """--n-cpu-moe 2 on DeepSeek's shape (layer 0 dense): llama.cpp runs (recorded, exit 0) with the
    experts of layer 1 on the host; the pattern of layer 0 matches nothing and is ignored (a note)."""
    text = (CPU_LOGS / "deepseek2-mla-c8192-ncpumoe2.log").read_text()
    assert "# exit status: 0" in text and "n-cpu-moe 2" in text
    model = ggufx.open(arch_models["deepseek2-mla"])
    args = parse_args("-m x -c 8192 --n-cpu-moe 2")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], args.offload, args.context)
    assert any(n.startswith("-ot blk\\.0\\.ffn_") and "llama.cpp ignores it" in n for n in bd.notes), bd.notes
    host = {t.name for t, b in place(model, [Device("CUDA0", 80 << 30)], args.offload).tensors if b == "CPU_Mapped"}
    assert "blk.1.ffn_up_exps.weight" in host and "blk.2.ffn_up_exps.weight" not in host
    assert "blk.0.ffn_up.weight" not in host


def test_fit_over_dense_leading_layers_and_nextn(arch_models: dict[str, Path]) -> None:
    """llama.cpp's fit counts llama_model_n_layer (without the NextN layer, common/fit.cpp:140-143) and puts
    the expert patterns of partial layers whatever they match (a dense layer's match nothing): the
    answer is reached without an error, its -ngl within the 4 trunk layers + output."""
    model = ggufx.open(arch_models["glm4moe"])
    fit = llama_fit(model, [Device("CUDA0", 1100 * MiB)], margins=1024 * MiB)
    assert fit.status in ("layers", "context", "unchanged") and fit.n_gpu_layers <= 5
    assert fit.compute_note is None  # glm4moe's graph is rebuilt (graph/models/glm4moe.py)
    assert fit.to_dict()["compute_note"] == fit.compute_note


PUBLISHED = sorted((CPU_LOGS / "published").glob("*.log"))


@pytest.mark.parametrize("log", PUBLISHED, ids=lambda p: p.stem)
def test_published_shapes_on_the_cpu_build(log: Path, hole_models: dict[str, Path]) -> None:
    """The models of published dimensions that ../llamacpp-logs/make_headers.py writes (gpt-oss 20B,
    DeepSeek V2-Lite, Granite 4 hybrid, Nemotron-H 8B, Falcon-H1 7B, LFM2...), run on the CPU build with
    -c 4096 --no-repack: every buffer but compute to the 0.01 MiB, and compute (the generic decoder
    estimate, dominated on the CPU by the logits) within 1%."""
    name = log.stem.removesuffix("-c4096-norepack")
    text = log.read_text()
    if name not in hole_models:
        pytest.skip(f"{name}: its header is written by the recording branch's make_headers.py")
    manifest = (LOGS / "headers-manifest.tsv").read_text().splitlines()
    sha = next(line.split("\t")[3] for line in manifest if line.split("\t")[0] == name)
    assert f"sha256 {sha}" in text, "not the header this log was recorded with"
    llama = parse_log(text)
    bd = breakdown(ggufx.open(hole_models[name]), [], OffloadParams(repack=False), ContextParams(n_ctx=4096))
    for kind in (*EXACT, "compute"):
        ours = {buft: round(n / MiB, 2) for buft, n in bd.by_kind(kind).items() if n}
        theirs = llama.buffers.get(kind, {})
        if kind != "compute":
            assert ours == {k: v for k, v in theirs.items() if v}, (kind, ours, theirs)
        else:
            assert set(ours) == set(theirs) and all(abs(ours[k] - v) <= 0.01 * v for k, v in theirs.items())
