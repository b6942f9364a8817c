"""EAGLE3 speculative draft heads (issue 25, h-drafts) against llama.cpp's CPU build.

``eagle3`` (src/models/eagle3.cpp, graph/models/eagle3.py) runs only beside its target: ``llama-server -m TARGET
-md HEAD --spec-type draft-eagle3``. The runs of ``matrix-drafts`` (``record_drafts.py``) pair the small llama and
qwen3 targets with a small head of each kind (a reduced vocabulary with ``d2t`` and its own output; one borrowing the
target's token rows and tied output, with norm_before_fc and norm_before_residual) and the published Llama-3.1-8B /
Qwen3-8B targets with heads of yuhuili/EAGLE3-LLaMA3.1-Instruct-8B's and AngelSlim/Qwen3-8B_eagle3's dimensions.

Per run: the head's compute buffer (its context's graph after the server's backend top-k samplers are attached:
the first ``~llama_context`` line at exit, 4 decimals), its mapped weights, KV cache and output buffer (0.01 MiB);
the target's compute buffer with the ``-np x (1 + n_max)`` outputs llama-server reserves under draft-eagle3; a head
alone refused in llama.cpp's words; a target too shallow for the head's layers refused; the extracted layers' rows in
the target's output buffer."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.drafthead import (
    feature_buffers,
    features_compute_growth,
    head_contexts,
)
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import OffloadParams
from ggufx.errors import InputError
from ggufx.results.memory import MemoryRequest, memory

from .graph_arch_logs import CPU_LOGS, cpu_models

MiB = 1 << 20
RUNS = [
    tuple(line.split("\t"))
    for line in (CPU_LOGS / "matrix-drafts").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
EAGLE3_RUNS = [r for r in RUNS if "eagle3" in r[2] and (CPU_LOGS / f"{r[0]}.log").exists()]
DFLASH_RUNS = [r for r in RUNS if "dflash" in r[2] and (CPU_LOGS / f"{r[0]}.log").exists()]
REQUEST_RUNS = [r for r in RUNS if (CPU_LOGS / f"{r[0]}-request.log").exists()]
MAP_RUNS = [r for r in RUNS if (CPU_LOGS / "maps" / f"{r[0]}.tsv").exists()]
NAMES = tuple(sorted({n for r in RUNS for n in r[1:3]}))


@pytest.fixture(scope="module")
def files(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(NAMES, smollm2_path, tmp_path_factory, "draft-heads")


def _run(rid: str, files: dict[str, Path], suffix: str = ""):  # type: ignore[no-untyped-def]
    """The run's parsed command line (the head's and the target's contexts as ggufx's setup makes them: the
    target's drafted outputs, a DFlash draft's sampled rows) and its log before and after ``loading draft model``."""
    _, target, head, args = next(r for r in RUNS if r[0] == rid)
    line = f"llama-server -m {files[target]} -md {files[head]} {args} -dev none -fit off"
    a = parse_args(line)
    assert a.draft_context is not None
    context, draft_context = head_contexts(ggufx.open(files[head]), a.context, a.draft_context, a.spec_n_max, True)
    a = replace(a, context=context, draft_context=draft_context)
    text = (CPU_LOGS / f"{rid}{suffix}.log").read_text()
    i = text.index("loading draft model")
    return a, text[:i], text[i:]


def _mib(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, pattern
    return float(m[1])


def test_the_runs_cover_the_head_kinds_options_and_published_dimensions() -> None:
    assert builder_of("eagle3") == "eagle3"
    args = " ".join(r[3] for r in EAGLE3_RUNS)
    assert len(EAGLE3_RUNS) >= 8
    for option in ("-np 2", "-fa off", "-ctk q8_0", "-ctkd q8_0", "-ub 256", "-c 4096", "-c 16384"):
        assert option in args, option
    heads = {r[2] for r in EAGLE3_RUNS}
    assert {"eagle3", "eagle3-shared", "eagle3-llama31-8b", "eagle3-qwen3-8b"} <= heads


@pytest.mark.parametrize("rid", [r[0] for r in EAGLE3_RUNS + DFLASH_RUNS])
def test_the_head_context_equals_llama_cpp(rid: str, files: dict[str, Path]) -> None:
    """The head's compute buffer to the 4 decimals of its ``~llama_context`` line (the first at exit: the draft
    context is destroyed first), its mapped weights, KV cache and output buffer to llama.cpp's 0.01 MiB; a DFlash
    draft samples n_max + 1 rows per sequence (its log's n_outputs_max_per_seq)."""
    a, _, draft = _run(rid, files)
    assert a.draft_context is not None
    offload = replace(a.draft_offload or a.offload, repack="--no-repack" not in rid)
    head = ggufx.open(files[next(r[2] for r in RUNS if r[0] == rid)])
    bd = breakdown(head, [], offload, a.draft_context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert not compute.reason and bd.compute_estimate is None
    exit_lines = re.findall(r"~llama_context:\s+CPU compute buffer size is\s+([\d.]+) MiB", draft)
    assert len(exit_lines) == 2  # the head's, then the target's
    assert round(compute.bytes / MiB, 4) == float(exit_lines[0])
    # the graph llama.cpp reserved first (before the server's samplers) is never larger: the samplers' padded logits
    first = _mib(r"sched_reserve:\s+CPU compute buffer size =\s+([\d.]+) MiB", draft)
    assert first <= float(exit_lines[0]) + 0.005
    mapped = _mib(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB", draft)
    assert round(sum(b.bytes for b in bd.buffers if b.buft == "CPU_Mapped") / MiB, 2) == mapped
    kv = _mib(r"CPU KV buffer size =\s+([\d.]+) MiB", draft)
    assert round(sum(b.bytes for b in bd.buffers if b.kind == "kv") / MiB, 2) == kv
    out = _mib(r"CPU  output buffer size =\s+([\d.]+) MiB", draft)
    assert round(sum(b.bytes for b in bd.buffers if b.kind == "output") / MiB, 2) == out
    assert "n_outputs_max         = " + str(a.draft_context.n_batch) in draft  # llama_model_has_encoder: n_batch
    per_seq = a.draft_context.n_outputs_max // a.draft_context.n_parallel
    assert f"n_outputs_max_per_seq = {per_seq}\n" in draft


def test_the_head_repacked_weights_equal_llama_cpp(files: dict[str, Path]) -> None:
    a, _, draft = _run("srv-eagle3-c8192", files)
    bd = breakdown(ggufx.open(files["eagle3"]), [], a.draft_offload or a.offload, a.draft_context)  # type: ignore[arg-type]
    repack = _mib(r"CPU_REPACK model buffer size =\s+([\d.]+) MiB", draft)
    assert round(sum(b.bytes for b in bd.buffers if b.buft == "CPU_REPACK") / MiB, 2) == repack


@pytest.mark.parametrize("rid", [r[0] for r in EAGLE3_RUNS + DFLASH_RUNS])
def test_the_target_context_reserves_the_drafted_outputs(rid: str, files: dict[str, Path]) -> None:
    """llama-server reserves ``-np x (1 + n_max)`` outputs in the target context under draft-eagle3 and
    draft-dflash (its log's n_outputs_max): with them the target's compute buffer equals its ``~llama_context``
    line (the second)."""
    a, main, draft = _run(rid, files)
    target = next(r[1] for r in RUNS if r[0] == rid)
    cp = a.context
    assert f"n_outputs_max         = {cp.n_outputs_max}\n" in main
    offload = replace(a.offload, repack="--no-repack" not in rid)
    bd = breakdown(ggufx.open(files[target]), [], offload, cp)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    exit_lines = re.findall(r"~llama_context:\s+CPU compute buffer size is\s+([\d.]+) MiB", draft)
    assert round(compute.bytes / MiB, 4) == float(exit_lines[1])


def test_mem_of_the_pair_counts_the_head_and_the_extracted_features(files: dict[str, Path]) -> None:
    """``mem TARGET --llama-args '... -md HEAD --spec-type draft-eagle3'``: the head's buffers as draft_* companions,
    the extracted layers' rows (3 layers x n_embd x n_batch floats, llama-context.cpp output_reserve) and the note."""
    line = f"llama-server -m {files['llama']} -md {files['eagle3']} -c 8192 --spec-type draft-eagle3 -dev none"
    res = memory(ggufx.open(files["llama"]), MemoryRequest(llama_args=line), ggufx.open)
    kinds = {b["kind"]: b for b in res["buffers"]}
    assert round(kinds["draft_compute"]["bytes"] / MiB, 4) == 202.1992  # srv-eagle3-c8192's ~llama_context line
    assert kinds["draft_features"]["bytes"] == 3 * 1024 * 2048 * 4
    assert any("draft-eagle3" in n and "1, 2, 3" in n for n in res["notes"])


def test_published_features_are_three_layers_of_4096_by_the_batch(files: dict[str, Path]) -> None:
    """Llama-3.1-8B with its EAGLE3 head at -c 4096: 3 x 4096 x 2048 floats (96 MiB) join the target's output."""
    a, _, _ = _run("srv-eagle3-llama31-8b-c4096", files)
    b, verify = feature_buffers(
        ggufx.open(files["llama31-8b"]), ggufx.open(files["eagle3-llama31-8b"]), [], OffloadParams(), a.context
    )
    assert b.bytes == 96 * MiB and b.buft == "CPU" and b.kind == "draft_features"
    # -np 4 (llama-server's default) x (1 + 3) drafted outputs: 12 logit rows of 128,256 beyond the 4 of load
    assert verify.kind == "draft_verify_output" and verify.bytes == 4 * 128256 * 12


def test_a_head_alone_is_refused_in_llama_cpps_words(files: dict[str, Path]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ggufx", "mem", str(files["eagle3"])], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "eagle3 requires ctx_other to be set" in r.stderr and "--spec-type draft-eagle3" in r.stderr


def test_a_target_too_shallow_for_the_heads_layers_is_refused(
    files: dict[str, Path], smollm2_path: Path, tmp_path: Path
) -> None:
    """A head extracting layer 9 of the small llama (4 layers) makes llama.cpp abort (common/speculative.cpp:
    "EAGLE3: target layer id 9 exceeds target n_layer 4")."""
    import json

    from .graph_arch_logs import cpu_spec

    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = cpu_spec("eagle3")
    spec = {**spec, "kv": {**spec["kv"], "target_layers": [1, 2, 9]}}
    deep = tmp_path / "eagle3-deep.gguf"
    header(deep, spec, json.loads((CPU_LOGS / "tensors.json").read_text())["eagle3"], smollm2_path)
    line = f"llama-server -m {files['llama']} -md {deep} -c 4096 --spec-type draft-eagle3 -dev none"
    with pytest.raises(InputError, match="EAGLE3: target layer id 9 exceeds target n_layer 4"):
        memory(ggufx.open(files["llama"]), MemoryRequest(llama_args=line), ggufx.open)


def test_a_head_without_its_fused_feature_projection_gets_the_reason(smollm2_path: Path, tmp_path: Path) -> None:
    from .graph_arch_logs import cpu_model_without

    model = cpu_model_without("eagle3", tmp_path / "no-fc.gguf", smollm2_path, tensor="fc.weight")
    assert graphsim.unbuildable(model) == "the graph needs tensor fc.weight, which the file lacks"


@pytest.mark.parametrize("rid", [r[0] for r in REQUEST_RUNS])
def test_after_a_request_the_target_keeps_the_extracted_layer_inputs(rid: str, files: dict[str, Path]) -> None:
    """After one completion the target has reserved its graph again with the extracted layer inputs as outputs
    (``llama_set_embeddings_layer_inp``: sched_need_reserve): its compute buffer (the second ``~llama_context``
    line of the request run) is the one at load plus ggufx's draft_features_compute; the head's is unchanged."""
    a, main, draft = _run(rid, files, "-request")
    _, target, head, _ = next(r for r in RUNS if r[0] == rid)
    offload = replace(a.offload, repack="--no-repack" not in rid)
    t, h = ggufx.open(files[target]), ggufx.open(files[head])
    bd = breakdown(t, [], offload, a.context)
    (compute,) = [b.bytes for b in bd.buffers if b.kind == "compute"]
    growth = features_compute_growth(t, h, [], offload, a.context)
    assert growth is not None
    exit_lines = re.findall(r"~llama_context:\s+CPU compute buffer size is\s+([\d.]+) MiB", draft)
    assert len(exit_lines) == 2
    assert round((compute + growth.get("CPU", 0)) / MiB, 4) == float(exit_lines[1])
    load = _mib(r"sched_reserve:\s+CPU compute buffer size =\s+([\d.]+) MiB", main)
    assert round(compute / MiB, 2) == load  # the reservation at load, before the request
    hb = breakdown(h, [], replace(a.draft_offload or a.offload, repack=True), a.draft_context)  # type: ignore[arg-type]
    assert round(next(b.bytes for b in hb.buffers if b.kind == "compute") / MiB, 4) == float(exit_lines[0])


def _mapped(sizes: list[int], want: int) -> bool:
    """A mapping of ``want`` bytes: glibc's header (16 bytes) on it, rounded up to the page."""
    return any(0 <= n - want < 4096 + 16 for n in sizes)


@pytest.mark.parametrize("rid", [r[0] for r in MAP_RUNS])
def test_the_buffers_made_at_the_first_prompt_are_the_mappings_llama_cpp_makes(
    rid: str, files: dict[str, Path]
) -> None:
    """With glibc mapping every allocation apart (``MALLOC_MMAP_THRESHOLD_``; strace's mmap lengths), one prompt of
    more than a micro-batch maps the target's output buffer with the extracted layers' rows (``output`` +
    ``draft_features``) and the logits of as many verified drafts as a step made (at most ``draft_verify_output``'s
    rows), the target's compute buffer reserved again (``compute`` + ``draft_features_compute``) and the head's output
    buffer with its rows (an EAGLE3 head: one per token of its encoded chunk, ``draft_output`` +
    ``draft_output_growth``; a DFlash draft: its block's rows, at most ggufx's ``draft_output_growth``)."""
    from ggufx.analysis.memory.drafthead import output_row_bytes, output_rows

    a, _, _ = _run(rid, files)
    _, target, head, _ = next(r for r in RUNS if r[0] == rid)
    rows = [x.split("\t") for x in (CPU_LOGS / "maps" / f"{rid}.tsv").read_text().splitlines() if x[:1] != "#"]
    sizes = [int(n) for phase, n in rows if phase == "request"]
    made = [int(n) for _, n in rows]  # the head's output may reach its size before the request (llama_set_sampler)
    t, h = ggufx.open(files[target]), ggufx.open(files[head])
    n_seq = a.context.n_parallel
    offload = replace(a.offload, repack="--no-repack" not in rid)
    tb = breakdown(t, [], offload, a.context)
    feats, verify = feature_buffers(t, h, [], OffloadParams(), a.context)
    n_vocab = int(tb.buffers[[b.kind for b in tb.buffers].index("output")].bytes // (4 * n_seq))
    base = next(b.bytes for b in tb.buffers if b.kind == "output") + feats.bytes
    steps = verify.bytes // (4 * n_vocab)
    assert any(_mapped(sizes, base + 4 * n_vocab * j) for j in range(steps + 1)), (base, sizes)
    compute = next(b.bytes for b in tb.buffers if b.kind == "compute")
    growth = features_compute_growth(t, h, [], offload, a.context)
    assert growth is not None and _mapped(sizes, compute + growth.get("CPU", 0))
    assert a.draft_context is not None
    per_row, most = output_row_bytes(h), output_rows(h, a.draft_context, n_seq)
    if h.architecture == "eagle3":
        assert _mapped(sizes, most * per_row)
    else:
        assert any(_mapped(made, j * per_row) for j in range(n_seq, most + 1)), made


def test_the_targets_a_head_can_extract_from_are_the_graphs_that_name_their_layer_inputs() -> None:
    """drafthead.LAYER_INPUT_GRAPHS: exactly the src/models/*.cpp files that set ``res->t_layer_inp[...]``."""
    from ggufx.analysis.memory.drafthead import LAYER_INPUT_GRAPHS

    from .test_archs import _source

    models = _source() / "src" / "models"
    named = {p.stem.replace("-", "_") for p in models.glob("*.cpp") if "t_layer_inp[" in p.read_text()}
    assert named == LAYER_INPUT_GRAPHS


def test_a_target_whose_graph_names_no_layer_inputs_is_refused(
    files: dict[str, Path], smollm2_path: Path, tmp_path: Path
) -> None:
    """A gemma3 target (gemma3.cpp sets no ``t_layer_inp``): llama.cpp's first decode with the head fails
    ``llm_graph_result::set_outputs``' assert; ggufx refuses the pair in those words."""
    from .graph_arch_logs import cpu_model

    gemma3 = cpu_model("gemma3", tmp_path, smollm2_path)
    line = f"llama-server -m {gemma3} -md {files['eagle3']} -c 4096 --spec-type draft-eagle3 -dev none"
    with pytest.raises(InputError, match="layer input tensor is null"):
        memory(ggufx.open(gemma3), MemoryRequest(llama_args=line), ggufx.open)


def test_a_dflash_draft_alone_is_refused_in_llama_cpps_words(files: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="dflash requires ctx_other to be set.*--spec-type draft-dflash"):
        memory(ggufx.open(files["dflash"]), MemoryRequest(), ggufx.open)


def test_mem_gives_the_heads_own_context_warning(hole_models: dict[str, Path]) -> None:
    """llama-server's EAGLE3 head of Llama-3.1-8B (trained on 2048 tokens) takes the target's 32768 cells and its
    context warns after the target's (recorded on CUDA: srv-eagle3-l8b-ngl99-c32768); `mem --json` says the same."""
    import json

    from .llamacpp_logs import LOGS

    printed = [
        line[2:]
        for line in (LOGS / "srv-eagle3-l8b-ngl99-c32768.log").read_text().splitlines()
        if line.startswith("W llama_context: n_ctx_seq")
    ]
    target, head = hole_models["llama31-8b-draft-target"], hole_models["eagle3-llama31-8b"]
    args = f"llama-server -m {target} -md {head} --spec-type draft-eagle3 -ngl 99 -ngld 99 -c 32768"
    r = subprocess.run(
        [sys.executable, "-m", "ggufx", "mem", "--llama-args", args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert printed == ["llama_context: n_ctx_seq (32768) > n_ctx_train (2048) -- possible training context overflow"]
    assert json.loads(r.stdout)["warnings"][-1:] == printed
