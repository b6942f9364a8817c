"""GLM5-Next at ``-ngl 3`` on CUDA (layers 0-4 on the host, 5-7 and the output on CUDA0), against llama.cpp's
scheduler dump of that run (tests/fixtures/llamacpp-logs/sched-debug, ``GGML_SCHED_DEBUG=2``).

``resolve_fused_ops`` (llama-context.cpp:509-583) reserves the graph of one token per sequence for each fused
DeepSeek V4 HC op in turn and keeps it only if the scheduler puts every layer's fused node on that layer's
device. In that graph the last host layer's ``DSV4_HC_POST`` (``l_out-4``) has no weight among its sources, and
the next layer's CUDA nodes expand up onto it (``ggml_backend_sched`` pass 2, "expand gpu up"): llama.cpp warns
"layer 4 is assigned to device CPU but fused DeepSeek V4 HC post is assigned to device CUDA0" and builds every
layer's post unfused (per stream a MUL by the post weight, four MULs and ADDs of the comb, the streams
CONCATenated). The fused post was the three runs' 5.0000 MiB above llama.cpp's CUDA0 compute buffer."""

from __future__ import annotations

import lzma
import re
from collections import Counter
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import glm5_next
from ggufx.analysis.memory.graph.models.glm5_next import ALL_FUSED, Fused, fused_hc, hc_mismatch
from ggufx.analysis.memory.graph.sched import _VIEW_OPS
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import _OP, _fmt_size, scheduled
from .llamacpp_logs import LOGS, RUNS, devices_of

DUMP = LOGS / "sched-debug" / "glm5-next-ngl3-sched-debug.log.xz"
NGL3 = ("g-glm5-next-ngl3-c32768", "g-glm5-next-h32-ngl3-c32768", "g-glm5-next-var-ngl3-c32768")


def _dump() -> str:
    """The dump without its timestamps (``0.00.397.682 D``): one record a line again."""
    text = lzma.decompress(DUMP.read_bytes()).decode()
    return re.sub(r"\d+\.\d\d\.\d\d\d\.\d\d\d [DIWE] ", "", text)


def _prompt_nodes(text: str) -> Counter[tuple[str, str, str]]:
    """(op, size, backend) of every node llama.cpp's scheduler printed for the prompt reservation that set the
    compute buffers: the last one of 512 tokens before ``sched_reserve`` prints them."""
    head = "graph_reserve: reserving a graph for ubatch with n_tokens =  512"
    block = text[text.rindex(head, 0, text.index("CUDA0 compute buffer size =")) :]
    block = block[: block.index("CUDA0 compute buffer size =")]
    nodes = re.findall(r"node #\s*\d+ \(\s*(\S+)\):\s*.*? \(\s*(\d+[KM])\) \[\s*(\S+)\s*\]", block)
    return Counter((_OP.get(op, op), size, backend) for op, size, backend in nodes)


def _ctx(rid: str, models: dict[str, Path]) -> _Ctx:
    """The token reservation's graph context of a recorded run."""
    run = RUNS[rid]
    args = parse_args(run["args"].replace("@", ""))
    model = ggufx.open(models[str(args.model)])
    devices = devices_of(run, parse_log((LOGS / f"{rid}.log").read_text()).devices)
    sp = breakdown(model, devices, args.offload, args.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, devices, args.offload)
    return graphsim._context(model, ld, sp, sp.n_seq_max, sp.n_seq_max)


def test_llama_cpp_turns_the_fused_post_off_at_ngl3() -> None:
    text = _dump()
    assert "resolve_fused_ops: fused DeepSeek V4 HC pre enabled" in text
    assert "resolve_fused_ops: fused DeepSeek V4 HC comb enabled" in text
    assert (
        "resolve_fused_ops: layer 4 is assigned to device CPU but fused DeepSeek V4 HC post is assigned to device "
        "CUDA0 (usually due to missing support)" in text
    )
    assert "resolve_fused_ops: fused DeepSeek V4 HC post not supported, set to disabled" in text
    prompt = _prompt_nodes(text)
    assert not any(op.startswith("DSV4_HC_PO") for op, _, _ in prompt)
    assert sum(n for (op, _, _), n in prompt.items() if op.startswith("DSV4_HC_PR")) == 12  # 6 layers x 2


