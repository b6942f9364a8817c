"""A model's shape as llama.cpp's ``llama_hparams`` sees it: layers, heads, head sizes, window,
vocabulary and the recurrent state sizes, from the ``{arch}.*`` metadata keys.

A file that lacks a key llama.cpp needs for its memory (``{arch}.block_count``, the head counts)
gets a :class:`~ggufx.errors.ValidationError` naming the key, not an arithmetic error later.
"""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.archs import ARCHS, arch_of
from ggufx.errors import ValidationError
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.format.spec import align
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h: the per-layer arrays are this long


def pad(n: int, to: int = 256) -> int:
    """``GGML_PAD(n, to)``: llama.cpp pads context sizes to 256."""
    return align(n, to)


def row_size(type_name: str, n: int) -> int:
    """``ggml_row_size``: bytes of ``n`` elements of a type."""
    t = ggml_type_by_name(type_name)
    if n % t.block_size:
        raise ValueError(f"{n} elements are not a multiple of the {t.name} block size {t.block_size}")
    return n // t.block_size * t.type_size


@dataclass(frozen=True, slots=True)
class Hparams:
    """The sizes llama.cpp reads from a model's metadata (llama_hparams)."""

    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: list[int]
    n_head_kv: list[int]
    head_k: int
    head_v: int
    head_k_swa: int
    head_v_swa: int
    n_swa: int
    n_ff: int
    n_embd_r: int
    n_embd_s: int
    n_nextn: int = 0  # nextn_predict_layers: the trailing NextN/MTP blocks (no cache; skipped by the loader)
    is_mla: bool = False  # llama_hparams::is_mla(): key_length_mla and value_length_mla set (K-only cache)
    # DeepSeek Sparse Attention (archs.Arch.indexer): the lightning indexer's key length and the trunk
    # layers whose keys its cache holds
    indexer_k: int = 0
    indexer_layers: tuple[int, ...] = ()
    # DeepSeek V4 (llama-kv-cache-dsv4.cpp): attention.compress_ratios per block (0: the window only, 4: CSA,
    # 128: HCA); empty for every other architecture
    dsv4_ratios: tuple[int, ...] = ()
    # Granite Switch (granite-switch.cpp load_arch_hparams): the router attention layer the loader adds at index
    # block_count (1 head, 1 KV head, no FFN; n_layer_all = block_count + 1), which n_head / n_head_kv also
    # describe; -1 for every other architecture
    router_layer: int = -1

    @property
    def n_layer_main(self) -> int:
        """``llama_hparams::n_layer()``: the layers without the NextN/MTP blocks (llama_model_n_layer)."""
        return self.n_layer - self.n_nextn


def _arr(model: GGUFModel, key: str, n: int, default: int) -> list[int]:
    """A per-layer value: a scalar for every layer or an array of n integers (llama.cpp's
    ``get_key_or_arr``)."""
    md = model.metadata
    if key not in md:
        return [default] * n
    v = md[key]
    if isinstance(v, GGUFArray):
        items = v.tolist()
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in items):
            raise ValidationError(model.path, md.kv(key).offset, f"{key} must hold non-negative integers")
        if len(items) != n:
            raise ValidationError(
                model.path, md.kv(key).offset, f"{key} has {len(items)} entries but the model has {n} layers"
            )
        return [int(x) for x in items]
    if md.get_int(key) is None or int(v) < 0:
        raise ValidationError(model.path, md.kv(key).offset, f"{key} must be a non-negative integer")
    return [int(v)] * n


def n_loops(model: GGUFModel) -> int:
    """``nanbeige.num_loops``: Nanbeige 4.2 runs its ``block_count`` blocks that many times, each pass with caches of
    its own (nanbeige.cpp ``load_arch_hparams``: ``n_layer_all = block_count x num_loops``, the later layers' head
    counts copied from the first pass's); 1 for every other architecture."""
    if model.architecture != "nanbeige":
        return 1
    return max(model.metadata.get_int("nanbeige.num_loops") or 1, 1)


def n_nextn(model: GGUFModel) -> int:
    """``nextn_predict_layers``: the trailing NextN/MTP blocks (llama_hparams::n_layer_nextn). DeepSeek V4
    counts them only when the first one's ``nextn.eh_proj`` is in the file (deepseek4.cpp
    ``load_arch_hparams``: otherwise every block is a trunk layer)."""
    n = model.metadata.get_int(f"{model.architecture}.nextn_predict_layers") or 0
    if n > 0 and model.architecture in DSV4_ARCHS:
        n_all = model.metadata.get_int(f"{model.architecture}.block_count") or 0
        probe = f"blk.{n_all - n}.nextn.eh_proj.weight"
        if not any(t.name == probe for t in model.tensors):
            return 0
    return max(n, 0)


