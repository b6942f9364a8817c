"""The compute buffers of a multimodal projector (``--mmproj``), as llama.cpp's libmtmd reserves them.

``clip_model_loader::warmup`` (tools/mtmd/clip.cpp:3737) builds the projector's graph for one dummy
image of ``warmup_image_size`` pixels square (``get_dummy_batch``, clip.cpp:3700) and reserves it with
``ggml_backend_sched_reserve`` on the projector's backend (the first GPU, or the CPU with
``--no-mmproj-offload`` / no GPU) plus the CPU (clip.cpp:184-220). The graph inputs (the image, the
positions) live in the CPU buffer; everything else runs on the projector's backend, whose buffer is the
high-water mark of ``ggml-alloc``'s allocator over that graph.

This module rebuilds that graph, tensor by tensor, for the projector types below and replays
ggml-alloc's allocator on it (``ggml_gallocr_alloc_graph_impl``, ggml/src/ggml-alloc.c:718: in-place
reuse of a parent's memory, best-fit free blocks, frees after the last consumer). The figures are
labelled computed (``exact=False``); they are checked against llama.cpp's own logs in
``tests/test_projector_memory.py``.

Modelled: ``qwen2vl_merger``, ``qwen2.5vl_merger``, ``qwen3vl_merger``, ``gemma3``, ``idefics3``,
``mlp`` (LLaVA), ``pixtral``. Any other type is reported as not modelled (:func:`projector_unsupported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ggufx.analysis.memory.buffers import Buffer
from ggufx.analysis.memory.graph import ggml
from ggufx.analysis.memory.graph.galloc import HOST_ALIGN, _reserve
from ggufx.analysis.memory.graph.ggml import _T, INPUT
from ggufx.analysis.memory.options import ProjectorOptions
from ggufx.errors import InputError, ValidationError
from ggufx.model import GGUFModel

__all__ = [
    "MODELLED",
    "ProjectorOptions",
    "ProjectorParams",
    "projector_buffers",
    "projector_params",
    "projector_unsupported",
]

MODELLED = frozenset({"qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger", "gemma3", "idefics3", "mlp", "pixtral"})
# ggml-cuda/fattn.cu ggml_cuda_get_best_fattn_kernel: the head sizes CUDA's flash attention takes (K = V)
CUDA_FA_HEAD_DIMS = frozenset({40, 64, 72, 80, 96, 112, 128, 256})


# -- the projector's hyperparameters ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectorParams:
    """What ``clip_model_loader::load_hparams`` reads (clip.cpp:1240-2040) and the warmup image size."""

    proj_type: str
    n_embd: int
    n_head: int
    n_ff: int
    n_layer: int
    eps_rms: bool
    image_size: int
    patch_size: int
    n_merge: int
    n_wa_pattern: int
    warmup_image_size: int
    image_max_tokens: int  # clip_get_image_max_tokens (clip.cpp:4064), -1 when unbounded
    ffn_op: str  # gelu, silu, gelu_quick


# what ggufx sizes a projector graph for: hostile values get a one-line error, not an endless graph
_BOUNDS = {
    "clip.vision.block_count": (1, 512),
    "clip.vision.embedding_length": (1, 1 << 16),
    "clip.vision.attention.head_count": (1, 1 << 12),
    "clip.vision.feed_forward_length": (1, 1 << 18),
    "clip.vision.image_size": (1, 1 << 16),
    "clip.vision.patch_size": (1, 1 << 12),
    "clip.vision.spatial_merge_size": (1, 64),
    "clip.vision.projector.scale_factor": (0, 64),
    "clip.vision.n_wa_pattern": (0, 512),
}


def _u32(m: GGUFModel, key: str, default: int | None = None) -> int:
    """A projector hyper-parameter within :data:`_BOUNDS` (a missing key takes ``default``)."""
    v = m.metadata.get_int(key)
    offset = m.metadata.kv(key).offset if key in m.metadata else None
    if v is None:
        if default is None:
            why = "is missing" if key not in m.metadata else "is not an integer"
            raise ValidationError(m.path, offset, f"projector key {key} {why}")
        return default
    lo, hi = _BOUNDS.get(key, (0, 1 << 31))
    if not lo <= v <= hi:
        raise ValidationError(m.path, offset, f"projector key {key} = {v} is outside {lo}..{hi}")
    return v


def projector_type(mmproj: GGUFModel) -> str | None:
    """``clip.projector_type`` (or ``clip.vision.projector_type``)."""
    return mmproj.metadata.get_str("clip.projector_type") or mmproj.metadata.get_str("clip.vision.projector_type")


def projector_unsupported(mmproj: GGUFModel) -> str | None:
    """Why ggufx cannot size this projector's compute buffer, or None when it can."""
    ptype = projector_type(mmproj)
    if ptype is None:
        return "the file has no clip.projector_type"
    if mmproj.metadata.get("clip.has_vision_encoder") is not True:
        return "the projector has no vision encoder (audio projectors are not modelled)"
    if ptype not in MODELLED:
        return f"the compute buffer of projector type {ptype!r} is not modelled"
    return None


