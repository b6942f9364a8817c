"""ggml-alloc's dynamic allocator (``ggml_dyn_tallocr``, ggml/src/ggml-alloc.c), as llama.cpp's graph
allocator uses it to size a compute buffer: the replay both simulations share (the language model's
graph in :mod:`ggufx.analysis.memory.graph.graphsim`, a projector's in :mod:`ggufx.analysis.memory.graph.projector`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from itertools import chain

from ggufx.analysis.memory.graph.ggml import _T, INPUT, OUTPUT, _nbytes, _type
from ggufx.analysis.memory.placement import META

__all__ = ["CUDA_ALIGN", "HOST_ALIGN", "MATRIX_ROW_PADDING", "DynAllocator"]

PREALLOCATED = -1  # the key of the positions of the tensors allocated before the first node
INPUTS = -2  # ... and of those of them allocated in the node pass (inputs, their copies)
FAILED = -3  # the key of a reservation whose blocks left out could not be replayed (:func:`_reserve`)
# ggml_op_can_inplace (ggml-alloc.c:22)
_INPLACE = frozenset(
    {"FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV", "SQR"}
    | {"SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK", "CLAMP"}
    | {"SOFT_MAX", "SOFT_MAX_BACK"}
)

CUDA_ALIGN = 128  # ggml-cuda.cu: ggml_backend_cuda_buffer_type_get_alignment
HOST_ALIGN = 32  # TENSOR_ALIGNMENT: CPU, CPU_Mapped, CUDA_Host, CPU_REPACK
MATRIX_ROW_PADDING = 512  # ggml-cuda/common.cuh: CUDA pads a quantized row to this many elements


def _cuda_like(buft: str) -> bool:
    """A GPU's buffer type, CUDA's alignment and allocation sizes: ``CUDA0``..., and -sm tensor's ``Meta()``, whose
    alignment and size of a tensor are the largest of its GPUs' for the whole tensor (ggml-backend-meta.cpp:295-323:
    every GPU is CUDA, so CUDA's), and whose buffer of that size is allocated on every GPU (:1697-1720)."""
    return buft == META or (buft.startswith("CUDA") and not buft.endswith("_Host"))


