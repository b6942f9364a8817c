"""The model summary behind ``ggufx info``: a pure function of a parsed model.

Parameters and bits per weight use exactly llama.cpp's definitions (``llama-model-loader.cpp``):
parameters are the sum of all tensors' elements, and BPW is 8 x (sum of ``ggml_nbytes`` of all
tensors) / parameters. Metadata (a big vocabulary) and alignment padding are not counted, so this
is not file size x 8 / parameters. A second figure, ``bpw_weights``, covers only the weight
matrices that ``llama-quantize`` quantizes; quant cards quote one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ggufx.analysis.filekind import companion_summary, file_kind
from ggufx.analysis.roles import is_quantizable_weight
from ggufx.format.ggmltypes import file_type_for_ggml_type, file_type_label
from ggufx.format.reader import TensorInfo
from ggufx.model import GGUFModel


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """``ggml_n_dims``: rank ignoring trailing dimensions of size 1 (at least 1)."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


@dataclass(frozen=True, slots=True)
class TypeStat:
    """One row of the type histogram."""

    type: str
    count: int
    parameters: int
    bytes: int
    share: float  # fraction of all tensor bytes, 0..1

    @property
    def bpw(self) -> float:
        return 8.0 * self.bytes / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "share": round(self.share, 6),
            "bpw": round(self.bpw, 4),
        }


@dataclass(frozen=True, slots=True)
class ChatTemplateInfo:
    present: bool
    length: int = 0  # characters
    first_line: str | None = None
    named: tuple[str, ...] = ()  # names of tokenizer.chat_template.NAME variants

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "length": self.length,
            "first_line": self.first_line,
            "named": list(self.named),
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """What ``ggufx info`` reports; ``to_dict()`` is the documented ``--json`` interface."""

    path: str
    version: int
    endianness: str
    alignment: int
    architecture: str | None
    name: str | None
    file_type: int | None
    file_type_label: str | None
    file_type_guessed: bool
    file_bytes: int
    shards: int
    shard_paths: tuple[str, ...]
    kv_count: int
    tensor_count: int
    parameters: int
    tensor_bytes: int
    bpw: float
    weight_parameters: int
    weight_bytes: int
    bpw_weights: float
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    vocab_size: int | None
    chat_template: ChatTemplateInfo
    types: tuple[TypeStat, ...] = field(default_factory=tuple)
    unknown_types: tuple[str, ...] = ()
    kind: str = "model"  # ggufx.analysis.filekind.KINDS
    companion: dict[str, Any] | None = None  # the companion file's summary (None for a model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "gguf_version": self.version,
            "endianness": self.endianness,
            "alignment": self.alignment,
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "file_type_label": self.file_type_label,
            "file_type_guessed": self.file_type_guessed,
            "file_bytes": self.file_bytes,
            "shards": list(self.shard_paths),
            "kv_count": self.kv_count,
            "tensor_count": self.tensor_count,
            "parameters": self.parameters,
            "tensor_bytes": self.tensor_bytes,
            "bpw": round(self.bpw, 4),
            "weight_parameters": self.weight_parameters,
            "weight_bytes": self.weight_bytes,
            "bpw_weights": round(self.bpw_weights, 4),
            "context_length": self.context_length,
            "block_count": self.block_count,
            "embedding_length": self.embedding_length,
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template.to_dict(),
            "types": {t.type: t.to_dict() for t in self.types},
            "unknown_types": list(self.unknown_types),
            "kind": self.kind,
            "companion": self.companion,
        }


def type_histogram(tensors: list[TensorInfo]) -> tuple[TypeStat, ...]:
    """Per ggml type: tensors, elements and bytes, sorted by bytes (largest first)."""
    acc: dict[str, list[int]] = {}
    total = 0
    for t in tensors:
        row = acc.setdefault(t.type.name, [0, 0, 0])
        row[0] += 1
        row[1] += t.n_elements
        row[2] += t.nbytes
        total += t.nbytes
    stats = [TypeStat(name, c, p, b, b / total if total else 0.0) for name, (c, p, b) in acc.items()]
    return tuple(sorted(stats, key=lambda s: (-s.bytes, s.type)))


def guess_file_type(tensors: list[TensorInfo]) -> int | None:
    """llama.cpp's guess when ``general.file_type`` is absent: the most common type, first in
    name order on ties (the loader walks a ``std::map`` keyed by name)."""
    counts: dict[str, int] = {}
    best, best_n = "F32", 0
    for t in sorted(tensors, key=lambda t: t.name.encode("utf-8", "surrogateescape")):
        n = counts[t.type.name] = counts.get(t.type.name, 0) + 1
        if n > best_n:
            best, best_n = t.type.name, n
    return file_type_for_ggml_type(best)


def _chat_template_info(model: GGUFModel) -> ChatTemplateInfo:
    md = model.metadata
    prefix = "tokenizer.chat_template."
    named = tuple(k[len(prefix) :] for k in md if k.startswith(prefix))
    tmpl = md.get_str("tokenizer.chat_template")
    if tmpl is None:
        return ChatTemplateInfo(False, named=named)
    first = next((ln.strip() for ln in tmpl.splitlines() if ln.strip()), "")
    return ChatTemplateInfo(True, len(tmpl), first[:120], named)


def summarize(model: GGUFModel) -> ModelSummary:
    md = model.metadata
    tensors = model.tensors
    params = sum(t.n_elements for t in tensors)
    nbytes = sum(t.nbytes for t in tensors)
    w_params = w_bytes = 0
    for t in tensors:
        if is_quantizable_weight(t.name, ggml_n_dims(t.shape)):
            w_params += t.n_elements
            w_bytes += t.nbytes
    arch = model.architecture
    ftype = md.get_int("general.file_type")
    guessed = False
    if ftype is None and tensors:
        ftype = guess_file_type(tensors)
        guessed = ftype is not None

    def arch_int(suffix: str) -> int | None:
        return md.get_int(f"{arch}.{suffix}") if arch else None

    kind = file_kind(model)
    vocab = arch_int("vocab_size")
    if vocab is None and "tokenizer.ggml.tokens" in md:
        tokens = md["tokenizer.ggml.tokens"]
        vocab = len(tokens) if hasattr(tokens, "__len__") else None
    return ModelSummary(
        path=model.path,
        version=model.header.version,
        endianness=model.header.endianness,
        alignment=model.header.alignment,
        architecture=arch,
        name=md.get_str("general.name"),
        file_type=ftype,
        file_type_label=file_type_label(ftype),
        file_type_guessed=guessed,
        file_bytes=model.file_size,
        shards=len(model.shards),
        shard_paths=tuple(s.path for s in model.shards),
        kv_count=len(md),
        tensor_count=len(tensors),
        parameters=params,
        tensor_bytes=nbytes,
        bpw=8.0 * nbytes / params if params else 0.0,
        weight_parameters=w_params,
        weight_bytes=w_bytes,
        bpw_weights=8.0 * w_bytes / w_params if w_params else 0.0,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        vocab_size=vocab,
        chat_template=_chat_template_info(model),
        types=type_histogram(tensors),
        unknown_types=tuple(sorted({t.type.name for t in tensors if not t.type.known})),
        kind=kind,
        companion=companion_summary(model, kind),
    )
