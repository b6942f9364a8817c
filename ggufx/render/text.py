"""Text renderings of results. Pure: dataclasses in, strings out (no click, no I/O)."""

from __future__ import annotations

import json
from typing import Any

from ggufx.render import table
from ggufx.format.reader import KV, TensorInfo
from ggufx.analysis.summary import ModelSummary
from ggufx.format.values import GGUFArray, ValueType, f32_short

ARRAY_HEAD = 8  # array elements shown without --full
STR_WIDTH = 72  # string characters shown in tables without --full


def human_bytes(n: int) -> str:
    """Binary units as llama.cpp prints them (MiB, GiB)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def human_params(n: int) -> str:
    """Parameter count as llama.cpp prints it (134.52 M, 26.90 B)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def info_text(s: ModelSummary, fmt: str = "simple") -> str:
    ft = s.file_type_label or "-"
    if s.file_type_guessed:
        ft += " (guessed from tensor types)"
    tmpl = "none"
    if s.chat_template.present:
        tmpl = f"{s.chat_template.length:,} chars, starts: {_clip(s.chat_template.first_line or '', 60)}"
    if s.chat_template.named:
        tmpl += f" (+ named: {', '.join(s.chat_template.named)})"
    facts = [
        ("file", s.path),
        ("architecture", s.architecture or "-"),
        ("name", s.name or "-"),
        ("file type", ft),
        ("file size", f"{human_bytes(s.file_bytes)} ({s.file_bytes:,} bytes)"
         + (f" in {s.shards} shards" if s.shards > 1 else "")),
        ("GGUF", f"v{s.version}, {s.endianness}-endian, alignment {s.alignment}, {s.kv_count} keys"),
        ("tensors", f"{s.tensor_count:,}"),
        ("parameters", f"{human_params(s.parameters)} ({s.parameters:,})"),
        ("BPW", f"{s.bpw:.4f}  (all tensors: 8 x {s.tensor_bytes:,} bytes / parameters, as llama.cpp prints)"),
        ("BPW weights", f"{s.bpw_weights:.4f}  (only the {human_params(s.weight_parameters)} weights llama-quantize quantizes)"),
        ("context length", _opt(s.context_length)),
        ("block count", _opt(s.block_count)),
        ("embedding length", _opt(s.embedding_length)),
        ("vocabulary", _opt(s.vocab_size)),
        ("chat template", tmpl),
    ]
    if s.unknown_types:
        facts.append(("unknown types", ", ".join(s.unknown_types) + " (size derived from offsets; upgrade gguf)"))
    width = max(len(k) for k, _ in facts)
    head = "\n".join(f"{k.ljust(width)}  {v}" for k, v in facts)
    rows = [(t.type, t.count, t.parameters, t.bytes, f"{100 * t.share:.2f}%", f"{t.bpw:.2f}") for t in s.types]
    hist = table.render(rows, ("type", "tensors", "parameters", "bytes", "share", "BPW"), fmt,
                        align="lrrrrr")
    return f"{head}\n\n{hist}"


def _opt(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _clip(text: str, width: int) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text if len(text) <= width else text[: width - 1] + "…"


# -- tensors -----------------------------------------------------------------------------------

def tensor_dict(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "type": t.type.name, "shape": list(t.shape), "elements": t.n_elements,
            "bytes": t.nbytes, "bpw": round(t.bpw, 4), "shard": t.shard, "offset": t.offset,
            "file_offset": t.file_offset, "size_derived": t.size_derived}


def tensors_text(tensors: list[TensorInfo], fmt: str = "simple", show_shard: bool = False) -> str:
    headers = ["name", "type", "shape", "elements", "bytes", "BPW"]
    if show_shard:
        headers.append("shard")
    headers.append("offset")
    rows = []
    for t in tensors:
        row: list[Any] = [t.name, t.type.name, " x ".join(map(str, t.shape)), t.n_elements, t.nbytes, f"{t.bpw:.2f}"]
        if show_shard:
            row.append(t.shard + 1)
        row.append(t.file_offset)
        rows.append(row)
    return table.render(rows, headers, fmt, align="lllrrr" + ("r" if show_shard else "") + "r")


# -- metadata ----------------------------------------------------------------------------------

def type_label(kv: KV) -> str:
    if kv.type is ValueType.ARRAY:
        return f"arr[{_elem_label(kv.value)}]"
    return kv.type.short


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


def kv_dict(kv: KV, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"type": kv.type.short}
    if kv.type is ValueType.ARRAY:
        d["element_type"] = kv.value.elem_type.short
        d["length"] = kv.value.count
        d["truncated"] = (not full) and kv.value.count > ARRAY_HEAD
    d["value"] = json_value(kv.type, kv.value, full)
    d["offset"] = kv.offset
    return d


def value_text(kv: KV, full: bool) -> str:
    if kv.type is ValueType.STRING:
        return kv.value if full else _clip(kv.value, STR_WIDTH)
    if kv.type is ValueType.ARRAY:
        a: GGUFArray = kv.value
        items = json_value(kv.type, a, full)
        text = json.dumps(items, ensure_ascii=False)
        if not full and a.count > ARRAY_HEAD:
            text = text[:-1] + f", … {a.count - ARRAY_HEAD:,} more]"
        return text if full else _clip(text, STR_WIDTH * 2)
    if kv.type is ValueType.FLOAT32:
        return repr(f32_short(kv.value))
    return str(kv.value).lower() if kv.type is ValueType.BOOL else str(kv.value)


def meta_text(kvs: list[KV], full: bool, fmt: str = "simple") -> str:
    rows = [(kv.key, type_label(kv), value_text(kv, full)) for kv in kvs]
    return table.render(rows, ("key", "type", "value"), fmt, align="lll")
