"""``info``, ``tensors`` and ``meta``: what a file holds, as the JSON their ``--json`` prints."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from ggufx.analysis.summary import summarize
from ggufx.errors import InputError
from ggufx.format.reader import KV, TensorInfo
from ggufx.format.values import GGUFArray, ValueType, f32_short
from ggufx.model import GGUFModel

if TYPE_CHECKING:  # typing.NotRequired is Python 3.11's; the annotations are never evaluated
    from typing_extensions import NotRequired

SORT_ORDERS = ("offset", "name", "size", "type", "bpw")
ARRAY_HEAD = 8  # array elements shown without --full


class TensorRecord(TypedDict):
    name: str
    type: str
    shape: list[int]
    elements: int
    bytes: int
    bpw: float
    shard: int
    offset: int
    file_offset: int
    size_derived: bool


class KeyRecord(TypedDict):
    """A metadata record: ``type_label``, ``element_type``, ``length`` and ``truncated`` for arrays."""

    type: str
    type_label: NotRequired[str]
    element_type: NotRequired[str]
    length: NotRequired[int]
    truncated: NotRequired[bool]
    value: Any
    offset: int


class KeyResult(KeyRecord):
    """``meta FILE KEY --json``: one key's record with its whole value."""

    key: str


class MetaResult(TypedDict):
    path: str
    kind: str
    metadata: dict[str, KeyRecord]


class TypeRow(TypedDict):
    count: int
    parameters: int
    bytes: int
    share: float
    bpw: float


class InfoResult(TypedDict):
    """``info --json`` (:meth:`ggufx.analysis.summary.Summary.to_dict`); ``server`` with ``--server``."""

    path: str
    gguf_version: int
    endianness: str
    alignment: int
    architecture: str | None
    name: str | None
    file_type: int | None
    file_type_label: str | None
    file_type_guessed: bool
    file_bytes: int
    shards: list[dict[str, Any]]
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
    chat_template: dict[str, Any]
    types: dict[str, TypeRow]
    unknown_types: list[str]
    kind: str
    companion: dict[str, Any] | None
    server: NotRequired[dict[str, Any]]


class TypeHistogram(TypedDict):
    """The MCP tool ``type_histogram``: the histogram part of :class:`InfoResult`."""

    path: str
    tensor_count: int
    bpw: float
    types: dict[str, TypeRow]


class TensorsResult(TypedDict):
    """``tensors --json``; ``offset``, ``limit`` and ``next_offset`` when a page was asked for."""

    path: str
    kind: str
    count: int
    offset: NotRequired[int]
    limit: NotRequired[int | None]
    next_offset: NotRequired[int | None]
    tensors: list[TensorRecord]


def tensor_dict(t: TensorInfo) -> TensorRecord:
    """One tensor as ``tensors --json`` gives it."""
    return {
        "name": t.name,
        "type": t.type.name,
        "shape": list(t.shape),
        "elements": t.n_elements,
        "bytes": t.nbytes,
        "bpw": round(t.bpw, 4),
        "shard": t.shard,
        "offset": t.offset,
        "file_offset": t.file_offset,
        "size_derived": t.size_derived,
    }


def _elem_label(a: GGUFArray) -> str:
    label = f"{a.elem_type.short},{a.count}"
    if a.elem_type is ValueType.ARRAY and a.count:
        label = f"arr[{_elem_label(a[0])}],{a.count}"
    return label


def json_value(kv_type: ValueType, value: Any, full: bool) -> Any:
    """A metadata value as JSON: floats as the shortest float32 text, arrays optionally cut."""
    if kv_type is ValueType.FLOAT32:
        return f32_short(value)
    if kv_type is ValueType.ARRAY:
        a: GGUFArray = value
        if a.elem_type is ValueType.ARRAY:
            return [json_value(ValueType.ARRAY, v, full) for v in (a if full else a[:ARRAY_HEAD])]
        items = a.tolist() if full else a[:ARRAY_HEAD]
        if a.elem_type is ValueType.FLOAT32:
            items = [f32_short(v) for v in items]
        return items
    return value


def kv_dict(kv: KV, full: bool) -> KeyRecord:
    """A metadata record as ``meta --json`` gives it (arrays cut to their first items unless ``full``)."""
    d: dict[str, Any] = {"type": kv.type.short}
    if kv.type is ValueType.ARRAY:
        d["type_label"] = f"arr[{_elem_label(kv.value)}]"
        d["element_type"] = kv.value.elem_type.short
        d["length"] = kv.value.count
        d["truncated"] = (not full) and kv.value.count > ARRAY_HEAD
    d["value"] = json_value(kv.type, kv.value, full)
    d["offset"] = kv.offset
    return cast(KeyRecord, d)


def info(model: GGUFModel) -> InfoResult:
    return cast(InfoResult, summarize(model).to_dict())


class ServerModelResult(TypedDict):
    """The MCP tool ``server_model``: what a llama-server says it runs, and that file's summary."""

    server: dict[str, Any]
    info: InfoResult


