"""The layer shortcut where the allocator never comes back the same after a block (issue #21): the blocks a
shortened graph leaves out are replayed on the allocators from the events of the last block kept
(graph/galloc.py ``_Blocks``), with their leafs allocated up front where ggml-alloc allocates them.

Against the whole replay (the oracle): a synthetic graph whose every block has its own leaf, allocated before
the first node and freed in its block (DeepSeek V4's and HY V4's zeros), whose hole grows until the block's
temporaries fit in it (the high-water mark moves); DeepSeek-V4-Flash's published shape (40 alternating CSA and
HCA layers), a 40-layer HY V4 with DSA and HRM-Text-1B's 128 slots, on the CPU and on a GPU, with flash
attention on and off, and the replay holding there (no fallback to the whole graph). A block whose events
touch a tensor made before its run (an input whose last use the blocks left out would hold) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import galloc, graphsim
from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import cpu_model
from .graph_grow import grown_model


def _graph(kinds: list[str], z: int, t: int, x: int) -> tuple[list[_T], list[_T], list[int]]:
    """Layers of kind "e" (a copy of the stream) and "a": a leaf of ``z`` values FILLed in place, a temporary
    of ``t`` values from the stream, their product as the next stream of ``x`` values; "b" as "a", its product
    reading one more input (the same for every "b" layer). The last stream copied out. Nodes, leafs, each
    node's layer position."""
    g = _Graph()
    cur = g.input("inp", "F32", x)
    shared = g.input("shared", "F32", x) if "b" in kinds else None
    for pos, kind in enumerate(kinds):
        g.at(pos)
        if kind == "e":
            cur = g.new(f"e-{pos}", "CONT", "F32", (x,), cur)
            continue
        leaf = g.leaf(f"z-{pos}", "F32", (z,))
        filled = g.new(f"z-{pos}", "FILL", "F32", (z,), leaf)
        tmp = g.new(f"t-{pos}", "CONT", "F32", (t,), cur)
        s = g.new(f"s-{pos}", "SUM_ROWS", "F32", (z,), filled)
        src = (tmp, s, shared) if kind == "b" and shared is not None else (tmp, s)
        cur = g.new(f"x-{pos}", "MUL_MAT", "F32", (x,), *src)
    g.at(GLOBAL)
    out = g.new("out", "CONT", "F32", (x,), cur)
    out.flags |= OUTPUT
    g.expand(out)
    node_at, at = [], 0
    for node in g.nodes:
        at = max(at, node.pos)
        node_at.append(at)
    return g.nodes, g.leafs, node_at


@pytest.mark.parametrize("z", [8, 40, 64])
@pytest.mark.parametrize("t", [128, 200, 1000])
def test_blocks_with_their_own_leafs_replay_as_the_whole_graph(z: int, t: int) -> None:
    kinds = ["e", *["a"] * 30, "e", "e"]
    plan = graphsim._plan([(k,) for k in kinds], 2)
    assert len(plan.layers) < len(kinds) and len(plan.checks) == 1
    whole, _ = galloc._reserve(*_graph(kinds, z, t, 64)[:2], ["CPU"])
    nodes, leafs, node_at = _graph([kinds[i] for i in plan.layers], z, t, 64)
    runs = tuple((*c, o) for c, o in zip(plan.checks, plan.outs, strict=True))
    short, states = galloc._reserve(nodes, leafs, ["CPU"], node_at, runs, lambda *_: True)
    assert galloc.FAILED not in states
    assert short == whole


def test_the_replay_moves_the_high_water_mark() -> None:
    """Left out without their replay, the blocks' leafs and temporaries would give another buffer: the hole
    their freed leafs leave takes a temporary after a few blocks."""
    kinds = ["e", *["a"] * 30, "e", "e"]
    plan = graphsim._plan([(k,) for k in kinds], 2)
    shortened = [kinds[i] for i in plan.layers]
    for z, t in ((8, 128), (40, 200), (64, 1000)):
        whole, _ = galloc._reserve(*_graph(kinds, z, t, 64)[:2], ["CPU"])
        bare, _ = galloc._reserve(*_graph(shortened, z, t, 64)[:2], ["CPU"])
        assert bare != whole


