"""Small synthetic companion files (projector, LoRA adapter, imatrix, control vector, vocabulary),
written with gguf-py for the companion-file tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter


def _finish(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_base(
    path: Path,
    n_embd: int = 64,
    n_ff: int = 128,
    n_layer: int = 2,
    arch: str = "llama",
    f16: frozenset[str] = frozenset(),
) -> Path:
    """A tiny llama-like model: token embedding, per layer attention and FFN matrices (F32, or F16
    for the names in ``f16``)."""
    w = GGUFWriter(str(path), arch)
    add = w.add_tensor

    def add_tensor(name: str, data: np.ndarray) -> None:
        add(name, data.astype(np.float16) if name in f16 else data)

    w.add_tensor = add_tensor  # type: ignore[method-assign]
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_context_length(256)
    w.add_tensor("token_embd.weight", np.zeros((32, n_embd), np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for r in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{r}.weight", np.zeros((n_embd, n_embd), np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((n_ff, n_embd), np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", np.zeros((n_ff, n_embd), np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((n_embd, n_ff), np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    _finish(w)
    return path


def write_projector(path: Path, projection_dim: int = 64, audio: bool = False) -> Path:
    w = GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", audio)
    w.add_string("clip.projector_type", "gemma3")
    w.add_uint32("clip.vision.image_size", 224)
    w.add_uint32("clip.vision.patch_size", 14)
    w.add_uint32("clip.vision.block_count", 3)
    w.add_uint32("clip.vision.embedding_length", 32)
    w.add_uint32("clip.vision.attention.head_count", 4)
    w.add_uint32("clip.vision.projection_dim", projection_dim)
    if audio:
        w.add_uint32("clip.audio.block_count", 2)
        w.add_uint32("clip.audio.num_mel_bins", 128)
        w.add_uint32("clip.audio.projection_dim", projection_dim)
    w.add_tensor("v.patch_embd.weight", np.zeros((32, 3, 14, 14), np.float32))
    w.add_tensor("mm.input_projection.weight", np.zeros((projection_dim, 32), np.float32))
    _finish(w)
    return path


def write_lora(
    path: Path,
    targets: dict[str, tuple[int, int]],
    rank: int = 4,
    alpha: float = 8.0,
    arch: str = "llama",
    adapter_type: str = "lora",
    seed: int = 0,
) -> Path:
    """An adapter for base tensors ``name -> (n_in, n_out)`` (ggml order); lora_a ne = [n_in, r],
    lora_b ne = [r, n_out] (numpy shapes are reversed)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", alpha)
    for name, (n_in, n_out) in targets.items():
        w.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32))
        w.add_tensor(f"{name}.lora_b", np.zeros((n_out, rank), np.float32))
    _finish(w)
    return path


def write_imatrix(
    path: Path, values: dict[str, tuple[list[float], float]], chunks: int = 2, chunk_size: int = 128
) -> Path:
    """An imatrix as llama-imatrix writes it: ``name -> (in_sum2 row, count)`` (no architecture)."""
    w = GGUFWriter(str(path), "llama")
    del w.kv_data[0]["general.architecture"]
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["prose.txt"])
    w.add_uint32("imatrix.chunk_count", chunks)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, (row, count) in values.items():
        w.add_tensor(f"{name}.in_sum2", np.array([row], np.float32))
        w.add_tensor(f"{name}.counts", np.array([[count]], np.float32))
    _finish(w)
    return path


def write_control_vector(path: Path, n_embd: int = 64, layers: int = 3) -> Path:
    w = GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", layers)
    for i in range(1, layers + 1):
        w.add_tensor(f"direction.{i}", np.zeros(n_embd, np.float32))
    _finish(w)
    return path


def write_vocab(path: Path) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c", "d"])
    _finish(w)
    return path
