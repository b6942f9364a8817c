"""Multi-token-prediction speculative decoding (``--spec-type draft-mtp``) against llama.cpp's CPU build.

``tests/fixtures/llamacpp-logs-cpu/mtp/`` holds llama-server's logs (``record_mtp.py``, the runs of
``matrix-mtp``) of the header-only Qwen 3.5 MoE and dense models with their MTP block (``qwen35moe-mtp``,
``qwen35-mtp``): the main context's buffers, then the MTP draft context's (its KV cache of the NextN layer,
its output and compute buffers). Every buffer of both contexts must agree with llama.cpp's: the weights
(with the NextN tensors loaded), KV caches, recurrent state (with the rollback snapshots), outputs to the
0.01 MiB printed, the MTP context's compute buffer to llama.cpp's 4-decimal exit line where it printed one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, alloc_size, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.mtp import split_log
from ggufx.errors import InputError
from ggufx.results.memory import MemoryRequest, check, memory

from .graph_arch_logs import CPU_LOGS, cpu_model

MTP_LOGS = CPU_LOGS / "mtp"
MATRIX = [
    line.split("\t")
    for line in (CPU_LOGS / "matrix-mtp").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
RUNS = {rid: (model, args) for rid, model, args in MATRIX if (MTP_LOGS / f"{rid}.log").exists()}
# the models whose MTP context is modelled; the other runs hold the main context and the NextN weights
MODELLED = {"qwen35moe-mtp", "qwen35-mtp", "qwen3next-mtp", "glm4moe", "glm4moe-air", "deepseek2-mla-mtp"}
BUILT_RUNS = sorted(r for r, (m, _) in RUNS.items() if m in MODELLED)
OTHER_RUNS = sorted(r for r, (m, _) in RUNS.items() if m not in MODELLED)
# the models whose main graph is rebuilt too (every MODELLED one: qwen35's skips its MTP block like qwen35moe's)
MAIN_COMPUTE_BUILT = {"qwen35-mtp", "qwen35moe-mtp", "qwen3next-mtp", "glm4moe", "glm4moe-air", "deepseek2-mla-mtp"}


@pytest.fixture(scope="module")
def mtp_models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mtp-holes")
    return {name: cpu_model(name, out, smollm2_path) for name in sorted({m for m, _ in RUNS.values()})}


def request(rid: str, path: Path) -> MemoryRequest:
    _, args = RUNS[rid]
    return MemoryRequest(llama_args=f"llama-server -m {path} {args} --spec-type draft-mtp", gpus="none")


def exit_lines(text: str) -> list[float]:
    """The 4-decimal ``~llama_context`` compute figures, in the order llama.cpp printed them."""
    return [float(line.split(" is ")[1].split()[0]) for line in text.splitlines() if "~llama_context" in line]


def test_the_mtp_matrix_is_recorded() -> None:
    """Both Qwen 3.5 graphs, Qwen3-Next's, GLM-4.5's (and -Air's) and DeepSeek V3's, over -c, -np, -ub, the main
    and the draft cache types, -fa off, --no-repack and --spec-draft-n-max; every log has both contexts."""
    assert {m for m, _ in RUNS.values()} >= MODELLED
    assert len(RUNS) == len(MATRIX) >= 36 and len(OTHER_RUNS) >= 8
    args = " ".join(a for _, a in RUNS.values())
    for option in (
        "-ctk q8_0",
        "-ctkd q8_0",
        "-ctkd q4_0",
        "-fa off",
        "-np 1",
        "-np 2",
        "-np 3",
        "-ub 256",
        "-ub 1024",
    ):
        assert option in args, option
    for option in ("--no-repack", "--spec-draft-n-max 5", "--spec-draft-n-max 2", "-c 4096", "-c 16384"):
        assert option in args, option
    for rid in RUNS:
        text = (MTP_LOGS / f"{rid}.log").read_text()
        assert "--spec-type draft-mtp" in text.splitlines()[1]
        assert "creating MTP draft context" in text
        if rid in BUILT_RUNS:
            assert "speculative decoding context initialized" in text


@pytest.mark.parametrize("rid", BUILT_RUNS)
def test_both_contexts_match_llama_cpp(rid: str, mtp_models: dict[str, Path]) -> None:
    model_name, _ = RUNS[rid]
    path = mtp_models[model_name]
    text = (MTP_LOGS / f"{rid}.log").read_text()
    res = check(ggufx.open(path), request(rid, path), text, ggufx.open)
    rows = {(r["kind"], r["buft"]): r for r in res["rows"]}
    kinds = {k for k, _ in rows}
    assert {"model", "kv", "output", "compute"} <= kinds
    assert ("recurrent" in kinds) == model_name.startswith("qwen3")  # the hybrids' state (with its snapshots)
    assert {"mtp_kv", "mtp_output", "mtp_compute"} <= kinds
    for (kind, buft), r in rows.items():
        if kind == "compute" and model_name not in MAIN_COMPUTE_BUILT:
            continue
        assert r["llama_cpp_mib"] is not None, (kind, buft)
        assert r["ggufx_mib"] == round(r["llama_cpp_mib"], 2), (kind, buft, r)
    # the exit lines: the MTP context ends first, then the main one (4 decimals, where the server printed them)
    exits = exit_lines(text)
    if exits:
        ours = memory(ggufx.open(path), request(rid, path), ggufx.open)
        mtp_compute = sum(b["bytes"] for b in ours["buffers"] if b["kind"] == "mtp_compute")
        assert abs(mtp_compute / MiB - exits[0]) < 0.00006, (mtp_compute / MiB, exits[0])
        if model_name in MAIN_COMPUTE_BUILT:
            main_compute = sum(b["bytes"] for b in ours["buffers"] if b["kind"] == "compute")
            assert abs(main_compute / MiB - exits[1]) < 0.00006, (main_compute / MiB, exits[1])


def test_qwen35_main_graph_skips_the_nextn_layer_without_spec_type(mtp_models: dict[str, Path]) -> None:
    """A dense Qwen 3.5/3.6 file with its MTP block in llama-completion without --spec-type (the CPU run
    qwen35-mtp-c8192 of ../matrix): qwen35.cpp:159 loops over hparams.n_layer() = n_layer_all - n_layer_nextn,
    so the main graph never runs blk.4 (the NextN weights are left unused, TENSOR_SKIP): the rebuilt graph
    has llama.cpp's 248 nodes, none of layer 4, and its compute buffer is llama.cpp's to the 4 decimals."""
    path = mtp_models["qwen35-mtp"]
    model = ggufx.open(path)
    text = (CPU_LOGS / "qwen35-mtp-c8192.log").read_text()
    assert "completion -m @qwen35-mtp -c 8192 " in text and "--spec-type" not in text
    assert "unused tensor blk.4.nextn.eh_proj.weight" in text  # the NextN block is not loaded
    assert graphsim.unbuildable(model) is None
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate is None  # rebuilt, not the generic estimate
    compute = sum(b.bytes for b in bd.buffers if b.kind == "compute")
    exits = exit_lines(text)
    assert len(exits) == 1 and abs(compute / MiB - exits[0]) < 0.00006, (compute / MiB, exits)
    sp = bd.reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    assert ld.hp.n_layer == 5 and ld.hp.n_layer_main == 4
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(graphsim.build_graph(c, g))
    assert f"graph: nodes = {len(g.nodes)}, splits = 1" in text and len(g.nodes) == 248
    assert not any(n.name.endswith("-4") for n in g.nodes)
    assert any(n.name.endswith("-3") for n in g.nodes)


def test_the_mtp_rows_of_mem(mtp_models: dict[str, Path]) -> None:
    """``mem`` with draft-mtp: the NextN weights, the MTP context's KV cache (the draft cache types, not
    -ctk), output and compute as rows of their own, counted in the device's companions; the main context's
    recurrent state grows by the rollback snapshots; without --spec-type none of it."""
    path = mtp_models["qwen35moe-mtp"]
    model = ggufx.open(path)
    base = f"llama-server -m {path} -c 8192 -ctk q8_0 -ctv q8_0"
    plain = memory(model, MemoryRequest(llama_args=base, gpus="none"), ggufx.open)
    mtp = memory(model, MemoryRequest(llama_args=base + " --spec-type draft-mtp", gpus="none"), ggufx.open)
    assert not any(b["kind"].startswith("mtp_") for b in plain["buffers"])

    def by_kind(res: dict, kind: str) -> int:  # type: ignore[type-arg]
        return sum(b["bytes"] for b in res["buffers"] if b["kind"] == kind)

    # without a GPU the mapped span is the whole file, with or without the NextN block: what it adds is
    # the repacked copies of its Q4_K matrices (the logs' CPU_REPACK); the F32 norms stay in the span
    repacked = sum(t.nbytes for t in model.tensors if t.name.startswith("blk.4.") and t.type.name == "Q4_K")
    assert [(b["buft"], b["bytes"]) for b in mtp["buffers"] if b["kind"] == "mtp_model"] == [("CPU_REPACK", repacked)]
    assert by_kind(mtp, "model") == by_kind(plain, "model")
    # on a GPU every tensor of blk.4 (the NextN block: its attention, experts and nextn.*) is its own
    gpu = memory(model, MemoryRequest(llama_args=base + " --spec-type draft-mtp"), ggufx.open)
    nextn = sum(
        alloc_size("CUDA0", t.type, t.shape[0], t.n_elements // t.shape[0])
        for t in model.tensors
        if t.name.startswith("blk.4.")
    )
    assert [(b["buft"], b["bytes"]) for b in gpu["buffers"] if b["kind"] == "mtp_model"] == [("CUDA0", nextn)]
    # one layer of 2 KV heads x 256 x 8192 cells, K and V, f16 (-ctkd/-ctvd's default): 8 MiB; the main
    # cache (q8_0) is untouched
    assert by_kind(mtp, "mtp_kv") == 2 * 2 * 256 * 8192 * 2
    assert by_kind(mtp, "kv") == by_kind(plain, "kv")
    assert by_kind(mtp, "mtp_output") == 4 * 8192 * 4  # -np 4 (llama-server's default) rows of logits
    # n_rs_seq = 3 rollback snapshots: (1 + 3) x the state of 4 sequences
    assert by_kind(mtp, "recurrent") == 4 * by_kind(plain, "recurrent")
    assert by_kind(mtp, "mtp_compute") > 0
    companions = sum(d["companions"] for d in mtp["devices"])
    assert companions == sum(by_kind(mtp, k) for k in ("mtp_model", "mtp_kv", "mtp_output", "mtp_compute"))
    assert all(b["exact"] == (b["kind"] != "mtp_compute") for b in mtp["buffers"] if b["kind"].startswith("mtp_"))
    # -ctkd/-ctvd q8_0: the MTP cache in q8_0 (34 bytes per 32 values)
    q8 = memory(model, MemoryRequest(llama_args=base + " --spec-type draft-mtp -ctkd q8_0 -ctvd q8_0"), ggufx.open)
    assert by_kind(q8, "mtp_kv") == 2 * 2 * 256 * 8192 * 34 // 32


def test_the_nextn_weights_follow_their_layer(mtp_models: dict[str, Path]) -> None:
    """The NextN block is the last layer: -ngl counts it as llama.cpp's layer split does (n_layer_all),
    so -ngl 2 puts it (and the output layer) on the GPU, -ngl 1 the output layer alone."""
    path = mtp_models["qwen35moe-mtp"]
    model = ggufx.open(path)
    for ngl, where in ((2, "CUDA0"), (1, "CPU_Mapped")):
        req = MemoryRequest(llama_args=f"llama-server -m {path} -c 4096 -ngl {ngl} --spec-type draft-mtp")
        res = memory(model, req, ggufx.open)
        assert {b["buft"] for b in res["buffers"] if b["kind"] == "mtp_model"} == {where}, ngl
        kv = {b["buft"] for b in res["buffers"] if b["kind"] == "mtp_kv"}
        assert kv == {"CUDA0" if where == "CUDA0" else "CPU"}, ngl


def test_the_option_and_the_command_line(mtp_models: dict[str, Path]) -> None:
    """``MemoryRequest.spec_type`` (``ggufx mem --spec-type draft-mtp``) is the command line's --spec-type."""
    path = mtp_models["qwen35-mtp"]
    model = ggufx.open(path)
    line = memory(model, MemoryRequest(llama_args=f"llama-server -m {path} -c 8192 --spec-type draft-mtp"), ggufx.open)
    req = MemoryRequest(ctx=8192, parallel=4, kv_unified=True, tool="llama-server", spec_type="draft-mtp")
    opt = memory(model, req, ggufx.open)
    assert [(b["kind"], b["bytes"]) for b in line["buffers"]] == [(b["kind"], b["bytes"]) for b in opt["buffers"]]
    # other types make no MTP context; draft-mtp among several does
    several = MemoryRequest(llama_args=f"llama-server -m {path} -c 8192 --spec-type ngram-mod,draft-mtp")
    assert any(b["kind"] == "mtp_kv" for b in memory(model, several, ggufx.open)["buffers"])
    ngram = MemoryRequest(llama_args=f"llama-server -m {path} -c 8192 --spec-type ngram-mod")
    assert not any(b["kind"].startswith("mtp_") for b in memory(model, ngram, ggufx.open)["buffers"])


