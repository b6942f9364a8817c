"""``ggufx pick`` as text: the one-line recommendation, a table of every model (``--tablefmt github``
pastes into a model card), then the command line that runs each."""

from __future__ import annotations

import shlex
from typing import Any

from ggufx.analysis.pick import ModelPick, PickResult, offload_text
from ggufx.render import table

MiB = 1 << 20
GiB = 1 << 30


def _fit_cell(m: ModelPick) -> str:
    if m.error is not None:
        return "unreadable" if m.quant is None else "error (see the notes)"
    if not m.gpus and m.command is not None:
        return "CPU only"
    if m.fits:
        return "yes"
    if m.status == "failed":
        return "no (llama.cpp's fit gives up)"
    return f"no: {offload_text(m)}" + (f", -c {m.n_ctx:,}" if m.status == "context" else "")


def _gpu_cell(m: ModelPick) -> str:
    return ", ".join(f"{g.total / MiB:,.0f} (+{g.headroom / MiB:,.0f})" for g in m.gpus) or "-"


def _ctx_cell(m: ModelPick, cache_type: str) -> Any:
    if cache_type not in m.largest_context:
        return "-"
    n = m.largest_context[cache_type]
    return "none" if n == 0 else f"{n:,}"


def pick_text(res: PickResult, fmt: str = "simple") -> str:
    """The recommendation, the table, the commands, the notes."""
    cache_types = next((list(m.largest_context) for m in res.models if m.largest_context), [])
    at = f"-c {res.n_ctx:,}" if res.n_ctx is not None else "--fit"
    headers = [
        "#",
        "model",
        "quant",
        "GiB",
        "BPW",
        f"fits ({at})",
        "-c",
        "GPU MiB (+free)",
        *[f"max ctx {ct}" for ct in cache_types],
    ]
    rows = []
    for i, m in enumerate(res.models, 1):
        mark = " *" if m is res.recommendation else " +" if m is res.runner_up else ""
        rows.append(
            [
                f"{i}{mark}",
                m.name,
                m.quant or "?",
                None if m.file_bytes is None else f"{m.file_bytes / GiB:.2f}",
                None if m.bpw is None else f"{m.bpw:.2f}",
                _fit_cell(m),
                None if not m.command else f"{m.n_ctx:,}",
                _gpu_cell(m),
                *[_ctx_cell(m, ct) for ct in cache_types],
            ]
        )
    align = "rlllrlrr" + "r" * len(cache_types)
    out = [res.summary, ""]
    gpus = ", ".join(f"{d.name} {d.free / MiB:,.0f} MiB" for d in res.gpus) or "none"
    out.append(
        f"GPUs: {gpus}; kept free: {res.margin / MiB:,.0f} MiB each (-fitt); KV cache "
        f"{res.cache_type_k}/{res.cache_type_v}; * recommended, + runner-up with part on the host"
    )
    if res.llama_args:
        out.append(f"{res.tool} options given: {shlex.join(res.llama_args)}")
    out.append("")
    out.append(table.render(rows, headers, fmt, align=align))
    commands = [(m.name, m.command_line) for m in res.models if m.command_line]
    if commands:
        out += ["", "Command lines:"]
        for name, cmd in commands:
            out.append(f"- {name}: `{cmd}`" if fmt == "github" else f"  {name}:\n    {cmd}")
    problems = [(m.name, m.error or "") for m in res.models if m.error] + [
        (m.name, n) for m in res.models for n in m.notes
    ]
    if problems or res.notes:
        out += ["", "Notes:"]
        out += [f"  {note}" for note in res.notes]
        out += [f"  {name}: {text}" for name, text in problems]
    if res.companions:
        listed = ", ".join(f"{c['name']} ({c['kind']})" for c in res.companions)
        out += ["", f"Companion files (not ranked): {listed}"]
    return table.printable("\n".join(out))


def pick_page(res: dict[str, Any], fmt: str = "html") -> str:
    """``pick --json`` (``PickResult.to_json()``) as the report's page for a folder or repository:
    ``templates/pick.html.j2`` or ``pick.md.j2`` (autoescaped: names come from untrusted files)."""
    import jinja2

    from ggufx._version import __version__
    from ggufx.render.pages import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=fmt == "html",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    cache_types = next((list(m["largest_context"]) for m in res["models"] if m["largest_context"]), [])
    notes = [(m["name"], m["error"]) for m in res["models"] if m["error"]]
    notes += [(m["name"], n) for m in res["models"] for n in m["notes"]]
    page = env.get_template("pick.html.j2" if fmt == "html" else "pick.md.j2").render(
        pick=res, cache_types=cache_types, notes=notes, version=__version__, MiB=MiB, GiB=GiB
    )
    return table.printable(page)


def md_escape(value: Any) -> str:
    """A value in a Markdown table cell: the characters Markdown would read escaped, one line."""
    text = "" if value is None else str(value)
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")
