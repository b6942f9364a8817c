"""The architecture registry: what llama.cpp knows per architecture, in one declarative table.

In the spirit of llama.cpp's ``src/llama-arch.cpp`` and gguf-py's ``constants.py``: one :class:`Arch`
entry per ``general.architecture`` says

* ``source``: the file of llama.cpp 11434 that loads it (``src/models/<source>``), and ``keys``: the
  ``{arch}.*`` hyper-parameter keys its ``load_arch_hparams`` reads beyond the ones every architecture
  reads (:data:`COMMON_KEYS`, ``llama_model_base::load_hparams``, llama-model.cpp:1300-1481);
* its layer kinds: the sliding-window rule (:class:`Swa`), the recurrent rule (:class:`Recurrent`),
  MLA (DeepSeek's compressed KV cache), Gemma 3n's shared-KV layers, mixture of experts with shared
  experts and leading dense layers;
* ``skips_nextn``: the NextN/MTP layers (the last ``nextn_predict_layers`` blocks) are created with
  ``TENSOR_SKIP`` (not loaded unless ``--mtp``); the architectures leave them out of their KV cache
  (llama-model.cpp:2812-2819, ``il < n_layer()``) but for ``nextn_kv`` ones (Ling 2.5's hybrid memory has no
  layer filter: its MTP layer keeps an attention cache);
* ``builder``: the module of :mod:`ggufx.analysis.memory.graph` that rebuilds its compute graph, or
  None (the compute figure is then the generic decoder estimate of :mod:`.compute`, labelled so);
  ``graph``: the llama.cpp graph struct it runs, which several architectures share
  (``using graph = llama_model_<other>::graph`` in src/models/models.h).

Adding an architecture is one entry here (plus, for an exact compute figure, one builder module).
An architecture that is not registered is sized from its keys and tensors alone (the rules below
that every llama.cpp architecture shares) and its compute figure is the generic estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

# llama_model_base::load_hparams (llama-model.cpp:1323-1450): the keys every architecture reads
COMMON_KEYS = (
    "context_length",
    "embedding_length",
    "block_count",
    "nextn_predict_layers",
    "expert_count",
    "expert_used_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.key_length_swa",
    "attention.value_length_swa",
    "rope.dimension_count",
    "rope.freq_base",
)


@dataclass(frozen=True, slots=True)
class Swa:
    """How an architecture marks its sliding-window layers (``load_swa_pattern``, llama-model.cpp:3451:
    a ``sliding_window_pattern`` array wins, else its scalar period, else ``pattern``;
    ``llama_hparams::set_swa_pattern``: with ``dense_first`` layer ``il`` is SWA unless
    ``il % n == 0``, otherwise unless ``il % n == n - 1``; a period of 0 makes every layer SWA).

    ``needs_window``: SWA only when ``attention.sliding_window`` is present and positive (gemma3, olmo2,
    lfm2); otherwise the architecture is always SWA with ``default_window`` when the key is absent
    (gemma2: 4096). ``forced_window``: llama4's chunked attention always uses 8192 whatever the key
    says (and none at all when the key is present and 0). ``attention_layers``: every non-recurrent
    layer is SWA (lfm2). ``only_n_layer``: SWA only at this layer count (exaone4: the 32B's 64)."""

    pattern: int = 0
    dense_first: bool = False
    needs_window: bool = False
    default_window: int = 0
    forced_window: int = 0
    chunked: bool = False
    attention_layers: bool = False
    only_n_layer: int = 0
    disabled: bool = False  # phi3 reads the window but llama.cpp turns SWA off (phi3.cpp:13-24)


@dataclass(frozen=True, slots=True)
class Recurrent:
    """Which layers keep a recurrent state, and of what kind.

    ``rule``: ``"all"`` (pure recurrent: ``llm_arch_is_recurrent``), ``"array_or_interval"``
    (``attention.recurrent_layers`` else every layer but each ``full_attention_interval``-th, qwen3next,
    qwen35), ``"no_kv_heads"`` (a 0 in the ``head_count_kv`` array: granitehybrid, lfm2, jamba),
    ``"no_kv_heads_no_ffn"`` (nemotron_h: also ``feed_forward_length`` 0; a layer with neither is
    an MLP layer), ``"every_layer"`` (falcon-h1: every layer has attention *and* a Mamba-2 state,
    llama-model.cpp:2695-2697). ``interval``: for ``"array_or_interval"``, the ``full_attention_interval``
    the loader takes where the file has neither key (4 in qwen3next/qwen35/qwen4exp.cpp, 8 in minimax-01.cpp,
    whose conversion does not write the key)."""

    flavour: str  # "Mamba", "Mamba-2", "Gated DeltaNet", "RWKV", "short conv"
    rule: str
    interval: int = 0


@dataclass(frozen=True, slots=True)
class Arch:
    """One architecture of the registry: its keys, layer kinds, memory module and graph builder."""

    name: str
    source: str  # src/models/<source> in llama.cpp 11434
    keys: tuple[str, ...] = ()
    graph: str = ""  # the llama.cpp graph struct (llama_model_<graph>::graph); "" = its own
    builder: str | None = None
    swa: Swa | None = None
    recurrent: Recurrent | None = None
    mla: bool = False  # attention.key_length_mla + value_length_mla: K-only cache (llama-kv-cache.cpp:210-211)
    kv_from_start: int = -1  # n_layer_kv_from_start: later layers reuse earlier KV (gemma3n.cpp:7)
    skips_nextn: bool = False  # NextN/MTP tensors created with TENSOR_SKIP
    # the NextN/MTP layers keep their attention cache: a hybrid memory without a layer filter of its own
    # (llama-model.cpp create_memory: llama_memory_hybrid's default attention filter takes every layer that is
    # not recurrent, of n_layer_all; the recurrent memory stops at n_layer)
    nextn_kv: bool = False
    moe: bool = False
    leading_dense: bool = False  # reads leading_dense_block_count
    shared_experts: bool = False  # expert_shared_count / expert_shared_feed_forward_length
    gated_q: bool = False  # the Q projection also yields a gate (qwen3next, qwen35)
    # DeepSeek Sparse Attention's lightning indexer: llama_kv_cache_dsa keeps its keys in a second K-only
    # cache of attention.indexer.key_length values per cell (llama-kv-cache-dsa.cpp:41-53) for every trunk
    # layer ("all") or for the "full" layers of attention.indexer.types ("types", glm-dsa:
    # llama-model.cpp:2438)
    indexer: str = ""
    # every layer has K and V cache tensors, empty in a layer without KV heads (deci: its cache has no
    # layer filter), so that without flash attention each V is padded to the widest layer's
    kv_every_layer: bool = False
    # the memory module llama-model.cpp's create_memory makes where it is not chosen by the layer kinds alone
    # (the KV cache, its sliding-window pair, the recurrent or hybrid memory): "dsv4" llama_kv_cache_dsv4, "msa"
    # llama_kv_cache_msa (an indexer cache of the sparse layers after the main one), "hybrid_idx"
    # llama_memory_hybrid_idx (the hybrid memory and an indexer cache), "none" no memory at all (res = nullptr)
    memory: str = ""
    # the builder's graph writes the recurrent state's rollback snapshots (--spec-draft-n-max under --spec-type
    # draft-mtp: cparams.n_rs_seq; qwen35.py's Gated DeltaNet). Elsewhere the reservation keeps n_rs_seq 0 (Qwen3-Next's
    # context clamps it to 0; the other recurrent builders do not model them yet, their state buffer does)
    rs_rollback_graph: bool = False

    @property
    def llama_graph(self) -> str:
        return self.graph or self.source.removesuffix(".cpp").replace("-", "_")


_GDN = Recurrent("Gated DeltaNet", "array_or_interval", 4)
_SSM = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.time_step_rank", "ssm.group_count")

# the keys of the loaders two entries share (deepseek2.cpp: deepseek2 and mistral4; nemotron-h.cpp: nemotron_h and
# nemotron_h_moe)
_MLA_MOE_KEYS = (  # MLA's ranks and head sizes, the experts' (deepseek2.cpp, and the DSA loaders after it)
    "leading_dense_block_count",
    "attention.q_lora_rank",
    "attention.kv_lora_rank",
    "attention.key_length_mla",
    "attention.value_length_mla",
    "expert_feed_forward_length",
    "expert_shared_count",
    "expert_weights_scale",
    "expert_weights_norm",
    "expert_gating_func",
)
_DEEPSEEK2_KEYS = (
    "vocab_size",
    *_MLA_MOE_KEYS,
    "rope.scaling.yarn_log_multiplier",
    "attention.temperature_scale",
    "attention.temperature_length",
)
_NEMOTRON_H_KEYS = (*_SSM, "expert_feed_forward_length", "expert_shared_feed_forward_length", "expert_shared_count")

_DSA_KEYS = (
    *_MLA_MOE_KEYS,
    "rope.dimension_sections",
    "attention.indexer.head_count",
    "attention.indexer.key_length",
    "attention.indexer.top_k",
)

_ENTRIES = (
    # -- the four whose graph ggufx rebuilds (graph/graphsim.py) -------------------------------------
    Arch("llama", "llama.cpp", ("vocab_size",), builder="llama"),
    Arch(
        "gemma3",
        "gemma3.cpp",
        (
            "attention.sliding_window",
            "attention.sliding_window_pattern",
            "rope.freq_base_swa",
            "final_logit_softcapping",
        ),
        builder="gemma3",
        swa=Swa(6, needs_window=True),
    ),
    Arch("qwen3moe", "qwen3moe.cpp", ("expert_feed_forward_length",), builder="qwen3moe", moe=True),
    Arch(
        "qwen35",
        "qwen35.cpp",
        ("rope.dimension_sections", *_SSM, "attention.recurrent_layers", "full_attention_interval"),
        builder="qwen35",
        recurrent=_GDN,
        skips_nextn=True,
        gated_q=True,
        rs_rollback_graph=True,
    ),
    # -- dense decoders ------------------------------------------------------------------------------
    Arch("qwen2", "qwen2.cpp", builder="qwen2"),
    Arch("qwen3", "qwen3.cpp", builder="qwen3"),
    Arch("qwen2vl", "qwen2vl.cpp", ("rope.dimension_sections",), builder="qwen2vl"),
    Arch("qwen3vl", "qwen3vl.cpp", ("n_deepstack_layers", "rope.dimension_sections"), builder="qwen3vl"),
    Arch(
        "mistral3",
        "mistral3.cpp",
        (
            "attention.temperature_scale",
            "rope.scaling.yarn_beta_fast",
            "rope.scaling.yarn_beta_slow",
            "rope.scaling.yarn_log_multiplier",
        ),
        builder="mistral3",
    ),
    Arch("smollm3", "smollm3.cpp", builder="smollm3"),
    Arch("seed_oss", "seed-oss.cpp", builder="seed_oss"),
    Arch("apertus", "apertus.cpp", ("xielu.alpha_n", "xielu.alpha_p", "xielu.beta", "xielu.eps"), builder="apertus"),
    Arch("glm4", "glm4.cpp", ("rope.dimension_sections",), builder="glm4", skips_nextn=True),
    Arch("openelm", "openelm.cpp", builder="openelm"),  # per-layer head_count / head_count_kv arrays
    Arch(
        "granite",
        "granite.cpp",
        ("logit_scale", "residual_scale", "embedding_scale", "attention.scale", "rope.scaling.finetuned"),
        builder="granite",
    ),
    Arch("phi3", "phi3.cpp", ("attention.sliding_window",), builder="phi3", swa=Swa(disabled=True)),
    Arch("ernie4_5", "ernie4-5.cpp", ("rope.dimension_sections",), builder="ernie4_5"),
    # -- sliding window ------------------------------------------------------------------------------
    Arch(
        "gemma2",
        "gemma2.cpp",
        ("rope.freq_base_swa", "attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping"),
        builder="gemma2",
        swa=Swa(2, default_window=4096),
    ),
    Arch(
        "gemma3n",
        "gemma3n.cpp",
        ("rope.freq_base_swa", "attention.sliding_window"),
        builder="gemma3n",
        swa=Swa(5),
        kv_from_start=20,
    ),
    Arch(
        # Gemma 4 (E2B, E4B, 26B-A4B, 31B): the sliding-window layers from the pattern array, their own head
        # size (key_length_swa) and KV heads (a head_count_kv array); the last attention.shared_kv_layers
        # layers reuse the KV of the last sliding-window and full-attention layers before them
        # (n_layer_kv_from_start = n_layer - shared_kv_layers, llama-model.cpp:2796-2803: layers.py reads it)
        "gemma4",
        "gemma4.cpp",
        (
            "attention.sliding_window_pattern",
            "attention.shared_kv_layers",
            "rope.freq_base_swa",
            "expert_feed_forward_length",
            "attention.sliding_window",
            "embedding_length_per_layer_input",
            "attention.key_length_swa",
            "attention.value_length_swa",
            "final_logit_softcapping",
        ),
        builder="gemma4",
        swa=Swa(needs_window=True),
        moe=True,
    ),
    Arch(
        "cohere2",
        "cohere2.cpp",
        ("rope.freq_base_swa", "attention.sliding_window", "logit_scale"),
        builder="cohere2",
        swa=Swa(4),
    ),
    Arch(
        "exaone4",
        "exaone4.cpp",
        ("rope.freq_base_swa", "attention.sliding_window"),
        builder="exaone4",
        swa=Swa(4, default_window=4096, only_n_layer=64),
        skips_nextn=True,
    ),
    Arch(
        "olmo2",
        "olmo2.cpp",
        ("attention.sliding_window", "rope.freq_base_swa"),
        builder="olmo2",
        swa=Swa(4, needs_window=True),
    ),
    Arch(
        "gpt-oss",
        "openai-moe.cpp",
        ("expert_feed_forward_length", "attention.sliding_window", "rope.freq_base_swa"),
        builder="gpt_oss",
        swa=Swa(2),
        moe=True,
    ),
    Arch(
        "llama4",
        "llama4.cpp",
        ("expert_feed_forward_length", "interleave_moe_layer_step", "attention.sliding_window", "rope.freq_base_swa"),
        builder="llama4",
        swa=Swa(4, forced_window=8192, chunked=True),
        moe=True,
    ),
    # -- mixture of experts --------------------------------------------------------------------------
    Arch(
        "qwen2moe",
        "qwen2moe.cpp",
        ("expert_feed_forward_length", "expert_shared_feed_forward_length"),
        builder="qwen2moe",
        moe=True,
        shared_experts=True,
    ),
    Arch(
        "qwen3vlmoe",
        "qwen3vlmoe.cpp",
        ("n_deepstack_layers", "rope.dimension_sections", "expert_feed_forward_length"),
        builder="qwen3vlmoe",
        moe=True,
    ),
    Arch(
        "granitemoe",
        "granite-moe.cpp",
        ("logit_scale", "residual_scale", "embedding_scale", "attention.scale", "expert_shared_feed_forward_length"),
        graph="granite",
        builder="granite",
        moe=True,
        shared_experts=True,
    ),
    Arch(
        "ernie4_5-moe",
        "ernie4-5.cpp",
        (
            "rope.dimension_sections",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "interleave_moe_layer_step",
            "leading_dense_block_count",
        ),
        graph="ernie4_5_moe",
        builder="ernie4_5_moe",
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "minimax-m2",
        "minimax-m2.cpp",
        ("expert_feed_forward_length", "expert_gating_func"),
        builder="minimax_m2",
        moe=True,
    ),
    Arch(
        "hunyuan-moe",
        "hunyuan-moe.cpp",
        ("expert_feed_forward_length", "expert_shared_feed_forward_length"),
        builder="hunyuan_moe",
        moe=True,
        shared_experts=True,
    ),
    Arch("phimoe", "phimoe.cpp", graph="phi3", builder="phimoe", moe=True),  # phi3's graph, experts for the FFN
    Arch(
        "glm4moe",
        "glm4-moe.cpp",
        (
            "expert_feed_forward_length",
            "rope.dimension_sections",
            "expert_shared_count",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
        ),
        builder="glm4moe",
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "deepseek2",  # DeepSeek V2/V3/R1, Kimi K2: MLA with and without q_lora
        "deepseek2.cpp",
        _DEEPSEEK2_KEYS,
        builder="deepseek2",
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "deepseek32",  # DeepSeek-V3.2: deepseek2's MLA and MoE plus the lightning indexer (DSA)
        "deepseek32.cpp",
        (*_DSA_KEYS, "rope.scaling.yarn_log_multiplier"),
        builder="deepseek32",
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
        indexer="all",
    ),
    Arch(
        "glm-dsa",  # GLM-5: deepseek32's graph; "shared" indexer layers reuse the last full layer's top-k
        "glm-dsa.cpp",
        (*_DSA_KEYS, "attention.indexer.types"),
        builder="deepseek32",
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
        indexer="types",
    ),
    # -- recurrent and hybrid ------------------------------------------------------------------------
    Arch(
        "qwen35moe",
        "qwen35moe.cpp",
        (
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "rope.dimension_sections",
            *_SSM,
            "attention.recurrent_layers",
            "full_attention_interval",
        ),
        builder="qwen35moe",
        recurrent=_GDN,
        skips_nextn=True,
        moe=True,
        shared_experts=True,
        gated_q=True,
        rs_rollback_graph=True,
    ),
    Arch(
        "qwen3next",
        "qwen3next.cpp",
        (
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            *_SSM,
            "attention.recurrent_layers",
            "full_attention_interval",
        ),
        builder="qwen3next",
        recurrent=_GDN,
        skips_nextn=True,
        moe=True,
        shared_experts=True,
        gated_q=True,
    ),
    Arch(
        "granitehybrid",
        "granite-hybrid.cpp",
        (
            "logit_scale",
            "residual_scale",
            "embedding_scale",
            "attention.scale",
            *_SSM,
            "rope.scaling.finetuned",
            "expert_shared_feed_forward_length",
        ),
        builder="granitehybrid",
        recurrent=Recurrent("Mamba-2", "no_kv_heads"),
        shared_experts=True,
    ),
    Arch(
        "nemotron_h",
        "nemotron-h.cpp",
        _NEMOTRON_H_KEYS,
        builder="nemotron_h",
        recurrent=Recurrent("Mamba-2", "no_kv_heads_no_ffn"),
        skips_nextn=True,
    ),
    Arch(
        "nemotron_h_moe",
        "nemotron-h.cpp",
        _NEMOTRON_H_KEYS,
        graph="nemotron_h",
        builder="nemotron_h",
        recurrent=Recurrent("Mamba-2", "no_kv_heads_no_ffn"),
        skips_nextn=True,
        moe=True,
        shared_experts=True,
    ),
    Arch("falcon-h1", "falcon-h1.cpp", _SSM, builder="falcon_h1", recurrent=Recurrent("Mamba-2", "every_layer")),
    Arch("jamba", "jamba.cpp", _SSM[:4], builder="jamba", recurrent=Recurrent("Mamba", "no_kv_heads"), moe=True),
    Arch(
        "lfm2",
        "lfm2.cpp",
        ("shortconv.l_cache", "attention.sliding_window"),
        builder="lfm2",
        recurrent=Recurrent("short conv", "no_kv_heads"),
        swa=Swa(needs_window=True, attention_layers=True),
    ),
    Arch(
        "lfm2moe",
        "lfm2moe.cpp",
        ("shortconv.l_cache", "leading_dense_block_count", "expert_feed_forward_length", "expert_gating_func"),
        graph="lfm2",
        builder="lfm2",
        recurrent=Recurrent("short conv", "no_kv_heads"),
        moe=True,
        leading_dense=True,
    ),
    Arch("mamba", "mamba.cpp", _SSM[:4], builder="mamba", recurrent=Recurrent("Mamba", "all")),
    Arch("mamba2", "mamba2.cpp", _SSM, graph="mamba", builder="mamba", recurrent=Recurrent("Mamba-2", "all")),
    Arch(
        "rwkv6",
        "rwkv6.cpp",
        (
            "wkv.head_size",
            "token_shift_count",
            "time_mix_extra_dim",
            "time_decay_extra_dim",
            "rescale_every_n_layers",
        ),
        builder="rwkv6",
        recurrent=Recurrent("RWKV", "all"),
    ),
    Arch(
        "rwkv7",
        "rwkv7.cpp",
        (
            "wkv.head_size",
            "token_shift_count",
            "attention.decay_lora_rank",
            "attention.iclr_lora_rank",
            "attention.value_residual_mix_lora_rank",
            "attention.gate_lora_rank",
        ),
        builder="rwkv7",
        recurrent=Recurrent("RWKV", "all"),
    ),
    # -- registered for their layer kinds only (sliding window or recurrent rule) ---------------------
    Arch(
        "gemma-embedding",
        "gemma-embedding.cpp",
        ("attention.sliding_window",),
        builder="gemma_embedding",
        memory="none",
        swa=Swa(6, needs_window=True),
    ),
    Arch(
        "cohere2moe",  # cohere2's parallel layer, a dense first layer, experts plus a shared expert averaged
        "cohere2moe.cpp",
        (
            "attention.sliding_window",
            "logit_scale",
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_shared_count",
            "expert_weights_norm",
            "expert_weights_scale",
            "expert_gating_func",
            "rope.freq_base_swa",
        ),
        builder="cohere2moe",
        swa=Swa(4, True, needs_window=True),
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "exaone-moe",  # K-EXAONE: RoPE in the sliding-window layers only, sigmoid experts plus a shared expert
        "exaone-moe.cpp",
        (
            "rope.freq_base_swa",
            "attention.sliding_window",
            "expert_shared_count",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_gating_func",
            "expert_weights_scale",
            "expert_weights_norm",
            "leading_dense_block_count",
        ),
        builder="exaone_moe",
        swa=Swa(4, needs_window=True),
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "afmoe",  # Arcee Trinity: gated attention, pre- and post-norms, sigmoid experts plus shared experts
        "afmoe.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_gating_func",
            "expert_weights_scale",
            "expert_weights_norm",
            "attention.sliding_window",
            "rope.freq_base_swa",
        ),
        builder="afmoe",
        swa=Swa(4, needs_window=True),
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "mellum",
        "mellum.cpp",
        ("attention.sliding_window", "expert_feed_forward_length", "rope.freq_base_swa"),
        builder="mellum",  # qwen3moe's layer over the sliding-window pattern's caches (classic decoders)
        swa=Swa(4, needs_window=True),
        moe=True,
    ),
    Arch(
        "plamo3",
        "plamo3.cpp",
        ("attention.sliding_window", "rope.freq_base_swa"),
        builder="plamo3",  # fused QKV, Q/K head norms, post norms, the fused up's SwiGLU (classic decoders)
        swa=Swa(8, needs_window=True),
    ),
    Arch(
        "smallthinker",  # the router before the attention norm, experts in every layer
        "smallthinker.cpp",
        ("attention.sliding_window", "rope.freq_base_swa", "expert_feed_forward_length", "expert_gating_func"),
        builder="smallthinker",
        swa=Swa(4, True, needs_window=True, forced_window=4096),  # any positive window is 4096
        moe=True,
    ),
    Arch(
        "modern-bert",
        "modern-bert.cpp",
        ("attention.sliding_window",),
        builder="modern_bert",
        memory="none",
        swa=Swa(3, True, needs_window=True),
    ),
    Arch(
        "laguna",
        "laguna.cpp",
        (
            "attention.sliding_window",
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_gating_func",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_shared_count",
            "expert_shared_feed_forward_length",
            "rope.freq_base_swa",
            "rope.dimension_count_swa",
        ),
        builder="laguna",  # gated attention, a dense lead, sigmoid experts plus a shared expert (classic decoders)
        swa=Swa(4, True, needs_window=True),
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch("plamo2", "plamo2.cpp", _SSM, builder="plamo2", recurrent=Recurrent("Mamba", "no_kv_heads")),
    Arch(
        # Kimi Linear: Kimi-delta-attention layers (head_count_kv 0) and MLA layers on a K-only cache
        "kimi-linear",
        "kimi-linear.cpp",
        (
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.kv_lora_rank",
            "ssm.conv_kernel",
            "kda.head_dim",
            "expert_feed_forward_length",
            "expert_shared_count",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_gating_func",
        ),
        builder="kimi_linear",
        recurrent=Recurrent("Kimi delta attention", "no_kv_heads"),
        mla=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "minimax-01",
        "minimax-01.cpp",
        ("attention.recurrent_layers", "full_attention_interval", "residual_scale"),
        builder="minimax_01",
        recurrent=Recurrent("linear attention", "array_or_interval", 8),
        moe=True,
    ),
    Arch(
        "rwkv6qwen2",  # rwkv6's time mix (llm_build_rwkv6_base), RMS norms, one token shift, a SwiGLU FFN
        "rwkv6qwen2.cpp",
        (
            "wkv.head_size",
            "token_shift_count",
            "time_mix_extra_dim",
            "time_decay_extra_dim",
            "rescale_every_n_layers",
        ),
        builder="rwkv6",
        recurrent=Recurrent("RWKV", "all"),
    ),
    Arch(
        "arwkv7",  # rwkv7's time mix (llm_build_rwkv7_base), RMS norms, one token shift, a SwiGLU FFN
        "arwkv7.cpp",
        (
            "wkv.head_size",
            "token_shift_count",
            "attention.decay_lora_rank",
            "attention.iclr_lora_rank",
            "attention.value_residual_mix_lora_rank",
            "attention.gate_lora_rank",
        ),
        builder="rwkv7",
        recurrent=Recurrent("RWKV", "all"),
    ),
    # -- plain decoders: the llama graph with small differences (graph/models/_dense.py, _plain.py, _moe_dense.py)
    Arch("olmoe", "olmoe.cpp", builder="olmoe", moe=True),  # Q/K norms of the whole projections, softmax experts
    Arch("arcee", "arcee.cpp", builder="arcee"),  # llama's layer, an FFN of up, ReLU squared, down
    Arch("command-r", "command-r.cpp", ("logit_scale",), builder="command_r"),  # cohere2's layer without SWA
    Arch("gemma", "gemma.cpp", builder="gemma"),  # scaled embeddings and Q, GEGLU
    Arch("internlm2", "internlm2.cpp", builder="internlm2"),  # the llama graph
    Arch("starcoder2", "starcoder2.cpp", builder="starcoder2"),  # layer norms, biases, GELU FFN without gate
    Arch("exaone", "exaone.cpp", builder="exaone"),  # the llama graph
    Arch("phi2", "phi2.cpp", builder="phi2"),  # attention and GELU FFN in parallel, biases
    Arch("stablelm", "stablelm.cpp", builder="stablelm"),  # layer norms; parallel FFN without ffn_norm
    Arch(
        "hunyuan-dense",
        "hunyuan-vl.cpp",  # llama_model_hunyuan_dense reuses hunyuan_vl's loader and graph
        ("rope.dimension_sections",),
        graph="hunyuan_vl",
        builder="hunyuan_dense",  # hunyuan-moe's attention (Q/K norms after RoPE), a dense FFN
    ),
    Arch(
        "dots1",
        "dots1.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
        ),
        builder="dots1",
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "bailingmoe2",
        "bailingmoe2.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
        ),
        builder="bailingmoe2",  # dots1's graph over the trunk, the fused QKV
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "mistral4",  # llama_model_mistral4: deepseek2's loader and graph (MLA)
        "deepseek2.cpp",
        _DEEPSEEK2_KEYS,
        graph="deepseek2",
        builder="deepseek2",
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # expanded (not absorbed) MLA: an ordinary K/V cache of key_length / value_length per head
    Arch("minicpm3", "minicpm3.cpp", ("attention.q_lora_rank", "attention.kv_lora_rank"), builder="minicpm3"),
    Arch(
        "mimo2",  # the pattern array marks the sliding-window layers (required, as the window is)
        "mimo2.cpp",
        ("expert_feed_forward_length", "attention.sliding_window", "rope.freq_base_swa", "attention.value_scale"),
        builder="mimo2",
        swa=Swa(needs_window=True),
        skips_nextn=True,
        moe=True,
    ),
    Arch(
        "step35",  # the pattern array marks the sliding-window layers (required, as the window is)
        "step35.cpp",
        (
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_gating_func",
            "expert_weights_scale",
            "expert_weights_norm",
            "attention.sliding_window",
            "rope.freq_base_swa",
            "swiglu_clamp_exp",
            "swiglu_clamp_shexp",
        ),
        builder="step35",
        swa=Swa(needs_window=True),
        skips_nextn=True,
        moe=True,
        shared_experts=True,
    ),
    Arch("xverse", "xverse.cpp", builder="xverse"),  # the llama graph
    Arch("orion", "orion.cpp", builder="orion"),  # the llama graph with layer norms
    Arch("qwen", "qwen.cpp", builder="qwen"),  # the llama graph, the fused QKV with its bias
    Arch("nemotron", "nemotron.cpp", builder="nemotron"),  # layer norms, an FFN of up, ReLU squared, down
    Arch(
        "minicpm",
        "minicpm.cpp",
        ("embedding_scale", "residual_scale", "logit_scale"),
        graph="granite",
        builder="minicpm",  # granite's graph with MiniCPM's default scales
    ),
    Arch(
        "deepseek",
        "deepseek.cpp",
        ("leading_dense_block_count", "expert_feed_forward_length", "expert_shared_count", "expert_weights_scale"),
        builder="deepseek",
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    Arch(
        "bailingmoe",
        "bailingmoe.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
        ),
        builder="bailingmoe",
        moe=True,
        shared_experts=True,
    ),
    Arch("maincoder", "maincoder.cpp", builder="maincoder"),  # hunyuan-dense's graph (Q/K norms after RoPE)
    Arch("baichuan", "baichuan.cpp", builder="baichuan"),  # the llama graph, RoPE only at 32 layers (7B)
    Arch("chatglm", "chatglm.cpp", builder="chatglm"),  # the llama graph, the fused up projection's SwiGLU
    # -- mixture-of-experts families registered with their builders (issue 25, h-moe) -----------------------
    Arch("dbrx", "dbrx.cpp", ("attention.clamp_kqv",), builder="dbrx", moe=True),  # layer norms, the clamped QKV
    Arch("arctic", "arctic.cpp", builder="arctic", moe=True),  # a dense FFN and, beside it, the experts
    Arch(
        "grok",  # soft-capped attention logits (flash attention forced off), GELU experts plus Grok-2's dense FFN
        "grok.cpp",
        (
            "expert_feed_forward_length",
            "logit_scale",
            "embedding_scale",
            "attention.output_scale",
            "attn_logit_softcapping",
            "router_logit_softcapping",
            "final_logit_softcapping",
            "attention.temperature_length",
            "rope.scaling.yarn_ext_factor",
            "rope.scaling.yarn_attn_factor",
            "rope.scaling.yarn_beta_fast",
            "rope.scaling.yarn_beta_slow",
        ),
        builder="grok",
        moe=True,
    ),
    Arch(
        "grovemoe",  # experts, then chunk experts on their output (one per group of experts_per_group)
        "grovemoe.cpp",
        ("expert_feed_forward_length", "expert_chunk_feed_forward_length", "expert_group_scale", "experts_per_group"),
        builder="grovemoe",
        moe=True,
    ),
    # -- classic decoders (issue 25): architectures of llama.cpp not registered before --------------------
    # DeciLM / Llama-3.x-Nemotron: per-layer head_count, head_count_kv and feed_forward_length arrays (a layer
    # without KV heads still has its -- empty -- K and V cache tensors: no layer filter, deci.cpp)
    Arch("deci", "deci.cpp", builder="deci", kv_every_layer=True),
    Arch("olmo", "olmo.cpp", ("attention.clamp_kqv",), builder="olmo"),  # layer norms without weights
    Arch("falcon", "falcon.cpp", builder="falcon"),  # attention and GELU FFN in parallel, attn_norm_2 (40B)
    Arch("gptneox", "gptneox.cpp", ("use_parallel_residual",), builder="gptneox"),  # the parallel residual
    Arch("mpt", "mpt.cpp", ("attention.clamp_kqv", "attention.max_alibi_bias"), builder="mpt"),  # ALiBi
    Arch("starcoder", "starcoder.cpp", builder="starcoder"),  # learned positions, biases, GELU FFN
    Arch("gpt2", "gpt2.cpp", builder="gpt2"),  # starcoder's graph
    Arch("bloom", "bloom.cpp", builder="bloom"),  # the embeddings' layer norm, ALiBi
    Arch("refact", "refact.cpp", builder="refact"),  # the llama graph without RoPE (ALiBi)
    Arch("codeshell", "codeshell.cpp", builder="codeshell"),  # layer norms, biases, GELU FFN
    Arch("jais", "jais.cpp", ("attention.max_alibi_bias",), builder="jais"),  # ALiBi, SwiGLU with biases
    Arch("jais2", "jais2.cpp", builder="jais2"),  # layer norms, biases, an FFN of up, ReLU squared, down
    Arch("bitnet", "bitnet.cpp", builder="bitnet"),  # llama's layer, sub-norms, per-tensor scales
    Arch("plamo", "plamo.cpp", builder="plamo"),  # attention and SwiGLU in parallel on the one norm
    Arch("pangu-embedded", "pangu-embed.cpp", graph="pangu_embed", builder="pangu_embed"),  # llama's, biases
    # the llama graph; num_loops > 1 runs the blocks again with caches of their own (hparams.n_loops: the cache has
    # block_count x num_loops layers, the later passes multiply by the first pass's tensors, the output norm between
    # the passes unless skip_loop_final_norm: graph/models/nanbeige.py)
    Arch("nanbeige", "nanbeige.cpp", ("num_loops", "skip_loop_final_norm"), builder="nanbeige"),
    # minicpm3's expanded MLA without q_lora: an ordinary cache of key_length K and value_length V per head
    Arch("plm", "plm.cpp", ("attention.kv_lora_rank",), builder="plm"),
    Arch(
        "granite_swa",  # the pattern array marks the sliding-window layers (required, as the window is)
        "granite-swa.cpp",
        (
            "logit_scale",
            "residual_scale",
            "embedding_scale",
            "attention.scale",
            "attention.sliding_window",
            "attention.sliding_window_pattern",
            "attention.rope_pattern",
            "deepstack_mapping",
            "expert_shared_feed_forward_length",
        ),
        builder="granite_swa",  # granite's scales, sinks, NoPE layers; its experts are not rebuilt
        swa=Swa(needs_window=True),
    ),
    # -- newest decoder families (issue 25, h-newarch) ------------------------------------------------------
    Arch(
        "hy_v3",  # Hunyuan's MoE: Q/K norms before RoPE, dense layers where ffn_gate_inp is absent, sigmoid
        "hy-v3.cpp",  # routing with the selection bias blk.N.exp_probs_b, an ungated shared expert; MTP skipped
        (
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_gating_func",
            "expert_weights_scale",
            "expert_weights_norm",
        ),
        builder="hy_v3",
        skips_nextn=True,
        moe=True,
        shared_experts=True,
    ),
    # sliding-window attention on the layers the (required) pattern array marks, the window required; a per-head
    # sigmoid gate of the attention output; a GELU FFN
    Arch(
        "spark2_5",
        "spark2-5.cpp",
        ("attention.sliding_window", "attention.sliding_window_pattern", "rope.freq_base_swa"),
        builder="spark2_5",
        swa=Swa(),
    ),
    # Ling 2.5: kimi-linear's hybrid (Kimi-delta-attention layers where head_count_kv is 0, MLA layers on the
    # K-only cache), a head-wise gate of the MLA output, SwiGLU clamps; the MTP block skipped
    Arch(
        "bailingmoe3",
        "bailingmoe3.cpp",
        (
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.kv_lora_rank",
            "attention.q_lora_rank",
            "ssm.conv_kernel",
            "kda.head_dim",
            "kda.gate_lower_bound",
            "rope.dimension_sections",
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "expert_shared_count",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "swiglu_clamp_exp",
            "swiglu_clamp_shexp",
        ),
        builder="bailingmoe3",
        recurrent=Recurrent("Kimi delta attention", "no_kv_heads"),
        mla=True,
        skips_nextn=True,
        nextn_kv=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # HY V4: MLA with q_lora on the K-only cache, sinks, the attention output's gate, hyper-connection streams,
    # DeepSeek-style experts; the DSA indexer's key cache on the "full" layers of attention.indexer.types when
    # attention.indexer.top_k > 0 (hy-v4.cpp requires the types then: layer 0 must be full)
    Arch(
        "hy_v4",
        "hy-v4.cpp",
        (
            "leading_dense_block_count",
            "attention.q_lora_rank",
            "attention.kv_lora_rank",
            "attention.key_length_mla",
            "attention.value_length_mla",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "swiglu_clamp_exp",
            "hyper_connection.count",
            "hyper_connection.epsilon",
            "hyper_connection.magnitude",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.indexer.types",
        ),
        builder="hy_v4",
        mla=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
        indexer="types",
    ),
    # Kimi-K3: kimi-linear's hybrid (Kimi-delta-attention layers where head_count_kv is 0, MLA layers on the K-only
    # cache) with the cross-layer residual attention, latent MoE, situ activation, the MLA output gate
    Arch(
        "kimi-k3",
        "kimi-k3.cpp",
        (
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.q_lora_rank",
            "attention.kv_lora_rank",
            "ssm.conv_kernel",
            "kda.head_dim",
            "kda.gate_lower_bound",
            "expert_feed_forward_length",
            "expert_shared_count",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "expert_latent_length",
            "attn_res.block_size",
            "activation.situ_beta",
            "activation.situ_linear_beta",
        ),
        builder="kimi_k3",
        recurrent=Recurrent("Kimi delta attention", "no_kv_heads"),
        mla=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # The OCR decoders
    # PaddleOCR-VL (ERNIE-4.5-0.3B's loader: llama_model_paddleocr extends llama_model_ernie4_5): its own graph
    # struct (paddleocr.cpp), qwen2vl.cpp's graph line for line (M-RoPE, biases where the file has them)
    Arch("paddleocr", "ernie4-5.cpp", ("rope.dimension_sections",), graph="paddleocr", builder="qwen2vl"),
    # HunyuanOCR: the graph hunyuan-dense reuses (graph/models/hunyuan_dense.py), XD-RoPE read as M-RoPE
    Arch("hunyuan_vl", "hunyuan-vl.cpp", ("rope.dimension_sections",), builder="hunyuan_dense"),
    # DeepSeek-OCR: deepseek2.cpp's graph without MLA (is_ocr: multi-head attention over an ordinary K/V
    # cache, NeoX RoPE over whole heads), DeepSeek V2's leading dense layers, routed and shared experts
    Arch(
        "deepseek2-ocr",
        "deepseek2ocr.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
        ),
        graph="deepseek2",
        builder="deepseek2_ocr",
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # DeepSeek V4
    # deepseek4.cpp + llama-kv-cache-dsv4.cpp: every block (NextN/MTP ones too: the DSV4 cache zeroes
    # n_layer_nextn) keeps a K-only sliding-window cache of one 512-value head per cell (the window's
    # llama_kv_cache_iswa, never unified); attention.compress_ratios 4 (CSA) and 128 (HCA) add K-only caches
    # of n_ctx_seq / ratio rows (padded to 256) and F32 compressor states per sequence; the CSA layers also
    # keep the lightning indexer's compressed keys (attention.indexer.key_length values) and its state
    # (buffers.dsv4_buffers). Hyper-connection streams, grouped low-rank output, hash-routed first layers
    # (ffn_gate_tid2eid), sqrt-softplus experts with shared experts. The NextN block's tensors are skipped
    # unless --mtp, and only counted as NextN when blk.<n_main>.nextn.eh_proj is in the file. Graph:
    # graph/models/deepseek4.py
    Arch(
        "deepseek4",
        "deepseek4.cpp",
        (
            "attention.q_lora_rank",
            "attention.sliding_window",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "swiglu_clamp_exp",
            "swiglu_clamp_shexp",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.output_group_count",
            "attention.output_lora_rank",
            "attention.compress_rope_freq_base",
            "attention.compress_ratios",
            "hyper_connection.count",
            "hyper_connection.sinkhorn_iterations",
            "hyper_connection.epsilon",
            "hash_layer_count",
        ),
        swa=Swa(0),
        skips_nextn=True,
        moe=True,
        shared_experts=True,
        builder="deepseek4",
        memory="dsv4",
    ),
    # -- h-small6 (issue 25): Talkie, Maple, Muse Glimmer, HRM-Text ---------------------------------------------
    # Talkie (13B): weightless RMS norms, the per-head Q gain after RoPE, the normed embeddings added to each layer
    Arch("talkie", "talkie.cpp", ("logit_scale",), builder="talkie"),
    # Maple: sliding-window layers from the required pattern array (RoPE only on them), clamped SwiGLU experts
    Arch(
        "maple",
        "maple.cpp",
        (
            "attention.sliding_window",
            "attention.sliding_window_pattern",
            "expert_feed_forward_length",
            "rope.freq_base_swa",
            "swiglu_clamp_exp",
        ),
        builder="maple",
        swa=Swa(),
        moe=True,
    ),
    # Muse Glimmer (30B): load_swa_pattern(ml, 4) (every fourth layer full, NoPE), the gated attention output,
    # post-attention/post-FFN norms, the scaled and soft-capped logits
    Arch(
        "muse-glimmer",
        "muse-glimmer.cpp",
        (
            "attention.sliding_window",
            "attention.sliding_window_pattern",
            "final_logit_softcapping",
            "logit_scale",
            "rope.freq_base_swa",
        ),
        builder="muse_glimmer",
        swa=Swa(4),
    ),
    # HRM-Text (DFM-Mimir): block_count is the cache-slot count, hrm.layers_per_stack x hrm.h_cycles x
    # (hrm.l_cycles + 1); the file holds the low and the high stack's 2 x layers_per_stack blocks, which the later
    # passes alias (one KV cache layer per slot)
    Arch(
        "hrm_text",
        "hrm-text.cpp",
        ("embedding_scale", "hrm.layers_per_stack", "hrm.h_cycles", "hrm.l_cycles", "hrm.prefix_lm"),
        builder="hrm_text",
    ),
    # -- group msa (issue 25): MiniMax-M3 and dots3-note ---------------------------------------------------------------
    # MiniMax-M3 (minimax-m3.cpp): MiniMax-M2's GQA (per-head QK norms, partial rotary), leading dense layers, sigmoid
    # experts with a shared expert (swigluoai), MiniMax Sparse Attention on the layers from leading_dense_block_count
    # on (flash attention only; -fa off runs them dense). Its memory is llama_kv_cache_msa (llama-model.cpp
    # create_memory): the K/V cache of every layer plus an indexer cache of the sparse layers, one head of
    # indexer.key_length K and value_length V values per cell (buffers.msa_buffers)
    Arch(
        "minimax-m3",
        "minimax-m3.cpp",
        (
            "leading_dense_block_count",
            "expert_feed_forward_length",
            "expert_shared_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.indexer.block_size",
            "attention.indexer.local_blocks",
        ),
        builder="minimax_m3",
        memory="msa",
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # dots3-note (dots3note.cpp): deepseek32's absorbed MLA (q_lora, K-only cache) in two geometries (the sliding-window
    # layers' kv_lora_rank_swa / key_length_mla_swa, per-layer head counts), the head-wise sigmoid output gate, the DSA
    # indexer on the "full" layers of attention.indexer.types, leading dense layers, sigmoid experts with a shared
    # expert, a NextN block (skipped). Its memory is llama_kv_cache_dsa_iswa: the MLA cache and the indexer-key cache
    # of the full layers, and a window cache of the sliding_window_pattern layers
    Arch(
        "dots3note",
        "dots3note.cpp",
        (
            "expert_shared_count",
            "expert_feed_forward_length",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "attention.q_lora_rank",
            "attention.kv_lora_rank",
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.kv_lora_rank_swa",
            "attention.key_length_mla_swa",
            "attention.value_length_mla_swa",
            "attention.sliding_window",
            "rope.freq_base_swa",
            "attention.sliding_window_pattern",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.indexer.types",
        ),
        builder="dots3note",
        swa=Swa(),
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
        indexer="types",
    ),
    # -- h-gsw (issue 25): graniteswitch ------------------------------------------------------------
    # Granite Switch: granite with per-token switched LoRA adapters (stacked, slot 0 the zero delta) on Q/K/V/O
    # and the FFN, picked by a one-head router attention layer that the loader adds at index block_count
    # (n_layer_all = block_count + 1, n_layer_nextn repurposed as 1 with router_layer set: its own KV cache layer,
    # not filtered out, llama-model.cpp create_memory)
    Arch(
        "graniteswitch",
        "granite-switch.cpp",
        (
            "logit_scale",
            "residual_scale",
            "embedding_scale",
            "attention.scale",
            "rope.scaling.finetuned",
            "expert_shared_feed_forward_length",
            "adapters.count",
            "adapters.lora_rank",
            "adapters.router_gain",
            "adapters.token_ids_activate",
            "adapters.token_ids_substitute",
        ),
        builder="granite_switch",
    ),
    # -- hybrids with an indexer cache (issue 25, h-hybidx): llama_memory_hybrid_idx ---------------------------
    # GLM5-Next / GLM-5.3-Flash (glm5-next.cpp): Kimi-delta-attention layers where head_count_kv is 0 (recurrent:
    # Q/K/V short convolutions, kda.head_dim heads), nope-only MLA layers on a K-only cache of the kv_lora_rank
    # latent (key_length), a k-pool DSA indexer whose keys, pool gates and pooled keys the third cache of
    # llama_memory_hybrid_idx keeps for the MLA layers of attention.indexer.types (buffers.hybrid_idx_buffers),
    # mHC residual streams, DeepSeek-style experts; the NextN block is skipped and never attended.
    # graph/models/glm5_next.py builds it
    Arch(
        "glm5-next",
        "glm5-next.cpp",
        (
            "attention.layer_norm_epsilon",
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.q_lora_rank",
            "attention.kv_lora_rank",
            "ssm.conv_kernel",
            "kda.head_dim",
            "kda.gate_lower_bound",
            "expert_feed_forward_length",
            "expert_shared_count",
            "leading_dense_block_count",
            "expert_weights_scale",
            "expert_weights_norm",
            "expert_gating_func",
            "swiglu_clamp_exp",
            "swiglu_clamp_shexp",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.indexer.kpool",
            "attention.indexer.kpool_select_tail",
            "attention.indexer.types",
            "hyper_connection.count",
            "hyper_connection.sinkhorn_iterations",
            "hyper_connection.epsilon",
        ),
        builder="glm5_next",
        memory="hybrid_idx",
        recurrent=Recurrent("Kimi delta attention", "no_kv_heads"),
        mla=True,
        skips_nextn=True,
        moe=True,
        leading_dense=True,
        shared_experts=True,
    ),
    # Qwen4exp (qwen4exp.cpp): qwen35's Gated DeltaNet hybrid (attention.recurrent_layers or every
    # full_attention_interval-th trunk layer attends, Q with its gate, IMRoPE) with low-rank hyper-connection
    # streams for norms, experts with a gated shared expert, optional PLE n-gram embeddings (their conv history a
    # row of its own in the recurrent memory, cache_ple_r_l), and a QSA indexer whose keys (| pooled keys where
    # attention.compress_ratios gives a k-pool) llama_memory_hybrid_idx's third cache keeps for every trunk
    # attention layer (buffers.hybrid_idx_buffers). The MTP block is skipped and never attended by the trunk.
    # graph/models/qwen4exp.py builds them, QSA and PLE included
    Arch(
        "qwen4exp",
        "qwen4exp.cpp",
        (
            "expert_feed_forward_length",
            "expert_shared_feed_forward_length",
            "rope.dimension_sections",
            *_SSM,
            "attention.recurrent_layers",
            "full_attention_interval",
            "hyper_connection.count",
            "hyper_connection.low_rank",
            "attention.indexer.head_count",
            "attention.indexer.key_length",
            "attention.indexer.top_k",
            "attention.compress_ratios",
            "ple.layers",
            "ple.ngram_size",
            "ple.heads_per_ngram",
            "ple.conv_kernel",
            "ple.layer_multipliers",
            "ple.head_offsets",
            "ple.head_vocab_sizes",
            "ple.eos_token_id",
            "ple.image_token_id",
            "embedding_length_per_layer_input",
        ),
        builder="qwen4exp",
        memory="hybrid_idx",
        recurrent=_GDN,
        skips_nextn=True,
        moe=True,
        shared_experts=True,
        gated_q=True,
    ),
    # CLEF (clef.cpp): a decision model on qwen35's backbone (Gated DeltaNet and gated attention layers, dense FFNs)
    # whose head scores the options of a batch (llama_batch_ext_set_decision_order); create_memory makes no memory
    # for it (llama-model.cpp: among the memory-less architectures), so no KV cache and no recurrent state
    # (buffers.NO_MEMORY). Its head's tensors (decision.*, dec.blk.N.*) are the output layer's and layer N's in
    # llama.cpp. graph/models/clef.py builds it (the backbone over the micro-batch alone, the head)
    Arch(
        "clef",
        "clef.cpp",
        (  # beside qwen35's keys (clef.cpp calls llama_model_qwen35::load_arch_hparams first)
            "attention.layer_norm_epsilon",
            "decision.block_count",
            "decision.routing_block_count",
            "decision.head_count",
        ),
        builder="clef",
        memory="none",
        recurrent=_GDN,
        gated_q=True,
    ),
    # -- h-enc: the embedding encoders (bge, all-MiniLM, nomic-embed-text, jina-embeddings v2/v3, NeoBERT, EuroBERT).
    # create_memory makes no memory for them (llama-model.cpp:2364-2380, res = nullptr: memory="none"); their graph attends over the
    # micro-batch alone, without a causal mask (llm_graph_input_attn_no_cache). bert.cpp's graph is theirs
    # (``using graph = llama_model_bert::graph`` for nomic-bert); graph/models/bert.py rebuilds it
    Arch("bert", "bert.cpp", ("attention.layer_norm_epsilon",), builder="bert", memory="none"),
    Arch(
        "nomic-bert", "nomic-bert.cpp", ("attention.layer_norm_epsilon",), graph="bert", builder="bert", memory="none"
    ),
    Arch(
        "nomic-bert-moe",
        "nomic-bert-moe.cpp",
        ("attention.layer_norm_epsilon", "moe_every_n_layers"),
        graph="bert",
        builder="bert",
        memory="none",
        moe=True,
    ),
    Arch(
        "jina-bert-v2",
        "jina-bert-v2.cpp",
        ("attention.layer_norm_epsilon",),
        graph="bert",
        builder="bert",
        memory="none",
    ),
    Arch(
        "jina-bert-v3",
        "jina-bert-v3.cpp",
        ("attention.layer_norm_epsilon",),
        graph="bert",
        builder="bert",
        memory="none",
    ),
    Arch("neo-bert", "neo-bert.cpp", builder="neo_bert", memory="none"),
    Arch("eurobert", "eurobert.cpp", builder="neo_bert", memory="none"),
    # llama-embed: llama's layer without a causal mask or lm_head; create_memory gives it the default KV cache (not among
    # the memory-less architectures), which its graph (llm_graph_input_attn_no_cache) never uses
    Arch("llama-embed", "llama.cpp", builder="neo_bert"),  # llama.cpp loads it; llama_model_llama::graph<true>
    # gptj, chameleon, cogvlm (session 8). gptj is not registered: llama-arch.cpp names it but llama_model_mapping
    # (llama-model.cpp:43) has no case for it, so llama.cpp 11434 refuses the file ("unsupported model architecture")
    # -- chameleon: llama's layer with layer-normed Q/K heads, swin_norm's post-norms, the image tokens' logits
    # overwritten after the head (graph/models/chameleon.py)
    Arch("chameleon", "chameleon.cpp", ("swin_norm",), builder="chameleon"),
    # -- cogvlm: the text decoder (a micro-batch of tokens runs the language weights; the visual expert's QKV, output
    # and FFN are loaded beside them): llama's layer over a fused QKV with plain RoPE, built by graph/models/cogvlm.py
    # over _dense's pieces
    Arch("cogvlm", "cogvlm.cpp", builder="cogvlm"),
    # -- gemma4-assistant: Gemma 4's drafter (llama-server -md, --spec-type draft-mtp). Every layer is a NextN layer
    # (block_count = nextn_predict_layers) whose K/V are the target's cache (create_memory's share: the target's
    # layers n_layer - 2 and n_layer - 1), so it has no KV buffer of its own, as ggufx's NextN rule gives; the
    # window pattern is read with get_arr (no set_swa_pattern), graph/models/gemma4_assistant.py sizes the caches
    Arch(
        "gemma4-assistant",
        "gemma4-assistant.cpp",
        (
            "attention.sliding_window_pattern",
            "attention.shared_kv_layers",
            "rope.freq_base_swa",
            "attention.sliding_window",
            "attention.key_length_swa",
            "attention.value_length_swa",
        ),
        builder="gemma4_assistant",
    ),
    # T5 (session 8): the encoder-decoder T5 (t5.cpp: flan-t5, madlad400) and its encoder alone (t5encoder.cpp: the
    # T5-XXL text encoder of image pipelines). Tensors enc.blk.N.* (the encoder's block_count layers), dec.blk.N.*
    # (decoder_block_count layers, block_count when absent), enc.output_norm / dec.output_norm; relative position
    # buckets (attention.relative_buckets_count; attn_rel_b in block 0, the other blocks reuse it), no RoPE. Both get
    # create_memory's default KV cache of block_count layers (llama_kv_cache over n_layer_all: the encoder's count,
    # which the decoder's self-attention reads; t5encoder's graph never uses its cache). llama_context reserves
    # LLM_GRAPH_TYPE_DEFAULT: t5's decoder graph (graph<false>: self-attention over the cache with the position bias,
    # cross attention over n_ctx_train encoder rows, build_inp_cross_embd before an encode), t5encoder's encoder
    # graph (graph<true>, ``using graph = llama_model_t5::graph<true>``). graph/models/t5.py builds both
    Arch(
        "t5",
        "t5.cpp",
        (
            "attention.layer_norm_rms_epsilon",
            "attention.relative_buckets_count",
            "decoder_start_token_id",
            "decoder_block_count",
        ),
        builder="t5",
    ),
    Arch(
        "t5encoder",
        "t5encoder.cpp",
        ("attention.layer_norm_rms_epsilon", "attention.relative_buckets_count"),
        graph="t5",
        builder="t5",
    ),
    # diffusion LMs (session 8): Dream (qwen2's layer), LLaDA (llama's), LLaDA-MoE and RND1 (qwen3moe's: Q/K head
    # norms, softmax experts), run by llama-diffusion-cli. create_memory makes no memory for them (llama-model.cpp,
    # res = nullptr: memory="none") and load_arch_hparams sets causal_attn false: their graphs are llama.cpp's qwen2,
    # llama and qwen3moe graphs but for the attention over the micro-batch alone (llm_graph_input_attn_no_cache, no
    # causal mask, no cache writes); graph/models/diffusion.py rebuilds the four
    Arch("dream", "dream.cpp", builder="diffusion", memory="none"),
    Arch("llada", "llada.cpp", builder="diffusion", memory="none"),
    Arch("llada-moe", "llada-moe.cpp", ("expert_feed_forward_length",), builder="diffusion", memory="none", moe=True),
    Arch("rnd1", "rnd1.cpp", ("expert_feed_forward_length",), builder="diffusion", memory="none", moe=True),
    # -- speculative draft heads (h-drafts): EAGLE3 and DFlash, run only beside a target (llama-server -m TARGET -md
    # HEAD --spec-type draft-eagle3 | draft-dflash; llama_context refuses them without ctx_other when they borrow the
    # target's token_embd or output). Both have an encoder (llama_model_has_encoder: the context reserves n_batch
    # outputs) fusing the target layers' hidden states (target_layers); llama_context reserves their decoder.
    # eagle3: one layer over [token rows | fused features], a one-layer KV cache, d2t (a reduced draft vocabulary);
    # graph/models/eagle3.py. dflash: Qwen3-style layers over a KV cache of their own (the target features are
    # injected into it), non-causal block attention; graph/models/dflash.py
    Arch(
        "eagle3",
        "eagle3.cpp",
        ("target_layers", "target_hidden_size", "norm_before_residual", "norm_before_fc"),
        builder="eagle3",
    ),
    Arch(
        "dflash",
        "dflash.cpp",
        (
            "target_layers",
            "block_size",
            "embedding_scale",
            "attention.scale",
            "attention.value_scale",
            "hidden_activation",
            "logit_scale",
            "final_logit_softcapping",
            "rope.dimension_sections",
            "attention.sliding_window",
            "attention.sliding_window_pattern",
        ),
        builder="dflash",
    ),
    # -- session 10: text-to-speech. qwen3tts: the talker of Qwen3-TTS; llama_model_qwen3tts derives from
    # llama_model_qwen3vl and overrides nothing (models.h: its loader, hyper-parameters and graph struct are
    # qwen3vl's), but qwen3vl.cpp's loader gives it a codec head of 3072 rows and its graph pads the logits with
    # -inf to the vocabulary (text + codec tokens): graph/models/qwen3tts.py
    Arch(
        "qwen3tts",
        "qwen3vl.cpp",
        ("n_deepstack_layers", "rope.dimension_sections"),
        graph="qwen3tts",
        builder="qwen3tts",
    ),
    # pockettts: the backbone of Kyutai's Pocket TTS: layer norms with biases, a GELU FFN without gate, logits over
    # the token embeddings (no lm_head): graph/models/pockettts.py
    Arch("pockettts", "pockettts.cpp", ("attention.layer_norm_epsilon",), builder="pockettts"),
    # wavtokenizer-dec: WavTokenizer's decoder (OuteTTS's vocoder): convolutions over the micro-batch, no logits; no
    # memory (llama-model.cpp create_memory: res = nullptr). features_length is the loader's n_embd (the token rows),
    # embedding_length its n_embd_out (llama-model.cpp:1346-1358): graph/models/wavtokenizer_dec.py
    Arch(
        "wavtokenizer-dec",
        "wavtokenizer-dec.cpp",
        ("attention.layer_norm_epsilon", "attention.group_norm_epsilon", "attention.group_norm_groups"),
        builder="wavtokenizer_dec",
        memory="none",
    ),
)

ARCHS: dict[str, Arch] = {a.name: a for a in _ENTRIES}


def arch_of(name: str | None) -> Arch | None:
    """The registry entry of ``general.architecture`` (None: not registered)."""
    return ARCHS.get(name or "")


def memory_of(name: str | None) -> str:
    """The memory module of this architecture when not the layer kinds' default (``Arch.memory``; "" else)."""
    a = arch_of(name)
    return a.memory if a else ""


def builder_of(name: str | None) -> str | None:
    """The graph builder that rebuilds this architecture's compute graph (None: the generic estimate)."""
    a = arch_of(name)
    return a.builder if a else None


def sharing(graph: str) -> list[str]:
    """The registered architectures that run llama.cpp's graph ``graph`` (``llama_model_<graph>::graph``)."""
    return [a.name for a in _ENTRIES if a.llama_graph == graph]
