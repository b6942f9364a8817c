"""Replaying one architecture's recorded llama.cpp runs through its graph builder: the CPU runs of
tests/fixtures/llamacpp-logs-cpu (small header-only models of the family; the CUDA runs of published
dimensions are replayed for every builder by tests/test_graph_logs.py).
Each compute buffer must come out to the four decimals of llama.cpp's ``~llama_context`` line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import Breakdown, MiB, breakdown, flash_attn_default
from ggufx.analysis.memory.llamaargs import LlamaArgs, parse_args
from ggufx.analysis.memory.llamalog import LlamaLog, parse_log
from ggufx.analysis.memory.placement import Device

if TYPE_CHECKING:
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.sched import _Sched

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
CUDA_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs"


def cpu_runs(*models: str) -> list[str]:
    """The recorded CPU runs of these models of tests/fixtures/llamacpp-logs-cpu/matrix."""
    runs = []
    for line in (CPU_LOGS / "matrix").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rid, model, _ = line.split("\t")
            if model in models and (CPU_LOGS / f"{rid}.log").exists():
                runs.append(rid)
    return runs


def cpu_args(rid: str) -> tuple[str, str]:
    for line in (CPU_LOGS / "matrix").read_text().splitlines():
        if line.startswith(rid + "\t"):
            _, model, args = line.split("\t")
            return model, args
    raise KeyError(rid)


def _matrix_runs() -> dict[str, tuple[str, str]]:
    out = {}
    for line in (CPU_LOGS / "matrix").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rid, model, args = line.split("\t")
            if (CPU_LOGS / f"{rid}.log").exists():
                out[rid] = (model, args)
    return out


# every recorded run of tests/fixtures/llamacpp-logs-cpu/matrix: id -> (model, arguments)
CPU_MATRIX = _matrix_runs()


@pytest.fixture(scope="session")
def arch_models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The header-only models of models.py / tensors.json that the runs of ``matrix`` loaded."""
    out = tmp_path_factory.mktemp("arch-holes")
    return {name: cpu_model(name, out, smollm2_path) for name in sorted({m for m, _ in CPU_MATRIX.values()})}


_MATRIX_REPLAYS: dict[str, tuple[LlamaLog, Breakdown]] = {}


def replay_matrix_run(rid: str, models: dict[str, Path]) -> tuple[LlamaLog, Breakdown]:
    """llama.cpp's log of a run of ``matrix`` and ggufx's breakdown of its model and options, computed once per
    test session (tests/test_arch_logs.py and tests/test_builder_coverage.py replay the same runs)."""
    if rid not in _MATRIX_REPLAYS:
        model, args = CPU_MATRIX[rid]
        text = (CPU_LOGS / f"{rid}.log").read_text()
        assert "# exit status" in text and "load_tensors" in text
        parsed = parse_args("-m x " + args.replace("--no-repack", ""))
        offload = replace(parsed.offload, repack="--no-repack" not in args)
        _MATRIX_REPLAYS[rid] = parse_log(text), breakdown(ggufx.open(models[model]), [], offload, parsed.context)
    return _MATRIX_REPLAYS[rid]


def cpu_spec(name: str) -> dict:
    """The models.py entry of the header-only model ``name`` (its architecture, keys and vocabulary)."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    return MODELS[name]


def cpu_model(name: str, out: Path, smollm2: Path) -> Path:
    """The header-only model ``name`` of models.py / tensors.json (what record_cpu.py loaded)."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())
    path = out / f"{name}.gguf"
    if not path.exists():
        header(path, MODELS[name], tensors[name], smollm2)
    return path


def cpu_model_without(name: str, out: Path, smollm2: Path, tensor: str = "", key: str = "") -> ggufx.GGUFModel:
    """The header-only model ``name`` at ``out`` without this tensor and this metadata key (a file
    llama.cpp would refuse, or ggufx does not build)."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = cpu_spec(name)
    spec = {**spec, "kv": {k: v for k, v in spec["kv"].items() if k != key}}
    tensors = [t for t in json.loads((CPU_LOGS / "tensors.json").read_text())[name] if t[0] != tensor]
    header(out, spec, tensors, smollm2)
    return ggufx.open(out)


def replay_cpu(rid: str, path: Path) -> tuple[str, Breakdown]:
    """The log of a CPU run and ggufx's breakdown of its model and options."""
    _, args = cpu_args(rid)
    text = (CPU_LOGS / f"{rid}.log").read_text()
    assert "# exit status: 0" in text
    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    offload = replace(parsed.offload, repack="--no-repack" not in args)
    return text, breakdown(ggufx.open(path), [], offload, parsed.context)


