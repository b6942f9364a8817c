"""The result of every read-only command as the JSON object its ``--json`` prints.

One function per command, used by the CLI and by the MCP tools alike, so that the two cannot
disagree. Functions take a parsed model (or template set) and plain options and return plain
dicts; a bad option (a regular expression that does not compile, an unknown type name) raises
:class:`InputError`, which the CLI shows as a usage error and the MCP server as a tool error.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

from ggufx.model import GGUFModel
from ggufx.analysis.summary import summarize

SORT_ORDERS = ("offset", "name", "size", "type", "bpw")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class InputError(ValueError):
    """A bad argument (not a bad file). ``param`` names the CLI option it came from."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# -- models ------------------------------------------------------------------------------------

def info(model: GGUFModel) -> dict[str, Any]:
    return summarize(model).to_dict()


def _sort_key(order: str):
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


def tensors(model: GGUFModel, types: Iterable[str] = (), grep: str | None = None, sort: str = "offset",
            layers: str | None = None, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Tensors filtered by ggml type names, a regular expression searched in the name and a layer
    range; sorted; then the page ``[offset, offset + limit)``. ``count`` is the number that matched;
    with a limit, ``next_offset`` is where the next page starts (null after the last)."""
    from ggufx.format.ggmltypes import ggml_type_by_name
    from ggufx.render.text import tensor_dict
    from ggufx.analysis.roles import parse_name

    if sort not in SORT_ORDERS:
        raise InputError(f"sort must be one of {', '.join(SORT_ORDERS)}", "--sort")
    pattern = None
    if grep is not None:
        try:
            pattern = re.compile(grep)
        except re.error as e:
            raise InputError(f"invalid regular expression: {e}", "--grep") from None
    wanted = set()
    for t in types:
        try:
            wanted.add(ggml_type_by_name(t).name)
        except ValueError as e:
            raise InputError(str(e), "--type") from None
    span = parse_layer_range(layers) if layers is not None else None
    if offset < 0 or (limit is not None and limit < 1):
        raise InputError("offset must be >= 0 and limit >= 1", "--limit")
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
    out: dict[str, Any] = {"path": model.path, "count": len(selected)}
    if limit is None and offset == 0:
        out["tensors"] = [tensor_dict(t) for t in selected]
        return out
    page = selected[offset:offset + limit if limit is not None else None]
    end = offset + len(page)
    out.update({"offset": offset, "limit": limit, "next_offset": end if end < len(selected) else None,
                "tensors": [tensor_dict(t) for t in page]})
    return out


def meta(model: GGUFModel, key: str | None = None, full: bool = False) -> dict[str, Any]:
    """All keys (arrays summarised unless ``full``), or one key's record with its whole value."""
    from ggufx.render.text import kv_dict

    md = model.metadata
    if key is None:
        return {"path": model.path, "metadata": {kv.key: kv_dict(kv, full) for kv in md.kvs()}}
    if key not in md:
        raise InputError(f"{model.path}: no metadata key {key!r} (`ggufx meta {model.path}` lists them)", "KEY")
    return {"key": key, **kv_dict(md.kv(key), True)}


def roles(model: GGUFModel) -> dict[str, Any]:
    from ggufx.analysis.tables import role_table

    return {"path": model.path, "roles": [r.to_dict() for r in role_table(model)]}


def layers(model: GGUFModel, collapse: bool = True) -> dict[str, Any]:
    from ggufx.analysis.tables import layer_grid

    return {"path": model.path, **layer_grid(model, collapse=collapse).to_dict()}


def recipe(model: GGUFModel) -> dict[str, Any]:
    from ggufx.analysis.tables import check_recipe, recipe as make_recipe

    rec = make_recipe(model)
    d = rec.to_dict()
    d["path"] = model.path
    d["verified"] = not check_recipe(model, rec)
    return d


def diff(a: GGUFModel, b: GGUFModel) -> dict[str, Any]:
    from ggufx.analysis.tables import diff as model_diff

    return model_diff(a, b).to_dict()


def memory(model: GGUFModel, ctx: int = 0, cache_type_k: str = "f16", cache_type_v: str = "f16",
           flash_attn: bool = True, parallel: int = 1, ubatch: int = 512, n_gpu_layers: int = -1) -> dict[str, Any]:
    from ggufx.analysis.memory import estimate

    for name, v in (("--cache-type-k", cache_type_k), ("--cache-type-v", cache_type_v)):
        if v not in CACHE_TYPES:
            raise InputError(f"cache type {v!r} is not one of {', '.join(CACHE_TYPES)}", name)
    if ctx < 0 or parallel < 1 or ubatch < 1:
        raise InputError("ctx must be >= 0, parallel and ubatch >= 1", "--ctx")
    e = estimate(model, ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v, parallel=parallel,
                 n_ubatch=ubatch, flash_attn=flash_attn, n_gpu_layers=n_gpu_layers)
    return {"path": model.path, **e.to_dict()}


def fit(model: GGUFModel, budget: str | int, flash_attn: bool = True, parallel: int = 1, ubatch: int = 512,
        n_gpu_layers: int = -1) -> dict[str, Any]:
    from ggufx.analysis.memory import fit as fit_ctx, parse_size

    if isinstance(budget, str):
        try:
            budget = parse_size(budget)
        except ValueError as e:
            raise InputError(str(e), "--fit") from None
    fits = fit_ctx(model, budget, parallel=parallel, n_ubatch=ubatch, flash_attn=flash_attn, n_gpu_layers=n_gpu_layers)
    return {"path": model.path, "budget": budget, "fits": [f.to_dict() for f in fits]}


def report(model: GGUFModel) -> dict[str, Any]:
    from ggufx.render.pages import context

    ctx = context(model)
    return {"summary": ctx["s"], "roles": [r.to_dict() for r in ctx["roles"]], "layers": ctx["grid"].to_dict(),
            "memory": [m.to_dict() for m in ctx["memory"]], "chat_template": ctx["template"]}


# -- chat templates ----------------------------------------------------------------------------

def template_variables(ts: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """bos_token/eos_token of the model, then the caller's extra variables."""
    v: dict[str, Any] = {}
    if ts.bos_token is not None:
        v["bos_token"] = ts.bos_token
    if ts.eos_token is not None:
        v["eos_token"] = ts.eos_token
    v.update(extra or {})
    return v


def template_show(source: str, ts: Any) -> dict[str, Any]:
    return {"path": source, "default": ts.default, "named": ts.named}


def template_info(source: str, ts: Any, name: str | None = None, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    from ggufx.chat.dialect import analyze

    return {"source": source, **analyze(ts.get(name), template_variables(ts, variables)).to_dict()}


def template_lint(source: str, ts: Any, name: str | None = None, variables: dict[str, Any] | None = None,
                  model: GGUFModel | None = None):
    """The :class:`~ggufx.chat.lint.LintResult` (``to_dict()`` is the JSON; ``ok`` the verdict)."""
    from ggufx.chat.lint import lint as run_lint

    tokens = add_bos = None
    if model is not None:
        md = model.metadata
        tokens = md["tokenizer.ggml.tokens"] if "tokenizer.ggml.tokens" in md else None
        add_bos = md["tokenizer.ggml.add_bos_token"] if "tokenizer.ggml.add_bos_token" in md else None
    return run_lint(ts.get(name), origin=source, variables=template_variables(ts, variables), tokens=tokens,
                    add_bos_token=add_bos)


def template_render(source: str, ts: Any, conversations: list[tuple[str, dict]], name: str | None = None,
                    add_generation_prompt: bool = True, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render each (label, {"messages", "tools"?, "documents"?}) in the sandbox."""
    from ggufx.chat.render import RenderError, render

    tmpl = ts.get(name)
    v = template_variables(ts, variables)
    results = []
    for label, conv in conversations:
        try:
            out = render(tmpl, conv["messages"], tools=conv.get("tools"), documents=conv.get("documents"),
                         add_generation_prompt=add_generation_prompt, variables=v)
            results.append({"conversation": label, "output": out, "error": None})
        except RenderError as e:
            results.append({"conversation": label, "output": None, "error": str(e), "kind": e.kind, "line": e.line})
    return {"source": source, "results": results}


def template_diff(a: str, b: str, ta: Any, tb: Any, name: str | None = None) -> dict[str, Any]:
    from ggufx.chat.dialect import analyze

    sa, sb = ta.get(name), tb.get(name)
    ia, ib = analyze(sa, template_variables(ta)), analyze(sb, template_variables(tb))
    text = "".join(difflib.unified_diff(sa.splitlines(keepends=True), sb.splitlines(keepends=True), a, b))
    if sa == sb:
        verdict = "identical templates"
    elif ia.dialect != ib.dialect:
        verdict = f"tool-call dialect changes: {ia.dialect} -> {ib.dialect} (tool calls will be written differently)"
    elif ia.family != ib.family:
        verdict = f"family changes: {ia.family} -> {ib.family}"
    else:
        verdict = f"same family ({ia.family}) and tool-call dialect ({ia.dialect})"
    return {"a": a, "b": b, "identical": sa == sb, "diff": text, "verdict": verdict,
            "a_info": ia.to_dict(), "b_info": ib.to_dict()}

