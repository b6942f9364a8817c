"""The difference between two quants: type changes by role and layer range, added and removed
tensors, metadata changes, BPW and size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ggufx.analysis.roles import parse_name
from ggufx.analysis.summary import summarize
from ggufx.model import GGUFModel


@dataclass(frozen=True, slots=True)
class TypeChange:
    role: str
    layers: str  # "12-16" or "" for global tensors
    before: str
    after: str
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "layers": self.layers,
            "before": self.before,
            "after": self.after,
            "tensors": self.tensors,
        }


def layer_ranges(layers: list[int]) -> str:
    """[12, 13, 14, 16] -> "12-14, 16"."""
    out: list[str] = []
    for n in sorted(set(layers)):
        if out and (parts := out[-1].split("-")) and int(parts[-1]) == n - 1:
            out[-1] = f"{parts[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


@dataclass(slots=True)
class ModelDiff:
    a: str
    b: str
    type_changes: list[TypeChange]
    added: list[str]
    removed: list[str]
    shape_changes: list[str]
    metadata_added: list[str]
    metadata_removed: list[str]
    metadata_changed: list[str]
    a_bpw: float
    b_bpw: float
    a_bytes: int
    b_bytes: int
    a_file_bytes: int
    b_file_bytes: int

    @property
    def identical_tensors(self) -> bool:
        return not (self.type_changes or self.added or self.removed or self.shape_changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "type_changes": [c.to_dict() for c in self.type_changes],
            "tensors_added": self.added,
            "tensors_removed": self.removed,
            "shape_changes": self.shape_changes,
            "metadata": {
                "added": self.metadata_added,
                "removed": self.metadata_removed,
                "changed": self.metadata_changed,
            },
            "bpw": {"a": round(self.a_bpw, 4), "b": round(self.b_bpw, 4), "change": round(self.b_bpw - self.a_bpw, 4)},
            "tensor_bytes": {"a": self.a_bytes, "b": self.b_bytes, "change": self.b_bytes - self.a_bytes},
            "file_bytes": {
                "a": self.a_file_bytes,
                "b": self.b_file_bytes,
                "change": self.b_file_bytes - self.a_file_bytes,
            },
            "identical_tensors": self.identical_tensors,
        }


def diff(a: GGUFModel, b: GGUFModel) -> ModelDiff:
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    groups: dict[tuple[str, str, str], list[int | None]] = {}
    shapes = []
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.shape != y.shape:
            shapes.append(name)
        if x.type.name != y.type.name:
            r = parse_name(name)
            groups.setdefault((r.label, x.type.name, y.type.name), []).append(r.layer)
    changes = []
    for (role, before, after), layers in sorted(groups.items()):
        nums = [n for n in layers if n is not None]
        changes.append(TypeChange(role, layer_ranges(nums), before, after, len(layers)))
    ma, mb = a.metadata, b.metadata
    changed = []
    for k in ma.keys() & mb.keys():
        ka, kb = ma.kv(k), mb.kv(k)
        if ka.type != kb.type or bytes(a.header.buf[ka.offset : ka.end]) != bytes(b.header.buf[kb.offset : kb.end]):
            changed.append(k)
    sa, sb = summarize(a), summarize(b)
    return ModelDiff(
        a.path,
        b.path,
        changes,
        sorted(tb.keys() - ta.keys()),
        sorted(ta.keys() - tb.keys()),
        sorted(shapes),
        sorted(mb.keys() - ma.keys()),
        sorted(ma.keys() - mb.keys()),
        sorted(changed),
        sa.bpw,
        sb.bpw,
        sa.tensor_bytes,
        sb.tensor_bytes,
        sa.file_bytes,
        sb.file_bytes,
    )