def compute_mib(bd: Breakdown) -> dict[str, float]:
    """Our compute buffers, MiB to four decimals, by buffer type (all from the graph builder)."""
    out: dict[str, float] = {}
    for b in bd.buffers:
        if b.kind == "compute" and b.bytes > 1:
            assert not b.reason, b.reason  # not the generic estimate
            out[b.buft] = out.get(b.buft, 0) + b.bytes
    return {k: round(v / MiB, 4) for k, v in out.items()}


def assert_compute_equal(log_text: str, bd: Breakdown) -> None:
    """Each compute buffer equal to llama.cpp's: to the four decimals of the ``~llama_context`` exit
    line when the log has it, else to the two of ``sched_reserve``."""
    assert bd.compute_estimate is None, bd.compute_estimate
    mine = compute_mib(bd)
    theirs = {k: v for k, v in parse_log(log_text).buffers.get("compute", {}).items() if v}
    digits = 4 if "compute buffer size is" in log_text else 2
    assert {k: round(v, digits) for k, v in mine.items()} == theirs, (mine, theirs)


def buffers_mib(bd: Breakdown, kind: str) -> dict[str, float]:
    """Our buffers of this kind, MiB to the two decimals llama.cpp prints, by buffer type."""
    out: dict[str, int] = {}
    for b in bd.buffers:
        if b.kind == kind:
            out[b.buft] = out.get(b.buft, 0) + b.bytes
    return {k: round(v / MiB, 2) for k, v in out.items()}


def assert_buffers_equal(log_text: str, bd: Breakdown, kinds: tuple[str, ...]) -> None:
    """Each buffer of these kinds equal to the log's (0.01 MiB), and the compute buffers (:func:`assert_compute_equal`)."""
    theirs = parse_log(log_text).buffers
    for kind in kinds:
        assert buffers_mib(bd, kind) == theirs[kind], kind
    assert_compute_equal(log_text, bd)


def assert_no_cache(log_text: str, bd: Breakdown) -> None:
    """llama.cpp made no KV cache (``create_memory``'s ``res = nullptr``), and ggufx allocates none."""
    assert "llama_kv_cache" not in log_text and "KV buffer" not in log_text
    assert not [b for b in bd.buffers if b.kind in ("kv", "recurrent")]
    assert (bd.kv_bytes, bd.kv_layers) == (0, 0)


EMBEDDING = CPU_LOGS / "embedding"


def embedding_args(rid: str) -> LlamaArgs:
    """The command line of the embedding run ``rid`` (tests/fixtures/llamacpp-logs-cpu/embedding/matrix: the
    tool's name, llama-embedding or llama-server, then its options), parsed as that tool's."""
    command = next(
        line.split("\t")[2] for line in (EMBEDDING / "matrix").read_text().splitlines() if line.startswith(rid + "\t")
    )
    program, _, rest = command.partition(" ")
    return parse_args(f"{program} -m x {rest}")


def replay_embedding(rid: str, path: Path) -> tuple[str, Breakdown]:
    """The log of the embedding run ``rid`` and ggufx's breakdown of its model (at ``path``) and command line."""
    a = embedding_args(rid)
    return (EMBEDDING / f"{rid}.log").read_text(), breakdown(ggufx.open(path), [], a.offload, a.context)


