"""``ggml_backend_sched`` (ggml/src/ggml-backend.cpp:1061-1745): every node assigned a backend in its
five passes (op offload of host weights' products to the first GPU from 32 tokens), the graph split
where the backend changes, one copy per split input (four with pipeline parallelism), and the
allocation dependencies CUDA's ``graph_optimize`` adds around the ops it fuses. ``-sm tensor``'s Meta device
(``Meta()``, ggml-backend-meta.cpp) is one backend like a GPU, with neither ``graph_optimize`` nor ``offload_op``."""

from __future__ import annotations

from itertools import count, repeat

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, INPUT, OUTPUT, _Fusion, _Graph
from ggufx.analysis.memory.placement import CPU, META

OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu:5754 (op_offload_min_batch_size)
N_COPIES = 4  # GGML_SCHED_MAX_COPIES (ggml-backend.cpp:912)
GGML_MAX_SRC = 10
# the ops supports_op can refuse a GPU
_GPU_MAY_LACK = frozenset({"FLASH_ATTN_EXT", "MUL_MAT_ID", "LIGHTNING_INDEXER", "SSM_SCAN", "SSM_CONV"})
_VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})  # ggml_is_view_op
_HOST_BUFTS = ("CPU", "CPU_Mapped", "CPU_REPACK")


FATTN_KQ_STRIDE = 256  # ggml-cuda/fattn-common.cuh
_FATTN_KV_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"})  # fattn.cu:525-538


