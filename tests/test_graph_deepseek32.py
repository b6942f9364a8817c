"""DeepSeek-V3.2 (``deepseek32``) and GLM-5 (``glm-dsa``) against llama.cpp's CPU build: the lightning
indexer's key cache (llama_kv_cache_dsa's second cache) and the graph builder (graph/models/deepseek32.py).

The small models of tests/fixtures/llamacpp-logs-cpu (DeepSeek V3's MLA ranks with the published indexer:
64 heads of 128, top 2,048; GLM-5 with shared indexer layers from ``attention.indexer.types`` and from
GLM-5.2's default types) and DeepSeek-V3.2's published dimensions at 8 trunk layers, over flash attention on
and off, ``-np 3``, q8_0 caches, ``-ub 1024``, ``--no-repack`` and a context shorter than the top-k: each
KV buffer line llama.cpp prints (the MLA cache's, then the indexer cache's) to the 0.01 MiB, their
``llama_kv_cache: size`` lines (layers and bytes), and the compute buffer to the 0.0001 MiB of
``~llama_context``. tests/test_arch_logs.py replays the same runs for every buffer kind, adding the lines
as llama.cpp prints them (PER_LINE: runs whose two KV lines, each rounded, add up 0.01 MiB away from their
total rounded; ``mem --check`` adds them so too).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph.graphsim import simulate, simulated
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device

HERE = Path(__file__).resolve().parent
CPU_LOGS = HERE / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402

from .graph_arch_logs import cpu_models, cpu_runs_of  # noqa: E402

ARCHS = ("deepseek32", "glm-dsa")
TENSORS = json.loads((CPU_LOGS / "tensors.json").read_text())
PER_LINE = {"deepseek32-c8192-np3", "glm-dsa-c4096-faoff-np3", "glm-dsa-c16384-q8_0-ub1024"}
CPU_RUNS = cpu_runs_of(*ARCHS)
KV_SIZE = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers")


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(tuple(sorted({m for m, _ in CPU_RUNS.values()})), smollm2_path, tmp_path_factory, "dsa")


def _replay(rid: str, models: dict[str, Path]):  # type: ignore[no-untyped-def]
    model, args = CPU_RUNS[rid]
    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    offload = replace(parsed.offload, repack="--no-repack" not in args)
    m = ggufx.open(models[model])
    return m, breakdown(m, [], offload, parsed.context)


def test_the_cpu_runs_cover_the_options() -> None:
    assert {"deepseek32", "glm-dsa", "glm-dsa-52", "deepseek32-v32"} <= {m for m, _ in CPU_RUNS.values()}
    args = " ".join(a for _, a in CPU_RUNS.values())
    for option in ("-fa off", "-np 3", "-ctk q8_0", "-ub 1024", "--no-repack", "-c 1024"):
        assert option in args, option
    assert PER_LINE and PER_LINE <= set(CPU_RUNS)


@pytest.mark.parametrize("rid", sorted(CPU_RUNS))
def test_every_buffer_is_llama_cpps(rid: str, models: dict[str, Path]) -> None:
    """The two KV buffers in llama.cpp's order (the MLA cache, then the indexer's) each to its printed
    0.01 MiB, the weights and output per buffer type, the compute buffer (the builder's, not the generic
    estimate) to the 0.0001 MiB of the ~llama_context line."""
    model, bd = _replay(rid, models)
    text = (CPU_LOGS / f"{rid}.log").read_text()
    assert "# exit status: 0" in text
    kv_lines = [float(x) for x in re.findall(r"CPU KV buffer size =\s+([\d.]+) MiB", text)]
    assert [round(b.bytes / MiB, 2) for b in bd.buffers if b.kind == "kv"] == kv_lines
    assert len(kv_lines) == 2
    log = parse_log(text)
    for kind in ("model", "output"):
        assert {k: round(v / MiB, 2) for k, v in bd.by_kind(kind).items() if v} == log.buffers[kind]
    assert simulated(model) is None and bd.compute_estimate is None
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    (line,) = [x for x in text.splitlines() if "~llama_context:" in x and "CPU compute buffer size is" in x]
    assert round(compute.bytes / MiB, 4) == float(line.split("size is")[1].split("MiB")[0])


@pytest.mark.parametrize("rid", sorted(CPU_RUNS))
def test_the_indexer_cache_holds_the_full_layers_keys(rid: str, models: dict[str, Path]) -> None:
    """``llama_kv_cache: size`` of each cache: the MLA cache over every trunk layer (576 values per cell),
    the indexer's over the layers with an indexer (128 values per cell); ggufx's KV bytes are both."""
    model, bd = _replay(rid, models)
    (mla, lid) = [(float(a), int(b), int(c)) for a, b, c in KV_SIZE.findall((CPU_LOGS / f"{rid}.log").read_text())]
    hp = hparams(model)
    assert mla[2] == hp.n_layer_main == sum(k.kv for k in layer_kinds(model))
    assert lid[2] == len(hp.indexer_layers) and mla[1] == lid[1] == bd.n_ctx_seq
    assert abs(bd.kv_bytes / MiB - mla[0] - lid[0]) <= 0.01 + 1e-9  # two lines, each rounded to 0.01
    # the indexer's part, which `mem` says apart (JSON kv_cache.indexer, the text's KV cache line)
    assert round(bd.kv_indexer_bytes / MiB, 2) == lid[0] and bd.kv_indexer_layers == lid[2]


def test_mem_says_the_indexer_cache_apart(models: dict[str, Path], smollm2_path: Path, tmp_path: Path) -> None:
    """``ggufx mem``: the KV cache line names the indexer's keys within the full-attention figure, and the
    JSON has them as ``kv_cache.indexer`` (a model without DSA: 0 layers, and no such words)."""
    from click.testing import CliRunner

    from ggufx.cli import main

    plain = tmp_path / "deepseek2-mla.gguf"
    header(plain, MODELS["deepseek2-mla"], TENSORS["deepseek2-mla"], smollm2_path)
    for name, layers in (("deepseek32", 4), ("glm-dsa", 3), ("deepseek2-mla", 0)):
        path = models.get(name, plain)
        out = CliRunner().invoke(main, ["mem", str(path), "-c", "8192", "--json"])
        assert out.exit_code == 0, out.output
        kv = json.loads(out.output)["kv_cache"]
        assert kv["indexer"]["layers"] == layers and (kv["indexer"]["bytes"] > 0) == (layers > 0)
        text = CliRunner().invoke(main, ["mem", str(path), "-c", "8192"]).output
        assert ("indexer's cache, %d layers" % layers in text) == (layers > 0), text


def test_which_layers_have_an_indexer(models: dict[str, Path]) -> None:
    """deepseek32: every trunk layer; glm-dsa: the full layers of attention.indexer.types, else GLM-5.2's
    default pattern from a 1,048,576-token training context on (0, 1, then every fourth from 2)."""
    assert hparams(ggufx.open(models["deepseek32"])).indexer_layers == (0, 1, 2, 3)
    assert hparams(ggufx.open(models["glm-dsa"])).indexer_layers == (0, 1, 4)
    assert hparams(ggufx.open(models["glm-dsa-52"])).indexer_layers == (0, 1, 2)
    assert hparams(ggufx.open(models["deepseek32-v32"])).indexer_layers == tuple(range(8))


def _deep(smollm2: Path, path: Path, name: str, n_trunk: int, every_indexer: bool = False) -> Path:
    """``name``'s model with ``n_trunk`` trunk layers (layer 0 as its, the rest like its layer 1, or
    for glm-dsa-52 GLM-5.2's default pattern of full and shared layers) and its NextN block after them;
    ``every_indexer``: the shared layers keep indexer tensors too (the graph leaves them unused, and the
    layer signatures do not tell full layers from shared ones)."""
    spec = json.loads(json.dumps(MODELS[name]))
    spec["kv"]["block_count"] = n_trunk + 1
    base = TENSORS[name]
    full = {0, 1, *range(2, n_trunk, 4)} if name == "glm-dsa-52" else set(range(n_trunk))
    tensors = [t for t in base if not t[0].startswith("blk.")]
    tensors += [t for t in base if t[0].startswith("blk.0.")]
    for il in range(1, n_trunk + 1):
        src = "blk.6." if il == n_trunk and name == "glm-dsa-52" else "blk.4." if il == n_trunk else "blk.1."
        for t in base:
            if t[0].startswith(src) and (".indexer." not in t[0] or il in full or il == n_trunk or every_indexer):
                tensors.append([f"blk.{il}." + t[0][len(src) :], *t[1:]])
    header(path, spec, tensors, smollm2)
    return path


@pytest.mark.parametrize(("name", "every"), [("deepseek32", False), ("glm-dsa-52", False), ("glm-dsa-52", True)])
@pytest.mark.parametrize("argv", ["-c 8192", "-c 4096 -fa off -np 3", "-c 8192 -ngl 9"])
def test_the_shortened_replay_is_the_whole_one(
    name: str, every: bool, argv: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """Long runs of identical layers (and GLM-5.2's period of four with the shared layers' top-k kept
    alive from the last full layer): the replay of the plan's layers equals the whole graph's."""
    model = ggufx.open(_deep(smollm2_path, tmp_path / "deep.gguf", name, 14, every))
    assert simulated(model) is None
    if name == "glm-dsa-52":
        assert hparams(model).indexer_layers == (0, 1, 2, 6, 10)
    args = parse_args("-m x " + argv)
    devices = [Device("CUDA0", 80 << 30)] if "-ngl" in argv else []
    bd = breakdown(model, devices, args.offload, args.context)
    sp = bd.reservation
    assert sp is not None
    assert simulate(model, devices, args.offload, sp) == simulate(model, devices, args.offload, sp, whole=True)


def test_files_the_graph_cannot_read_fall_back_to_the_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """A full indexer layer without its indexer (glm-dsa's tensors are optional to the loader) or a
    first layer that is shared: the generic estimate, labelled, the reason named; the KV cache stays
    exact."""
    tensors = [t for t in TENSORS["glm-dsa"] if t[0] != "blk.4.indexer.proj.weight"]
    header(tmp_path / "no-proj.gguf", MODELS["glm-dsa"], tensors, smollm2_path)
    model = ggufx.open(tmp_path / "no-proj.gguf")
    why = simulated(model)
    assert why is not None and "blk.4.indexer.proj.weight" in why
    args = parse_args("-m x -c 8192")
    bd = breakdown(model, [], args.offload, args.context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert compute.bytes > 0 and "generic decoder estimate" in compute.reason
    assert [round(b.bytes / MiB, 2) for b in bd.buffers if b.kind == "kv"] == [54.0, 6.0]  # glm-dsa-c8192.log
    spec = json.loads(json.dumps(MODELS["glm-dsa"]))
    spec["kv"]["attention.indexer.types"] = [False, True, False, False, True, False]
    header(tmp_path / "shared-first.gguf", spec, TENSORS["glm-dsa"], smollm2_path)
    why = simulated(ggufx.open(tmp_path / "shared-first.gguf"))
    assert why is not None and "first layer has no indexer" in why


def test_the_gpu_graph_builds(models: dict[str, Path]) -> None:
    """Fully offloaded and with the cache on the host (-nkvo): a figure per backend from the builder, the
    indexer cache on the layers' device (or the host) like the MLA cache."""
    model = ggufx.open(models["deepseek32"])
    for argv, kv_buft in (("-c 8192", "CUDA0"), ("-c 8192 -nkvo", "CPU")):
        args = parse_args("-m x " + argv)
        bd = breakdown(model, [Device("CUDA0", 80 << 30)], args.offload, args.context)
        assert [(b.buft, round(b.bytes / MiB, 2)) for b in bd.buffers if b.kind == "kv"] == [
            (kv_buft, 36.0),
            (kv_buft, 8.0),
        ]
        compute = [b for b in bd.buffers if b.kind == "compute"]
        assert compute and all(b.bytes > 0 and not b.reason for b in compute)


@pytest.mark.parametrize("rid", sorted(PER_LINE))
def test_mem_check_adds_the_kv_lines_as_llama_cpp_prints_them(rid: str, models: dict[str, Path]) -> None:
    """``mem --check`` on a run whose two KV lines, each rounded, add up 0.01 MiB away from their rounded
    total: every exact buffer agrees (it compared 45.38 with the log's 37.12 + 8.25 = 45.37)."""
    from ggufx import results

    model, args = CPU_RUNS[rid]
    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    res = results.memory_check(
        ggufx.open(models[model]),
        (CPU_LOGS / f"{rid}.log").read_text(),
        gpus=[],
        offload=replace(parsed.offload, repack="--no-repack" not in args),
        context=parsed.context,
    )
    kv = [r for r in res["rows"] if r["kind"] == "kv"]
    assert kv and all(r["ok"] for r in res["rows"] if r["exact"]), [r for r in res["rows"] if not r["ok"]]
