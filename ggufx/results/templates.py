"""``template show/info/lint/render/diff`` (and what ``template set`` writes): chat templates, as
the JSON their ``--json`` prints."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, TypedDict, cast

from ggufx.chat.render import ENGINES
from ggufx.chat.samples import NAMES as SAMPLES
from ggufx.errors import InputError
from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from typing_extensions import NotRequired

    from ggufx.chat.sources import TemplateSet
    from ggufx.edit.engine import Op
    from ggufx.io.remote import RemoteConfig

Conversation = dict[str, Any]  # {"messages": [...], "tools"?: [...], "documents"?: [...]}


class TemplateShowResult(TypedDict):
    path: str
    default: str | None
    named: dict[str, str]


class TemplateFacts(TypedDict):
    """:meth:`ggufx.chat.dialect.TemplateInfo.to_dict`."""

    length: int
    sha256: str
    family: str
    dialect: str
    dialect_description: str | None
    supports_tools: bool
    renders_tool_calls: bool
    reasoning: bool
    system_role: str
    errors: dict[str, str]


class TemplateInfoResult(TemplateFacts):
    source: str
    llama_cpp_caps: dict[str, bool] | None
    llama_cpp_error: str | None
    llama_server_caps: NotRequired[dict[str, bool] | None]


class LintProblem(TypedDict):
    severity: str
    code: str
    message: str
    line: int | None


class TemplateLintResult(TypedDict):
    source: str
    ok: bool
    problems: list[LintProblem]
    template: TemplateFacts | None


class RenderedConversation(TypedDict):
    """One conversation: ``output`` or ``error`` (with its ``kind`` and ``line``); with a llama-server
    the server's prompt is ``output`` and ggufx's own beside it (``ggufx_output``, ``agrees``)."""

    conversation: str
    output: str | None
    error: str | None
    kind: NotRequired[str]
    line: NotRequired[int | None]
    ggufx_output: NotRequired[str | None]
    ggufx_error: NotRequired[str | None]
    agrees: NotRequired[bool]


class TemplateRenderResult(TypedDict):
    source: str
    engine: str
    results: list[RenderedConversation]
    server: NotRequired[str]


class TemplateDiffResult(TypedDict):
    a: str
    b: str
    identical: bool
    diff: str
    verdict: str
    a_info: TemplateFacts
    b_info: TemplateFacts


def unified_diff(old: str, new: str, a: str, b: str) -> str:
    """``diff -u`` of two templates; a last line without a newline is followed by ``diff``'s
    ``\\ No newline at end of file``, so it is never joined to the line after it."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), a, b)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def load_templates(path: str, remote: RemoteConfig | None = None) -> TemplateSet:
    """The chat templates of a GGUF, a template file, a tokenizer_config.json or a URL
    (:func:`ggufx.chat.sources.load`)."""
    from ggufx.chat.sources import load

    return load(path, remote=remote)


def model_templates(model: GGUFModel, source: str) -> TemplateSet:
    """The chat templates of an opened model, named ``source``."""
    from ggufx.chat.sources import from_model

    return from_model(model, source)


def is_gguf_path(path: str) -> bool:
    """Whether ``path`` names a GGUF (read as a model, not as a template file)."""
    from ggufx.chat.sources import is_gguf

    return is_gguf(path)


def conversations(
    sample_name: str | None = None,
    messages: tuple[str, Conversation] | None = None,
    tools: list[Any] | None = None,
) -> list[tuple[str, Conversation]]:
    """What ``template render`` renders: the caller's conversation (label, conversation), else one
    built-in sample, else all of them; ``tools`` added to each."""
    from ggufx.chat.samples import sample

    if messages is not None:
        convs = [messages]
    else:
        convs = [(n, sample(n)) for n in ([sample_name] if sample_name else list(SAMPLES))]
    if tools is not None:
        for _, c in convs:
            c["tools"] = tools
    return convs