_LIGHTNING_INDEXER_K_TYPES = frozenset({"F32", "BF16", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"})


def cuda_lightning_indexer_supported(t: _T) -> bool:
    """``ggml_cuda_lightning_indexer_supported`` (lightning-indexer.cu:724-778): kernels exist for keys of 128
    values with 4, 32 or 64 indexer heads, rows aligned to 16 bytes, and these key types. Elsewhere the
    scheduler runs the indexer on the CPU (DeepSeek V4's small models: 8 or 4 heads, or keys of 64)."""
    q, k = t.src[0], t.src[1]
    if q.ne[0] != 128 or q.ne[1] not in (4, 32, 64):
        return False
    for x in (q, k):
        if not _quantized(x.type) and any(nb % 16 for nb in x.nb[1:]):
            return False
    return k.type in _LIGHTNING_INDEXER_K_TYPES


def _ne(t: _T, i: int) -> int:
    return t.ne[i] if i < len(t.ne) else 1


def cuda_ssm_supported(t: _T) -> bool:
    """ggml-cuda.cu ``supports_op`` (:5602-5623) of the selective scan and the convolution. SSM_SCAN
    (sources s, x, dt, A, B, C, ids): with A of one row (``ne[0]`` 1, Mamba-2) a kernel exists for d_state
    (``s->ne[0]``) 96, 128 or 256 and heads (``s->ne[1]``) a multiple of 16; else (Mamba-1, K 1 in every
    builder) for d_state 16, heads of 1, a multiple of 128 of them and one group (``B->ne[1]``). SSM_CONV: the
    channels (``src[0]->ne[1]``) a multiple of 128. Elsewhere the scheduler runs the node on the CPU (PLaMo 2's
    scan of d_state 64)."""
    if t.op == "SSM_CONV":
        return _ne(t.src[0], 1) % 128 == 0
    s, a, b = t.src[0], t.src[3], t.src[4]
    if _ne(a, 0) == 1:
        return _ne(s, 0) in (96, 128, 256) and _ne(s, 1) % 16 == 0
    return _ne(s, 0) == 16 and _ne(s, 1) == 1 and _ne(s, 2) % 128 == 0 and _ne(b, 1) == 1


def cuda_flash_attn_supported(t: _T) -> bool:
    """``ggml_cuda_flash_attn_ext_supported`` (fattn.cu:541-632, 775): a kernel exists for these head
    sizes, K/V types and mask. Equal K and V heads of 40 to 256; K 192 with V 128, K 320 with V 256, 512
    and MLA's 576 with V 512 only where the GQA optimization applies (and the GQA ratio divides as the
    kernels need). Where it returns False the scheduler runs the node on the CPU, and ``-fa auto``'s probe
    then turns flash attention off (MiniCPM3's 96/64 heads, MiMo-V2's 192/128 at an odd GQA ratio)."""
    q, k, v = t.src[0], t.src[1], t.src[2]
    mask = t.src[3] if len(t.src) > 3 else None
    gqa_ratio = q.ne[2] // k.ne[2] if k.ne[2] else 0
    gqa_opt = gqa_ratio >= 2 and mask is not None and k.ne[1] % FATTN_KQ_STRIDE == 0
    for x in (q, k, v, mask):  # ALiBi (max_bias > 0) is not modelled: its models' heads need no GQA path
        if x is not None and not _quantized(x.type) and any(nb % 16 for nb in x.nb[1:]):
            gqa_opt = False
    dk, dv = k.ne[0], v.ne[0]
    if dk in (40, 64, 72, 80, 96, 112, 128, 256):
        ok = dv == dk
    elif dk == 192:
        ok = dv == 128 and gqa_opt and gqa_ratio % 8 == 0
    elif dk == 320:
        ok = dv == 256 and gqa_opt and gqa_ratio % 32 == 0
    elif dk == 512:
        ok = dv == 512 and gqa_opt
    elif dk == 576:
        ok = dv == 512 and gqa_opt
    else:
        ok = False
    return ok and k.type in _FATTN_KV_TYPES and v.type in _FATTN_KV_TYPES and (mask is None or mask.ne[2] == 1)


def _positions(splits: list[tuple[int, list[_T], list[_T]]]) -> dict[_T, tuple[int, int]]:
    """Each node's split and place in it (a node listed twice: its last place)."""
    where: dict[_T, tuple[int, int]] = {}
    for i, (_, _, members) in enumerate(splits):
        where.update(zip(members, zip(repeat(i), count())))
    return where


def _quantized(type_: str) -> bool:
    return type_.startswith(("Q", "IQ", "TQ", "MXFP"))


class _Sched:
    """The backends (GPUs in order, the CPU last) and the split graph they run."""

    def __init__(self, gpus: list[str], host: str, n_copies: int, op_offload: bool = True) -> None:
        self.names = [*gpus, CPU]
        self.bufts = [*gpus, host]
        self.cpu = len(gpus)
        self.n_copies = n_copies
        # the Meta device of -sm tensor has no offload_op (ggml-backend-meta.cpp:192: nullptr; ggml-backend.cpp:784-790
        # answers false) and no graph_optimize (ggml-backend-meta.cpp:2496: nullptr; ggml-backend.cpp:710-714 does
        # nothing): no op offload to it, and none of CUDA's fusion dependencies or reordering in its splits
        self.op_offload = op_offload and META not in gpus
        self.optimize = [name != META for name in gpus] + [False]  # the backends that run CUDA's graph_optimize
        self._from: dict[str, int] = {}  # buffer type -> the first backend that supports it
        self._supports: dict[tuple[int, str], bool] = {}  # supports_buft's answers

    def supports_buft(self, b: int, buft: str) -> bool:
        if b == self.cpu:  # the CPU backend takes any host buffer (ggml-cpu.cpp supports_buft)
            return buft in _HOST_BUFTS or buft.endswith("_Host")
        return buft == self.bufts[b]  # CUDA: only its own device buffers (ggml-cuda.cu:5733)

    def from_buffer(self, t: _T) -> int:
        buft = t.view_src.buft if t.view_src is not None else t.buft
        if buft is None:
            return -1
        b = self._from.get(buft)
        if b is None:
            b = self._from[buft] = next(b for b in range(len(self.names)) if self.supports_buft(b, buft))
        return b

    def offload(self, t: _T) -> bool:  # ggml_backend_cuda_device_offload_op (ggml-cuda.cu:5739-5758)
        if t.op == "GET_ROWS":
            batch = 0
        elif t.op == "MUL_MAT":
            batch = t.ne[1]
        elif t.op in ("MUL_MAT_ID", "ROPE"):
            batch = t.ne[2]
        else:
            batch = t.ne[1] * t.ne[2] * t.ne[3]
        return batch >= OP_OFFLOAD_MIN_BATCH

    def from_cur(self, t: _T) -> int:  # ggml_backend_sched_backend_id_from_cur (:1061)
        vs = t.view_src
        buft = vs.buft if vs is not None else t.buft
        if buft is not None:
            return self.from_buffer(t)
        if t.flags & INPUT:
            return self.cpu
        if t.op in ("ROPE", "FLASH_ATTN_EXT"):
            return -1
        for s in t.src:
            if s.weight:
                sb = self.from_buffer(s)
                if sb != -1 and not self.supports_op(t, sb):
                    # no backend runs the op next to its weight: the weight will be copied (:1042-1047)
                    return -1
                if self.op_offload and sb == self.cpu and self.offload(t):
                    # the first GPU that runs the op (:1110-1117): Mistral 4's F32 expert products run on none
                    for b in range(self.cpu):
                        if self.supports_op(t, b):
                            return b
                return sb
        return -1

    def supported(self, t: _T, b: int) -> bool:  # ggml_backend_sched_buffer_supported (:1177)
        buft = t.view_src.buft if t.view_src is not None else t.buft
        if buft is None:
            bid = t.backend
            if bid == -1 and t.view_src is not None:
                bid = t.view_src.backend
            if bid == -1:
                return False
            buft = self.bufts[bid]
        key = (b, buft)
        ok = self._supports.get(key)
        if ok is None:
            ok = self._supports[key] = self.supports_buft(b, buft)
        return ok

    def supports_op(self, t: _T, b: int) -> bool:  # ggml_backend_supports_op (the ops a GPU lacks)
        if b == self.cpu:
            return True
        if t.op == "MUL_MAT_ID" and t.src1_f32:  # ggml-cuda.cu:5329 (supports_op): src1 kept in F32
            return False
        if t.op == "LIGHTNING_INDEXER":
            return cuda_lightning_indexer_supported(t)
        if t.op in ("SSM_SCAN", "SSM_CONV"):
            return cuda_ssm_supported(t)
        return t.op != "FLASH_ATTN_EXT" or cuda_flash_attn_supported(t)

    def assign(self, g: _Graph) -> None:
        for leaf in g.leafs:
            if leaf.backend == -1:
                leaf.backend = self.from_cur(leaf)
        for node in g.nodes:
            if node.backend == -1:
                node.backend = self.from_cur(node)
        ops = [n for n in g.nodes if n.op not in _VIEW_OPS]
        cpu = self.cpu
        for seq, gpu_only in ((ops, True), (ops[::-1], True), (ops, False), (ops[::-1], False)):
            cur = -1
            for node in seq:
                b = node.backend
                if b != -1:
                    cur = -1 if gpu_only and b == cpu else b
                elif cur != -1 and (  # ggml_backend_sched_set_if_supported (supports_op)
                    cur == cpu or node.op not in _GPU_MAY_LACK or self.supports_op(node, cur)
                ):
                    node.backend = cur
        for node in ops:  # pass 3: the backend with the most supported inputs (distinct bufts: no upgrades)
            if node.backend == -1:
                best = -1
                for b in range(len(self.names)):
                    if not self.supports_op(node, b):
                        continue
                    n = sum(
                        1
                        for s in node.src
                        if (s.backend != -1 or (s.view_src is not None and s.view_src.backend != -1))
                        and self.supported(s, b)
                    )
                    if n > best:
                        best, node.backend = n, b
        for node in g.nodes:  # pass 4
            if node.view_src is not None and node.backend == -1:
                node.backend = node.view_src.backend
            for s in node.src:
                if s.backend == -1:
                    s.backend = s.view_src.backend if s.view_src is not None else node.backend
            if node.backend == -1:
                node.backend = 0

    def keep_alive(
        self,
        g: _Graph,
        splits: list[tuple[int, list[_T], list[_T]]],
        copies: dict[tuple[_T, int], list[_T]] | None = None,
    ) -> dict[_T, list[_T]]:
        """``ggml_backend_cuda_graph_optimize``'s allocation dependencies (ggml-cuda.cu:4604-4660):
        for each fusable group inside one CUDA split, the tensors kept alive until a node. The split's
        graph reads its inputs' copies (``node->src[j]`` is replaced before graph_optimize runs,
        ggml-backend.cpp:1535, 1618): a kept tensor from another backend is kept as its copy there."""
        copies = copies or {}
        deps: dict[_T, list[_T]] = {}
        if not g.fused:
            return deps
        where = _positions(splits)
        listed: dict[_T, set[_T]] = {}  # what each list of deps holds
        for f in g.fused:
            first, last = where[f.members[0]], where[f.members[-1]]
            b, _, members = splits[first[0]]
            if not self.optimize[b] or first[0] != last[0] or last[1] - first[1] != len(f.members) - 1:
                continue
            if f.keep is None:  # top-k routing: every member and its sources until the next node
                if last[1] + 1 >= len(members):
                    continue
                until, keep = members[last[1] + 1], [t for m in f.members for t in (m, *m.src)]
            else:  # the weighted sum of the experts: until its last add
                until, keep = f.members[-1], [copies[(t, b)][0] if (t, b) in copies else t for t in f.keep]
            kept, held = deps.setdefault(until, []), listed.setdefault(until, set())
            for t in keep:
                if t not in held:
                    held.add(t)
                    kept.append(t)
        return deps

    def _rotate(self, g: _Graph, splits: list[tuple[int, list[_T], list[_T]]]) -> None:
        """``ggml_backend_cuda_graph_optimize``'s shared-expert grouping (ggml-cuda.cu:4626-4645): in a CUDA
        split, the gate, up and GLU of a shared expert are moved right after the routed experts' gate, up
        and GLU (when no pair of expert products lies between), and the routed input and ids are kept
        alive until the shared GLU. The builder registers the candidates whose weights
        ``ggml_cuda_match_shared_expert`` accepts (batch-size independent checks)."""
        where = _positions(splits)
        for routed, shared, keep in g.rotations:
            at = [where.get(n) for n in (*routed, *shared)]
            if any(a is None for a in at) or len({a[0] for a in at if a is not None}) != 1:
                continue
            si = at[0][0] if at[0] is not None else -1
            b, _, members = splits[si]
            # the routed weights must have a buffer: not a copy of host experts (ggml-cuda.cu:1857)
            if not self.optimize[b] or not routed[1].src[0].weight:
                continue
            p, q = [a[1] for a in at if a is not None][0], [a[1] for a in at if a is not None][3]
            pos = [a[1] for a in at if a is not None]
            if pos[:3] != [p, p + 1, p + 2] or pos[3:] != [q, q + 1, q + 2] or q < p + 3:
                continue
            if any(members[k].op == "MUL_MAT_ID" and members[k + 1].op == "MUL_MAT_ID" for k in range(p + 3, q)):
                continue
            members[p + 3 : q + 3] = members[q : q + 3] + members[p + 3 : q]
            for j in range(p, q + 3):
                where[members[j]] = (si, j)
            g.fused.append(_Fusion([*routed, *shared], keep=keep))

    def split(self, g: _Graph) -> tuple[list[_T], list[_T], list[int]]:
        """Pass 5 and the graph copy (:1386-1740): the nodes and leafs ggml-alloc reserves, and for each
        node the position of the layer whose nodes it comes with (a split's inputs come with its first
        node; the nodes after the last layer with the last layer)."""
        splits: list[tuple[int, list[_T], list[_T]]] = []  # (backend, inputs, nodes)
        split_at: list[int] = []
        copies: dict[tuple[_T, int], list[_T]] = {}
        first = next((n.backend for n in g.nodes if n.op not in _VIEW_OPS), 0)
        cur = first
        split: tuple[int, list[_T], list[_T]] = (cur, [], [])
        splits.append(split)
        split_at.append(GLOBAL)
        at = GLOBAL
        supported = self.supported
        for node in g.nodes:
            if node.pos > at:
                at = node.pos
            if node.op in _VIEW_OPS:
                split[2].append(node)
                continue
            need_new = False
            if node.backend == cur and split[1]:
                for s in node.src:
                    if s.weight and s.backend != cur and not supported(s, cur):
                        need_new = True
                        break
            if node.backend != cur or need_new:
                cur = node.backend
                split = (cur, [], [])
                splits.append(split)
                split_at.append(at)
            for j, s in enumerate(node.src):
                if s.backend != cur and not supported(s, cur):
                    key = (s, cur)
                    if key not in copies:
                        made = []
                        for k in range(self.n_copies):
                            cp = _T(f"{self.names[cur]}#{s.name}", "NONE", s.type, s.ne, s.nb)
                            # a layer's copy belongs to the layer its split begins with; a shared one stays shared
                            cp.backend, cp.pos = cur, GLOBAL if s.pos == GLOBAL else split_at[-1]
                            cp.seq = ("copy", s.pos - cp.pos, s.seq, cur, k)
                            if self.n_copies > 1:
                                cp.flags = INPUT | OUTPUT
                            made.append(cp)
                        copies[key] = made
                        split[1].append(s)
                    node.src[j] = copies[key][0]
            split[2].append(node)
        if g.rotations:
            self._rotate(g, splits)
        deps = self.keep_alive(g, splits, copies)
        nodes: list[_T] = []
        node_at: list[int] = []
        for (b, inputs, members), sat in zip(splits, split_at, strict=True):
            for s in inputs:
                dep = _T(s.name, "NONE", s.type, s.ne, s.nb, [s], view_src=s)
                dep.backend, dep.pos = s.backend, GLOBAL if s.pos == GLOBAL else sat
                dep.seq = ("input", s.pos - dep.pos, s.seq, b)
                nodes += [dep, copies[(s, b)][0]]
                node_at += [sat, sat]
            if not deps:
                for node in members:
                    if node.pos > sat:
                        sat = node.pos
                    node_at.append(sat)
                nodes += members
                continue
            for node in members:
                if node.pos > sat:
                    sat = node.pos
                nodes.append(node)
                node_at.append(sat)
                keep = deps.get(node, [])
                for k in range(0, len(keep), GGML_MAX_SRC):  # ggml-backend.cpp:1672-1690
                    dep = _T(node.name, "NONE", "F32", (1, 1, 1, 1), (4, 4, 4, 4), keep[k : k + GGML_MAX_SRC])
                    dep.view_src, dep.backend = keep[k].view_src or keep[k], b
                    dep.pos, dep.seq = node.pos, ("keep", node.seq, k)
                    nodes.append(dep)
                    node_at.append(sat)
        leafs: list[_T] = []
        if self.n_copies > 1:
            for leaf in g.leafs:
                if leaf.flags & INPUT:
                    leaf.flags |= OUTPUT
                    extra = [_T(leaf.name, "NONE", leaf.type, leaf.ne, leaf.nb) for _ in range(self.n_copies - 1)]
                    for e in extra:
                        e.flags, e.backend = INPUT | OUTPUT, leaf.backend
                    leafs += [leaf, *extra]
            for b, inputs, _ in splits:
                for s in inputs:
                    leafs += copies[(s, b)]
        return nodes, leafs + g.leafs, node_at
