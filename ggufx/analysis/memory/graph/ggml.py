"""ggml's tensors and graphs as ggml-alloc and the scheduler see them (ggml/src/ggml.c): shapes, strides,
views, the sources of each node, and ``ggml_build_forward_expand``'s order. Each tensor also records the
layer that made it (its position among the layers built) for the allocator replay's periodicity check
(:func:`ggufx.analysis.memory.graph.galloc._state`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ggufx.format.ggmltypes import GGMLType, ggml_type_by_name

INPUT, OUTPUT = 1, 2  # GGML_TENSOR_FLAG_INPUT / _OUTPUT
GLOBAL = -1  # the position of a tensor no layer made (inputs, embeddings, the output head, shared weights)


@lru_cache(maxsize=64)
def _type(name: str) -> GGMLType:
    return ggml_type_by_name(name)


@dataclass(eq=False, slots=True)
class _T:
    """A ggml tensor as the scheduler and the allocator see it."""

    name: str
    op: str
    type: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    src: list[_T] = field(default_factory=list)
    view_src: _T | None = None
    flags: int = 0
    buft: str | None = None  # the buffer of a pre-allocated tensor (weights, KV cache)
    weight: bool = False
    backend: int = -1
    pos: int = GLOBAL  # the position in the built layers of the layer that made it (GLOBAL: none)
    seq: object = 0  # its place among that layer's tensors (what the replay's periodicity check keys on)
    src1_f32: bool = False  # ``ggml_prec_set_src(t, GGML_PREC_F32, 1)``: op_params[3] (ggml.c ggml_prec_set_src)

    @property
    def nbytes(self) -> int:
        """``ggml_nbytes`` (ggml.c): the span of the strides."""
        return _nbytes(self.type, self.ne, self.nb)


@lru_cache(maxsize=4096)
def _nbytes(type_: str, ne: tuple[int, int, int, int], nb: tuple[int, int, int, int]) -> int:
    if ne[0] <= 0 or ne[1] <= 0 or ne[2] <= 0 or ne[3] <= 0:
        return 0
    t = _type(type_)
    if t.block_size == 1:
        return t.type_size + (ne[0] - 1) * nb[0] + (ne[1] - 1) * nb[1] + (ne[2] - 1) * nb[2] + (ne[3] - 1) * nb[3]
    return ne[0] * nb[0] // t.block_size + (ne[1] - 1) * nb[1] + (ne[2] - 1) * nb[2] + (ne[3] - 1) * nb[3]


@lru_cache(maxsize=4096)
def _strides(ne: tuple[int, int, int, int], type_: str) -> tuple[int, int, int, int]:
    t = _type(type_)
    nb0 = t.type_size
    nb1 = nb0 * (ne[0] // t.block_size)
    return nb0, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2]


def _ne(*ne: int) -> tuple[int, int, int, int]:
    k = len(ne)
    if k == 4:
        return ne  # type: ignore[return-value]
    if k == 3:
        return ne[0], ne[1], ne[2], 1
    if k == 2:
        return ne[0], ne[1], 1, 1
    if k == 1:
        return ne[0], 1, 1, 1
    n = (ne + (1, 1, 1, 1))[:4]
    return n[0], n[1], n[2], n[3]


@dataclass(eq=False, slots=True)
class _Fusion:
    """Consecutive nodes CUDA's ``graph_optimize`` fuses (ggml-cuda.cu:4604-4660) when they all run
    in one CUDA split: it keeps ``keep`` (by default every member and its sources) alive until the
    node after the group (top-k routing) or until the group's last node (the weighted sum of the
    experts), through a dependency node the scheduler adds to its graph copy (ggml-backend.cpp:1672-1690)."""

    members: list[_T]
    keep: list[_T] | None = None


class _Graph:
    """Nodes and leafs in ``ggml_build_forward_expand`` order (ggml.c ``ggml_visit_parents``)."""

    def __init__(self) -> None:
        self.nodes: list[_T] = []
        self.leafs: list[_T] = []
        self.fused: list[_Fusion] = []
        # routed experts' gate, up, GLU and a shared expert's gate, up, GLU that CUDA's graph_optimize
        # moves together (with the tensors it keeps alive until then): :meth:`_Sched._rotate`
        self.rotations: list[tuple[list[_T], list[_T], list[_T]]] = []
        self._seen: set[_T] = set()
        self.pos = GLOBAL  # the layer being built (its position in the built layers)
        self._seq = 0

    def at(self, pos: int) -> None:
        """The tensors made from now on belong to the layer at ``pos`` of the built layers."""
        self.pos, self._seq = pos, 0

    def _tag(self, t: _T) -> _T:
        self._seq += 1
        t.pos, t.seq = self.pos, self._seq
        return t

    def new(self, name: str, op: str, type_: str, ne: tuple[int, ...], *src: _T) -> _T:
        n = _ne(*ne)
        t = _T(name, op, type_, n, _strides(n, type_), list(src))
        self._seq = seq = self._seq + 1
        t.pos, t.seq = self.pos, seq
        return t

    def leaf(self, name: str, type_: str, ne: tuple[int, ...], flags: int = 0, buft: str | None = None) -> _T:
        t = self.new(name, "NONE", type_, ne)
        t.flags, t.buft = flags, buft
        return t

    def input(self, name: str, type_: str, *ne: int) -> _T:
        return self.leaf(name, type_, ne, INPUT)

    def view(self, a: _T, ne: tuple[int, ...], nb: tuple[int, ...] | None = None, op: str = "VIEW") -> _T:
        n = _ne(*ne)
        if nb is None:
            strides = _strides(n, a.type)
        elif len(nb) == 4:
            strides = (nb[0], nb[1], nb[2], nb[3])
        else:
            full = list(nb) + [0] * (4 - len(nb))
            for i in range(len(nb), 4):
                full[i] = full[i - 1] * n[i - 1]
            strides = (full[0], full[1], full[2], full[3])
        t = _T(a.name, op, a.type, n, strides, [a], a.view_src or a)
        self._seq = seq = self._seq + 1
        t.pos, t.seq = self.pos, seq
        return t

    def rows(self, a: _T, ne0: int, ne1: int) -> _T:
        """``ggml_view_2d(a, ne0, ne1, a->nb[2], 0)``: ``ne0`` values from the start of each of ``a``'s first ``ne1``
        slices along dimension 2 (its tokens, mostly), as rows (``cpy_k``/``cpy_v``'s view of K and V; the first
        stream of a ``[n, streams, tokens]`` tensor)."""
        return self.view(a, (ne0, ne1), (a.nb[0], a.nb[2]))

    def cpy(self, src: _T, dst: _T) -> _T:
        """``ggml_cpy(src, dst)`` expanded: a view of ``dst`` (a view of a cache, mostly) whose op copies ``src``
        into it."""
        t = self.view(dst, dst.ne, dst.nb, "CPY")
        t.src = [src, dst]
        self.expand(t)
        return t

    def reshape(self, a: _T, *ne: int) -> _T:
        n = _ne(*ne)
        t = _T(a.name, "RESHAPE", a.type, n, _strides(n, a.type), [a], a.view_src or a)
        self._seq = seq = self._seq + 1
        t.pos, t.seq = self.pos, seq
        return t

    def permute(self, a: _T, *axes: int) -> _T:
        ne, nb = [0] * 4, [0] * 4
        for i, ax in enumerate(axes):
            ne[ax], nb[ax] = a.ne[i], a.nb[i]
        t = _T(a.name, "PERMUTE", a.type, _ne(*ne), (nb[0], nb[1], nb[2], nb[3]), [a], view_src=a.view_src or a)
        return self._tag(t)

    def op(self, name: str, op: str, a: _T, *more: _T, type_: str | None = None) -> _T:
        """An element-wise op: the shape and type of ``a``."""
        type_ = type_ or a.type
        ne = a.ne
        t = _T(name, op, type_, ne, _strides(ne, type_), [a, *more])
        self._seq = seq = self._seq + 1
        t.pos, t.seq = self.pos, seq
        return t

    def mul_mat(self, name: str, w: _T, x: _T) -> _T:
        xn = x.ne
        ne = (w.ne[1], xn[1], xn[2], xn[3])
        t = _T(name, "MUL_MAT", "F32", ne, _strides(ne, "F32"), [w, x])
        self._seq = seq = self._seq + 1
        t.pos, t.seq = self.pos, seq
        return t

    def expand(self, t: _T) -> None:
        """``ggml_visit_parents``: the sources depth first, then the tensor (a node, or a leaf when it
        has no op)."""
        seen = self._seen
        if t in seen:
            return
        seen.add(t)
        nodes, leafs = self.nodes, self.leafs
        for s in t.src:
            if s not in seen:
                break
        else:  # every source visited already: the tensor alone
            (leafs if t.op == "NONE" else nodes).append(t)
            return
        stack: list[tuple[_T, int]] = [(t, 0)]
        while stack:
            node, i = stack[-1]
            src = node.src
            n = len(src)
            while i < n:
                s = src[i]
                i += 1
                if s not in seen:  # visited next: marked now, as ggml marks it on entry
                    seen.add(s)
                    stack[-1] = (node, i)
                    stack.append((s, 0))
                    break
            else:
                stack.pop()
                (leafs if node.op == "NONE" else nodes).append(node)