def test_spec_type_is_read_not_ignored() -> None:
    a = parse_args("llama-server -m x --spec-type draft-mtp --spec-type ngram-mod -ctkd q8_0 --spec-draft-n-max 5")
    assert a.spec_types == ("draft-mtp", "ngram-mod") and a.spec_n_max == 5 and a.spec_cache == ("q8_0", "f16")
    assert "--spec-type" not in a.others
    with pytest.raises(InputError, match="unknown speculative type: 'draft-bogus'"):
        parse_args("llama-server -m x --spec-type draft-bogus")
    with pytest.raises(InputError, match="llama-completion does not accept it"):
        parse_args("llama-completion -m x --spec-type draft-mtp")
    with pytest.raises(InputError, match="does not accept it"):
        MemoryRequest(spec_type="draft-mtp", tool="llama-completion").setup(ggufx.open)


def test_a_model_without_mtp_layers_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    """llama.cpp cannot make the MTP context of a model without NextN layers (llama-server stops)."""
    path = cpu_model("qwen35moe", tmp_path, smollm2_path)
    req = MemoryRequest(llama_args=f"llama-server -m {path} -c 4096 --spec-type draft-mtp")
    with pytest.raises(InputError, match="has no MTP layers"):
        memory(ggufx.open(path), req, ggufx.open)