def _tokens_limit(custom_min: int, custom_max: int, lo: int, hi: int, area: int) -> tuple[int, int]:
    """``set_limit_image_tokens(min, max)`` (clip-model.h:192): the pixel limits and the warmup side."""
    max_pixels = (custom_max if custom_max > 0 else hi) * area
    del custom_min, lo  # the minimum does not change the warmup image
    return max_pixels, int(math.sqrt(max_pixels))


def _warmup_side(n_tokens: int, custom_max: int, patch: int, merge: int) -> int:
    """``set_warmup_n_tokens`` (clip-model.h:210)."""
    side = math.isqrt(n_tokens)
    if 0 < custom_max < n_tokens:
        side = max(1, math.isqrt(custom_max))
    return side * patch * merge


def projector_params(mmproj: GGUFModel, image_min_tokens: int | None, image_max_tokens: int | None) -> ProjectorParams:
    """The hyperparameters and warmup image of a vision projector, as ``load_hparams`` sets them."""
    ptype = projector_type(mmproj) or ""
    md = mmproj.metadata
    cmin, cmax = image_min_tokens or -1, image_max_tokens or -1
    patch = _u32(mmproj, "clip.vision.patch_size")
    image = _u32(mmproj, "clip.vision.image_size")
    n_merge = _u32(mmproj, "clip.vision.projector.scale_factor", 0)
    warmup, max_tokens, wa = image, -1, 0
    if ptype in ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger"):  # clip.cpp:1665
        n_merge = _u32(mmproj, "clip.vision.spatial_merge_size", 2)
        wa = _u32(mmproj, "clip.vision.n_wa_pattern", 0)
        area = patch * patch * n_merge * n_merge
        max_pixels, _ = _tokens_limit(cmin, cmax, 8, 4096, area)
        max_tokens = max_pixels // area
        warmup = _warmup_side(46 * 46, cmax, patch, n_merge)
    elif ptype == "pixtral":  # clip.cpp:1534
        n_merge = _u32(mmproj, "clip.vision.spatial_merge_size", 1)
        area = patch * patch * n_merge * n_merge
        max_pixels, _ = _tokens_limit(cmin, cmax, 8, 1024, area)
        max_tokens = max_pixels // area
        warmup = _warmup_side(256, cmax, patch, n_merge)
    elif ptype == "gemma3":  # clip.cpp:1634
        n_merge = n_merge or 4
    elif ptype == "idefics3":  # clip.cpp:1509: the warmup stays at image_size
        n_merge = n_merge or 1
    use_gelu = md.get("clip.use_gelu") is True
    use_silu = md.get("clip.use_silu") is True
    n_embd, n_head = _u32(mmproj, "clip.vision.embedding_length"), _u32(mmproj, "clip.vision.attention.head_count")
    if n_embd % n_head:
        key = "clip.vision.attention.head_count"
        raise ValidationError(mmproj.path, md.kv(key).offset, f"{key} = {n_head} does not divide the width {n_embd}")
    if patch > image:
        key = "clip.vision.patch_size"
        raise ValidationError(mmproj.path, md.kv(key).offset, f"{key} = {patch} is larger than the image ({image})")
    return ProjectorParams(
        proj_type=ptype,
        n_embd=n_embd,
        n_head=n_head,
        n_ff=_u32(mmproj, "clip.vision.feed_forward_length"),
        n_layer=_u32(mmproj, "clip.vision.block_count"),
        eps_rms=ptype in ("qwen2.5vl_merger", "pixtral"),
        image_size=image,
        patch_size=patch,
        n_merge=n_merge,
        n_wa_pattern=wa,
        warmup_image_size=warmup,
        image_max_tokens=max_tokens,
        ffn_op="gelu" if use_gelu else "silu" if use_silu else "gelu_quick",
    )