class DynAllocator:
    """``ggml_dyn_tallocr`` with one chunk (ggml-alloc.c:202 alloc, :312 free): free blocks sorted by
    offset; ``max_size`` is the high-water mark, the compute buffer llama.cpp reserves."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted by offset
        self.max_size = 0

    def align(self, n: int) -> int:
        return -(-n // self.alignment) * self.alignment

    def alloc(self, size: int) -> int:
        """Best fit among the free blocks but the last, ties to the later block; else the tail."""
        a = self.alignment
        size = -(-size // a) * a
        blocks = self.blocks
        best = blocks[-1]
        best_size = 1 << 63
        for block in blocks[:-1]:  # a handful of blocks: the loop costs less than any index over them
            bsize = block[1]
            if size <= bsize <= best_size:
                best, best_size = block, bsize
        offset = best[0]
        best[0] = offset + size
        left = best[1] - size
        best[1] = left
        if left == 0:
            _remove(blocks, best)
        if offset + size > self.max_size:
            self.max_size = offset + size
        return offset

    def free(self, offset: int, size: int) -> None:
        """Merge with an adjacent free block, else insert in offset order. A scan in list order, as
        ggml-alloc's: a tensor of no bytes frees an empty block, and a later merge can move a block's
        offset before it, so the blocks are not always in offset order (PLaMo 2's graph does that)."""
        a = self.alignment
        size = -(-size // a) * a
        blocks = self.blocks
        end = offset + size
        for i, block in enumerate(blocks):
            b0 = block[0]
            if b0 + block[1] == offset:
                block[1] += size
                if i + 1 < len(blocks) and b0 + block[1] == blocks[i + 1][0]:
                    block[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if end == b0:
                block[0] = offset
                block[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == offset:
                    blocks[i - 1][1] += block[1]
                    del blocks[i]
                return
        pos = 0
        while pos < len(blocks) and blocks[pos][0] < offset:
            pos += 1
        blocks.insert(pos, [offset, size])


def _remove(blocks: list[list[int]], block: list[int]) -> None:
    """Delete ``block`` itself (not the first block equal to it: two empty blocks at one offset can be)."""
    for i, b in enumerate(blocks):
        if b is block:
            del blocks[i]
            return


# -- ggml_gallocr (ggml-alloc.c:589-822) ---------------------------------------------------------------


_HOST_BUFTS = frozenset({"CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host"})  # no padding: the answer's first part


# _alloc_size of every tensor but flash attention's (whose size reads its sources), by buffer type,
# type, shape and strides: the replays of one process allocate the same few hundred layouts again
_SIZES: dict[tuple[str, str, tuple[int, int, int, int], tuple[int, int, int, int]], int] = {}


def _alloc_size(buft: str, t: _T) -> int:
    """``ggml_backend_buft_get_alloc_size``: CUDA adds the flash-attention f16 conversion of a
    quantized K/V (fattn.cu:722, fattn-common.cuh:53) and pads quantized rows (ggml-cuda.cu:903)."""
    if t.op == "FLASH_ATTN_EXT":
        return _alloc_size_of(buft, t)
    key = (buft, t.type, t.ne, t.nb)
    size = _SIZES.get(key)
    if size is None:
        if len(_SIZES) >= 1 << 16:
            _SIZES.clear()
        size = _SIZES[key] = _alloc_size_of(buft, t)
    return size


def _alloc_size_of(buft: str, t: _T) -> int:
    size = _nbytes(t.type, t.ne, t.nb)
    if buft in _HOST_BUFTS or not _cuda_like(buft):
        return size
    if t.op == "FLASH_ATTN_EXT":
        q, k, v = t.src[0], t.src[1], t.src[2]
        # the MMA/tile kernels convert a quantized K and V; the vector kernel (for up to two tokens, with
        # heads of 64, 128 or 256: can_use_vector_kernel, fattn.cu:641) only what it lacks
        vec_heads = q.ne[0] <= 256 and q.ne[0] % 64 == 0 and q.ne[0] != 192
        tiles = q.ne[1] > 2 or not vec_heads
        if tiles and k.type != "F16":
            size = -(-size // 128) * 128 + 2 * math.prod(k.ne)
        # a V that is a view of K's data (MLA: the latent cache's first rank values) shares K's
        # conversion (fattn-common.cuh:63-81, V_is_K_view: one view source at one offset; ggufx's
        # views carry no offset, and MLA's V is the only one built on K's source, at offset 0)
        v_is_k_view = v.view_src is not None and (v.view_src is k or v.view_src is k.view_src)
        if tiles and v.type != "F16" and not v_is_k_view:
            size = -(-size // 128) * 128 + 2 * math.prod(v.ne)
    tt = _type(t.type)
    if tt.block_size > 1 and t.ne[0] % MATRIX_ROW_PADDING:
        size += (MATRIX_ROW_PADDING - t.ne[0] % MATRIX_ROW_PADDING) // tt.block_size * tt.type_size
    return size


def _same_layout(a: _T, b: _T) -> bool:
    return a.type == b.type and a.ne == b.ne and a.nb == b.nb


def _reserve(
    nodes: list[_T],
    leafs: list[_T],
    bufts: list[str],
    node_at: list[int] | None = None,
    runs: tuple[tuple[int, int, int, int, int], ...] = (),
    periodic: Callable[[int, dict[int, object]], bool] | None = None,
) -> tuple[dict[str, int], dict[int, object]]:
    """``ggml_gallocr_alloc_graph_impl`` with one dynamic allocator per buffer type: each buffer
    type's high-water mark, and the allocator's state (:func:`_state`) where the nodes of the layer
    at each position of the ``runs`` begin (``node_at``: the position each node comes with).

    ``runs``: per run of repeated blocks of layers that a shortened graph leaves blocks out of,
    ``(resume, one, two, start, out)``: the position (in the layers built) of the block the replay
    resumes on, of the blocks one and two periods before it, of the run's first block, and how many
    blocks the graph leaves out before ``resume``. Where ``periodic(i, states)`` says that run ``i``'s
    allocator came back the same after a block (the states so far), the blocks left out would
    allocate as the last one kept did and leave it so: nothing is done. Elsewhere the blocks left
    out are replayed on the allocators (:func:`_Blocks`): the allocations, frees and in-place reuses
    of the last block kept before ``resume``, block after block, as the whole graph would make them,
    with the up-front allocations of their leafs where ggml-alloc makes them. The answer's states
    then hold ``FAILED`` where a run's blocks cannot be replayed so (the caller replays more)."""
    allocs = {b: DynAllocator(CUDA_ALIGN if _cuda_like(b) else HOST_ALIGN) for b in bufts}
    where: dict[_T, tuple[str, int]] = {}  # tensor -> (buft, offset)
    own: set[_T] = set()
    children: dict[_T, int] = {}
    views: dict[_T, int] = {}
    sizes: dict[_T, int] = {}
    logs: list[list[tuple[object, ...]]] = []  # the events of the blocks being recorded (:class:`_Blocks`)

    def size_of(buft: str, t: _T) -> int:
        n = sizes.get(t)
        if n is None:
            n = sizes[t] = _alloc_size(buft, t)
        return n

    def allocate(t: _T, bid: int) -> None:
        # the callers skip what ggml_gallocr_allocate_node returns early on (a tensor with a buffer, a
        # view, one already allocated): t.buft is None, t.view_src is None, t not in own
        own.add(t)
        if t.op in _INPLACE:
            for p in t.src:
                if p not in own or p.flags & OUTPUT or (p.view_src is not None and p.view_src.flags & OUTPUT):
                    continue
                if not _same_layout(t, p) or children.get(p, 0) != 1 or views.get(p, 0) != 0:
                    continue
                owner = p
                if p.view_src is not None:
                    v = p.view_src
                    if not (views.get(v, 0) == 1 and children.get(v, 0) == 0):
                        continue
                    owner = v
                    own.discard(v)
                own.discard(p)
                buft, off = where[owner]
                where[t] = (buft, off)
                a = allocs[buft]
                ps, ns = a.align(size_of(buft, owner)), a.align(size_of(buft, t))
                if ps > ns:
                    a.free(off + ns, ps - ns)
                if logs:
                    for log in logs:
                        log.append(("i", t, owner, buft, ps, ns))
                return
        allocate_new(t, bid)

    def allocate_new(t: _T, bid: int) -> None:  # allocate, for a tensor of an op without an in-place variant
        own.add(t)
        buft = bufts[bid]
        n = sizes.get(t)
        if n is None:
            n = sizes[t] = _alloc_size(buft, t)
        where[t] = (buft, allocs[buft].alloc(n))
        if logs:
            for log in logs:
                log.append(("a", t, buft, n))

    def free(t: _T) -> None:
        buft, off = where[t]
        allocs[buft].free(off, sizes[t])
        own.discard(t)
        if logs:
            for log in logs:
                log.append(("f", t, buft, sizes[t]))

    blocks = [_Blocks(*run) for run in runs] if node_at is not None else []
    # the leafs (up front), with those of the blocks left out after the last block kept before them
    todo_leafs = list(dict.fromkeys(t for t in leafs if t.buft is None and t.view_src is None))
    inserts: dict[int, list[_Blocks]] = {}
    for b in blocks:
        at = b.leaf_slot(todo_leafs)
        if at is None:
            return {k: a.max_size for k, a in allocs.items()}, {FAILED: True}
        if at >= 0:
            inserts.setdefault(at, []).append(b)
    for i, leaf in enumerate(todo_leafs):
        for b in inserts.get(i, ()):
            b.allocate_leafs(allocs, bufts)
        if leaf not in own:
            allocate(leaf, leaf.backend)
    for b in inserts.get(len(todo_leafs), ()):
        b.allocate_leafs(allocs, bufts)
    # the consumers of each tensor (counted up front: the inputs allocated below, ops without an
    # in-place variant, never read them)
    children.update(Counter(chain.from_iterable([node.src for node in nodes])))
    children_get, views_get = children.get, views.get
    inputs: list[_T] = []  # allocated up front, in the node pass
    for node in nodes:
        vs = node.view_src
        if vs is not None and node.op != "NONE":
            views[vs] = views_get(vs, 0) + 1
        if node.flags & INPUT and node.buft is None and vs is None and node not in own:
            allocate(node, node.backend)
            inputs.append(node)
        for s in node.src:
            if s.flags & INPUT and s.buft is None and s.view_src is None and s not in own:
                allocate(s, node.backend)
                inputs.append(s)
    states: dict[int, object] = {}
    marks: dict[int, int] = {}  # position -> the start of its run
    for b in blocks:
        if b.leafs:  # replayed whatever the allocator's state
            continue
        for mark in (b.resume, b.one, b.two):  # a position two runs share: the earlier start (relative keys)
            marks[mark] = min(b.start, marks.get(mark, b.start))
    todo = sorted(marks, reverse=True)
    tensors: list[_T] = []
    pre: frozenset[_T] = frozenset()
    if todo:
        every: list[_T] = []  # each tensor, then its sources
        for t in (*leafs, *nodes):
            every.append(t)
            every += t.src
        # what a state can hold: neither weights nor caches (never allocated here), nor views of them
        tensors = [
            t for t in dict.fromkeys(every) if t.buft is None and (t.view_src is None or t.view_src.buft is None)
        ]
        pre = frozenset(own)  # allocated before the first node: leafs and inputs
        states[PREALLOCATED] = frozenset(t.pos for t in pre)
        states[INPUTS] = frozenset(t.pos for t in inputs)
    # where the blocks begin recording (0) and replay (1), in the order the replay meets them
    events = sorted([(b.one, 0, i) for i, b in enumerate(blocks)] + [(b.resume, 1, i) for i, b in enumerate(blocks)])
    events.reverse()
    for i, node in enumerate(nodes):
        if node_at is not None and (todo or events):
            at = node_at[i]
            while todo and at >= todo[-1]:
                mark = todo.pop()
                states[mark] = _state(mark, marks[mark], allocs, tensors, where, own, children, views, pre)
            while events and at >= events[-1][0]:
                _, what, j = events.pop()
                b = blocks[j]
                if what == 0:  # the last block kept before resume: recorded
                    b.log = []
                    logs.append(b.log)
                else:  # resume: the blocks left out, unless periodic
                    logs.remove(b.log)
                    if b.leafs or periodic is None or not periodic(j, states):
                        if not b.replay(allocs, where, own, states.get(INPUTS)):
                            return {k: a.max_size for k, a in allocs.items()}, {FAILED: True}
        backend = node.backend
        src = node.src
        for p in src:
            if p.buft is None and p.view_src is None and p not in own:
                allocate(p, backend)
        if node.buft is None and node.view_src is None and node not in own:
            if node.op in _INPLACE:
                allocate(node, backend)
            else:
                allocate_new(node, backend)
        for p in src:
            n = children[p] - 1
            children[p] = n
            if n == 0 and views_get(p, 0) == 0:
                v = p.view_src
                if v is not None:
                    nv = views[v] - 1
                    views[v] = nv
                    if nv == 0 and children_get(v, 0) == 0 and v in own and not v.flags & OUTPUT:
                        free(v)
                elif p in own and not p.flags & OUTPUT:
                    free(p)
    return {b: a.max_size for b, a in allocs.items()}, states


class _Blocks:
    """The blocks of one run that a shortened graph leaves out, replayed on the allocators from the
    events of the last block kept before them (``log``: its allocations, frees and in-place reuses).
    What ggml-alloc does for a node depends on the graph (each tensor's consumers and views, the
    layouts), never on where the allocator puts things; so each block left out, made as the one before
    it, allocates, frees and reuses in place as that block did, its own tensors and its predecessors'
    (the tensors of a block ``d`` blocks back stand for those of the block ``d`` blocks before it): the
    same calls on the allocators, in the same order, whose offsets then come out as the whole graph's,
    whatever the allocator's state (DeepSeek V4's zeros, one leaf per CSA layer allocated before the
    first node and freed in its layer, grow a hole the allocator's state never comes back from). The
    leafs of the blocks left out are allocated up front where ggml-alloc allocates them (after the last
    kept block's). The kept tensors of the run then stand for those of the last blocks left out (the
    block after ``resume`` reads them). Refused (:meth:`replay` False) where that premise is not seen to
    hold: an event of that block on a tensor made before the run (its last use would lie in the blocks
    left out), an input allocated up front in it (pipeline parallelism's copies), leafs of that block
    apart from one another, or tensors left alive by the blocks left out that no kept tensor stands
    for (or the other way round)."""

    def __init__(self, resume: int, one: int, two: int, start: int, out: int) -> None:
        self.resume, self.one, self.two, self.start, self.out = resume, one, two, start, out
        self.period = resume - one
        self.log: list[tuple[object, ...]] = []
        self.leafs: list[_T] = []  # the leafs of the last block kept before resume (allocated up front)
        # per block (0: the last kept before resume, 1..out: those left out), its tensors' offsets by
        # (position in the block, seq)
        self.where: dict[int, dict[int, int]] = {}
        self.ids: dict[tuple[int, object], int] = {}  # each place in a block (position, seq) as a number

    def _key(self, t: _T) -> tuple[int, int]:
        """The block of a tensor of the run (0: the last kept before resume, -1 the one before...) and its
        place in it (as a number: :attr:`ids`)."""
        b, d = divmod(t.pos - self.one, self.period)
        place = (d, t.seq)
        i = self.ids.get(place)
        if i is None:
            i = self.ids[place] = len(self.ids)
        return b, i

    def leaf_slot(self, todo: list[_T]) -> int | None:
        """Where, among the leafs ggml-alloc allocates up front, those of the blocks left out come: after
        the last kept block's (which must come together, and be followed by a later layer's or none).
        -1: that block has none; None: not so."""
        at = [i for i, t in enumerate(todo) if self.one <= t.pos < self.resume]
        if not at:
            return -1
        if at != list(range(at[0], at[-1] + 1)):
            return None
        after = at[-1] + 1
        if after < len(todo) and todo[after].pos < self.resume:
            return None
        self.leafs = [todo[i] for i in at]
        return after

    def allocate_leafs(self, allocs: dict[str, DynAllocator], bufts: list[str]) -> None:
        for k in range(1, self.out + 1):
            block = self.where.setdefault(k, {})
            for t in self.leafs:
                buft = bufts[t.backend]
                block[self._key(t)[1]] = allocs[buft].alloc(_alloc_size(buft, t))

    def replay(
        self, allocs: dict[str, DynAllocator], where: dict[_T, tuple[str, int]], own: set[_T], inputs: object
    ) -> bool:
        start, resume = self.start, self.resume
        if isinstance(inputs, frozenset) and any(self.one <= p < resume for p in inputs):
            return False
        places = self.where
        for t in own:  # the kept tensors of the run, alive
            if start <= t.pos < resume:
                b, key = self._key(t)
                places.setdefault(b, {})[key] = where[t][1]
        # the block's events as (what, block, place, owner's block, owner's place, free blocks, allocator, size or
        # owner's size, size), sizes aligned as the allocator aligns them: block -1 the block before...
        ops: list[tuple[int, int, int, int, int, list[list[int]], DynAllocator, int, int]] = []
        for ev in self.log:
            kind, made = ev[0], ev[1]
            assert isinstance(made, _T)
            if not start <= made.pos < resume:
                return False
            b, key = self._key(made)
            if kind == "a":  # ("a", tensor, buft, size)
                assert isinstance(ev[3], int)
                a = allocs[str(ev[2])]
                ops.append((0, b, key, 0, key, a.blocks, a, a.align(ev[3]), 0))
            elif kind == "i":  # ("i", tensor, owner, buft, owner's size, size): both aligned already
                owner = ev[2]
                assert isinstance(owner, _T) and isinstance(ev[4], int) and isinstance(ev[5], int)
                if not start <= owner.pos < resume:
                    return False
                ob, okey = self._key(owner)
                a = allocs[str(ev[3])]
                ops.append((1, b, key, ob, okey, a.blocks, a, ev[4], ev[5]))
            else:  # ("f", tensor, buft, size)
                assert isinstance(ev[3], int)
                a = allocs[str(ev[2])]
                ops.append((2, b, key, 0, key, a.blocks, a, a.align(ev[3]), 0))
        lowest = min((min(op[1], op[3]) for op in ops), default=0)
        for k in range(lowest + 1, self.out + 1):
            places.setdefault(k, {})
        # DynAllocator.alloc and .free written out (the replay's loop is most of their calls in a --fit of
        # DeepSeek-V4-Flash): the same best fit and the same merges on the same blocks, the sizes aligned already
        for k in range(1, self.out + 1):
            for kind, b, key, ob, okey, blocks, a, size, ns in ops:
                if kind == 0:
                    best = blocks[-1]
                    best_size = 1 << 63
                    for free_block in blocks[:-1]:
                        bsize = free_block[1]
                        if size <= bsize <= best_size:
                            best, best_size = free_block, bsize
                    off = best[0]
                    best[0] = off + size
                    left = best[1] - size
                    best[1] = left
                    if left == 0:
                        _remove(blocks, best)
                    if off + size > a.max_size:
                        a.max_size = off + size
                    places[k + b][key] = off
                    continue
                got = places[k + ob].pop(okey, None) if kind == 1 else places[k + b].pop(key, None)
                if got is None:
                    return False
                off = got
                if kind == 1:
                    places[k + b][key] = off
                    if size <= ns:
                        continue
                    off, size = off + ns, size - ns
                # DynAllocator.free
                end = off + size
                for i, fb in enumerate(blocks):
                    b0 = fb[0]
                    if b0 + fb[1] == off:
                        fb[1] += size
                        if i + 1 < len(blocks) and b0 + fb[1] == blocks[i + 1][0]:
                            fb[1] += blocks[i + 1][1]
                            del blocks[i + 1]
                        break
                    if end == b0:
                        fb[0] = off
                        fb[1] += size
                        if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == off:
                            blocks[i - 1][1] += fb[1]
                            del blocks[i]
                        break
                else:
                    pos = 0
                    while pos < len(blocks) and blocks[pos][0] < off:
                        pos += 1
                    blocks.insert(pos, [off, size])
        # the kept tensors of the run stand for those of the blocks last left out, which must be alive
        mine: dict[int, dict[int, _T]] = {}
        for t in own:
            if start <= t.pos < resume:
                b, key = self._key(t)
                mine.setdefault(b + self.out, {})[key] = t
        for b, block in places.items():
            if block.keys() != mine.get(b, {}).keys():
                return False
        for b, kept in mine.items():
            block = places.get(b, {})
            if block.keys() != kept.keys():
                return False
            for key, t in kept.items():
                where[t] = (where[t][0], block[key])
        return True


def _state(
    mark: int,
    start: int,
    allocs: dict[str, DynAllocator],
    tensors: list[_T],
    where: dict[_T, tuple[str, int]],
    own: set[_T],
    children: dict[_T, int],
    views: dict[_T, int],
    pre: frozenset[_T],
) -> object:
    """What the replay of the nodes from the layer at position ``mark`` on depends on: every
    allocator's free blocks, and each tensor allocated or still awaited (its place, and its pending
    consumers and views), a layer's tensors keyed by their layer's distance to ``mark`` and their
    place in it, the others (inputs, embeddings, shared copies) by identity, without their pending
    consumers (which only differ by the uses of the layers a plan leaves out, all before a last
    use in the layers it keeps), and so are the tensors of the layers before the run (at ``start``)
    that ``mark`` is in (HRM-Text's stack outputs, read by the first layer of a later pass: the same
    tensor for every block of the run, as an input is), and those allocated before the first node
    (in a place no layer changes) by identity. Tensors of later layers are left out unless already
    allocated.
    ``tensors``: every tensor of the graph but weights, caches and their views (never allocated here)."""
    free = tuple((b, tuple(tuple(blk) for blk in a.blocks)) for b, a in allocs.items())
    live: dict[object, object] = {}
    children_get, views_get = children.get, views.get
    for t in tensors:
        mine = t in own
        if t in pre:
            live[("pre", id(t))] = where[t] if mine else None
            continue
        pos = t.pos
        if pos < start:  # GLOBAL, or a layer before the run
            pending = bool(children_get(t, 0) or views_get(t, 0))
            if mine or pending:
                live[("global", id(t))] = (where[t] if mine else None, pending)
            continue
        if pos >= mark and not mine:
            continue
        n_children, n_views = children_get(t, 0), views_get(t, 0)
        if mine or n_children or n_views:
            live[(pos - mark, t.seq)] = (where[t] if mine else None, n_children, n_views)
    return free, live