def test_an_mtp_context_not_modelled_is_said(smollm2_path: Path, tmp_path: Path) -> None:
    """Ling's (bailingmoe3) NextN layer: its MTP context is not modelled yet, and the answer says so (the NextN
    weights it loads are counted); dots3note's NextN weights are not counted either."""
    path = cpu_model("bailingmoe3-mtp", tmp_path, smollm2_path)
    req = MemoryRequest(llama_args=f"llama-server -m {path} -c 4096 --spec-type draft-mtp")
    res = memory(ggufx.open(path), req, ggufx.open)
    assert any("MTP context of bailingmoe3" in n and "not modelled" in n for n in res["notes"])
    assert {b["kind"] for b in res["buffers"] if b["kind"].startswith("mtp_")} == {"mtp_model"}
    path = cpu_model("dots3note", tmp_path, smollm2_path)
    req = MemoryRequest(llama_args=f"llama-server -m {path} -c 4096 --spec-type draft-mtp")
    res = memory(ggufx.open(path), req, ggufx.open)
    assert any("NextN weights it loads are not modelled" in n for n in res["notes"])
    assert not any(b["kind"].startswith("mtp_") for b in res["buffers"])


def test_split_log() -> None:
    """The main context's lines, then the MTP context's: its last reservation counts, and of the exit lines
    the first is the MTP context's."""
    rid = next(r for r in sorted(RUNS) if exit_lines((MTP_LOGS / f"{r}.log").read_text()))
    text = (MTP_LOGS / f"{rid}.log").read_text()
    main, mtp = split_log(text)
    assert "creating MTP draft context" not in main + mtp
    assert sum("sched_reserve" in x and "compute buffer size" in x for x in mtp.splitlines()) == 1
    assert exit_lines(mtp) == exit_lines(text)[:1] and exit_lines(main) == exit_lines(text)[1:]
    with pytest.raises(InputError, match="no MTP context"):
        split_log(main)


