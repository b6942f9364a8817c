"""granite and granitemoe's compute graph (ggufx/analysis/memory/graph/models/granite.py, after
llama.cpp's src/models/granite.cpp) against llama.cpp's own compute buffers.

Small header-only models of each variant (the embedding, residual and logit scales, RoPE switched off by
``rope.scaling.finetuned``, tied output; granitemoe with and without a shared expert) are loaded by the
local CPU build (marker ``llamacpp``) and every compute buffer it prints must come out to the 0.01 MiB;
granite-3.3-8b's recorded runs: tests/test_graph_logs.py. Files llama.cpp
would not load fall back to the generic estimate with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
sys.path.insert(0, str(CPU_LOGS.parent / "llamacpp-logs"))
from make_arch_headers import header  # noqa: E402
from trim import trim  # noqa: E402

E, FF, HEADS, KV_HEADS, HEAD = 1024, 2048, 16, 4, 64
COMMON = {
    "context_length": 131072,
    "attention.layer_norm_rms_epsilon": 1e-6,
    "rope.freq_base": 10000.0,
    "vocab_size": 49152,
    "general.file_type": 15,
    "block_count": 4,
    "embedding_length": E,
    "feed_forward_length": FF,
    "attention.head_count": HEADS,
    "attention.head_count_kv": KV_HEADS,
    "rope.dimension_count": HEAD,
    "logit_scale": 8.0,
}
SCALES = {"residual_scale": 0.22, "embedding_scale": 12.0, "attention.scale": 0.0078125}
# name: (architecture, extra metadata, experts (count, used) or None, shared expert length, tied output)
VARIANTS = {
    "granite": ("granite", SCALES, None, 0, True),
    "granite-norope": ("granite", {"rope.scaling.finetuned": False}, None, 0, False),
    "granitemoe": ("granitemoe", SCALES, (8, 2), 0, True),
    "granitemoe-shared": ("granitemoe", SCALES, (8, 2), 512, False),
}


def _matrix(n: int, m: int) -> str:
    return "Q4_K" if n % 256 == 0 and m > 0 else "F16"


def _tensors(experts: tuple[int, int] | None, shexp: int, tied: bool, drop: str = "") -> list[list]:
    """What granite.cpp / granite-moe.cpp ``load_arch_tensors`` create for these dimensions."""
    t: list[list] = [["token_embd.weight", [E, 49152], "Q8_0"], ["output_norm.weight", [E], "F32"]]
    if not tied:
        t.append(["output.weight", [E, 49152], "Q4_K"])
    for il in range(4):
        b = f"blk.{il}."
        t += [[b + "attn_norm.weight", [E], "F32"], [b + "ffn_norm.weight", [E], "F32"]]
        for name, rows in (("attn_q", HEADS * HEAD), ("attn_k", KV_HEADS * HEAD), ("attn_v", KV_HEADS * HEAD)):
            t.append([b + name + ".weight", [E, rows], _matrix(E, rows)])
        t.append([b + "attn_output.weight", [HEADS * HEAD, E], _matrix(HEADS * HEAD, E)])
        if experts is None:
            t += [[b + "ffn_gate.weight", [E, FF], "Q4_K"], [b + "ffn_up.weight", [E, FF], "Q4_K"]]
            t.append([b + "ffn_down.weight", [FF, E], "Q4_K"])
        else:
            n_exp = experts[0]
            t.append([b + "ffn_gate_inp.weight", [E, n_exp], "F32"])
            t += [[b + f"ffn_{r}_exps.weight", [E, FF, n_exp], "Q4_K"] for r in ("gate", "up")]
            t.append([b + "ffn_down_exps.weight", [FF, E, n_exp], "Q4_K"])
            if shexp:
                t += [[b + f"ffn_{r}_shexp.weight", [E, shexp], "Q4_K"] for r in ("gate", "up")]
                t.append([b + "ffn_down_shexp.weight", [shexp, E], "Q4_K"])
    return [x for x in t if x[0] != drop]


def _write(path: Path, variant: str, smollm2: Path, drop: str = "", kv: dict | None = None) -> Path:
    arch, extra, experts, shexp, tied = VARIANTS[variant]
    meta = COMMON | extra
    if experts:
        meta |= {"expert_count": experts[0], "expert_used_count": experts[1]}
    if shexp:
        meta |= {"expert_shared_feed_forward_length": shexp}
    meta |= kv or {}
    header(path, {"arch": arch, "kv": meta}, _tensors(experts, shexp, tied, drop), smollm2)
    return path


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("granite")
    return {v: _write(out / f"{v}.gguf", v, smollm2_path) for v in VARIANTS}


def _ours(path: Path, argv: str) -> dict[str, float]:
    p = parse_args("-m x " + argv)
    bd = breakdown(ggufx.open(path), [], p.offload, p.context)
    assert bd.compute_estimate is None, bd.compute_estimate  # built, not estimated
    return {b.buft: b.bytes / MiB for b in bd.buffers if b.kind == "compute"}


@pytest.mark.llamacpp
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("argv", ["-c 8192", "-c 4096 -fa off -np 3 -ctk q8_0", "-c 8192 -ub 1024 -ctk q4_0 -ctv q4_0"])
def test_every_cpu_compute_buffer_is_llama_cpps(
    variant: str, argv: str, models: dict[str, Path], llama_bin: Path
) -> None:
    cmd = [str(llama_bin / "llama-completion"), "-m", str(models[variant]), *argv.split()]
    cmd += ["-dev", "none", "-p", "hi", "-n", "1", "-no-cnv", "--no-warmup", "-v", "-fit", "off", "-t", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = parse_log("\n".join(trim(proc.stdout + proc.stderr, "completion")))
    recorded = log.buffers.get("compute")
    assert recorded, (proc.returncode, proc.stderr[-2000:])
    ours = _ours(models[variant], argv)
    assert set(ours) == set(recorded) and all(abs(ours[b] - recorded[b]) < 0.01 for b in recorded), (recorded, ours)


@pytest.mark.parametrize(
    ("argv", "n_gpus"),
    [("-c 32768", 1), ("-c 32768 -ngl 3", 1), ("-c 8192 -fa off -np 3", 0), ("-c 32768 --cpu-moe", 1)],
)
@pytest.mark.parametrize("variant", ["granite", "granitemoe-shared"])
def test_the_graph_is_built_for_gpus_and_the_host(
    variant: str, argv: str, n_gpus: int, models: dict[str, Path]
) -> None:
    """The shortcut replay (identical layers left out) equals the whole replay on every placement."""
    model = ggufx.open(models[variant])
    devices = [Device(f"CUDA{i}", 80 << 30) for i in range(n_gpus)]
    p = parse_args("-m x " + argv)
    bd = breakdown(model, devices, p.offload, p.context)
    assert bd.compute_estimate is None and bd.reservation is not None
    sp = bd.reservation
    whole = graphsim.simulate(model, devices, p.offload, sp, whole=True)
    assert graphsim.simulate(model, devices, p.offload, sp) == whole
    assert all(v > 0 for v in whole.values())


@pytest.mark.parametrize(
    ("variant", "change", "why"),
    [
        ("granite", {"drop": "blk.3.ffn_down.weight"}, "tensor blk.3.ffn_down.weight"),
        ("granitemoe", {"drop": "blk.0.ffn_gate_exps.weight"}, "tensor blk.0.ffn_gate_exps.weight"),
        ("granitemoe-shared", {"drop": "blk.1.ffn_up_shexp.weight"}, "tensor blk.1.ffn_up_shexp.weight"),
        ("granitemoe", {"kv": {"expert_used_count": 9}}, "expert_used_count"),
    ],
)
def test_files_llama_cpp_would_not_load_get_the_generic_estimate(
    variant: str, change: dict, why: str, smollm2_path: Path, tmp_path: Path
) -> None:
    model = ggufx.open(_write(tmp_path / "x.gguf", variant, smollm2_path, **change))
    reason = graphsim.simulated(model)
    assert reason is not None and why in reason, reason
    p = parse_args("-m x -c 4096")
    bd = breakdown(model, [], p.offload, p.context)
    assert bd.compute_estimate and why in bd.compute_estimate


def test_the_scales_are_graph_nodes(models: dict[str, Path]) -> None:
    """The embedding scale (1 node), two residual scales per layer and the logit scale: the scaled model's
    graph has 4 x 2 + 2 more nodes than the same model without them, the RoPE-less one 4 x 2 fewer ROPE."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    def nodes(path: Path) -> list[str]:
        model = ggufx.open(path)
        p = parse_args("-m x -c 4096")
        sp = breakdown(model, [], p.offload, p.context).reservation
        assert sp is not None
        ld = graphsim._loaded(model, [], p.offload)
        c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
        c.layers = list(range(4))
        g = _Graph()
        g.expand(builder(ld.hp.arch)(c, g))
        return [n.op for n in g.nodes]

    scaled, plain = nodes(models["granite"]), nodes(models["granite-norope"])
    assert scaled.count("SCALE") == 1 + 4 * 2 + 1 and plain.count("SCALE") == 1
    assert scaled.count("ROPE") == 8 and plain.count("ROPE") == 0