def template_variables(ts: TemplateSet, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """bos_token/eos_token of the model, then the caller's extra variables."""
    v: dict[str, Any] = {}
    if ts.bos_token is not None:
        v["bos_token"] = ts.bos_token
    if ts.eos_token is not None:
        v["eos_token"] = ts.eos_token
    v.update(extra or {})
    return v


def template_show(source: str, ts: TemplateSet) -> TemplateShowResult:
    return {"path": source, "default": ts.default, "named": ts.named}


def template_info(
    source: str,
    ts: TemplateSet,
    name: str | None = None,
    variables: dict[str, Any] | None = None,
    server: str | None = None,
) -> TemplateInfoResult:
    """What the template speaks (as transformers renders it) and llama.cpp's capability flags
    (``llama_cpp_caps``, computed as llama.cpp's caps.cpp does); with ``server`` (a llama-server
    URL) also the server's own ``/props`` flags (``llama_server_caps``)."""
    from ggufx.chat.dialect import analyze
    from ggufx.chat.llamacpp.caps import caps_report
    from ggufx.chat.render import time_budget

    tmpl = ts.get(name)
    with time_budget():
        res = {"source": source, **analyze(tmpl, template_variables(ts, variables)).to_dict(), **caps_report(tmpl)}
    if server is not None:
        from ggufx.chat.llamacpp.server import server_caps

        res["llama_server_caps"] = server_caps(server)
    return cast(TemplateInfoResult, res)


def template_lint(
    source: str,
    ts: TemplateSet,
    name: str | None = None,
    variables: dict[str, Any] | None = None,
    model: GGUFModel | None = None,
) -> TemplateLintResult:
    """Lint problems and the verdict (``ok``: no error or warning)."""
    from ggufx.chat.lint import lint as run_lint
    from ggufx.chat.render import time_budget

    tokens = add_bos = None
    if model is not None:
        md = model.metadata
        tokens = md.get("tokenizer.ggml.tokens")
        add_bos = md.get("tokenizer.ggml.add_bos_token")
    with time_budget():
        result = run_lint(
            ts.get(name),
            origin=source,
            variables=template_variables(ts, variables),
            tokens=tokens,
            add_bos_token=add_bos,
        )
    return cast(TemplateLintResult, result.to_dict())


def template_render(
    source: str,
    ts: TemplateSet,
    conversations: list[tuple[str, Conversation]],
    name: str | None = None,
    add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None,
    engine: str = "transformers",
    server: str | None = None,
) -> TemplateRenderResult:
    """Render each (label, {"messages", "tools"?, "documents"?}) in the sandbox: ``engine``
    "transformers" (apply_chat_template) or "llama.cpp" (llama-server's inputs and llama.cpp's
    Jinja rules). With ``server`` (a llama-server URL, llama.cpp engine) each output is the prompt
    the server's ``/apply-template`` returns, beside ggufx's own (``ggufx_output``, ``agrees``)."""
    from ggufx.chat.render import RenderError, render, time_budget

    if engine not in ENGINES:
        raise InputError(f"unknown template engine {engine!r} (one of {', '.join(ENGINES)})")
    tmpl = ts.get(name)
    v = template_variables(ts, variables)
    add_bos = add_eos = False
    if ts.model is not None:
        md = ts.model.metadata
        add_bos = bool(md["tokenizer.ggml.add_bos_token"]) if "tokenizer.ggml.add_bos_token" in md else False
        add_eos = bool(md["tokenizer.ggml.add_eos_token"]) if "tokenizer.ggml.add_eos_token" in md else False
    results = []
    with time_budget():
        for label, conv in conversations:
            try:
                if engine == "llama.cpp":
                    from ggufx.chat.llamacpp.caps import render_server

                    out, _ = render_server(
                        tmpl,
                        conv["messages"],
                        tools=conv.get("tools"),
                        add_generation_prompt=add_generation_prompt,
                        variables=v,
                        add_bos=add_bos,
                        add_eos=add_eos,
                    )
                else:
                    out = render(
                        tmpl,
                        conv["messages"],
                        tools=conv.get("tools"),
                        documents=conv.get("documents"),
                        add_generation_prompt=add_generation_prompt,
                        variables=v,
                    )
                r: RenderedConversation = {"conversation": label, "output": out, "error": None}
            except RenderError as e:
                r = {"conversation": label, "output": None, "error": str(e), "kind": e.kind, "line": e.line}
            if server is not None and engine == "llama.cpp":
                r = _server_render(server, conv, add_generation_prompt, variables, r)
            results.append(r)
    res: TemplateRenderResult = {"source": source, "engine": engine, "results": results}
    if server is not None and engine == "llama.cpp":
        res["server"] = server
    return res


def _server_render(
    server: str,
    conv: Conversation,
    add_generation_prompt: bool,
    variables: dict[str, Any] | None,
    local: RenderedConversation,
) -> RenderedConversation:
    """The server's prompt as the output, ggufx's llama.cpp rendering beside it."""
    from ggufx.chat.llamacpp.server import apply_template
    from ggufx.chat.render import RenderError

    r: RenderedConversation = {"conversation": local["conversation"], "output": None, "error": None}
    try:
        r["output"] = apply_template(
            server,
            conv["messages"],
            tools=conv.get("tools"),
            add_generation_prompt=add_generation_prompt,
            kwargs=variables or None,
        )
    except RenderError as e:
        r["error"], r["kind"], r["line"] = str(e), e.kind, None
    r["ggufx_output"] = local["output"]
    r["ggufx_error"] = local["error"]
    r["agrees"] = r["output"] == local["output"] and (r["error"] is None) == (local["error"] is None)
    return r


def template_diff(a: str, b: str, ta: TemplateSet, tb: TemplateSet, name: str | None = None) -> TemplateDiffResult:
    from ggufx.chat.dialect import analyze
    from ggufx.chat.render import time_budget

    sa, sb = ta.get(name), tb.get(name)
    with time_budget():
        ia, ib = analyze(sa, template_variables(ta)), analyze(sb, template_variables(tb))
    if sa == sb:
        verdict = "identical templates"
    elif ia.dialect != ib.dialect:
        verdict = f"tool-call dialect changes: {ia.dialect} -> {ib.dialect} (tool calls will be written differently)"
    elif ia.family != ib.family:
        verdict = f"family changes: {ia.family} -> {ib.family}"
    else:
        verdict = f"same family ({ia.family}) and tool-call dialect ({ia.dialect})"
    return {
        "a": a,
        "b": b,
        "identical": sa == sb,
        "diff": unified_diff(sa, sb, a, b),
        "verdict": verdict,
        "a_info": cast(TemplateFacts, ia.to_dict()),
        "b_info": cast(TemplateFacts, ib.to_dict()),
    }


def template_set_ops(ts: TemplateSet, name: str | None) -> list[Op]:
    """What ``template set`` writes: the template ``name`` (default: the main one); from a source with
    several named templates and no ``name``, all of them and the list of names."""
    from ggufx.chat.sources import NAMES_KEY, key_for
    from ggufx.edit.engine import Set
    from ggufx.format.values import ValueType

    ops: list[Op] = []
    if name is not None or not ts.named:
        text = ts.get(name)
        if not text.strip():  # an empty file would erase the template: say so, and how to remove one
            raise InputError(
                f"{ts.origin}: the template is empty; to remove a chat template: ggufx delete FILE {key_for(name)}",
                "--from-file",
            )
        ops.append(Set(key_for(name), text, ValueType.STRING))
    else:
        if ts.default is not None:
            ops.append(Set(key_for(None), ts.default, ValueType.STRING))
        for n, text in ts.named.items():
            ops.append(Set(key_for(n), text, ValueType.STRING))
        ops.append(Set(NAMES_KEY, list(ts.named), ValueType.ARRAY, ValueType.STRING))
    return ops


def template_set_diff(file: str, current: TemplateSet, ops: list[Op]) -> str:
    """The unified diff of every template ``ops`` replace in ``file`` (``template set --dry-run``)."""
    out = []
    from ggufx.edit.engine import Set

    for op in ops:
        if not isinstance(op, Set) or not isinstance(op.value, str):
            continue
        value = op.value
        suffix = op.key[len("tokenizer.chat_template") :].lstrip(".")
        old = current.named.get(suffix) if suffix else current.default
        text = unified_diff(old or "", value, f"{file}:{op.key}", f"new:{op.key}")
        out.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(out)


def set_template_op(template: str, name: str | None) -> Op:
    """One template written under its key (the MCP tool ``set_template``)."""
    from ggufx.chat.sources import key_for
    from ggufx.edit.engine import Set
    from ggufx.format.values import ValueType

    return Set(key_for(name), template, ValueType.STRING)