@pytest.mark.parametrize("rid", OTHER_RUNS)
def test_the_main_context_where_the_mtp_context_is_not_modelled(
    rid: str, mtp_models: dict[str, Path], smollm2_path: Path, tmp_path: Path
) -> None:
    """Architectures whose MTP context ggufx does not model: the answer says so, and the main context it does
    model stays llama.cpp's under draft-mtp: the weights with the NextN tensors loaded (where proven), the KV
    cache, the recurrent state with its rollback snapshots (GLM-5-Next's, Qwen4-exp's, Ling's), the output.
    DeepSeek V4's compressor states keep snapshots too, which ggufx does not model (a note says so)."""
    model_name, _ = RUNS[rid]
    path = cpu_model(model_name, tmp_path, smollm2_path)
    text = (MTP_LOGS / f"{rid}.log").read_text()
    res = check(ggufx.open(path), request(rid, path), text, ggufx.open)
    arch = ggufx.open(path).architecture
    assert any(f"MTP context of {arch}" in n and "not modelled" in n for n in res["notes"]), res["notes"]
    rows = [r for r in res["rows"] if not r["kind"].startswith("mtp_") and r["kind"] != "compute"]
    assert {r["kind"] for r in rows} >= {"model", "kv", "output"}
    for r in rows:
        if r["kind"] == "state" and arch == "deepseek4":
            assert any("deepseek4 keeps 3 rollback snapshots" in n for n in res["notes"])
            continue
        assert r["ggufx_mib"] == round(r["llama_cpp_mib"], 2), (r, res["notes"])


