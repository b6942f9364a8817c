"""The Mamba family's shared pieces (src/models/mamba-base.cpp): ``build_mamba2_layer`` for any
architecture (the group count read from the architecture's own ``ssm.group_count`` when the layer has no
grouped norm; moved here from granitehybrid.py, which uses it too), ``build_mamba_layer`` (Mamba-1), and
the checks of the Mamba and Mamba-2 dimensions and tensors that the ``granitehybrid``, ``falcon-h1``,
``nemotron_h`` / ``nemotron_h_moe``, ``mamba`` and ``mamba2`` builders share."""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _norm, _w, _weight
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.analysis.memory.graph.models.qwen35 import _copy_into, _rs
from ggufx.model import GGUFModel

_SSM_KEYS = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.time_step_rank", "ssm.group_count")


@dataclass(frozen=True, slots=True)
class Mamba2Dims:
    """The Mamba-2 hyper-parameters (``load_arch_hparams``: ssm_d_conv, ssm_d_inner, ssm_d_state,
    ssm_dt_rank = the heads, ssm_n_group)."""

    d_conv: int
    d_inner: int
    d_state: int
    n_head: int
    n_group: int

    @property
    def channels(self) -> int:
        """The convolution's channels: x, B and C (``d_inner + 2 n_group d_state``)."""
        return self.d_inner + 2 * self.n_group * self.d_state

    def tensors(self, n_embd: int, norm: bool) -> dict[str, tuple[int, ...]]:
        """The shapes of one Mamba-2 layer's tensors as ``load_arch_tensors`` creates them (the grouped
        norm where the architecture requires it or the file has it), the convolution bias included:
        optional to some loaders, the graph adds it (``ggml_add`` of a missing tensor aborts)."""
        d, h = self.d_inner, self.n_head
        w: dict[str, tuple[int, ...]] = {
            "ssm_in.weight": (n_embd, 2 * d + 2 * self.n_group * self.d_state + h),
            "ssm_conv1d.weight": (self.d_conv, self.channels),
            "ssm_dt.bias": (h,),
            "ssm_a": (1, h),
            "ssm_d": (1, h),
            "ssm_out.weight": (d, n_embd),
            "ssm_conv1d.bias": (self.channels,),
        }
        if norm:
            w["ssm_norm.weight"] = (d // self.n_group, self.n_group)
        return w


def mamba2_dims(model: GGUFModel) -> Mamba2Dims | str:
    """The Mamba-2 dimensions of a model, or why the graph cannot use them (llama.cpp asserts
    ``d_inner % n_head == 0`` and ``d_inner % n_group == 0`` while it builds the layer,
    mamba-base.cpp:174-175, and needs a cached convolution column)."""
    arch = model.architecture or ""
    vals = [model.metadata.get_int(f"{arch}.{k}") or 0 for k in _SSM_KEYS]
    missing = next((k for k, v in zip(_SSM_KEYS, vals, strict=True) if v <= 0), None)
    if missing:
        return f"the graph needs a positive {arch}.{missing}"
    d = Mamba2Dims(*vals)
    if d.d_conv < 2 or d.d_inner % d.n_head or d.d_inner % d.n_group:
        return (
            f"the graph needs {arch}.ssm.conv_kernel >= 2 and ssm.inner_size a multiple of "
            "ssm.time_step_rank and of ssm.group_count"
        )
    return d


@dataclass(frozen=True, slots=True)
class MambaDims:
    """The Mamba-1 hyper-parameters (mamba.cpp:3-10: ssm_d_conv, ssm_d_inner, ssm_d_state, ssm_dt_rank)."""

    d_conv: int
    d_inner: int
    d_state: int
    dt_rank: int

    def tensors(self, n_embd: int) -> dict[str, tuple[int, ...]]:
        """The shapes of one Mamba-1 layer's tensors as mamba.cpp:63-82 creates them."""
        d, r, s = self.d_inner, self.dt_rank, self.d_state
        return {
            "ssm_in.weight": (n_embd, 2 * d),
            "ssm_conv1d.weight": (self.d_conv, d),
            "ssm_conv1d.bias": (d,),
            "ssm_x.weight": (d, r + 2 * s),
            "ssm_dt.weight": (r, d),
            "ssm_dt.bias": (d,),
            "ssm_a": (s, d),
            "ssm_d": (d,),
            "ssm_out.weight": (d, n_embd),
        }


def mamba_dims(model: GGUFModel) -> MambaDims | str:
    """The Mamba-1 dimensions of a model, or why the graph cannot use them (llama.cpp refuses an
    inner size other than twice the embeddings, mamba.cpp:42-44)."""
    arch = model.architecture or ""
    vals = [model.metadata.get_int(f"{arch}.{k}") or 0 for k in _SSM_KEYS[:4]]
    missing = next((k for k, v in zip(_SSM_KEYS, vals, strict=False) if v <= 0), None)
    if missing:
        return f"the graph needs a positive {arch}.{missing}"
    d = MambaDims(*vals)
    n_embd = model.metadata.get_int(f"{arch}.embedding_length") or 0
    if d.d_conv < 2 or d.d_inner != 2 * n_embd:
        return f"the graph needs {arch}.ssm.conv_kernel >= 2 and ssm.inner_size = 2 x embedding_length"
    return d


def check_shapes(model: GGUFModel, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first tensor of ``shapes`` the file lacks or has in another shape (None: all there), and
    token_embd.weight two-dimensional with the embedding's columns."""
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    emb = tensors.get("token_embd.weight", ())
    n_embd = shapes["output_norm.weight"][0]
    if len(emb) != 2 or emb[0] != n_embd:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {n_embd} columns"
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None


@dataclass(frozen=True, slots=True)
class RsInp:
    """``build_rs_inp_impl`` (llama-graph.cpp:3630-3651): the state-copy indices and their two views, made
    once per graph and read by every recurrent layer. The views are graph nodes of their own where a layer
    first reads them; on a GPU split each is a split input of its own (one copy per view, ggml-backend.cpp:1516,
    pass 5), so per-layer views would each get a copy that llama.cpp does not make."""

    s_copy: _T  # every state's source cell (``rs_s_copy``, n_rs = n_seq_max)
    main: _T  # the micro-batch's states (``s_copy_main``, n_seqs)
    tail: _T  # the states after the first (``s_copy_tail``, n_rs - 1)


def rs_inp(c: _Ctx, g: _Graph) -> RsInp:
    """``build_rs_inp``: ``rs_s_copy`` and its views ``s_copy_main`` and ``s_copy_tail``."""
    s_copy = g.input("rs_s_copy", "I32", c.sp.n_seq_max)
    main = g.view(s_copy, (c.sp.n_seq_max,), None)
    tail = g.view(s_copy, (s_copy.ne[0] - 1,), None)
    return RsInp(s_copy, main, tail)


def _n_group(c: _Ctx, il: int) -> int:
    norm_w = _weight(c, f"blk.{il}.ssm_norm.weight", il)
    if norm_w is not None:
        return norm_w.ne[1]
    v = file_value(c, f"{c.hp.arch}.ssm.group_count")
    return v if isinstance(v, int) and v > 0 else 1


def mamba2_layer(c: _Ctx, g: _Graph, x: _T, il: int, rs: RsInp) -> _T:
    """``build_mamba2_layer`` (mamba-base.cpp:153-304, with ``n_rs_seq`` 0: one state written back):
    the joint in-projection split in z, xBC and dt, the convolution over the cached columns (written
    back), its bias (which the graph adds whether or not the loader required it) and SiLU, the
    selective scan reading the states straight from the cache (``build_rs`` with a row getter: the
    gather skips the first state), the new state written back, the D skip, the SwiGLU with z, the
    grouped RMS norm (when the layer has one) and the out-projection."""
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    p = f"blk.{il}."
    conv_w = _w(c, p + "ssm_conv1d.weight", il)
    d_conv, channels = conv_w.ne[0], conv_w.ne[1]
    n_head = _w(c, p + "ssm_dt.bias", il).ne[0]
    norm_w = _weight(c, p + "ssm_norm.weight", il)
    out_w = _w(c, p + "ssm_out.weight", il)
    d_inner = out_w.ne[0]
    head_dim = d_inner // n_head
    n_group = _n_group(c, il)
    d_state = (channels - d_inner) // (2 * n_group)
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    s_copy, tail, main = rs.s_copy, rs.tail, rs.main
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d_conv - 1, channels, ns)
    zx = g.mul_mat(f"zxBCdt-{il}", _w(c, p + "ssm_in.weight", il), x)
    zx = g.reshape(zx, zx.ne[0], nst, ns)
    row = zx.nb[1]
    z = g.view(zx, (head_dim, n_head, nst, ns), (4, 4 * head_dim, row, row * nst))
    xbc = g.view(zx, (channels, nst, ns), (4, row, row * nst))
    dt = g.view(zx, (n_head, nst, ns), (4, row, row * nst))
    conv_x = g.new(f"conv_x-{il}", "CONCAT", "F32", (d_conv - 1 + nst, channels, ns), conv, g.permute(xbc, 1, 0, 2, 3))
    _copy_into(g, g.view(conv_x, (d_conv - 1, channels, ns), conv_x.nb[:3]), cache_r, ns)
    xbc = g.new(f"xBC-{il}", "SSM_CONV", "F32", (channels, nst, ns), conv_x, conv_w)
    xbc = g.op(f"xBC-{il}", "ADD", xbc, _w(c, p + "ssm_conv1d.bias", il))
    xbc = g.op(f"xBC-{il}", "UNARY", xbc)
    r = xbc.nb[1]
    xs = g.view(xbc, (head_dim, n_head, nst, ns), (4, 4 * head_dim, r, r * nst))
    bs = g.view(xbc, (d_state, n_group, nst, ns), (4, 4 * d_state, r, r * nst))
    cs = g.view(xbc, (d_state, n_group, nst, ns), (4, 4 * d_state, r, r * nst))
    dt = g.op(f"dt-{il}", "ADD", g.new(f"dt-{il}", "CONT", "F32", dt.ne, dt), _w(c, p + "ssm_dt.bias", il))
    # build_rs with get_ssm_rows (llama-graph.cpp:3587-3627, :3661-3675): s_copy's tail gathered
    size = hp.n_embd_s
    states = g.reshape(cache_s, size, cache_s.ne[1])
    zero = g.view(states, (size,), None)
    g.expand(g.view(zero, zero.ne, zero.nb, "SCALE"))
    every = g.new(f"{cache_s.name}_rows", "GET_ROWS", "F32", (size, tail.ne[0]), states, tail)
    ssm = g.reshape(states, d_state, head_dim, n_head, states.ne[1])
    n_y = head_dim * n_head * nst * ns
    scan = g.new(
        f"ssm_scan-{il}",
        "SSM_SCAN",
        "F32",
        (n_y + d_state * head_dim * n_head * ns,),
        ssm,
        xs,
        dt,
        _w(c, p + "ssm_a", il),
        bs,
        cs,
        main,
    )
    g.expand(scan)
    extra = g.view(every, (size, s_copy.ne[0] - ns), every.nb[:2])
    dst = g.view(cache_s, extra.ne, cache_s.nb[:2])
    g.cpy(extra, dst)
    _copy_into(g, g.view(scan, (size, ns, 1), (4, 4 * size, 4 * size * ns)), cache_s, ns)
    y = g.view(scan, (head_dim, n_head, nst, ns), (4, 4 * head_dim, 4 * head_dim * n_head, 4 * head_dim * n_head * nst))
    y = g.op(f"mamba2_y_add_d-{il}", "ADD", y, g.op(f"x_d-{il}", "MUL", xs, _w(c, p + "ssm_d", il), type_="F32"))
    zc = g.new(f"z-{il}", "CONT", "F32", z.ne, z)
    y = g.new(f"y-{il}", "GLU", "F32", zc.ne, zc, y)
    if norm_w is not None:
        y = g.reshape(y, d_inner // n_group, n_group, nst, ns)
        y = _norm(c, g, y, p + "ssm_norm.weight", il)
    y = g.reshape(y, d_inner, T)
    return g.mul_mat(f"mamba_out-{il}", out_w, y)


def mamba_layer(c: _Ctx, g: _Graph, x: _T, il: int, rs: RsInp) -> _T:
    """``build_mamba_layer`` (mamba-base.cpp:9-151, Mamba-1): the in-projection of the tokens of each
    sequence split in x and z, the convolution over the cached columns (written back), its bias and
    SiLU, the projection to dt, B and C (each RMS-normed where ``ssm.dt_b_c_rms`` is set: Falcon-Mamba),
    dt's own projection and bias, the selective scan with one decay per state (reading the states
    straight from the cache as Mamba-2's does), the new state written back, the D skip, the SwiGLU
    with z and the out-projection."""
    return _mamba_layer(c, g, x, il, rs, False)


def mamba_layer_normed(c: _Ctx, g: _Graph, x: _T, il: int, rs: RsInp) -> _T:
    """:func:`mamba_layer` for a layer with the weights of dt's, B's and C's RMS norms (``ssm_dt_norm``,
    ``ssm_b_norm``, ``ssm_c_norm``: Jamba), which ``build_mamba_layer`` applies with them
    (mamba-base.cpp:89-93: each norm times its weight)."""
    return _mamba_layer(c, g, x, il, rs, True)


def _mamba_layer(c: _Ctx, g: _Graph, x: _T, il: int, rs: RsInp, weighted: bool) -> _T:
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    p = f"blk.{il}."
    conv_w = _w(c, p + "ssm_conv1d.weight", il)
    d_conv, d_inner = conv_w.ne[0], conv_w.ne[1]
    x_w, dt_w = _w(c, p + "ssm_x.weight", il), _w(c, p + "ssm_dt.weight", il)
    dt_rank = dt_w.ne[0]
    d_state = (x_w.ne[1] - dt_rank) // 2
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    s_copy, tail, main = rs.s_copy, rs.tail, rs.main
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d_conv - 1, d_inner, ns)
    xz = g.mul_mat(f"xz-{il}", _w(c, p + "ssm_in.weight", il), g.reshape(x, x.ne[0], nst, ns))
    row = xz.nb[1]
    xs = g.view(xz, (d_inner, nst, ns), (4, row, xz.nb[2]))
    z = g.view(xz, (d_inner, nst, ns), (4, row, xz.nb[2]))
    conv_x = g.new(f"conv_x-{il}", "CONCAT", "F32", (d_conv - 1 + nst, d_inner, ns), conv, g.permute(xs, 1, 0, 2, 3))
    last = g.view(conv_x, (d_conv - 1, d_inner, ns), conv_x.nb[:3])
    dst = g.view(cache_r, ((d_conv - 1) * d_inner * ns,), None)
    g.cpy(last, dst)
    xc = g.new(f"x-{il}", "SSM_CONV", "F32", (d_inner, nst, ns), conv_x, conv_w)
    xc = g.op(f"x-{il}", "ADD", xc, _w(c, p + "ssm_conv1d.bias", il))
    xc = g.op(f"x-{il}", "UNARY", xc)
    x_db = g.mul_mat(f"x_db-{il}", x_w, xc)
    r = x_db.nb[1]
    dt = g.view(x_db, (dt_rank, nst, ns), (4, r, x_db.nb[2]))
    bs = g.view(x_db, (d_state, 1, nst, ns), (4, 4 * d_state, r, x_db.nb[2]))
    cs = g.view(x_db, (d_state, 1, nst, ns), (4, 4 * d_state, r, x_db.nb[2]))
    if weighted:
        dt, bs, cs = (_norm(c, g, t, f"{p}ssm_{n}_norm.weight", il) for n, t in (("dt", dt), ("b", bs), ("c", cs)))
    elif file_value(c, f"{hp.arch}.ssm.dt_b_c_rms") is True:  # build_norm without a weight: the norm alone
        dt, bs, cs = (g.op(f"norm-{il}", "RMS_NORM", t) for t in (dt, bs, cs))
        for t in (dt, bs, cs):
            t.backend = c.pin[il]
    else:
        dt = g.new(f"dt-{il}", "CONT", "F32", dt.ne, dt)
    dt = g.op(f"dt-{il}", "ADD", g.mul_mat(f"dt-{il}", dt_w, dt), _w(c, p + "ssm_dt.bias", il))
    x4 = g.reshape(xc, 1, d_inner, nst, ns)
    # build_rs with get_ssm_rows (llama-graph.cpp:3587-3627, :3661-3675): s_copy's tail gathered
    size = hp.n_embd_s
    states = g.reshape(cache_s, size, cache_s.ne[1])
    zero = g.view(states, (size,), None)
    g.expand(g.view(zero, zero.ne, zero.nb, "SCALE"))
    every = g.new(f"{cache_s.name}_rows", "GET_ROWS", "F32", (size, tail.ne[0]), states, tail)
    ssm = g.reshape(states, d_state, 1, d_inner, states.ne[1])
    n_y = d_inner * nst * ns
    scan = g.new(
        f"ssm_scan-{il}",
        "SSM_SCAN",
        "F32",
        (n_y + d_state * d_inner * ns,),
        ssm,
        x4,
        dt,
        _w(c, p + "ssm_a", il),
        bs,
        cs,
        main,
    )
    g.expand(scan)
    extra = g.view(every, (size, s_copy.ne[0] - ns), every.nb[:2])
    dst = g.view(cache_s, extra.ne, cache_s.nb[:2])
    g.cpy(extra, dst)
    dst = g.view(cache_s, (d_state * d_inner * ns,), None)
    cpy = g.view(dst, dst.ne, dst.nb, "CPY")
    cpy.src = [g.view(scan, (d_state * d_inner * ns,), None), dst]
    g.expand(cpy)
    y = g.view(scan, (d_inner, nst, ns), (4, 4 * d_inner, 4 * d_inner * nst))
    y = g.op(f"y-{il}", "ADD", y, g.op(f"x_d-{il}", "MUL", xc, _w(c, p + "ssm_d", il), type_="F32"))
    zc = g.new(f"z-{il}", "CONT", "F32", z.ne, z)
    y = g.new(f"y-{il}", "GLU", "F32", zc.ne, zc, y)
    out = g.mul_mat(f"ssm_out-{il}", _w(c, p + "ssm_out.weight", il), y)
    return g.reshape(out, out.ne[0], T)