# the architectures whose memory is llama_kv_cache_dsv4 (llama-model.cpp create_memory; Arch.memory "dsv4")
DSV4_ARCHS = frozenset(a.name for a in ARCHS.values() if a.memory == "dsv4")
# llama-kv-cache-dsv4.cpp DSV4_CSA_RATIO / DSV4_HCA_RATIO: the compression ratios its loader accepts
DSV4_CSA, DSV4_HCA = 4, 128


def dsv4_ratios(model: GGUFModel, n_layer: int) -> tuple[int, ...]:
    """``attention.compress_ratios`` of a DeepSeek V4 file, one per block (deepseek4.cpp ``load_arch_hparams``
    reads the array and refuses one shorter than ``block_count``; ``load_arch_tensors`` accepts 0, 4 and 128
    only). Empty for every other architecture."""
    a = model.architecture or ""
    if a not in DSV4_ARCHS:
        return ()
    key = f"{a}.attention.compress_ratios"
    md = model.metadata
    v = md.get(key)
    if not isinstance(v, GGUFArray):
        raise ValidationError(model.path, md.kv(key).offset if key in md else None, f"{key} is missing or not an array")
    items = v.tolist()
    if len(items) < n_layer:
        raise ValidationError(
            model.path, md.kv(key).offset, f"{key} has {len(items)} entries but the model has {n_layer} blocks"
        )
    if not all(isinstance(x, int) and x in (0, DSV4_CSA, DSV4_HCA) for x in items[:n_layer]):
        raise ValidationError(model.path, md.kv(key).offset, f"{key} must hold 0, 4 or 128 per block")
    return tuple(int(x) for x in items[:n_layer])


def sliding_window(model: GGUFModel, n_layer: int | None = None) -> int:
    """``llama_hparams::n_swa`` as the architecture's ``load_arch_hparams`` sets it (0: no SWA)."""
    arch = model.architecture or ""
    a = arch_of(arch)
    key = model.metadata.get_int(f"{arch}.attention.sliding_window")
    rule = a.swa if a else None
    if rule is None:
        return key or 0
    if rule.disabled:
        return 0
    if rule.forced_window:
        if rule.needs_window:  # smallthinker: a positive window key means 4096 (smallthinker.cpp:6-8)
            return rule.forced_window if key is not None and key > 0 else 0
        return 0 if key == 0 else rule.forced_window  # llama4: chunked attention of 8192 unless the key is 0
    if rule.only_n_layer:  # exaone4: the window key is read whatever the layer count
        n = n_layer if n_layer is not None else (model.metadata.get_int(f"{arch}.block_count") or 0)
        if n - n_nextn(model) != rule.only_n_layer:
            return 0
    if rule.needs_window:
        return key or 0
    return rule.default_window if key is None else key


# glm-dsa.cpp GLM_5_2_DEFAULT_INDEXER_TYPES (GLM-5.2's config.json): layers 0 and 1 and every fourth from 2
# are "full" among its 78, the rest of the LLAMA_MAX_LAYERS array is 0
_GLM_5_2_FULL = frozenset([0, 1, *range(2, 78, 4)])


def indexer_layers(model: GGUFModel, n_main: int) -> tuple[int, ...]:
    """The trunk layers with a lightning indexer of their own (``llama_hparams::is_indexer_full``): every
    one for ``deepseek32``; for ``glm-dsa`` (glm-dsa.cpp ``load_arch_hparams``) the ``attention.indexer.types``
    array (or scalar) if present, else every layer before GLM-5.2 (``context_length`` < 1048576) and
    GLM-5.2's pattern from it on."""
    a = model.architecture or ""
    arch = arch_of(a)
    rule = arch.indexer if arch is not None else ""
    if not rule:
        return ()
    if a == "hy_v4" and (model.metadata.get_int(f"{a}.attention.indexer.top_k") or 0) <= 0:
        return ()  # hy-v4.cpp: DSA off at top_k 0, and create_memory makes a plain llama_kv_cache (llama-model.cpp:2503)
    if rule == "all":
        return tuple(range(n_main))
    key = f"{a}.attention.indexer.types"
    md = model.metadata
    if key in md:
        v = md[key]
        items = v.tolist() if isinstance(v, GGUFArray) else [v] * n_main
        if len(items) != n_main:
            raise ValidationError(
                model.path, md.kv(key).offset, f"{key} has {len(items)} entries but the model has {n_main} layers"
            )
        return tuple(il for il, full in enumerate(items) if full)
    ctx = md.get_int(f"{a}.context_length") or 0
    return tuple(il for il in range(n_main) if ctx < 1048576 or il in _GLM_5_2_FULL)