def test_record_script_matches_matrix() -> None:
    """record_mtp.py records every line of matrix-mtp into mtp/<id>.log (no stray logs)."""
    logs = {p.stem for p in MTP_LOGS.glob("*.log")}
    assert logs == {rid for rid, _, _ in MATRIX}
    assert json.loads((CPU_LOGS / "tensors.json").read_text())["qwen35-mtp"]


def test_mem_spec_type_on_the_command_line(cli, mtp_models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    """``ggufx mem FILE --spec-type draft-mtp``: the mtp_* rows in --json, the MTP line in the text; an unknown
    type is a usage error (exit 2)."""
    path = str(mtp_models["qwen35moe-mtp"])
    r = cli("mem", path, "-c", "8192", "--gpus", "none", "--spec-type", "draft-mtp", "--json")
    assert r.exit_code == 0, r.stderr
    kinds = {b["kind"] for b in json.loads(r.stdout)["buffers"]}
    assert {"mtp_model", "mtp_kv", "mtp_output", "mtp_compute"} <= kinds
    r = cli("mem", path, "-c", "8192", "--gpus", "none", "--spec-type", "draft-mtp", "--spec-draft-n-max", "1")
    assert r.exit_code == 0 and "MTP draft context's KV cache 16.00 MiB" in r.stdout, r.stdout
    assert "keeps 1 rollback snapshots" in r.stdout
    r = cli("mem", path, "--spec-type", "draft-nope")
    assert r.exit_code == 2 and "unknown speculative type: 'draft-nope'" in r.stderr


def test_fit_counts_the_mtp_context(mtp_models: dict[str, Path]) -> None:
    """``--fit`` with draft-mtp: llama.cpp's fit adds the MTP context (KV and compute, its weights shared) to
    every dry run of the main model loaded with its NextN block: at a fixed -c, what it measures is the
    main context's use plus every MTP row but the output."""
    path = mtp_models["qwen35moe-mtp"]
    model = ggufx.open(path)
    line = f"llama-server -m {path} -c 16384 -np 1"
    from ggufx.results.memory import fit

    plain = fit(model, MemoryRequest(llama_args=line, fit_budget="8GiB"), ggufx.open)
    mtp = fit(model, MemoryRequest(llama_args=line + " --spec-type draft-mtp", fit_budget="8GiB"), ggufx.open)
    res = memory(model, MemoryRequest(llama_args=line + " --spec-type draft-mtp"), ggufx.open)
    gpu = [b for b in res["buffers"] if b["buft"] == "CUDA0"]
    assert plain["llama_cpp"]["status"] == mtp["llama_cpp"]["status"] == "unchanged"
    assert mtp["llama_cpp"]["use"]["CUDA0"] == sum(b["bytes"] for b in gpu if b["kind"] != "output")
    assert mtp["llama_cpp"]["use"]["CUDA0"] > plain["llama_cpp"]["use"]["CUDA0"]
    assert any("MTP draft context" in n for n in mtp["notes"]) and "notes" not in plain
    # a budget the MTP context does not leave room for at the training context: fit shortens it further
    auto = f"llama-server -m {path} -np 1"
    small = fit(model, MemoryRequest(llama_args=auto, fit_budget="700MiB", fit_target="100"), ggufx.open)
    small_mtp = fit(
        model,
        MemoryRequest(llama_args=auto + " --spec-type draft-mtp", fit_budget="700MiB", fit_target="100"),
        ggufx.open,
    )
    assert small_mtp["llama_cpp"]["n_ctx"] < small["llama_cpp"]["n_ctx"]


def test_rollback_snapshots_only_where_llama_cpp_keeps_them(mtp_models: dict[str, Path]) -> None:
    """Qwen 3.5 keeps --spec-draft-n-max snapshots of its recurrent state per sequence; Qwen3-Next does not
    (llm_arch_supports_rs_rollback: llama.cpp clamps n_rs_seq to 0, its log says so)."""
    for name, factor in (("qwen35-mtp", 6), ("qwen3next-mtp", 1)):
        path = mtp_models[name]
        base = f"llama-server -m {path} -c 4096 -np 2"
        plain = memory(ggufx.open(path), MemoryRequest(llama_args=base, gpus="none"), ggufx.open)
        req = MemoryRequest(llama_args=base + " --spec-type draft-mtp --spec-draft-n-max 5", gpus="none")
        mtp = memory(ggufx.open(path), req, ggufx.open)
        rs = [sum(b["bytes"] for b in r["buffers"] if b["kind"] == "recurrent") for r in (plain, mtp)]
        assert rs[1] == factor * rs[0], name
    log = (MTP_LOGS / "qwen3next-mtp-c8192.log").read_text()
    assert "does not support recurrent partial rollback; clamping to 0" in log


def test_sm_tensor_says_the_mtp_context_is_not_modelled(mtp_models: dict[str, Path]) -> None:
    path = mtp_models["qwen35moe-mtp"]
    req = MemoryRequest(
        llama_args=f"llama-server -m {path} -c 4096 -sm tensor --spec-type draft-mtp", gpus="24GiB,24GiB"
    )
    res = memory(ggufx.open(path), req, ggufx.open)
    assert any("MTP context is not modelled with -sm tensor" in n for n in res["notes"])
    assert not any(b["kind"].startswith("mtp_") for b in res["buffers"])


def test_fit_says_when_the_mtp_context_is_left_out(smollm2_path: Path, tmp_path: Path) -> None:
    from ggufx.results.memory import fit

    path = cpu_model("bailingmoe3-mtp", tmp_path, smollm2_path)
    req = MemoryRequest(llama_args=f"llama-server -m {path} --spec-type draft-mtp", fit_budget="4GiB")
    res = fit(ggufx.open(path), req, ggufx.open)
    assert any("MTP context of bailingmoe3 is not modelled" in n for n in res["notes"])


def _fit_model(mtp_models: dict[str, Path]):  # type: ignore[no-untyped-def]
    from ggufx.analysis.memory.placement import Device

    model = ggufx.open(mtp_models["qwen35moe-mtp"])  # block_count 5 with nextn_predict_layers 1, 8 experts
    a = parse_args("-m x -c 4096 -np 1")
    return model, [Device("CUDA0", 90 * MiB)], a


def test_fit_splits_the_nextn_layers_under_draft_mtp(mtp_models: dict[str, Path]) -> None:
    """common/fit.cpp:140-143: under load_mtp (--spec-type draft-mtp) fit's hp_ngl is llama_model_n_layer plus
    llama_model_n_layer_nextn, the layers it splits (hp_ngl + 1 with the output layer, fit.cpp:676) and counts the
    -ot indices from (il0 = hp_ngl + 1 - ngl, fit.cpp:560). On qwen35moe-mtp (4 layers + 1 NextN layer, MoE), one
    GPU of 90 MiB, no margin, and a cost model of the dry runs (MiB: 50 on the device with no layer, the output
    layer 15, a full layer 20, a dense-only one 8), llama.cpp's rule by hand:
    step 1: -ngl -1 = 50 + 15 + 5 x 20 = 165 > 90 (-c given: no context step); fit.cpp:616-645: the dense-only
    run 50 + 15 + 5 x 8 = 105 leaves a surplus of -15, so step 4 is skipped; step 3 (fit.cpp:676-735): low
    (0, 0) = 50, high (hp_ngl + 1 = 6, 5) = 50 + 15 + 5 x 8 = 105 > 90, delta 6, step trunc(6 x 40 / 55) = 4
    -> (4, 3) (the output layer full) = 15 + 3 x 8 + 50 = 89 fits; delta 2, step max(trunc(2 x 1 / 16), 1) = 1
    -> (5, 4) = 97 does not; delta 1: (4, 3). set_ngl_tensor_split_tbo: -ngl 4, il0 = 6 - 4 = 2, one full
    layer, then the experts of layers 3, 4 and 5 (the output layer's index, matching no tensor) on the CPU.
    Without the NextN layer counted (hp_ngl 4) the same costs would answer -ot for layers 2, 3, 4: one layer
    short of llama.cpp's placement (load_tensors' i_gpu_start = n_layer_all + 1 - ngl = 2 keeps layer 2 whole)."""
    from dataclasses import replace

    from ggufx.analysis.memory.fit import MOE_ALL, DeviceUse, DryRun, hp_ngl, llama_fit
    from ggufx.analysis.memory.hparams import hparams

    model, devices, a = _fit_model(mtp_models)
    mtp = replace(a.offload, mtp=True)
    hp = hparams(model)
    assert (hp_ngl(hp, mtp), hp_ngl(hp, a.offload)) == (5, 4)

    def cost(run: DryRun) -> tuple[DeviceUse, ...]:
        if run.layers is None:
            mib = 50 + 15 + 5 * (8 if run.experts_on_host else 20)
        else:
            n, p = run.layers[0].n_layer, run.layers[0].n_part
            mib = 50 + (15 + (n - 1 - p) * 20 + p * 8 if n else 0)
        return (DeviceUse(mib * MiB, 0, 0),)

    out = llama_fit(model, devices, mtp, a.context, margins=0, measure=cost)
    runs = [t.run for t in out.trials]
    assert runs[:2] == [DryRun(4096), DryRun(4096, experts_on_host=True)]
    assert [(x.layers[0].n_layer, x.layers[0].n_part) for x in runs[2:] if x.layers] == [(0, 0), (6, 5), (4, 3), (5, 4)]
    assert (out.status, out.n_gpu_layers, out.tensor_split) == ("layers", 4, ())
    moe = MOE_ALL.replace(r"\d+", "{}")
    assert out.overrides == tuple((moe.format(il), "CPU") for il in (3, 4, 5))
    # the NextN layer left out (no load_mtp): 5 layers split, the -ot indices one lower
    plain = llama_fit(model, devices, a.offload, a.context, margins=0, measure=cost)
    assert [(t.run.layers[0].n_layer, t.run.layers[0].n_part) for t in plain.trials if t.run.layers][:2] == [
        (0, 0),
        (5, 4),
    ]
    assert plain.overrides == tuple((moe.format(il), "CPU") for il in (2, 3, 4))


def test_fit_dry_runs_place_the_nextn_layers_under_draft_mtp(mtp_models: dict[str, Path]) -> None:
    """ggufx's own dry runs (breakdown_measure) turn fit's layer split into -ngl/-ot with the same hp_ngl: under
    draft-mtp 6 layers with 5 dense-only are -ngl 6 with the experts of layers 1-5 on the CPU (layer 0 whole,
    fit.cpp:560's il0 = 0), the weights of ``breakdown`` at those arguments; and with ggufx's dry runs fit's
    first split of the 90 MiB GPU is the 6 layers (hp_ngl + 1)."""
    from dataclasses import replace

    from ggufx.analysis.memory.fit import MOE_ALL, DeviceLayers, DryRun, breakdown_measure, device_use, llama_fit

    model, devices, a = _fit_model(mtp_models)
    mtp = replace(a.offload, mtp=True)
    run = DryRun(4096, (DeviceLayers(6, 5),), ("CPU",))
    moe = MOE_ALL.replace(r"\d+", "{}")
    ot = tuple((moe.format(il), "CPU") for il in (1, 2, 3, 4))  # (blk.5 is the output layer's: no tensor)
    want = device_use(breakdown(model, devices, replace(mtp, n_gpu_layers=6, overrides=ot), a.context), devices)
    assert breakdown_measure(model, devices, mtp, a.context)(run) == want
    everything = device_use(breakdown(model, devices, mtp, a.context), devices)
    assert want[0].model < everything[0].model  # the experts of 4 layers left on the CPU
    out = llama_fit(model, devices, mtp, a.context, margins=0)
    layered = [t.run.layers[0] for t in out.trials if t.run.layers]
    assert (layered[0].n_layer, layered[1].n_layer, layered[1].n_part) == (0, 6, 5)
    assert out.status == "layers" and 0 < out.n_gpu_layers <= 6
