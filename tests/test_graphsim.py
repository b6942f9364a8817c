"""The simulated compute buffers (graph + scheduler + ggml-alloc replay) against llama.cpp's own logs.

Every recorded run of a model whose graph :mod:`ggufx.analysis.memory.graph.graphsim` builds (dense ``llama``:
SmolLM2-135M, Llama 3.2 1B-like, Llama 3.1 8B-like; ``qwen3moe``: Qwen3-30B-A3B-like; ``gemma3``:
Gemma 3 270M with its sliding-window cache; ``qwen35``: the Qwen3.6 27B hybrid of gated attention
and Gated DeltaNet layers) on the CPU, one or two H100s: each compute buffer
llama.cpp printed must come out to the 0.01 MiB it prints (the ``~llama_context`` exit lines carry
four decimals), including the configurations the phase model of :mod:`ggufx.analysis.memory.compute` only
approximates (several GPUs with host weights, four streams with the host layers' attention on the
first GPU, expert weights on the host with --cpu-moe / --n-cpu-moe / -ot, whose whole tensors are
copied to the first GPU, and the tensors CUDA keeps alive around its fused MoE ops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

import ggufx
from ggufx.analysis.memory.buffers import Breakdown, MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device
from ggufx.errors import InputError

from .llamacpp_logs import LOGS, RUNS, devices_of, with_known

MODELS = ("smollm2-135m", "llama32-1b", "llama31-8b", "qwen3moe-30b-a3b", "gemma3-270m", "qwen36-27b")
SIMULATED = sorted(
    rid
    for rid, r in RUNS.items()
    if r["tool"] in ("completion", "server", "mtmd")
    and r["exit_status"] == 0
    and not rid.startswith("fiton")
    and "-sm row" not in r["args"]
    and parse_args(r["args"].replace("@", "")).model in MODELS
)
# the runs tests/test_memory_logs.py calls a rough approximation for the phase model
PHASE_ROUGH = ("2g-l8b-ngl20-c32768", "2g-srv-l8b-ngl20-np4", "srv-l8b-ngl0-np4-c32768")


def sim_params(bd: Breakdown) -> graphsim.SimParams:
    """The reservation ``breakdown`` resolved (micro-batch, outputs, cells, streams, pipeline
    parallelism: llama-context.cpp:432-459), which the simulation is then given."""
    assert bd.reservation is not None
    return bd.reservation


def simulate_run(rid: str, models: dict[str, Path]) -> tuple[dict[str, float], dict[str, int]]:
    run = RUNS[rid]
    log = parse_log((LOGS / f"{rid}.log").read_text())
    args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
    model = ggufx.open(models[str(args.model)])
    devices = devices_of(run, log.devices)
    bd = breakdown(model, devices, args.offload, args.context)
    return log.buffers["compute"], graphsim.simulate(model, devices, args.offload, sim_params(bd))


def test_the_simulated_runs_cover_the_llama_matrix() -> None:
    assert len(SIMULATED) >= 100
    args = " ".join(RUNS[r]["args"] for r in SIMULATED)
    for option in ("-ngl 0", "-ngl 1 ", "-ngl 20", "-fa off", "-ctk q8_0", "-ub 2048", "-np 4", "-nkvo", "-ts 3,1"):
        assert option in args, option
    for option in ("-sm tensor", "-sm tensor -ts 3,1", "-sm tensor -ctk q8_0", "-np 4 -sm tensor"):
        assert option in args, option
    assert {RUNS[r]["gpus"] for r in SIMULATED} == {"1", "2", "cpu"}
    assert set(PHASE_ROUGH) <= set(SIMULATED)


@pytest.mark.parametrize("rid", with_known("compute", SIMULATED))
def test_every_compute_buffer_is_llama_cpps(rid: str, hole_models: dict[str, Path]) -> None:
    recorded, simulated = simulate_run(rid, hole_models)
    assert recorded
    got = {buft: round(simulated.get(buft, 0) / MiB, 4) for buft in recorded}
    assert all(abs(got[b] - recorded[b]) < 0.01 for b in recorded), (recorded, got)


def test_the_simulated_runs_cover_the_hybrid() -> None:
    """The qwen35 runs: one and two GPUs, partial offload, -nkvo, quantized caches, -fa off,
    llama-server with four sequences, the CPU backend."""
    runs = [RUNS[r] for r in SIMULATED if "@qwen36-27b" in RUNS[r]["args"]]
    args = " ".join(r["args"] for r in runs)
    assert len(runs) >= 40 and {r["gpus"] for r in runs} == {"1", "2", "cpu"}
    for option in ("-ngl 40", "-ngl 0", "-nkvo", "-ctk q4_0", "-ctk q8_0", "-fa off", "-np 4", "-ub 2048", "-ts 3,1"):
        assert option in args, option
    assert {r["tool"] for r in runs} == {"completion", "server", "mtmd"}


def test_host_layers_attention_at_131072_cells(hole_models: dict[str, Path]) -> None:
    """llama.cpp's fit dry runs of llama31-8b with 7 and 0 of 33 layers on one H100 at 131072 cells
    (936.0039 MiB, the run it chose, `fiton-l8b-c131072-fitt75000`): the first GPU runs the host
    layers' flash attention over copies of their host cache."""
    text = (LOGS / "fiton-l8b-c131072-fitt75000.log").read_text()
    assert "offloaded 7/33 layers to GPU" in text
    recorded = parse_log(text).buffers["compute"]
    model = ggufx.open(hole_models["llama31-8b"])
    gpu = [Device("CUDA0", 80552 * MiB)]
    for ngl in ("7", "0"):
        args = parse_args(f"-m x -ngl {ngl} -c 131072")
        bd = breakdown(model, gpu, args.offload, args.context)
        got = graphsim.simulate(model, gpu, args.offload, sim_params(bd))
        assert abs(got["CUDA0"] / MiB - recorded["CUDA0"]) < 0.01
        if ngl == "7":
            assert abs(got["CUDA_Host"] / MiB - recorded["CUDA_Host"]) < 0.01