# -- the graph: ggml's tensors (graph/ggml.py) through clip_graph's helpers -------------------------


class _Graph:
    """clip.cpp's ggml calls over a :class:`ggufx.analysis.memory.graph.ggml._Graph` (the one the
    language model's graphs use): op names as ggml spells them, weights in their own buffer (never
    allocated), inputs flagged as such."""

    def __init__(self) -> None:
        self.g = ggml._Graph()

    @property
    def nodes(self) -> list[_T]:
        return self.g.nodes

    @property
    def leafs(self) -> list[_T]:
        return self.g.leafs

    def new(self, ne: tuple[int, ...], type_: str, op: str, *src: _T) -> _T:
        return self.g.new("", op.upper(), type_, ne, *src)

    def weight(self, ne: tuple[int, ...], type_: str) -> _T:
        t = self.g.leaf("", type_, ne, buft=_WEIGHTS)
        t.weight = True
        return t

    def input(self, ne: tuple[int, ...], type_: str = "F32") -> _T:
        return self.g.leaf("", type_, ne, INPUT)

    def view(self, a: _T, ne: tuple[int, ...], nb: tuple[int, ...] | None, op: str = "view") -> _T:
        return self.g.view(a, ne, nb, op.upper())

    def reshape(self, a: _T, *ne: int) -> _T:
        return self.g.reshape(a, *ne)

    def permute(self, a: _T, *axes: int) -> _T:
        return self.g.permute(a, *axes)

    def transpose(self, a: _T) -> _T:
        return self.permute(a, 1, 0, 2, 3)

    def cont(self, a: _T, *ne: int) -> _T:
        return self.new(ne or a.ne, a.type, "cont", a)

    def mul_mat(self, w: _T, x: _T) -> _T:
        return self.g.mul_mat("", w, x)

    def unary(self, op: str, a: _T, *more: _T) -> _T:
        return self.new(a.ne, a.type, op, a, *more)

    def cast(self, a: _T, type_: str) -> _T:
        t = self.new(a.ne, type_, "cpy", a)
        t.src.append(t)  # ggml_cast: src[1] is the result itself (ggml.c ggml_cast)
        return t

    def expand(self, t: _T) -> None:
        self.g.expand(t)


_WEIGHTS = "weights"  # the projector's weight buffer: preallocated, never part of the compute buffer


def _peak(g: _Graph, buft: str) -> int:
    """The high-water mark of ggml-alloc's replay (graph/galloc.py, the one the language model's
    graphs use) of the graph in one buffer ``buft`` (its alignment: CUDA's or the host's)."""
    sizes, _ = _reserve(g.nodes, g.leafs, [buft])
    return sizes[buft]


# -- the projector graphs (tools/mtmd/models/*.cpp) ---------------------------------------------------


class _Weights(dict[str, "_T"]):
    """The projector's tensors by name; one the graph needs and the file lacks is a one-line error,
    as llama.cpp's clip loader refuses such a file (``get_tensor`` with ``required``)."""

    def __init__(self, path: str, tensors: dict[str, _T]) -> None:
        super().__init__(tensors)
        self.path = path

    def __missing__(self, name: str) -> _T:
        raise ValidationError(self.path, None, f"projector tensor {name} is missing")