def server_model(url: str, open_model: Callable[[str], GGUFModel]) -> ServerModelResult:
    """Ask the llama-server at ``url`` which file it has loaded (``/props``), open it with
    ``open_model`` and say whether the server's chat template is the file's."""
    from ggufx.io.llamaserver import query

    sm = query(url)
    model = open_model(sm.model_path)
    sm.file_template = model.metadata.get_str("tokenizer.chat_template")
    return {"server": sm.to_dict(), "info": info(model)}


def ggml_type_names() -> tuple[str, ...]:
    """Every ggml type's name (the MCP ``tensors`` tool's enumeration)."""
    from ggufx.format.ggmltypes import all_types

    return tuple(t.name for t in all_types())


M = TypeVar("M")


def distinct_models(models: list[M]) -> list[M]:
    """``models`` less any split model already listed (``info shard-*.gguf``: once, not per shard);
    anything that is not a model (an error in its place) is kept."""
    seen: set[str] = set()
    out: list[M] = []
    for m in models:
        if isinstance(m, GGUFModel):
            first = os.path.realpath(m.shards[0].path)
            if first in seen:
                continue
            seen.add(first)
        out.append(m)
    return out


def type_histogram(model: GGUFModel) -> TypeHistogram:
    d = info(model)
    return {"path": d["path"], "tensor_count": d["tensor_count"], "bpw": d["bpw"], "types": d["types"]}


def _sort_key(order: str) -> Callable[[TensorInfo], Any]:
    return {
        "offset": lambda t: (t.shard, t.offset),
        "name": lambda t: t.name,
        "size": lambda t: (-t.nbytes, t.name),
        "type": lambda t: (t.type.name, t.name),
        "bpw": lambda t: (-t.bpw, t.name),
    }[order]


def parse_layer_range(text: str) -> tuple[int, int]:
    """``"12"`` -> (12, 12); ``"10-19"`` -> (10, 19)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if m is None:
        raise InputError(f"{text!r} is not a layer or a range like 10-19", "--layers")
    lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if hi < lo:
        raise InputError(f"layer range {text!r} ends before it starts", "--layers")
    return lo, hi


def tensors(
    model: GGUFModel,
    types: Iterable[str] = (),
    grep: str | None = None,
    sort: str = "offset",
    layers: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> TensorsResult:
    """Tensors filtered by ggml type names, a regular expression searched in the name and a layer
    range; sorted; then the page ``[offset, offset + limit)``. ``count`` is the number that matched;
    with a limit, ``next_offset`` is where the next page starts (null after the last)."""
    from ggufx.analysis.filekind import file_kind
    from ggufx.analysis.roles import parse_name
    from ggufx.format.ggmltypes import ggml_type_by_name

    if sort not in SORT_ORDERS:
        raise InputError(f"sort must be one of {', '.join(SORT_ORDERS)}", "--sort")
    pattern = None
    if grep is not None:
        try:
            pattern = re.compile(grep)
        except re.error as e:
            raise InputError(f"invalid regular expression: {e}", "--grep") from None
    wanted = set()
    for type_name in types:
        try:
            wanted.add(ggml_type_by_name(type_name).name)
        except ValueError as e:
            raise InputError(str(e), "--type") from None
    span = parse_layer_range(layers) if layers is not None else None
    if offset < 0 or (limit is not None and limit < 1):
        raise InputError("offset must be >= 0 and limit >= 1", "--limit")
    if span is not None:  # a range the model does not have would be an empty table that looks like an answer
        present = {n for t in model.tensors if (n := parse_name(t.name).layer) is not None}
        if not any(span[0] <= n <= span[1] for n in present):
            have = f"its layers are {min(present)}-{max(present)}" if present else "it has no numbered layers"
            raise InputError(f"{layers!r}: no such layer in {model.path} ({have})", "--layers")
    selected = []
    for t in model.tensors:
        if wanted and t.type.name not in wanted:
            continue
        if pattern is not None and not pattern.search(t.name):
            continue
        if span is not None:
            layer = parse_name(t.name).layer
            if layer is None or not span[0] <= layer <= span[1]:
                continue
        selected.append(t)
    selected.sort(key=_sort_key(sort))
    if limit is None and offset == 0:
        return {
            "path": model.path,
            "kind": file_kind(model),
            "count": len(selected),
            "tensors": [tensor_dict(t) for t in selected],
        }
    page = selected[offset : offset + limit if limit is not None else None]
    end = offset + len(page)
    return {
        "path": model.path,
        "kind": file_kind(model),
        "count": len(selected),
        "offset": offset,
        "limit": limit,
        "next_offset": end if end < len(selected) else None,
        "tensors": [tensor_dict(t) for t in page],
    }


def meta(model: GGUFModel, full: bool = False) -> MetaResult:
    """All keys (arrays summarised unless ``full``)."""
    from ggufx.analysis.filekind import file_kind

    return {
        "path": model.path,
        "kind": file_kind(model),
        "metadata": {kv.key: kv_dict(kv, full) for kv in model.metadata.kvs()},
    }


def meta_key(model: GGUFModel, key: str) -> KeyResult:
    """One key's record with its whole value."""
    md = model.metadata
    if key not in md:
        raise InputError(f"{model.path}: no metadata key {key!r} (`ggufx meta {model.path}` lists them)", "KEY")
    return cast(KeyResult, {"key": key, **kv_dict(md.kv(key), True)})
