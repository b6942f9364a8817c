"""What `ggufx mem` leaves out of its start-up when the model's graph is rebuilt (issue 21): the phase model
(compute.py), the diffusion builders and the modules only they import, and the ``-sm tensor`` patterns."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ggufx.analysis.memory import buffers, placement
from ggufx.analysis.memory.graph.models import diffusion

# imported only by the generic decoder estimate (compute) or by the diffusion builders' graphs
OFF_PATH = {
    "ggufx.analysis.memory.compute",
    "ggufx.analysis.memory.graph.models.diffusion",
    "ggufx.analysis.memory.graph.models.bert",
    "ggufx.analysis.memory.graph.models.deepseek2",
    "ggufx.analysis.memory.graph.models._moe_dense",
    "ggufx.analysis.memory.graph.models.moe",
    "ggufx.analysis.memory.graph.models.qwen3next",
}


def _mem(path: Path, *args: str) -> tuple[set[str], bool, str]:
    """The modules a `ggufx mem` process imported, whether a -sm tensor pattern was compiled, its output."""
    code = (
        "import sys\n"
        "from ggufx.cli import main\n"
        "from ggufx.analysis.memory import placement\n"
        "try:\n"
        f"    main(['mem', {str(path)!r}, *{list(args)!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(','.join(sorted(sys.modules)), file=sys.stderr)\n"
        "print(placement._Q._compiled is not None, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods, compiled = proc.stderr.strip().splitlines()[-2:]
    return set(mods.split(",")), compiled == "True", proc.stdout


def test_mem_with_a_rebuilt_graph_imports_no_estimate_nor_diffusion_module(gemma_path: Path) -> None:
    mods, compiled, out = _mem(gemma_path, "-c", "4096", "--gpus", "24GiB")
    assert "ggufx.analysis.memory.graph.graphsim" in mods and "compute" in out
    assert not mods & OFF_PATH, mods & OFF_PATH
    assert not compiled  # -sm layer: the -sm tensor patterns stay uncompiled


def test_sm_tensor_loads_its_patterns_and_no_estimate(gemma_path: Path) -> None:
    """-sm tensor compiles the split patterns its weights and caches are cut by; its Meta device's graph is
    rebuilt as any other (tests/test_graph_logs.py), so the phase model stays out."""
    mods, compiled, out = _mem(gemma_path, "-c", "4096", "--gpus", "24GiB,24GiB", "-sm", "tensor")
    assert "ggufx.analysis.memory.graph.graphsim" in mods and "CUDA1" in out
    assert not mods & OFF_PATH, mods & OFF_PATH
    assert compiled


def test_lazy_patterns_match_as_compiled_ones() -> None:
    names = ["blk.0.attn_q.weight", "blk.12.attn_k.weight", "blk.3.ffn_up_exps.weight", "output.weight", "cache_k_l7"]
    names += ["blk.0.attn_qXweight", "blk.0.attn_q.weight.x", "xoutput.weight", "cache_r_l3", "blk..ssm_a"]
    patterns = [v for v in vars(placement).values() if isinstance(v, placement._LazyRx)]
    assert len(patterns) >= 30
    for p in patterns:
        rx = re.compile(p._pattern)
        for n in names:
            assert (p.fullmatch(n) is None) == (rx.fullmatch(n) is None), (p._pattern, n)


def test_diffusion_is_llama_cpps_list() -> None:
    """buffers.DIFFUSION (from the registry, not importing the builders) is the diffusion builder's
    (llm_arch_is_diffusion, llama-arch.cpp:1150-1160: dream, llada, llada-moe, rnd1)."""
    assert buffers.DIFFUSION == set(diffusion.DIFFUSION) == {"dream", "llada", "llada-moe", "rnd1"}