class _Builder:
    """The shared pieces of ``clip_graph`` (clip.cpp:337-930) over one dummy image."""

    def __init__(self, mm: GGUFModel, hp: ProjectorParams, side: int, flash_attn: bool) -> None:
        self.g = _Graph()
        self.hp = hp
        self.fa = flash_attn
        self.side = side
        self.px = side // hp.patch_size
        self.n_patches = self.px * self.px
        self.d_head = hp.n_embd // hp.n_head
        self.w = _Weights(mm.path, {t.name: self.g.weight(tuple(t.shape), t.type.name) for t in mm.tensors})

    def has(self, name: str) -> bool:
        return name in self.w

    def inp_raw(self) -> _T:
        return self.g.input((self.side, self.side, 3, 1))

    def conv2d(self, w: _T, x: _T) -> _T:  # ggml_conv_2d: im2col + mul_mat + permute + cont
        g = self.g
        ow, oh = x.ne[0] // w.ne[0], x.ne[1] // w.ne[1]
        col = g.new(
            (w.ne[2] * w.ne[1] * w.ne[0], ow, oh, x.ne[3]), "F32" if w.type == "BF16" else "F16", "im2col", w, x
        )
        r = g.mul_mat(
            g.reshape(col, col.ne[0], col.ne[3] * col.ne[2] * col.ne[1]),
            g.reshape(w, w.ne[0] * w.ne[1] * w.ne[2], w.ne[3]),
        )
        r = g.reshape(r, col.ne[1], col.ne[2], col.ne[3], w.ne[3])
        return g.cont(g.permute(r, 0, 1, 3, 2))

    def inp(self) -> _T:  # build_inp (clip.cpp:572)
        g = self.g
        x = self.conv2d(self.w["v.patch_embd.weight"], self.inp_raw())
        x = g.reshape(x, self.n_patches, self.hp.n_embd, 1)
        x = g.cont(g.transpose(x))
        if self.has("v.patch_embd.bias"):
            x = g.unary("add", x, self.w["v.patch_embd.bias"])
        return x

    def norm(self, x: _T, prefix: str, rms: bool) -> _T:  # build_norm (clip.cpp:591)
        g = self.g
        x = g.unary("rms_norm" if rms else "norm", x)
        if self.has(prefix + ".weight"):
            x = g.unary("mul", x, self.w[prefix + ".weight"])
        if self.has(prefix + ".bias"):
            x = g.unary("add", x, self.w[prefix + ".bias"])
        return x

    def linear(self, x: _T, name: str) -> _T:
        x = self.g.mul_mat(self.w[name + ".weight"], x)
        if self.has(name + ".bias"):
            x = self.g.unary("add", x, self.w[name + ".bias"])
        return x

    def ffn(self, x: _T, up: str, gate: str | None, down: str, op: str) -> _T:  # build_ffn (clip.cpp:616)
        g = self.g
        tmp = self.linear(x, up)
        if gate is not None and self.has(gate + ".weight"):
            cur = self.linear(x, gate)
            cur = g.new(cur.ne, cur.type, "glu", cur, tmp)
        else:
            cur = g.unary("unary", tmp)
        return self.linear(cur, down)

    def attn(self, prefix: str, q: _T, k: _T, v: _T, mask: _T | None) -> _T:  # build_attn (clip.cpp:750)
        g = self.g
        for t in (q, k, v):
            g.expand(t)
        q = g.permute(q, 0, 2, 1, 3)
        k = g.permute(k, 0, 2, 1, 3)
        if self.fa:
            vp = g.permute(v, 0, 2, 1, 3)
            k = g.cast(k, "F16")
            vp = g.cast(vp, "F16")
            if mask is not None:
                mask = g.cast(mask, "F16")
            srcs = [q, k, vp] + ([mask] if mask is not None else [])
            cur = g.new((vp.ne[0], q.ne[2], q.ne[1], q.ne[3]), "F32", "flash_attn_ext", *srcs)
            cur = g.reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            vc = g.cont(g.permute(v, 1, 2, 0, 3))
            kq = g.mul_mat(k, q)
            kq = g.unary("soft_max", kq, *([mask] if mask is not None else []))
            kqv = g.mul_mat(vc, kq)
            cur = g.permute(kqv, 0, 2, 1, 3)
            cur = g.cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        return self.linear(cur, prefix + "attn_out")

    def qkv(self, prefix: str, cur: _T, n_pos: int) -> tuple[_T, _T, _T]:
        g, d, h = self.g, self.d_head, self.hp.n_head
        if self.has(prefix + "attn_qkv.weight"):
            cur = self.linear(cur, prefix + "attn_qkv")
            row = cur.nb[1]
            views = [g.view(cur, (d, h, n_pos, 1), (cur.nb[0], 4 * d, row, row * n_pos)) for _ in range(3)]
            return views[0], views[1], views[2]
        out = [g.reshape(self.linear(cur, prefix + f"attn_{x}"), d, h, n_pos, 1) for x in "qkv"]
        return out[0], out[1], out[2]

    def vit(
        self,
        x: _T,
        n_pos: int,
        rms: bool,
        ffn_op: str,
        pos: Callable[[_T], _T] | None = None,
        n_layer: int | None = None,
        mask_of: Callable[[int], _T | None] | None = None,
    ) -> _T:
        """build_vit (clip.cpp:337) and the per-model layer loops that follow its shape."""
        g = self.g
        x = g.reshape(x, self.hp.n_embd, n_pos)
        if self.has("v.pre_ln.weight"):
            x = self.norm(x, "v.pre_ln", rms)
        for il in range(self.hp.n_layer if n_layer is None else n_layer):
            b = f"v.blk.{il}."
            cur = self.norm(x, b + "ln1", rms)
            q, k, v = self.qkv(b, cur, n_pos)
            if pos is not None:
                q, k = pos(q), pos(k)
            cur = self.attn(b, q, k, v, mask_of(il) if mask_of else None)
            cur = g.unary("add", cur, x)
            x = cur
            cur = self.norm(cur, b + "ln2", rms)
            cur = self.ffn(cur, b + "ffn_up", b + "ffn_gate", b + "ffn_down", ffn_op)
            x = g.unary("add", x, cur)
        if self.has("v.post_ln.weight"):
            x = self.norm(x, "v.post_ln", rms)
        return x