NODES = CPU_LOGS / "nodes"
_VIEWS = {"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}
# ggml_op_desc prints the unary and GLU kinds (GGML_SCHED_DEBUG cuts names to 10 characters: SWIGLU_CLAMP
# prints as SWIGLU_CLA); the graph records their op
_OP = {
    "SILU": "UNARY",
    "SIGMOID": "UNARY",
    "SOFTPLUS": "UNARY",
    "GELU": "UNARY",
    "GELU_ERF": "UNARY",
    "TANH": "UNARY",
    "RELU": "UNARY",
    "XIELU": "UNARY",
    "EXP": "UNARY",
    "NEG": "UNARY",
    "ABS": "UNARY",
    "SGN": "UNARY",
    "SWIGLU": "GLU",
    "SWIGLU_CLA": "GLU",
    "GEGLU": "GLU",
}


def _fmt_size(n: int) -> str:
    """ggml-backend.cpp's ``fmt_size``."""
    return f"{n // 1024 // 1024}M" if n >= 1024 * 1024 else f"{n // 1024}K"


def assert_nodes_equal(rid: str, path: Path) -> None:
    """The prompt-processing graph the builder makes, node for node (op and size, views aside) equal to
    the one llama.cpp's scheduler printed for this run (tests/fixtures/llamacpp-logs-cpu/nodes)."""
    from ggufx.analysis.memory.graph import graphsim
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    theirs = []
    for line in (NODES / f"{rid}.tsv").read_text().splitlines():
        if not line.startswith("#"):
            _, op, _, size = line.split("\t")
            if op not in _VIEWS:
                theirs.append((_OP.get(op, op), size))
    _, args = cpu_args(rid)
    parsed = parse_args("-m x " + args)
    model = ggufx.open(path)
    sp = breakdown(model, [], parsed.offload, parsed.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], parsed.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    mine = [(n.op, _fmt_size(n.nbytes)) for n in g.nodes if n.op not in _VIEWS]
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a[0].startswith(b[0][:10]) and a[1] == b[1], (i, a, b)


def node_for_node_test(runs: dict[str, str], doc: str) -> Callable[[str, dict[str, Path]], None]:
    """A family test's node-for-node check: for each run id of ``runs`` (run id -> model), its model's file from
    the module fixture ``files`` (:func:`cpu_family`) through :func:`assert_nodes_equal`; ``doc`` says what the
    runs' graphs show. ``test_the_graph_is_llama_cpps_node_for_node = node_for_node_test(NODE_RUNS, "...")``."""

    @pytest.mark.parametrize("rid", list(runs))
    def test(rid: str, files: dict[str, Path]) -> None:
        assert_nodes_equal(rid, files[runs[rid]])

    test.__doc__ = doc
    return test


def cpu_models(
    names: tuple[str, ...], smollm2: Path, tmp_path_factory: pytest.TempPathFactory, label: str
) -> dict[str, Path]:
    """The header-only files of these models of models.py (a family test's module fixture)."""
    out = tmp_path_factory.mktemp(label)
    return {n: cpu_model(n, out, smollm2) for n in names}


def cpu_family(
    models: tuple[str, ...], label: str, files: tuple[str, ...] | None = None, name: str = "files"
) -> tuple[list[tuple[str, str]], Any]:
    """A family test's preamble: (model, run id) of every recorded CPU run of these models, and the module
    fixture ``name`` of the header-only files of ``files`` (by default the models) in a temporary folder
    ``label`` (:func:`cpu_models`). ``RUNS, files = cpu_family(MODELS, "family")`` at the top of the test."""
    runs = [(m, rid) for m in models for rid in cpu_runs(m)]
    names = models if files is None else files

    @pytest.fixture(scope="module", name=name)
    def fixture(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
        return cpu_models(names, smollm2_path, tmp_path_factory, label)

    return runs, fixture


def assert_runs_cover(name: str, options: tuple[str, ...] | list[str], at_least: int = 5) -> list[str]:
    """The model's builder exists and its recorded CPU runs (every matrix line of it has its log, at least
    ``at_least`` of them) include each of these options; the runs' options, for what a test checks more."""
    assert builder_of(cpu_spec(name)["arch"]) is not None
    args = [line.split("\t")[2] for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{name}\t" in line]
    assert len(cpu_runs(name)) == len(args) >= at_least
    for option in options:
        assert any(option in a for a in args), option
    return args


def assert_shortcut_is_whole(path: Path, *runs: str) -> None:
    """For each of these options, the replay that leaves repeated blocks of layers out allocates as the one
    of every layer (a CPU compute buffer above zero)."""
    from ggufx.analysis.memory.graph import graphsim

    model = ggufx.open(path)
    for args in runs:
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


@dataclass(frozen=True)
class Refused:
    """A file llama.cpp would refuse (or ggufx does not build), made from a small model of models.py."""

    model: str  # the small model (models.py) whose file loses...
    drop_tensor: str  # ...this tensor (llama.cpp's loader requires it)...
    reason: str  # graphsim.unbuildable's words for it
    drop_key: str = ""  # ...or this metadata key (without the architecture's prefix)
    add_kv: tuple[tuple[str, object], ...] = ()  # ...or gains these keys


def assert_refused(r: Refused, smollm2: Path, tmp_path: Path, kv_check: str = "") -> None:
    """The file ``r`` describes is not built, for ``r.reason``, and gets the generic estimate with it.
    ``kv_check`` "count": the metadata lost the key dropped and gained each key added (none replaced);
    "dropped": the key dropped was there and is gone."""
    from ggufx.analysis.memory.graph import graphsim

    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())[r.model]
    kept = [t for t in tensors if t[0] != r.drop_tensor]
    assert len(kept) == len(tensors) - (1 if r.drop_tensor else 0)
    spec = cpu_spec(r.model)
    kv = {k: v for k, v in spec["kv"].items() if k != r.drop_key} | dict(r.add_kv)
    if kv_check == "count":
        assert len(kv) == len(spec["kv"]) - (1 if r.drop_key else 0) + len(r.add_kv)
    elif kv_check == "dropped":
        assert r.drop_key not in kv and (not r.drop_key or r.drop_key in spec["kv"])
    path = tmp_path / "refused.gguf"
    header(path, {**spec, "kv": kv}, kept, smollm2)
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) == r.reason
    a = parse_args(f"-m x -c 8192 -fa {flash_attn_default(model)}")  # PLM: -fa off (llama.cpp aborts with it)
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and r.reason in bd.compute_estimate


def cpu_runs_of(*archs: str) -> dict[str, tuple[str, str]]:
    """The recorded CPU runs of the models.py models of these architectures: run id -> (model, options)."""
    models = {n: spec["arch"] for n, spec in _models().items()}
    runs = {}
    for line in (CPU_LOGS / "matrix").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rid, model, args = line.split("\t")
            if models[model] in archs and (CPU_LOGS / f"{rid}.log").exists():
                runs[rid] = (model, args)
    return runs


def _models() -> dict[str, dict]:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    return MODELS


def exact_cpu_compute(text: str) -> float:
    """The ``~llama_context`` line: the CPU compute buffer to 0.0001 MiB."""
    (line,) = [x for x in text.splitlines() if "~llama_context:" in x and "CPU compute buffer size is" in x]
    return float(line.split("size is")[1].split("MiB")[0])


def assert_cpu_compute_is_llama_cpps(rid: str, path: Path, args: str) -> None:
    """The builder's CPU compute buffer of run ``rid`` (its model at ``path``, its options ``args``, with
    ``--no-repack`` as the offload's repack) equal to the ``~llama_context`` line's 0.0001 MiB."""
    from ggufx.analysis.memory.graph.graphsim import simulated

    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    offload = replace(parsed.offload, repack="--no-repack" not in args)
    model = ggufx.open(path)
    assert simulated(model) is None
    bd = breakdown(model, [], offload, parsed.context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert not compute.reason  # the builder's figure, not the generic estimate
    assert round(compute.bytes / MiB, 4) == exact_cpu_compute((CPU_LOGS / f"{rid}.log").read_text())


def deep_model(name: str, smollm2: Path, path: Path, n_trunk: int) -> Path:
    """The MoE trunk model ``name`` (its layer 0 dense, layer 1 MoE, layer 4 the NextN block) with
    ``n_trunk`` trunk layers (layer 0, then layer 1's kind) and its NextN block after them: long runs of
    identical layers for the shortened replay."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = dict(cpu_spec(name))
    spec["kv"] = dict(spec["kv"], block_count=n_trunk + 1)
    base = json.loads((CPU_LOGS / "tensors.json").read_text())[name]
    tensors = [t for t in base if not t[0].startswith("blk.")]
    tensors += [t for t in base if t[0].startswith("blk.0.")]
    for il in range(1, n_trunk + 1):
        src = "blk.4." if il == n_trunk else "blk.1."
        tensors += [[f"blk.{il}." + t[0][len(src) :], *t[1:]] for t in base if t[0].startswith(src)]
    header(path, spec, tensors, smollm2)
    return path


def assert_shortened_replay_is_whole(path: Path, argv: str, gpus: int) -> None:
    """With these options on ``gpus`` 80 GiB GPUs, the replay that leaves repeated layers out allocates as
    the one of every layer."""
    from ggufx.analysis.memory.graph.graphsim import simulate, simulated

    model = ggufx.open(path)
    assert simulated(model) is None
    args = parse_args("-m x " + argv)
    devices = [Device("CUDA0", 80 << 30)] * gpus
    bd = breakdown(model, devices, args.offload, args.context)
    sp = bd.reservation
    assert sp is not None
    assert simulate(model, devices, args.offload, sp) == simulate(model, devices, args.offload, sp, whole=True)


def assert_gpu_graph_builds(path: Path) -> None:
    """On a GPU, with the experts of layer 1 on the host (--n-cpu-moe 2 over a dense layer 0): a figure
    per backend from the builder."""
    model = ggufx.open(path)
    args = parse_args("-m x -c 8192 --n-cpu-moe 2")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], args.offload, args.context)
    compute = {b.buft: b for b in bd.buffers if b.kind == "compute"}
    assert set(compute) == {"CUDA0", "CUDA_Host"} and all(b.bytes > 0 and not b.reason for b in compute.values())


def assert_falls_back_without(name: str, tensor: str, smollm2: Path, out: Path) -> None:
    """The model ``name`` without ``tensor`` is refused with the tensor named, and gets the generic
    estimate, labelled."""
    from ggufx.analysis.memory.graph.graphsim import simulated

    model = cpu_model_without(name, out, smollm2, tensor)
    why = simulated(model)
    assert why is not None and tensor in why
    args = parse_args("-m x -c 8192")
    bd = breakdown(model, [], args.offload, args.context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert compute.bytes > 0 and "generic decoder estimate" in compute.reason


class Scheduled(NamedTuple):
    """A recorded CUDA run's prompt-processing graph with every node assigned by the scheduler (:func:`scheduled`)."""

    graph: _Graph  # every layer built
    sched: _Sched  # its backends (``sched.names[node.backend]``), nothing split yet
    text: str  # the run's log
    theirs: dict[str, float]  # llama.cpp's compute buffers (MiB by buffer type, as the log prints them)
    ours: dict[str, int]  # ggufx's (bytes by buffer type)


def scheduled(rid: str, models: dict[str, Path]) -> Scheduled:
    """The run ``rid`` of tests/fixtures/llamacpp-logs (its model among ``models``, the ``hole_models`` fixture)
    replayed as ``mem`` replays it: the prompt-processing graph of every layer, built and assigned by
    ``_Sched.assign`` (ggml_backend_sched's passes 1-4) on the run's GPUs; the log and both compute buffers."""
    from ggufx.analysis.memory.graph import graphsim
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder
    from ggufx.analysis.memory.graph.sched import _Sched
    from ggufx.analysis.memory.placement import host_buft

    from .llamacpp_logs import LOGS, RUNS, devices_of

    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    log = parse_log(text)
    args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
    model = ggufx.open(models[str(args.model)])
    devices = devices_of(run, log.devices)
    sp = breakdown(model, devices, args.offload, args.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, devices, args.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    gpus = [d.name for d in ld.pl.devices]
    sched = _Sched(gpus, host_buft(gpus[0]), 1)
    sched.assign(g)
    ours = graphsim.simulate(model, devices, args.offload, sp)
    return Scheduled(g, sched, text, log.buffers.get("compute", {}), ours)


def backend_splits(g: _Graph) -> int:
    """The splits of an assigned graph where no split input within a backend's run opens one (a new split
    where the backend changes; llama.cpp's ``graph: nodes = N, splits = S``)."""
    from ggufx.analysis.memory.graph.sched import _VIEW_OPS

    backends = [n.backend for n in g.nodes if n.op not in _VIEW_OPS]
    return 1 + sum(1 for a, b in zip(backends, backends[1:], strict=False) if a != b)
