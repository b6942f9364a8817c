"""The architecture registry (ggufx/analysis/memory/archs.py) against llama.cpp's own source, and the
layer kinds it decides.

The source checks read the llama.cpp 11434 tree beside its build (skipped where it is absent): every
registered architecture is one of llama-arch.cpp's names, its ``source`` file is the one that loads it,
the keys the registry lists are the ones that file's ``load_arch_hparams`` reads, and the graph it
says it shares is the one ``models.h`` declares with ``using graph = ...``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ggufx.analysis.memory.archs import ARCHS, arch_of, builder_of, memory_of, sharing
from tests.support import LLAMA_CPP_VERSION

SRC = (
    Path(os.environ.get("LLAMA_CPP_HOME", str(Path.home() / ".cache" / f"llama.cpp-{LLAMA_CPP_VERSION}")))
    / "src"
    / "llama.cpp"
)


def _source() -> Path:
    if not (SRC / "src" / "llama-arch.cpp").is_file():
        pytest.skip(f"llama.cpp's source is not at {SRC}")
    return SRC


def _names(src: Path) -> dict[str, str]:
    """llama-arch.cpp: LLM_ARCH_X -> "name"."""
    return dict(re.findall(r'\{\s*(LLM_ARCH_\w+),\s*"([^"]+)"\s*\}', (src / "src" / "llama-arch.cpp").read_text()))


def _kv_names(src: Path) -> dict[str, str]:
    text = (src / "src" / "llama-arch.cpp").read_text()
    return {k: v.replace("%s.", "") for k, v in re.findall(r'\{\s*(LLM_KV_\w+),\s*"([^"]+)"\s*\}', text)}


def _struct_of(src: Path) -> dict[str, str]:
    """general.architecture -> the llama_model_<struct> llama_model_mapping creates (llama-model.cpp)."""
    names = _names(src)
    text = (src / "src" / "llama-model.cpp").read_text()
    return {names[e]: s for e, s in re.findall(r"case (LLM_ARCH_\w+):\s*return new llama_model_(\w+)\(params\)", text)}


def test_every_entry_is_a_llama_cpp_architecture_loaded_by_its_source() -> None:
    src = _source()
    structs = _struct_of(src)
    for name, a in ARCHS.items():
        assert name in structs, f"{name} is not an architecture of llama-arch.cpp"
        text = (src / "src" / "models" / a.source).read_text()
        struct = structs[name]
        # the file that defines the architecture's loader (or that of the struct it inherits from)
        header = (src / "src" / "models" / "models.h").read_text()
        base = re.search(rf"struct llama_model_{struct} : public llama_model_(\w+)", header)
        owners = {struct} | ({base.group(1)} if base else set())
        assert any(f"llama_model_{s}::load_arch_hparams" in text for s in owners), (name, a.source)


def test_registered_keys_are_the_ones_load_arch_hparams_reads() -> None:
    src = _source()
    kv = _kv_names(src)
    for name, a in ARCHS.items():
        text = (src / "src" / "models" / a.source).read_text()
        body = re.search(r"::load_arch_hparams\(.*?\n}\n", text, re.S)
        assert body is not None, name
        read = {kv.get(k, k) for k in re.findall(r"(LLM_KV_\w+)", body.group(0))}
        if "load_swa_pattern" in body.group(0):
            read.add("attention.sliding_window_pattern")
        missing = [k for k in a.keys if k not in read]
        assert not missing, f"{name}: {missing} are not read by {a.source}"


def test_shared_graphs_are_the_ones_models_h_declares() -> None:
    src = _source()
    header = (src / "src" / "models" / "models.h").read_text()
    structs = _struct_of(src)
    declared = {}
    for chunk in re.split(r"(?=struct llama_model_\w+ : public)", header):
        m = re.match(r"struct llama_model_(\w+)", chunk)
        g = re.search(r"using graph = llama_model_(\w+)::graph", chunk)
        if m:
            declared[m.group(1)] = g.group(1) if g else m.group(1)
    for name, a in ARCHS.items():
        assert a.llama_graph == declared[structs[name]], (name, a.llama_graph, declared[structs[name]])
    assert sorted(sharing("granite")) == ["granite", "granitemoe", "minicpm"]
    assert sorted(sharing("lfm2")) == ["lfm2", "lfm2moe"]


def test_issue_architectures_are_registered() -> None:
    """The architectures users run (issue 25) and the four whose graph ggufx rebuilds."""
    for name in (
        "llama", "gemma3", "qwen3moe", "qwen35", "gpt-oss", "deepseek2", "glm4", "glm4moe", "qwen3next",
        "granitehybrid", "granite", "granitemoe", "lfm2", "lfm2moe", "phi3", "nemotron_h", "falcon-h1", "gemma2",
        "gemma3n", "qwen2", "qwen3vl", "qwen2vl", "llama4", "mistral3", "seed_oss", "ernie4_5", "ernie4_5-moe",
        "minimax-m2", "olmo2", "smollm3", "cohere2", "exaone4", "hunyuan-moe", "apertus", "gemma4", "deepseek32",
    ):  # fmt: skip
        assert arch_of(name) is not None, name
    assert {n for n in ARCHS if builder_of(n)} == {
        "llama", "gemma3", "qwen3moe", "qwen35", "cohere2", "deepseek2", "ernie4_5", "exaone4", "gemma2", "glm4",
        "glm4moe", "gpt-oss", "granite", "granitehybrid", "granitemoe", "lfm2", "lfm2moe", "llama4", "mistral3",
        "olmo2", "openelm", "phi3", "qwen2", "qwen2vl", "qwen3", "qwen3next", "seed_oss", "smollm3",
        "apertus", "gemma3n", "qwen3vl", "qwen35moe", "qwen2moe", "ernie4_5-moe", "hunyuan-moe", "minimax-m2",
        "qwen3vlmoe", "falcon-h1", "nemotron_h", "nemotron_h_moe", "mamba", "mamba2", "deepseek32", "glm-dsa",
        "olmoe", "arcee", "command-r", "gemma", "internlm2", "starcoder2", "exaone", "phi2", "stablelm",
        "hunyuan-dense", "dots1", "bailingmoe2", "mistral4", "minicpm3", "mimo2", "step35",
        "xverse", "orion", "qwen", "nemotron", "minicpm", "deepseek", "bailingmoe", "maincoder", "baichuan",
        "chatglm", "gemma4",
        # the third round's builders: recurrent and hybrid families, mixtures of experts, classic decoders
        "kimi-linear", "rwkv7", "arwkv7", "rwkv6", "rwkv6qwen2", "jamba", "plamo2", "minimax-01",
        "afmoe", "exaone-moe", "cohere2moe", "smallthinker", "phimoe", "dbrx", "arctic", "grok", "grovemoe",
        "deci", "olmo", "falcon", "gptneox", "mpt", "starcoder", "gpt2", "bloom", "refact", "codeshell", "jais",
        "jais2", "bitnet", "plamo", "pangu-embedded", "nanbeige", "plamo3", "mellum", "laguna", "plm", "granite_swa",
        # the newest decoder families (h-newarch)
        "hy_v3", "spark2_5", "bailingmoe3", "hy_v4", "kimi-k3",
        # the OCR decoders (session 6)
        "paddleocr", "hunyuan_vl", "deepseek2-ocr",
        # session 7: the newest small decoders
        "talkie", "maple", "muse-glimmer", "hrm_text", "minimax-m3", "dots3note", "deepseek4", "graniteswitch",
        # the hybrids with an indexer cache (h-hybidx)
        "glm5-next", "qwen4exp", "clef",
        # the embedding encoders (h-enc)
        "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "eurobert", "llama-embed", "gemma-embedding", "modern-bert",
        # gptj, chameleon, cogvlm (session 8): llama.cpp has no loader for gptj
        "chameleon", "cogvlm", "gemma4-assistant", "t5", "t5encoder",
        # the diffusion LMs (session 8)
        "dream", "llada", "llada-moe", "rnd1",
        # the speculative draft heads (h-drafts)
        "eagle3", "dflash",
        # text-to-speech (session 10)
        "qwen3tts", "pockettts", "wavtokenizer-dec",
    }  # fmt: skip
    assert arch_of("deepseek2").mla and arch_of("glm4moe").skips_nextn  # type: ignore[union-attr]
    assert arch_of("no-such-arch") is None and builder_of(None) is None


def test_the_memory_modules_create_memory_picks_by_name() -> None:
    """llama-model.cpp's create_memory picks these memory modules by architecture (the others follow from the
    layer kinds: KV cache, its sliding-window pair, recurrent or hybrid memory); buffers.breakdown reads
    ``Arch.memory`` and nothing else to size them."""
    assert {n: memory_of(n) for n in ARCHS if memory_of(n)} == {
        "deepseek4": "dsv4",
        "minimax-m3": "msa",
        "glm5-next": "hybrid_idx",
        "qwen4exp": "hybrid_idx",
        "clef": "none",
        **{
            n: "none"
            for n in (
                "bert",
                "nomic-bert",
                "nomic-bert-moe",
                "jina-bert-v2",
                "jina-bert-v3",
                "neo-bert",
                "eurobert",
                "gemma-embedding",
                "modern-bert",
                # the diffusion LMs (session 8)
                "dream",
                "llada",
                "llada-moe",
                "rnd1",
                # OuteTTS's vocoder (session 10): convolutions over the micro-batch
                "wavtokenizer-dec",
            )
        },  # fmt: skip
    }
    assert memory_of("llama") == memory_of("no-such-arch") == ""


@pytest.mark.parametrize(
    "kv",
    [
        {"block_count": 4, "embedding_length": 256},
        {"block_count": 4, "embedding_length": 256, "attention.head_count": 4, "attention.head_count_kv": [0, 2, 0, 2]},
        {
            "block_count": 2,
            "embedding_length": 256,
            "attention.head_count": 4,
            "attention.key_length_mla": 64,
            "attention.sliding_window": 64,
            "full_attention_interval": 0,
            "ssm.conv_kernel": 1,
            "nextn_predict_layers": 2,
        },
    ],
    ids=["no-heads", "zero-kv-heads", "odd-keys"],
)
def test_odd_files_of_every_registered_architecture_raise_nothing_but_gguf_errors(
    kv: dict, tmp_path: Path, smollm2_path: Path
) -> None:
    """Headers with keys missing or inconsistent for the architecture (no heads, KV-less layers, MLA with
    half its keys, NextN covering every layer): a breakdown on the CPU and on a GPU and llama.cpp's fit
    either answer, with a labelled compute figure, or raise a GGUFError naming the problem."""
    import sys

    import ggufx
    from ggufx.analysis.memory.buffers import ContextParams, breakdown, flash_attn_default
    from ggufx.analysis.memory.fit import llama_fit
    from ggufx.analysis.memory.placement import Device, OffloadParams
    from ggufx.errors import GGUFError

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"))
    from make_arch_headers import header

    answered = 0
    for name in ARCHS:
        path = tmp_path / f"{name}.gguf"
        tensors = [["token_embd.weight", [256, 49152], "F16"], ["blk.0.attn_norm.weight", [256], "F32"]]
        header(path, {"arch": name, "kv": kv}, tensors, smollm2_path)
        model = ggufx.open(path)
        # -fa off where llama.cpp aborts with flash attention (PLM: an InputError, the option's fault, not the file's)
        cp = ContextParams(n_ctx=1024, flash_attn=flash_attn_default(model))
        try:
            for devices in ([], [Device("CUDA0", 8 << 30)]):
                bd = breakdown(model, devices, OffloadParams(), cp)
                compute = [b for b in bd.buffers if b.kind == "compute"]
                assert bd.compute_estimate and (compute or "no compute figure" in bd.compute_estimate), name
            fit = llama_fit(model, [Device("CUDA0", 1 << 30)], cp=ContextParams(flash_attn=cp.flash_attn))
            assert fit.status in ("unchanged", "context", "layers", "failed")
            answered += 1
        except GGUFError as e:
            assert str(e)
    assert answered > 0
