"""What an importance matrix (llama-imatrix's GGUF) says of each tensor: llama-imatrix's own
statistics read from the small ``.in_sum2`` and ``.counts`` tensors, and each tensor's rank within
its role. ``ggufx imatrix`` prints them; ``recipe --imatrix --budget`` spends a budget on them
(:class:`~ggufx.analysis.promotion.Importance`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ggufx.analysis.filekind import file_kind, imatrix_pairs
from ggufx.analysis.promotion import Importance
from ggufx.analysis.roles import parse_name
from ggufx.errors import SourceError, ValidationError
from ggufx.format.reader import TensorInfo
from ggufx.io.sources import is_remote
from ggufx.model import GGUFModel


@dataclass(slots=True)
class TensorImportance:
    """One weight's statistics (``ggufx imatrix --json``'s row, ``to_dict()``)."""

    name: str
    role: str
    layer: int | None
    matrices: int
    elements: int
    sum_sq: float
    importance: float | None
    counts: int | None
    rank: int = 0  # within its role, 1 = most important
    role_count: int = 0
    top_quartile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "layer": self.layer,
            "matrices": self.matrices,
            "elements": self.elements,
            "sum_sq": self.sum_sq,
            "importance": self.importance,
            "counts": self.counts,
            "rank": self.rank,
            "role_count": self.role_count,
            "top_quartile": self.top_quartile,
        }


def _f32_rows(model: GGUFModel, t: TensorInfo) -> Any:
    """The data of a small F32 tensor of ``model`` as a numpy float64 array (ne[1] rows of ne[0])."""
    import numpy as np

    path = model.shards[t.shard].path
    if t.type.name != "F32":
        raise ValidationError(path, t.info_offset, f"tensor '{t.name}' is {t.type.name}, an imatrix holds F32")
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, t.nbytes, t.file_offset)
    finally:
        os.close(fd)
    if len(data) != t.nbytes:
        raise ValidationError(path, t.file_offset, f"tensor '{t.name}' data is cut short")
    order = ">" if model.header.endianness == "big" else "<"
    arr = np.frombuffer(data, dtype=f"{order}f4").astype(np.float64)
    ne0 = t.shape[0] if t.shape else 1
    return arr.reshape(-1, ne0) if ne0 else arr.reshape(0, 0)


def require_imatrix(im: GGUFModel) -> None:
    """A local file whose kind is ``imatrix``, else a one-line error naming what it is."""
    if is_remote(im.path):
        raise SourceError(im.path, None, "reading an imatrix needs its tensor data; download the file first")
    kind = file_kind(im)
    if kind != "imatrix":
        gtype = im.metadata.get_str("general.type")
        raise ValidationError(
            im.path,
            None,
            f"not an imatrix: the file's kind is {kind} (general.type {gtype or 'absent'}, not 'imatrix')",
        )


def tensor_importance(im: GGUFModel) -> list[TensorImportance]:
    """Per weight the importance llama-imatrix's statistics report, ranked within its role, in file
    order.

    ``sum_sq`` is llama-imatrix's ``∑ E[A²]`` (``compute_vector_statistics`` in
    ``tools/imatrix/imatrix.cpp``): the sum over every matrix with a positive count of
    ``in_sum2 / counts``, skipping values that are not finite; ``importance`` is that sum over the
    ``elements`` summed (the mean of ``in_sum2 / counts``). Only the ``.in_sum2`` and ``.counts``
    tensors' data are read."""
    import numpy as np

    require_imatrix(im)
    by_name = {t.name: t for t in im.tensors}
    rows: list[TensorImportance] = []
    for name in imatrix_pairs(im):
        s2, cn = by_name[name + ".in_sum2"], by_name[name + ".counts"]
        values, counts = _f32_rows(im, s2), _f32_rows(im, cn).reshape(-1)
        n_mat = counts.size
        if n_mat == 0 or values.size == 0 or values.size % n_mat:
            raise ValidationError(
                im.shards[s2.shard].path,
                s2.info_offset,
                f"tensor '{name}.in_sum2' has {values.size} values for {n_mat} counts (not a multiple)",
            )
        values = values.reshape(n_mat, -1)
        total = 0.0
        n = 0
        for m in range(n_mat):
            c = float(np.float32(counts[m]))
            if not c > 0.0:
                continue
            v = values[m] * (1.0 / c)
            ok = np.isfinite(v)
            total += float(v[ok].sum())
            n += int(ok.sum())
        role = parse_name(name)
        cmax = float(counts.max())
        rows.append(
            TensorImportance(
                name,
                role.label,
                role.layer,
                n_mat,
                n,
                total,
                total / n if n else None,
                int(cmax) if math.isfinite(cmax) else None,
            )
        )
    for members in by_role(rows).values():
        members.sort(key=lambda r: (-(r.importance if r.importance is not None else -math.inf), r.name))
        top = math.ceil(len(members) / 4)
        for i, r in enumerate(members, 1):
            r.rank, r.role_count, r.top_quartile = i, len(members), i <= top
    return rows


def by_role(rows: list[TensorImportance]) -> dict[str, list[TensorImportance]]:
    """The rows of each role, in the order the roles first appear."""
    out: dict[str, list[TensorImportance]] = {}
    for r in rows:
        out.setdefault(r.role, []).append(r)
    return out


def importance_map(rows: list[TensorImportance]) -> dict[str, Importance]:
    """What :func:`ggufx.analysis.promotion.plan` spends a budget on: every weight with data."""
    return {r.name: Importance(r.importance, r.rank, r.role_count) for r in rows if r.importance is not None}