def test_other_architectures_are_refused(hole_models: dict[str, Path]) -> None:
    reason = graphsim.simulated(ggufx.open(hole_models["mmproj-qwen36-27b"]))
    assert reason is not None and "'clip' graph is not simulated" in reason
    assert "not built" in (graphsim.unbuildable(ggufx.open(hole_models["mmproj-qwen36-27b"])) or "")
    for name in ("llama31-8b", "qwen3moe-30b-a3b", "gemma3-270m", "qwen36-27b"):
        assert graphsim.simulated(ggufx.open(hole_models[name])) is None


def _write_moe(path: Path, n_used: int = 2, drop: str = "", flat: str = "") -> Path:
    """A tiny qwen3moe file (2 layers, 4 experts); ``drop`` leaves a tensor out, ``flat`` writes
    one expert tensor two-dimensional."""
    w = GGUFWriter(str(path), "qwen3moe")
    for key, value in (("block_count", 2), ("embedding_length", 64), ("feed_forward_length", 128)):
        w.add_uint32(f"qwen3moe.{key}", value)
    for key, value in (("attention.head_count", 4), ("attention.head_count_kv", 2), ("context_length", 256)):
        w.add_uint32(f"qwen3moe.{key}", value)
    w.add_uint32("qwen3moe.expert_count", 4)
    w.add_uint32("qwen3moe.expert_used_count", n_used)
    w.add_uint32("qwen3moe.expert_feed_forward_length", 32)
    shapes = {"token_embd.weight": (32, 64), "output_norm.weight": (64,)}
    for il in range(2):
        p = f"blk.{il}."
        shapes |= {p + n: (64,) for n in ("attn_norm.weight", "ffn_norm.weight")}
        shapes |= {p + n: (16,) for n in ("attn_q_norm.weight", "attn_k_norm.weight")}
        shapes |= {p + "attn_q.weight": (64, 64), p + "attn_k.weight": (32, 64), p + "attn_v.weight": (32, 64)}
        shapes |= {p + "attn_output.weight": (64, 64), p + "ffn_gate_inp.weight": (4, 64)}
        shapes |= {p + "ffn_gate_exps.weight": (4, 32, 64), p + "ffn_up_exps.weight": (4, 32, 64)}
        shapes |= {p + "ffn_down_exps.weight": (4, 64, 32)}
    for name, shape in shapes.items():
        if name != drop:
            w.add_tensor(name, np.zeros(shape[1:] if name == flat else shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_moe_files_llama_cpp_would_not_load_are_refused(tmp_path: Path) -> None:
    """llama.cpp refuses a qwen3moe file without a layer's router, with no expert used, with more
    used than there are, or with an expert tensor of the wrong rank (qwen3moe.cpp:34-55); the
    simulation names the reason and leaves the file to the phase model."""
    assert graphsim.simulated(ggufx.open(_write_moe(tmp_path / "ok.gguf"))) is None
    for name, kwargs, why in (
        ("router", {"drop": "blk.1.ffn_gate_inp.weight"}, "blk.1.ffn_gate_inp.weight"),
        ("unused", {"n_used": 0}, "expert_used_count"),
        ("overused", {"n_used": 5}, "expert_used_count"),
        ("flat", {"flat": "blk.0.ffn_up_exps.weight"}, "three-dimensional tensor blk.0.ffn_up_exps.weight"),
    ):
        reason = graphsim.simulated(ggufx.open(_write_moe(tmp_path / f"{name}.gguf", **kwargs)))
        assert reason is not None and why in reason, (name, reason)


def _write_qwen35(
    path: Path, drop: str = "", keys: dict[str, int] | None = None, shapes: dict[str, tuple[int, ...]] | None = None
) -> Path:
    """A tiny qwen35 file (4 layers: three Gated DeltaNet, one attention); ``drop`` leaves a tensor
    out, ``keys`` overrides metadata, ``shapes`` tensor shapes."""
    w = GGUFWriter(str(path), "qwen35")
    meta = {"block_count": 4, "embedding_length": 64, "feed_forward_length": 128, "context_length": 256}
    meta |= {"attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16}
    meta |= {"attention.value_length": 16, "full_attention_interval": 4, "ssm.conv_kernel": 4}
    meta |= {"ssm.inner_size": 32, "ssm.state_size": 8, "ssm.group_count": 2, "ssm.time_step_rank": 4}
    for key, value in (meta | (keys or {})).items():
        w.add_uint32(f"qwen35.{key}", value)
    w.add_float32("qwen35.attention.layer_norm_rms_epsilon", 1e-6)
    all_shapes = {"token_embd.weight": (32, 64), "output_norm.weight": (64,)}
    for il in range(4):
        p = f"blk.{il}."
        all_shapes |= {p + n: (64,) for n in ("attn_norm.weight", "post_attention_norm.weight")}
        all_shapes |= {
            p + "ffn_gate.weight": (128, 64),
            p + "ffn_up.weight": (128, 64),
            p + "ffn_down.weight": (64, 128),
        }
        if il == 3:
            all_shapes |= {p + "attn_q.weight": (128, 64), p + "attn_k.weight": (32, 64), p + "attn_v.weight": (32, 64)}
            all_shapes |= {
                p + "attn_output.weight": (64, 64),
                p + "attn_q_norm.weight": (16,),
                p + "attn_k_norm.weight": (16,),
            }
        else:
            all_shapes |= {
                p + "attn_qkv.weight": (64, 64),
                p + "attn_gate.weight": (32, 64),
                p + "ssm_conv1d.weight": (64, 4),
            }
            all_shapes |= {p + "ssm_dt.bias": (4,), p + "ssm_a": (4,), p + "ssm_norm.weight": (8,)}
            all_shapes |= {
                p + "ssm_beta.weight": (4, 64),
                p + "ssm_alpha.weight": (4, 64),
                p + "ssm_out.weight": (64, 32),
            }
    for name, shape in (all_shapes | (shapes or {})).items():
        if name != drop:
            w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_hybrid_files_the_graph_cannot_read_are_refused(tmp_path: Path) -> None:
    """A qwen35 file without a Gated DeltaNet tensor, with inconsistent state dimensions, a tensor
    of another shape than qwen35.cpp creates (which llama.cpp would not load) or a zero attention
    interval is left to the phase model with the reason; a well-formed one is simulated on the CPU, one
    with a multi-token-prediction block too (its last layer, which the main graph never runs)."""
    ok = ggufx.open(_write_qwen35(tmp_path / "ok.gguf"))
    assert graphsim.simulated(ok) is None
    args = parse_args("-m x -c 256 -ngl 0")
    bd = breakdown(ok, [], args.offload, args.context)
    sizes = graphsim.simulate(ok, [], args.offload, sim_params(bd))
    assert sizes["CPU"] > 0
    for name, kwargs, why in (
        ("ssm_a", {"drop": "blk.1.ssm_a"}, "tensor blk.1.ssm_a, which the file lacks"),
        ("inner", {"keys": {"ssm.inner_size": 33}}, "ssm.inner_size"),
        ("rank", {"keys": {"ssm.time_step_rank": 0}}, "ssm.time_step_rank"),
        ("shape", {"shapes": {"blk.0.attn_qkv.weight": (64, 48)}}, "blk.0.attn_qkv.weight of shape [64, 64]"),
        ("interval", {"keys": {"full_attention_interval": 0}}, "full_attention_interval"),
    ):
        reason = graphsim.simulated(ggufx.open(_write_qwen35(tmp_path / f"{name}.gguf", **kwargs)))
        assert reason is not None and why in reason, (name, reason)
    # an MTP block (the last layer) is loaded as an extra layer the main graph never runs (qwen35.cpp:158-159)
    mtp = ggufx.open(_write_qwen35(tmp_path / "mtp.gguf", keys={"nextn_predict_layers": 1}))
    assert graphsim.simulated(mtp) is None


# -- the shortened replay against the whole one --------------------------------------------------------

ALL_RUNS = sorted(RUNS)


@pytest.mark.parametrize("rid", ALL_RUNS)
def test_the_shortened_replay_is_the_whole_one(rid: str, hole_models: dict[str, Path]) -> None:
    """Every recorded run's configuration, prompt processing and token generation: the compute
    buffers of the replay that builds a few of each run of identical layers
    (:func:`graphsim.simulate`) are byte for byte those of the replay of every layer (``whole``)."""
    run = RUNS[rid]
    log = parse_log((LOGS / f"{rid}.log").read_text())
    args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
    model = ggufx.open(hole_models[str(args.model)])
    if graphsim.simulated(model) is not None:
        pytest.skip(f"{args.model}: not simulated")
    # llama-fit-params prints no device line: the H100's free memory (its dry runs: tests/test_fit_logs.py)
    devices = devices_of(run, log.devices or [("CUDA0", 80552)])
    try:
        bd = breakdown(model, devices, args.offload, args.context)
    except (ggufx.GGUFError, InputError) as e:  # options ggufx refuses (tests/test_memory_logs.py checks why)
        pytest.skip(str(e))
    if bd.reservation is None or not any(b.kind == "compute" for b in bd.buffers):
        pytest.skip("no simulated compute buffers")
    sp = sim_params(bd)
    whole = graphsim.simulate(model, devices, args.offload, sp, whole=True)
    assert graphsim.simulate(model, devices, args.offload, sp) == whole


@pytest.mark.parametrize(
    ("name", "argv", "n_gpus", "most"),
    [
        ("qwen36-27b", "-c 262144 -ctk q4_0 -ctv q4_0", 1, 16),
        ("qwen36-27b", "-c 32768 -ngl 40", 1, 32),
        ("qwen3moe-30b-a3b", "-c 32768", 1, 8),
        ("qwen3moe-30b-a3b", "-c 32768 --n-cpu-moe 20", 1, 16),
        # experts of layers 13-46 on the host, as --fit moves them: the last trunk layer (45) is the last
        # one built (its split takes the output ids), the NextN block after it is not
        ("glm45-air", r"-c 4096 -ot blk\.(1[3-9]|[2-4][0-9])\.ffn_.*_exps=CPU", 1, 16),
        ("llama31-8b", "-c 32768", 2, 16),
        ("llama31-8b", "-c 32768 -fa off -np 4", 1, 8),
    ],
)
def test_the_shortened_replay_builds_few_layers(
    name: str, argv: str, n_gpus: int, most: int, hole_models: dict[str, Path]
) -> None:
    """The shortcut is taken: the replay's periodicity holds where the plan of one of the warm-ups
    tried needs it, with at most ``most`` layers built, and gives the whole replay's buffers."""
    model = ggufx.open(hole_models[name])
    args = parse_args(f"-m x {argv}")
    devices = [Device(f"CUDA{i}", 80000 * MiB) for i in range(n_gpus)]
    sp = sim_params(breakdown(model, devices, args.offload, args.context))
    ld = graphsim._loaded(model, devices, args.offload)
    for n_tokens in (sp.n_ubatch, sp.n_seq_max):
        c = graphsim._context(model, ld, sp, n_tokens, n_tokens)
        n_out = min(n_tokens, sp.n_outputs)
        warm = next(w for w in graphsim.WARM if graphsim._one(model, ld, sp, n_tokens, n_out, w) is not None)
        plan = graphsim._plan(graphsim._layer_signatures(c, ld), warm)
        assert plan.checks and len(plan.layers) <= most < ld.hp.n_layer, plan.layers
    assert graphsim.simulate(model, devices, args.offload, sp) == graphsim.simulate(
        model, devices, args.offload, sp, whole=True
    )


def test_a_warm_up_making_a_plan_found_not_periodic_is_not_replayed(
    hole_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen3-Next's prompt reservation with every layer on the host (--fit's first dry run) and q8_0
    caches is not periodic after two blocks of four layers; three blocks kept make the same plan (the
    replay resumes after an even number left out), so that plan is replayed once, then six blocks:
    two replays, not three, and the whole replay's buffers. (Where the blocks left out cannot be
    replayed from the last kept block's events: refused here; with them, the first plan holds, below.)"""
    from ggufx.analysis.memory.graph import galloc

    monkeypatch.setattr(galloc._Blocks, "replay", lambda *_: False)
    model = ggufx.open(hole_models["qwen3next-80b-a3b"])
    args = parse_args("-m x -c 4096 -ngl 0 -fa on -ctk q8_0 -ctv q8_0")
    devices = [Device("CUDA0", 80000 * MiB)]
    sp = sim_params(breakdown(model, devices, args.offload, args.context))
    ld = graphsim._loaded(model, devices, args.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    sigs = graphsim._layer_signatures(c, ld)
    assert graphsim._plan(sigs, 2) == graphsim._plan(sigs, 3)
    graphsim._RESULTS.pop(model, None)
    graphsim._LAST_WARM.pop(model, None)
    built: list[int] = []
    reserve = graphsim._reserve

    def spy(nodes, *rest):  # type: ignore[no-untyped-def]
        built.append(len(nodes))
        return reserve(nodes, *rest)

    monkeypatch.setattr(graphsim, "_reserve", spy)
    got = graphsim.simulate(model, devices, args.offload, sp)
    assert len(built) == 3  # prompt: 2 blocks (not periodic), 6 blocks; one token: 2 blocks
    monkeypatch.setattr(graphsim, "_reserve", reserve)
    whole = graphsim.simulate(model, devices, args.offload, sp, whole=True)
    assert got == whole
    # the blocks left out replayed from the events of the last kept: the plan of two blocks holds
    monkeypatch.undo()
    graphsim._RESULTS.pop(model, None)
    graphsim._LAST_WARM.pop(model, None)
    built.clear()
    monkeypatch.setattr(graphsim, "_reserve", spy)
    assert graphsim.simulate(model, devices, args.offload, sp) == whole
    assert len(built) == 2


@pytest.mark.parametrize(
    ("name", "argv", "n_tokens"),
    [
        ("qwen3next-80b-a3b", "-c 4096 -ngl 99", "prompt"),
        ("qwen3next-80b-a3b", "-c 4096 -ngl 99", "token"),
        ("qwen3next-80b-a3b", r"-c 4096 -ngl 99 -ot blk\.(2[2-9]|[34][0-9])\.ffn_.*_exps=CPU", "token"),
        ("qwen3next-80b-a3b", r"-c 4096 -ngl 99 -ot blk\.(2[2-9]|[34][0-9])\.ffn_.*_exps=CPU", "prompt"),
    ],
)
def test_the_exact_warm_up_keeps_two_blocks_and_gives_the_whole_replays_buffers(
    name: str, argv: str, n_tokens: str, hole_models: dict[str, Path]
) -> None:
    """Exactly two blocks kept, an odd number of blocks left out: the replay must find the allocator
    periodic over one block where it resumes, and then gives the whole replay's buffers; fewer layers
    built than the plan that keeps a third block to leave an even number out."""
    model = ggufx.open(hole_models[name])
    args = parse_args(f"-m x {argv}")
    devices = [Device("CUDA0", 80000 * MiB)]
    sp = sim_params(breakdown(model, devices, args.offload, args.context))
    ld = graphsim._loaded(model, devices, args.offload)
    n = sp.n_ubatch if n_tokens == "prompt" else sp.n_seq_max
    n_out = min(n, sp.n_outputs)
    c = graphsim._context(model, ld, sp, n, n_out)
    sigs = graphsim._layer_signatures(c, ld)
    exact, even = graphsim._plan(sigs, 2, exact=True), graphsim._plan(sigs, 2)
    assert len(exact.layers) < len(even.layers)
    # an odd number left out somewhere: that check compares with one block back only
    assert any(two == one for _, one, two, _ in exact.checks)
    got = graphsim._one(model, ld, sp, n, n_out, 2, None, exact=True)
    assert got is not None
    assert got == graphsim._one(model, ld, sp, n, n_out, None)


@pytest.mark.parametrize(
    ("name", "argv", "hinted"),
    [
        ("qwen3next-80b-a3b", r"-ngl 99 -ot blk\.(2[2-9]|[34][0-9])\.ffn_.*_exps=CPU", True),
        # the 27B hybrid's allocator settles after the third block only: its exact plan of two fails
        ("qwen36-27b", "-ctk q4_0 -ctv q4_0", False),
    ],
)
def test_a_replay_settled_after_two_blocks_has_the_next_one_try_exactly_two(
    name: str, argv: str, hinted: bool, hole_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shortened replay of three blocks that finds the allocator the same after the second block as
    after the first has the next reservation of those kinds of layers (--fit's next dry run) try the
    exact plan of two blocks first: one replay per reservation, the whole replay's buffers. Where it
    does not (the 27B hybrid), the next one keeps the plan that held."""
    model = ggufx.open(hole_models[name])
    devices = [Device("CUDA0", 80000 * MiB)]
    graphsim._RESULTS.pop(model, None)
    graphsim._LAST_WARM.pop(model, None)
    args = parse_args(f"-m x -c 4096 {argv}")
    graphsim.simulate(model, devices, args.offload, sim_params(breakdown(model, devices, args.offload, args.context)))
    assert set(graphsim._LAST_WARM[model].values()) == {(2, True) if hinted else (2, False)}
    calls: list[bool] = []
    one = graphsim._one

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(bool(a[7] if len(a) > 7 else k.get("exact", False)))
        return one(*a, **k)

    args = parse_args(f"-m x -c 8192 {argv}")
    monkeypatch.setattr(graphsim, "_one", spy)
    sp = sim_params(breakdown(model, devices, args.offload, args.context))
    assert calls == [hinted, hinted]  # one replay per reservation
    monkeypatch.setattr(graphsim, "_one", one)
    got = graphsim.simulate(model, devices, args.offload, sp)
    assert got == graphsim.simulate(model, devices, args.offload, sp, whole=True)


@pytest.mark.parametrize(
    ("name", "argv", "builds"),
    [
        ("qwen36-27b", "-c 32768", 2),  # the prompt's graph, the probe's (which the token reservation takes)
        ("qwen36-27b", "-c 32768 -fa on", 2),  # no probe
        ("qwen3moe-30b-a3b", "-c 32768 --n-cpu-moe 20", 2),
        ("llama31-8b", "-c 32768 -np 4", 2),
    ],
)
def test_the_token_reservation_takes_the_flash_attention_probes_graph(
    name: str, argv: str, builds: int, hole_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-fa auto``: the probe builds and schedules the one-token graph of the plan the token
    reservation tries first; with flash attention kept on, that reservation splits and reserves that
    graph instead of building it again: two graphs built per breakdown, the whole replay's buffers."""
    model = ggufx.open(hole_models[name])
    devices = [Device("CUDA0", 80000 * MiB)]
    args = parse_args(f"-m x {argv}")
    made: list[str] = []
    build = graphsim.builder

    def counted(arch: str):  # type: ignore[no-untyped-def]
        b = build(arch)

        def run(*a):  # type: ignore[no-untyped-def]
            made.append(arch)
            return b(*a)

        run.__module__ = b.__module__
        return run

    monkeypatch.setattr(graphsim, "builder", counted)
    bd = breakdown(model, devices, args.offload, args.context)
    assert len(made) == builds
    monkeypatch.setattr(graphsim, "builder", build)
    sp = sim_params(bd)
    assert graphsim.simulate(model, devices, args.offload, sp) == graphsim.simulate(
        model, devices, args.offload, sp, whole=True
    )


def test_an_odd_number_left_out_needs_a_replay_periodic_over_one_block() -> None:
    """Where the blocks left out are odd in number, a state that repeats only every two blocks would
    resume in the other phase: the plan's check then compares with one block back only."""
    a, b, c = ("a",), ("b",), ("c",)
    sigs = [c, *([a, b] * 7), c]  # seven blocks of two layers between two others
    plan = graphsim._plan(sigs, 2, exact=True)
    assert plan.layers == (0, 1, 2, 3, 4, 13, 14, 15)  # two blocks, four left out, the last block kept
    assert plan.checks == ((5, 3, 1, 1),)  # four out: even, two blocks back allowed
    sigs = [c, *([a, b] * 8), c]
    plan = graphsim._plan(sigs, 2, exact=True)
    assert plan.layers == (0, 1, 2, 3, 4, 15, 16, 17)  # five left out: odd
    assert plan.checks == ((5, 3, 3, 1),)
    assert graphsim._plan(sigs, 2).layers == (0, 1, 2, 3, 4, 5, 6, 15, 16, 17)  # even: a third block kept


# -- fit's dry runs on a model with NextN/MTP layers ----------------------------------------------------


def test_fit_dry_run_counts_layers_without_the_nextn_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """common/fit.cpp:140-143 counts ``hp_ngl = llama_model_n_layer(model)`` (``n_layer_all -
    n_layer_nextn``, llama-hparams.cpp:348-350; without --mtp) and puts the -ot overrides of a partial
    layer at ``il0 = hp_ngl + 1 - ngl`` (fit.cpp:560): on 4 blocks of which the last is NextN, -ngl 3
    with two partial layers overrides layers 2 and 3 (3 and 4 if the NextN block were counted)."""
    from ggufx.analysis.memory import fit
    from ggufx.analysis.memory.buffers import ContextParams
    from ggufx.analysis.memory.placement import OffloadParams

    model = ggufx.open(_write_qwen35(tmp_path / "mtp.gguf", keys={"nextn_predict_layers": 1}))
    seen = []

    def spy(m, devices, off, cp):  # type: ignore[no-untyped-def]
        seen.append(off)
        return breakdown(m, devices, off, cp)

    monkeypatch.setattr(fit, "breakdown", spy)
    measure = fit.breakdown_measure(model, [Device("CUDA0", 1 << 30)], OffloadParams(), ContextParams(n_ctx=256))
    measure(fit.DryRun(256, (fit.DeviceLayers(3, 2, fit.UP),), ("CPU",)))
    (off,) = seen
    assert off.n_gpu_layers == 3
    # layer 3's expert pattern matches no tensor of this dense model: llama.cpp ignores it, ggufx drops it
    assert off.overrides == ((fit.overflow_pattern(2, fit.UP), "CPU"),)