def test_ggufx_resolves_the_fused_hc_ops_as_llama_cpp(hole_models: dict[str, Path]) -> None:
    c = _ctx("g-glm5-next-ngl3-c32768", hole_models)
    # every op fused: the post of layer 4 (the last on the host) is put on CUDA0, as llama.cpp's warning says
    assert hc_mismatch(c, ALL_FUSED, "DSV4_HC_PRE") is None
    assert hc_mismatch(c, ALL_FUSED, "DSV4_HC_COMB") is None
    assert hc_mismatch(c, ALL_FUSED, "DSV4_HC_POST") == 4
    for rid in NGL3:
        assert fused_hc(_ctx(rid, hole_models)) == Fused(pre=True, comb=True, post=False), rid
    # every layer on CUDA0, or the experts only on the host: all three stay fused
    for rid in ("g-glm5-next-ngl99-c32768", "g-glm5-next-cpumoe-c32768", "g-glm5-next-ncpumoe1-c32768"):
        assert fused_hc(_ctx(rid, hole_models)) == ALL_FUSED, rid


def test_the_prompt_graph_is_the_dumps_node_for_node(hole_models: dict[str, Path]) -> None:
    """Every node of the prompt graph, with its size and backend, as llama.cpp's scheduler printed it (the order
    aside: the dump prints the shared expert after CUDA's ``graph_optimize`` moved it), and CUDA0's compute
    buffer to llama.cpp's 4 decimals."""
    g, sched, text, theirs, ours = scheduled("g-glm5-next-ngl3-c32768", hole_models)
    mine = Counter((n.op[:10], _fmt_size(n.nbytes), sched.names[n.backend]) for n in g.nodes if n.op not in _VIEW_OPS)
    assert mine == _prompt_nodes(_dump())
    assert sum(n for (op, _, b), n in mine.items() if op == "CONCAT" and b == "CUDA0") >= 3 * 2 * 6
    assert f"{ours['CUDA0'] / MiB:.4f}" == "155.8843"
    assert "CUDA0 compute buffer size is 155.8843 MiB" in text


@pytest.mark.parametrize("rid", NGL3)
def test_the_fused_post_was_the_five_mib(
    rid: str, hole_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the post fused (as ggufx built it before), CUDA0 comes out exactly 5 MiB above llama.cpp's."""
    run = RUNS[rid]
    text = (LOGS / f"{rid}.log").read_text()
    args = parse_args(run["args"].replace("@", ""))
    devices = devices_of(run, parse_log(text).devices)
    m = re.search(r"CUDA0 compute buffer size is +([\d.]+) MiB", text)
    assert m is not None

    def cuda0() -> float:
        model = ggufx.open(hole_models[str(args.model)])  # a fresh model: graphsim's caches are per model
        bd = breakdown(model, devices, args.offload, args.context)
        return next(b.bytes for b in bd.buffers if b.kind == "compute" and b.buft == "CUDA0") / MiB

    assert f"{cuda0():.4f}" == m.group(1)
    monkeypatch.setattr(glm5_next, "fused_hc", lambda c: ALL_FUSED)
    assert f"{cuda0() - 5:.4f}" == m.group(1)


def test_no_layer_on_a_gpu_keeps_the_fused_ops(hole_models: dict[str, Path]) -> None:
    """``-ngl 0`` beside a GPU (the first dry run of a fit search): nothing is on the GPU, and the probe's few
    tokens stay below op offload's batch, so every HC node runs on its layer's device, the host: the ops stay
    fused, and the breakdown (which once raised IndexError looking for a GPU holding something) has its CUDA0
    compute buffer, the prompt's op offload."""
    model = ggufx.open(hole_models["glm5-next"])
    a = parse_args("-m x -ngl 0 -c 32768")
    devices = [Device("CUDA0", 80 << 30)]
    b = breakdown(model, devices, a.offload, a.context)
    sp = b.reservation
    assert sp is not None
    ld = graphsim._loaded(model, devices, a.offload)
    c = graphsim._context(model, ld, sp, sp.n_seq_max, sp.n_seq_max)
    assert all(hc_mismatch(c, ALL_FUSED, op) is None for _, op in glm5_next._PROBES)
    assert fused_hc(c) == ALL_FUSED
    assert b.table()["CUDA0"]["compute"] > 0


# session 11's GLM-5.3-Flash runs (published dimensions), trimmed with the fused ops llama.cpp turned off kept
GLM53 = sorted(rid for rid in RUNS if rid.startswith("g-glm5.3-flash-"))


@pytest.mark.parametrize("rid", GLM53)
def test_the_fused_ops_of_the_published_model_are_llama_cpps(rid: str, hole_models: dict[str, Path]) -> None:
    """At -ngl 4 llama.cpp turns the fused post off (layer 5, the last on the host, has its post on CUDA0), and
    keeps all three fused on every other run; ggufx resolves each the same way."""
    text = (LOGS / f"{rid}.log").read_text()
    off = {op for op in ("pre", "comb", "post") if f"fused DeepSeek V4 HC {op} not supported, set to disabled" in text}
    assert (off == {"post"}) == (rid == "g-glm5.3-flash-ngl4-c32768"), off
    fused = fused_hc(_ctx(rid, hole_models))
    assert {op for op in ("pre", "comb", "post") if not getattr(fused, op)} == off