def hparams(model: GGUFModel) -> Hparams:
    md = model.metadata
    a = model.architecture or ""
    arch = arch_of(a)

    def get(suffix: str, default: int = 0) -> int:
        v = md.get_int(f"{a}.{suffix}")
        return default if v is None else v

    if a == "clip":  # src/llama.cpp's llama_model_load refuses it after reading its hyper-parameters (llama.cpp:352)
        raise ValidationError(
            model.path,
            md.kv("general.architecture").offset,
            "CLIP cannot be used as main model, use it with --mmproj instead (llama.cpp's words): "
            "this is a multimodal projector; give the language model as the file and this one as --mmproj",
        )
    for key in (f"{a}.block_count", f"{a}.embedding_length"):
        value = md.get_int(key) if a else None
        if value is None or value <= 0:
            what = "general.architecture is missing" if not a else f"{key} is missing or not a positive integer"
            raise ValidationError(
                model.path,
                md.kv(key).offset if key in md else None,
                f"{what}: llama.cpp cannot size this model's memory",
            )
    n_layer = get("block_count") * n_loops(model)
    if n_layer > LLAMA_MAX_LAYERS:
        raise ValidationError(
            model.path, md.kv(f"{a}.block_count").offset, f"{a}.block_count = {n_layer} is not plausible"
        )
    # WavTokenizer's decoder: features_length is llama.cpp's n_embd, embedding_length its n_embd_out (llama-model.cpp:1346)
    n_embd = get("features_length") if a == "wavtokenizer-dec" else get("embedding_length")
    n_head = _arr(model, f"{a}.attention.head_count", n_layer, 0)
    n_head_kv = _arr(model, f"{a}.attention.head_count_kv", n_layer, n_head[0] if n_head else 0)
    h0 = max(n_head, default=0) or 1
    head_k = get("attention.key_length", n_embd // h0)
    head_v = get("attention.value_length", n_embd // h0)
    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = get("vocab_size", len(tokens) if isinstance(tokens, GGUFArray) else 0)
    n_ff = max(_arr(model, f"{a}.feed_forward_length", n_layer, 0), default=0)
    router = -1
    if a == "graniteswitch":  # granite-switch.cpp: hparams.router_layer = n_layer, n_head_arr / n_head_kv_arr 1
        router, n_head, n_head_kv = n_layer, [*n_head, 1], [*n_head_kv, 1]
    # recurrent state sizes, as llama_hparams::n_embd_r / n_embd_s
    d_conv, d_inner = get("ssm.conv_kernel"), get("ssm.inner_size")
    d_state, n_group = get("ssm.state_size"), get("ssm.group_count")
    wkv = get("wkv.head_size")
    l_cache = get("shortconv.l_cache")
    if wkv:
        n_r, n_s = get("token_shift_count", 2) * n_embd, n_embd * wkv
    elif l_cache:
        n_r, n_s = n_embd * (l_cache - 1), d_state * d_inner
    elif kda := get("kda.head_dim"):  # Kimi's KDA layers (llama-hparams.cpp:219-224, :242-247)
        h = n_head[0] if n_head else 0
        n_r, n_s = 3 * (d_conv - 1 if d_conv > 0 else 3) * h * kda, kda * kda * h
    elif a == "minimax-01":  # n_embd_head_la is the head size (minimax-01.cpp:8, llama-hparams.cpp:249-254)
        n_r, n_s = 0, head_k * head_k * (n_head[0] if n_head else 0)
    else:
        n_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
        n_s = d_state * d_inner
    return Hparams(
        a,
        n_layer,
        n_embd,
        n_vocab,
        n_ctx_train if 0 < (n_ctx_train := get("context_length")) < 1 << 32 else 0,
        n_head,
        n_head_kv,
        head_k,
        head_v,
        get("attention.key_length_swa", head_k),
        get("attention.value_length_swa", head_v),
        sliding_window(model, n_layer),
        n_ff,
        n_r,
        n_s,
        min(n_nextn(model), n_layer),
        bool(arch is not None and arch.mla and get("attention.key_length_mla") and get("attention.value_length_mla")),
        get("attention.indexer.key_length") if arch is not None and (arch.indexer or a in DSV4_ARCHS) else 0,
        indexer_layers(model, n_layer - min(n_nextn(model), n_layer)),
        dsv4_ratios(model, n_layer),
        router,
    )
