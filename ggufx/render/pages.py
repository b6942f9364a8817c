"""One-page reports of a model (HTML or Markdown), rendered through the jinja2 templates in
``templates/`` with autoescaping on: tensor names and metadata come from untrusted files. The
HTML page needs no JavaScript and no network (the layer heat map is inline SVG)."""

from __future__ import annotations

import os
import sys
from typing import Any

from ggufx._version import __version__
from ggufx.analysis.tables import layer_grid, role_table
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.analysis.memory import MiB, estimate
from ggufx.model import GGUFModel
from ggufx.analysis.summary import summarize

CONTEXTS = (4096, 32768, 131072)


def templates_dir() -> str:
    """``templates/`` beside the package (a checkout) or under ``share/ggufx`` (an install)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(os.path.dirname(package), "templates"), os.path.join(sys.prefix, "share", "ggufx", "templates")):
        if os.path.isfile(os.path.join(candidate, "report.html.j2")):
            return candidate
    raise FileNotFoundError("ggufx report templates not found (templates/report.html.j2)")


def _colour(type_name: str) -> str:
    """Cool (few bits) to warm (many bits) by the type's bits per weight."""
    try:
        bpw = ggml_type_by_name(type_name).bits_per_weight
    except ValueError:
        return "#cccccc"
    stops = [(1.5, (49, 54, 149)), (4.5, (69, 117, 180)), (5.5, (116, 173, 209)), (6.6, (254, 224, 144)),
             (8.5, (253, 174, 97)), (16, (244, 109, 67)), (32, (165, 0, 38))]
    if bpw <= stops[0][0]:
        rgb = stops[0][1]
    else:
        rgb = stops[-1][1]
        for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
            if bpw <= x1:
                f = (bpw - x0) / (x1 - x0)
                rgb = tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))
                break
    return "#%02x%02x%02x" % rgb


def context(model: GGUFModel) -> dict[str, Any]:
    """Everything the report templates show, from the same library calls as the CLI."""
    from ggufx.chat.dialect import analyze
    from ggufx.chat.sources import special_tokens

    s = summarize(model).to_dict()
    grid = layer_grid(model)
    full = layer_grid(model, collapse=False)
    colours = {name: _colour(name) for name in s["types"]}
    cell, label_w, top = 16, 70, 110
    columns = [{"x": label_w + i * cell + 4, "y": top - 6, "text": role} for i, role in enumerate(full.roles)]
    rows, cells = [], []
    for j, r in enumerate(full.rows):
        y = top + j * cell
        rows.append({"y": y, "text": f"{r.first} {'S' if 'SWA' in r.kind else 'R' if 'recurrent' in r.kind else 'A' if 'attention' in r.kind else ''}"})
        for i, role in enumerate(full.roles):
            t = r.types[role]
            if t:
                colours.setdefault(t, _colour(t))
                cells.append({"x": label_w + i * cell, "y": y, "w": cell - 1, "h": cell - 1, "fill": colours[t],
                              "title": f"layer {r.first} {role}: {t} ({r.kind})"})
    heat = {"width": label_w + max(1, len(full.roles)) * cell + 80, "height": top + len(full.rows) * cell + 10,
            "columns": columns, "rows": rows, "cells": cells}
    n_train = s["context_length"] or 0
    ctxs = sorted({c for c in (*CONTEXTS, n_train) if c and (not n_train or c <= n_train)})
    memory = [estimate(model, c, cache_type_k=ct, cache_type_v=ct) for c in ctxs for ct in ("f16", "q8_0", "q4_0")]
    tmpl = model.metadata.get_str("tokenizer.chat_template")
    info = None
    if tmpl is not None:
        bos, eos = special_tokens(model)
        info = analyze(tmpl, {"bos_token": bos or "", "eos_token": eos or ""}).to_dict()
    return {"s": s, "roles": role_table(model), "grid": grid, "heat": heat, "colours": colours,
            "layer_counts": grid.counts(), "memory": memory, "MiB": MiB, "template": info, "version": __version__}


def render(model: GGUFModel, fmt: str = "html") -> str:
    """The report as HTML (``fmt="html"``) or Markdown (``fmt="md"``)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir()), autoescape=fmt == "html",
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["md"] = _md_escape
    name = "report.html.j2" if fmt == "html" else "report.md.j2"
    return env.get_template(name).render(**context(model))


def _md_escape(value: Any) -> str:
    text = "" if value is None else str(value)
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")
