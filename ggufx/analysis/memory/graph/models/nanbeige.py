"""``nanbeige`` (src/models/nanbeige.cpp: Nanbeige 4): the llama graph (rope_freqs, the output projection's and
the FFN's biases where the file has them). ``num_loops`` above 1 (Nanbeige 4.2) runs the file's blocks again:
llama.cpp's n_layer is block_count times the loops, each layer with a cache of its own, the later passes' layers
multiplying by the first pass's tensors (``graphsim._load`` gives ``blk.{i + j * n_phys}`` the tensors of
``blk.{i}``), and at the end of every pass but the last the output norm is applied once more (``loop_norm``,
unless ``skip_loop_final_norm``). Not simulated: the FFN's per-tensor scales."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import _n
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain()


def _loop_end(c: _Ctx, il: int) -> bool:
    """Whether layer ``il`` ends a pass that another follows and the file asks for the loop norm there."""
    md = model_of(c).metadata
    loops = md.get_int("nanbeige.num_loops") or 1
    if loops <= 1 or md.get("nanbeige.skip_loop_final_norm"):
        return False
    n_phys = c.hp.n_layer // loops
    return (il + 1) % n_phys == 0 and il + 1 < c.hp.n_layer


def graph_kinds(c: _Ctx) -> list[object]:
    """The layers that end a pass build the loop norm too: a kind of their own for graphsim's identical layers."""
    return ["loop_end" if _loop_end(c, il) else None for il in range(c.hp.n_layer)]


def _loop_norm(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """nanbeige.cpp: ``build_norm(inpL, model.output_norm, NULL, LLM_NORM_RMS, il)`` after a pass's last layer."""
    return _n(c, g, x, "output_norm.weight", il, SPEC.attn) if _loop_end(c, il) else x


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC, _loop_norm)


def unbuildable(model: GGUFModel) -> str | None:
    scale = next((t.name for t in model.tensors if t.name.endswith(".scale")), None)
    if scale:
        return f"nanbeige graphs with tensor {scale} are not simulated"
    return _plain.needs(model, _plain.layer_weights(SPEC))