def test_a_block_freeing_an_input_of_the_layers_before_is_refused() -> None:
    """Blocks of an "a" and a "b" layer, then one "a" layer (the replay resumes on it: it begins as a block): the
    shared input that the "b" layers read has its last use in the shortened graph in the last kept block, and
    the blocks left out would hold it, so the replay is refused (the caller replays more)."""
    kinds = ["e", *["a", "b"] * 8, "a"]
    plan = graphsim._plan([(k,) for k in kinds], 2)
    assert [kinds[i] for i in plan.layers] == ["e", "a", "b", "a", "b", "a"]
    nodes, leafs, node_at = _graph([kinds[i] for i in plan.layers], 8, 128, 64)
    runs = tuple((*c, o) for c, o in zip(plan.checks, plan.outs, strict=True))
    _, states = galloc._reserve(nodes, leafs, ["CPU"], node_at, runs, lambda *_: False)
    assert galloc.FAILED in states
    # without that input, the same plan replays as the whole graph
    kinds = ["e", *["a", "a"] * 8, "a"]
    whole, _ = galloc._reserve(*_graph(kinds, 8, 128, 64)[:2], ["CPU"])
    nodes, leafs, node_at = _graph([kinds[i] for i in plan.layers], 8, 128, 64)
    short, states = galloc._reserve(nodes, leafs, ["CPU"], node_at, runs, lambda *_: False)
    assert galloc.FAILED not in states and short == whole


def _assert_replayed_as_whole(path: Path, runs: list[tuple[str, list[Device]]]) -> None:
    model = ggufx.open(path)
    for args, devices in runs:
        a = parse_args("-m x " + args)
        sp = breakdown(model, devices, a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, devices, a.offload, sp, whole=True)
        graphsim._RESULTS.pop(model, None)
        graphsim._LAST_WARM.pop(model, None)
        assert graphsim.simulate(model, devices, a.offload, sp) == whole, args
        # the shortened replay held for both reservations: no fallback to every layer
        assert None not in graphsim._LAST_WARM[model].values(), args


GPU = [Device("CUDA0", 80 << 30)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("replay")
    return {
        "deepseek4-flash": cpu_model("deepseek4-flash", out, smollm2_path),
        "hrm_text-1b": cpu_model("hrm_text-1b", out, smollm2_path),
        "hy_v4-40": grown_model("hy_v4", 40, 2, out, smollm2_path),
    }


@pytest.mark.parametrize(
    ("args", "gpu"),
    [
        ("-c 4096 --no-repack", False),
        ("-c 4096 -fa off -np 3 --no-repack", False),
        ("-c 4096 -ub 2048 --no-repack", False),
        ("-ngl 99 -c 32768", True),
        ("-ngl 20 -c 32768", True),
        ("-ngl 99 -c 32768 -fa off", True),
        ("-ngl 99 -c 32768 -ctk q8_0 -ctv q8_0", True),
    ],
)
def test_deepseek4_flash_replays_as_the_whole_graph(args: str, gpu: bool, models: dict[str, Path]) -> None:
    """Each CSA layer's zeros leaf (the top-k mask's): the plan keeps three of the 40 CSA and HCA layers' blocks."""
    _assert_replayed_as_whole(models["deepseek4-flash"], [(args, GPU if gpu else [])])


@pytest.mark.parametrize(
    ("args", "gpu"),
    [("-c 8192", False), ("-c 4096 -fa off -np 3", False), ("-ngl 99 -c 8192", True), ("-ngl 20 -c 8192", True)],
)
def test_hy_v4_dsa_replays_as_the_whole_graph(args: str, gpu: bool, models: dict[str, Path]) -> None:
    """HY V4's DSA layers (the indexer's top-k mask, a zeros leaf per layer), 19 pairs of DSA and full layers."""
    _assert_replayed_as_whole(models["hy_v4-40"], [(args, GPU if gpu else [])])


@pytest.mark.parametrize(
    ("args", "gpu"),
    [("-c 4096", False), ("-c 4096 -fa off -np 3", False), ("-ngl 999 -c 4096", True)],
)
def test_hrm_text_1b_slots_replay_as_the_whole_graph(args: str, gpu: bool, models: dict[str, Path]) -> None:
    """The middle slots of each of the 8 passes left out (the stack inputs zH and zL, made before each run, are
    the same tensors for every slot of it)."""
    _assert_replayed_as_whole(models["hrm_text-1b"], [(args, GPU if gpu else [])])


def test_hrm_text_1b_with_host_layers_replays_as_the_whole_graph(models: dict[str, Path]) -> None:
    """-ngl 99 of 128 slots: the low passes' host weights are copied to the GPU once and kept for the later
    passes (a copy per block alive across the run): the prompt's shortened replay is refused there and the whole
    graph replayed; the answer is the whole replay's either way."""
    model = ggufx.open(models["hrm_text-1b"])
    a = parse_args("-m x -ngl 99 -c 4096")
    sp = breakdown(model, GPU, a.offload, a.context).reservation
    assert sp is not None
    whole = graphsim.simulate(model, GPU, a.offload, sp, whole=True)
    assert graphsim.simulate(model, GPU, a.offload, sp) == whole
