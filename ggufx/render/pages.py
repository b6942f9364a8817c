"""One-page reports of a model (HTML or Markdown), rendered through the jinja2 templates in
``templates/`` with autoescaping on: tensor names and metadata come from untrusted files. The
HTML page needs no JavaScript and no network (the layer heat map is inline SVG)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ggufx._version import __version__
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.render.table import printable

if TYPE_CHECKING:
    from ggufx.results import ReportResult

MiB = 1 << 20


def templates_dir() -> str:
    """``templates/`` beside the package (a checkout) or under ``share/ggufx`` (an install)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (
        os.path.join(os.path.dirname(package), "templates"),
        os.path.join(sys.prefix, "share", "ggufx", "templates"),
    ):
        if os.path.isfile(os.path.join(candidate, "report.html.j2")):
            return candidate
    raise FileNotFoundError("ggufx report templates not found (templates/report.html.j2)")


def _colour(type_name: str) -> str:
    """Cool (few bits) to warm (many bits) by the type's bits per weight."""
    try:
        bpw = ggml_type_by_name(type_name).bits_per_weight
    except ValueError:
        return "#cccccc"
    stops = [
        (1.5, (49, 54, 149)),
        (4.5, (69, 117, 180)),
        (5.5, (116, 173, 209)),
        (6.6, (254, 224, 144)),
        (8.5, (253, 174, 97)),
        (16, (244, 109, 67)),
        (32, (165, 0, 38)),
    ]
    if bpw <= stops[0][0]:
        rgb = stops[0][1]
    else:
        rgb = stops[-1][1]
        for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
            if bpw <= x1:
                f = (bpw - x0) / (x1 - x0)
                r, g, b = (round(lo + (hi - lo) * f) for lo, hi in zip(c0, c1))
                rgb = (r, g, b)
                break
    return "#%02x%02x%02x" % rgb


def _chart(report: ReportResult) -> str | None:
    from ggufx.render.chart import memory_chart_svg

    curve = report.get("memory_curve")
    s = report["summary"]
    return memory_chart_svg(curve, f"{s['name'] or s['path']}: memory per GPU against context") if curve else None


def context(report: ReportResult) -> dict[str, Any]:
    """What the page templates show, from ``results.report`` (the object ``report --json`` prints)."""
    s = report["summary"]
    full = report["layer_map"]
    colours = {name: _colour(name) for name in s["types"]}
    cell, label_w, top = 16, 70, 110
    roles = full["roles"]
    columns = [{"x": label_w + i * cell + 4, "y": top - 6, "text": role} for i, role in enumerate(roles)]
    rows, cells = [], []
    for j, r in enumerate(full["layers"]):
        y = top + j * cell
        kind = r["kind"]
        letter = "S" if "SWA" in kind else "R" if "recurrent" in kind else "A" if "attention" in kind else ""
        rows.append({"y": y, "text": f"{r['first']} {letter}"})
        for i, role in enumerate(roles):
            t = r["types"][role]
            if t:
                colours.setdefault(t, _colour(t))
                cells.append(
                    {
                        "x": label_w + i * cell,
                        "y": y,
                        "w": cell - 1,
                        "h": cell - 1,
                        "fill": colours[t],
                        "title": f"layer {r['first']} {role}: {t} ({kind})",
                    }
                )
    heat = {
        "width": label_w + max(1, len(roles)) * cell + 80,
        "height": top + len(full["layers"]) * cell + 10,
        "columns": columns,
        "rows": rows,
        "cells": cells,
    }
    kind = report.get("kind", "model")
    return {
        "s": s,
        "kind": kind,
        "title": s["name"] or KIND_TITLES.get(kind, "GGUF file"),
        "kind_title": KIND_TITLES.get(kind, kind),
        "companion": companion_facts(report.get("companion")),
        "roles": report["roles"],
        "grid": report["layers"],
        "heat": heat,
        "colours": colours,
        "layer_counts": report["layers"]["layer_kinds"],
        "memory": report["memory"],
        "memory_curve": report.get("memory_curve"),
        "memory_chart": _chart(report),
        "llama_args": report.get("llama_args", []),  # the options the memory figures are sized with
        "tool": report.get("tool", "llama-cli"),
        "MiB": MiB,
        "template": report["chat_template"],
        "version": __version__,
    }


KIND_TITLES = {
    "model": "GGUF model",
    "projector": "Multimodal projector",
    "adapter": "LoRA adapter",
    "imatrix": "Importance matrix",
    "control-vector": "Control vector",
    "vocab": "Vocabulary",
}


def companion_facts(summary: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """A companion file's summary (``filekind.companion_summary``) as (fact, value) rows: nested
    towers flattened (``vision image_size``), long lists cut to their first items."""
    rows: list[tuple[str, str]] = []
    for key, value in (summary or {}).items():
        label = f"{prefix}{key.replace('_', ' ')}"
        if isinstance(value, dict):
            rows += companion_facts(value, f"{label} ")
        elif isinstance(value, list):
            shown = ", ".join(map(str, value[:8])) + (f", ... ({len(value):,} in all)" if len(value) > 8 else "")
            rows.append((label, shown or "-"))
        elif value is not None:
            rows.append((label, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)))
    return rows


def render(report: ReportResult, fmt: str = "html") -> str:
    """The report (``results.report``) as HTML (``fmt="html"``) or Markdown (``fmt="md"``)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=fmt == "html",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_escape
    name = "report.html.j2" if fmt == "html" else "report.md.j2"
    return printable(env.get_template(name).render(**context(report)))


def _md_escape(value: Any) -> str:
    text = "" if value is None else str(value)
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")