def _qwenvl(b: _Builder) -> _T:
    """clip_graph_qwen2vl::build (models/qwen2vl.cpp) and clip_graph_qwen3vl::build (models/qwen3vl.cpp)."""
    g, hp = b.g, b.hp
    n, px, n_pos = hp.n_embd, b.px, b.n_patches
    raw = b.inp_raw()
    x = g.unary("add", b.conv2d(b.w["v.patch_embd.weight"], raw), b.conv2d(b.w["v.patch_embd.weight.1"], raw))
    x = g.permute(x, 1, 2, 0, 3)
    x = g.cont(x, n * 2, px // 2, px, 1)
    x = g.reshape(x, n * 2, px // 2, 2, px // 2)
    x = g.permute(x, 0, 2, 1, 3)
    x = g.cont(x, n, n_pos, 1)
    qwen3 = hp.proj_type == "qwen3vl_merger"
    if qwen3:
        x = g.unary("add", x, b.w["v.patch_embd.bias"])
        pe = b.w["v.position_embd.weight"]
        side = math.isqrt(pe.ne[1])
        if side != px:  # resize_position_embeddings (clip.cpp:312)
            pe = g.reshape(pe, n, side, side)
            pe = g.permute(pe, 2, 0, 1, 3)
            pe = g.new((px, px, n, 1), "F32", "upscale", pe)
            pe = g.permute(pe, 1, 2, 0, 3)
            pe = g.cont(pe, n, px * px)
        pe = g.cont(pe, n * 2, px // 2, px, 1)
        pe = g.reshape(pe, n * 2, px // 2, 2, px // 2)
        pe = g.permute(pe, 0, 2, 1, 3)
        pe = g.cont(pe, n, n_pos, 1)
        x = g.unary("add", x, pe)
    positions = g.input((n_pos * 4,), "I32")
    rms = hp.proj_type == "qwen2.5vl_merger"
    mask = None
    if hp.n_wa_pattern > 0:
        inv_idx = g.input((n_pos // 4,), "I32")
        mask = g.input((n_pos, n_pos))
        if b.fa:
            mask = g.cast(mask, "F16")
        x = g.reshape(x, n * 4, n_pos // 4)
        x = g.new((x.ne[0], inv_idx.ne[0]), "F32", "get_rows", x, inv_idx)
        x = g.reshape(x, n, n_pos, 1)
    wa = hp.n_wa_pattern

    def mask_of(il: int) -> _T | None:
        return None if wa == 0 or (il + 1) % wa == 0 else mask

    def rope(t: _T) -> _T:
        return g.unary("rope", t, positions)

    x = b.vit(x, n_pos, rms, hp.ffn_op, rope, mask_of=mask_of)
    x = g.reshape(x, n * 4, n_pos // 4, 1)
    x = b.ffn(x, "mm.0", None, "mm.2", "gelu")
    if wa > 0:
        idx = g.input((n_pos // 4,), "I32")
        x = g.reshape(x, x.ne[0], n_pos // 4)
        x = g.new((x.ne[0], idx.ne[0]), "F32", "get_rows", x, idx)
    return x


def _siglip(b: _Builder) -> _T:
    """clip_graph_siglip::build (models/siglip.cpp): gemma3 and idefics3."""
    g, hp = b.g, b.hp
    x = b.inp()
    x = g.unary("add", x, b.w["v.position_embd.weight"])
    x = b.vit(x, b.n_patches, False, hp.ffn_op)
    if hp.proj_type == "gemma3":
        k = hp.n_merge
        x = g.cont(g.transpose(x), b.px, b.px, hp.n_embd, 1)
        x = g.new((b.px // k, b.px // k, hp.n_embd, 1), "F32", "pool_2d", x)
        x = g.reshape(x, x.ne[0] * x.ne[0], hp.n_embd, 1)
        x = g.cont(g.transpose(x))
        x = g.unary("rms_norm", x)
        x = g.unary("mul", x, b.w["mm.soft_emb_norm.weight"])
        w = g.cont(g.transpose(b.w["mm.input_projection.weight"]))
        return g.mul_mat(w, x)
    s = hp.n_merge  # build_patch_merge_permute (clip.cpp:901)
    x = g.reshape(x, hp.n_embd, b.px, b.px)
    x = g.reshape(x, hp.n_embd * s, b.px // s, b.px)
    x = g.permute(x, 0, 2, 1, 3)
    x = g.cont(x, hp.n_embd * s * s, b.px // s, b.px // s)
    x = g.permute(x, 0, 2, 1, 3)
    x = g.cont(x, x.ne[0], x.ne[1] * x.ne[2])
    return b.linear(x, "mm.model.fc")


def _llava(b: _Builder) -> _T:
    """clip_graph_llava::build (models/llava.cpp), projector ``mlp``; the last block is skipped (feature
    layer -2 unless clip.vision.feature_layer says otherwise)."""
    g, hp = b.g, b.hp
    n_pos = b.n_patches + (1 if b.has("v.class_embd") else 0)
    x = b.inp()
    if b.has("v.class_embd"):
        x = g.new((x.ne[0], x.ne[1] + 1, 1, 1), "F32", "concat", x, b.w["v.class_embd"])
    positions = g.input((n_pos,), "I32")
    pe = b.w["v.position_embd.weight"]
    x = g.unary("add", x, g.new((pe.ne[0], n_pos), "F32", "get_rows", pe, positions))
    x = b.vit(x, n_pos, False, hp.ffn_op, n_layer=hp.n_layer - 1)
    patches = g.input((b.n_patches,), "I32")
    x = g.new((x.ne[0], b.n_patches), "F32", "get_rows", g.reshape(x, x.ne[0], x.ne[1]), patches)
    x = b.linear(x, "mm.0")
    x = g.unary("unary", x)
    return b.linear(x, "mm.2") if b.has("mm.2.weight") else x


def _pixtral(b: _Builder) -> _T:
    """clip_graph_pixtral::build (models/pixtral.cpp) without the Mistral Small 3.1 patch merger."""
    g, hp = b.g, b.hp
    pos_h = g.input((b.n_patches,), "I32")
    pos_w = g.input((b.n_patches,), "I32")

    def rope2d(t: _T) -> _T:  # build_rope_2d (clip.cpp:824): two ropes, the second in place of the first
        t = g.unary("rope", t, pos_h)
        return g.unary("rope", t, pos_w)

    x = b.vit(b.inp(), b.n_patches, True, hp.ffn_op, rope2d)
    x = b.ffn(x, "mm.1", None, "mm.2", "gelu")
    if b.has("v.token_embd.img_break"):
        py = px = b.px // max(hp.n_merge, 1)
        tmp = g.reshape(x, x.ne[0], px, py)
        tok = g.new((x.ne[0], 1, py), x.type, "none")
        tok = g.unary("scale", tok)
        tok = g.unary("add", tok, b.w["v.token_embd.img_break"])
        tmp = g.new((x.ne[0], px + 1, py), "F32", "concat", tmp, tok)
        x = g.view(tmp, (x.ne[0], px * py + py - 1), (4, tmp.nb[1]))
    return x


_GRAPHS: dict[str, Callable[[_Builder], _T]] = {
    "qwen2vl_merger": _qwenvl,
    "qwen2.5vl_merger": _qwenvl,
    "qwen3vl_merger": _qwenvl,
    "gemma3": _siglip,
    "idefics3": _siglip,
    "mlp": _llava,
    "pixtral": _pixtral,
}


def _graph(mm: GGUFModel, hp: ProjectorParams, flash_attn: bool) -> tuple[_Graph, int]:
    """The warmup graph and the bytes of its inputs (the CPU buffer when a GPU runs it)."""
    b = _Builder(mm, hp, hp.warmup_image_size, flash_attn)
    out = _GRAPHS[hp.proj_type](b)
    b.g.expand(out)
    inputs = sum(-(-t.nbytes // HOST_ALIGN) * HOST_ALIGN for t in b.g.leafs if t.flags & INPUT)
    return b.g, inputs


def projector_buffers(
    mmproj: GGUFModel,
    gpu: str | None,
    *,
    flash_attn: bool | str = "auto",
    image_max_tokens: int | None = None,
    image_min_tokens: int | None = None,
) -> list[Buffer]:
    """The compute buffers ``clip_model_loader::warmup`` reserves (kind ``projector_compute``, computed):
    on ``gpu`` (``CUDA0``; None: the CPU, as with ``--no-mmproj-offload`` or a CPU build) the graph's
    high-water mark, and with a GPU a ``CPU`` buffer holding the graph inputs.

    ``flash_attn`` is ``-fa``: ``auto`` and ``on`` use flash attention (the CPU backend always supports
    it; CUDA for the head sizes of ``CUDA_FA_HEAD_DIMS``, else ``auto`` falls back, clip.cpp:3740),
    ``off`` does not. An unmodelled projector type is an
    :class:`InputError` (ask :func:`projector_unsupported` first)."""
    reason = projector_unsupported(mmproj)
    if reason:
        raise InputError(f"--mmproj {mmproj.path}: {reason}", "--mmproj")
    fa = flash_attn if isinstance(flash_attn, bool) else flash_attn != "off"
    hp = projector_params(mmproj, image_min_tokens, image_max_tokens)
    g, inputs = _graph(mmproj, hp, fa)
    if gpu is None:
        return [Buffer("projector_compute", "CPU", _peak(g, "CPU"), exact=False)]
    size = _peak(g, gpu)
    if flash_attn == "auto" and hp.n_embd // hp.n_head not in CUDA_FA_HEAD_DIMS:
        # warmup (clip.cpp:3740): the backend refuses the flash-attention op, so the graph is reserved again
        # without it; the buffer only grows (ggml-alloc.c reserve), so it is the larger of the two
        size = max(size, _peak(_graph(mmproj, hp, False)[0], gpu))
    return [
        Buffer("projector_compute", gpu, size, exact=False),
        Buffer("projector_compute", "CPU", inputs, exact=False),
    ]
