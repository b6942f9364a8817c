"""Lint a chat template: what would break chats, tool calls or tokenization.

Checks: syntax errors (with line numbers); each built-in conversation renders; a template that
refuses system messages or fails on the tool conversation; variables ``apply_chat_template`` does
not pass; ``add_generation_prompt`` having no effect; BOS written by the template *and* added by
the tokenizer (``tokenizer.ggml.add_bos_token``); special tokens the template writes
(``<|im_start|>``, ``<start_of_turn>``, ``<|start_header_id|>``...) that are not tokens of the
model's vocabulary.

llama.cpp renders with its own engine (:mod:`ggufx.chat.llamacpp`), so lint also renders each
built-in conversation as llama-server would and says where the two engines disagree ("renders in
transformers, fails in llama.cpp: ..." is a warning, the reverse a note), when llama.cpp cannot
parse the template at all (llama-server refuses to start), and which special tokens the template
assembles from message fields (``'<|' + message['role'] + '|>'``): llama.cpp marks message text as
input, so such a token is not a special token to it (``common/jinja/README.md``, input marking).

Severity ``error`` and ``warning`` make ``ggufx template lint`` exit 1; ``info`` notes do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ggufx.chat.dialect import TemplateInfo, analyze, render_sample
from ggufx.chat.render import RenderError, compile_template, render
from ggufx.chat.samples import NAMES, sample

BUDGET_SPENT = "not rendered: "  # the start of the message of a render the command's budget skipped

# variables apply_chat_template passes, and jinja/transformers globals
PASSED = {
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "raise_exception",
    "strftime_now",
    "namespace",
    "dict",
    "range",
    "loop",
    "lipsum",
    "cycler",
    "joiner",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
}

SPECIAL = re.compile(
    r"<\|[^<>|\s]{1,64}\|>|<｜[^<>｜\s]{1,64}｜>|<(?:start|end)_of_turn>|\[/?(?:INST|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS|SYSTEM_PROMPT)\]"
)


@dataclass(frozen=True, slots=True)
class Problem:
    severity: str  # error, warning, info
    code: str
    message: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "line": self.line}


@dataclass(slots=True)
class LintResult:
    source: str
    problems: list[Problem] = field(default_factory=list)
    info: TemplateInfo | None = None

    @property
    def ok(self) -> bool:
        return not any(p.severity in ("error", "warning") for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "template": self.info.to_dict() if self.info else None,
        }


def lint(
    source: str,
    *,
    origin: str = "",
    variables: dict[str, Any] | None = None,
    tokens: Any = None,
    add_bos_token: bool | None = None,
) -> LintResult:
    """Lint ``source``. ``tokens`` (the GGUF's token list) and ``add_bos_token`` enable the
    tokenizer checks; ``variables`` include ``bos_token``/``eos_token`` text."""
    import jinja2.meta

    result = LintResult(origin)
    add = result.problems.append
    try:
        template = compile_template(source)
    except RenderError as e:
        add(Problem("error", "syntax", e.message, e.line))
        return result
    variables = dict(variables or {})
    variables.setdefault("bos_token", "")
    variables.setdefault("eos_token", "")

    ast = template.environment.parse(source)
    undeclared = jinja2.meta.find_undeclared_variables(ast)
    # jinja reports a name set in one branch or loop and read after it as undeclared; a template
    # that assigns a name somewhere is not relying on the caller for it
    assigned = {n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
    unknown = sorted(undeclared - assigned - PASSED - set(variables))
    outputs: dict[str, str] = {}
    failures: dict[str, RenderError] = {}
    for name in NAMES:
        try:
            outputs[name], string_arguments = render_sample(source, name, variables, add_generation_prompt=True)
            if string_arguments:
                add(Problem("info", "string-arguments", "tool call arguments must be JSON text, not an object"))
        except RenderError as e:
            failures[name] = e
            if e.kind == "timeout":
                # a runaway: the command's time budget is spent, nothing else is rendered
                add(
                    Problem(
                        "error", f"fails-{name}", f"fails on the built-in {name!r} conversation: {e.message}", e.line
                    )
                )
                return result
            if name == "system" and e.kind == "exception":
                add(Problem("warning", "refuses-system", f"refuses system messages: {e.message}", e.line))
            elif e.kind == "security":
                add(
                    Problem(
                        "error",
                        "sandbox",
                        f"the {name} conversation is blocked by the sandbox (transformers refuses it too): {e.message}",
                        e.line,
                    )
                )
            else:
                add(
                    Problem(
                        "error" if name in ("plain", "multi-turn") else "warning",
                        f"fails-{name}",
                        f"fails on the built-in {name!r} conversation: {e.message}",
                        e.line,
                    )
                )

    # undefined variables are false/empty in transformers: a problem only where a render failed on one
    required = sorted(v for v in unknown for p in result.problems if f"'{v}' is undefined" in p.message)
    if required:
        add(
            Problem(
                "warning",
                "undefined-variable",
                f"needs variables apply_chat_template does not pass: {', '.join(required)} (give them with --var)",
            )
        )
    optional = [v for v in unknown if v not in required]
    if optional:
        add(
            Problem(
                "info",
                "optional-variable",
                f"reads variables apply_chat_template does not pass (undefined, so false/empty): {', '.join(optional)}",
            )
        )

    info = analyze(source, variables)
    result.info = info
    if not _llamacpp_checks(source, variables, outputs, failures, add):
        return result
    if "tools" in outputs and not info.supports_tools:
        add(Problem("info", "ignores-tools", "does not show tool definitions to the model (no tool support)"))
    if "plain" in outputs:
        conv = sample("plain")
        try:
            without = render(source, conv["messages"], variables=variables, add_generation_prompt=False)
            if without == outputs["plain"]:
                # Mistral's format has no assistant header: the prompt ends with [/INST] either way
                severity = "info" if info.family == "mistral" else "warning"
                add(
                    Problem(
                        severity,
                        "no-generation-prompt",
                        "add_generation_prompt changes nothing: no assistant turn is opened for the model",
                    )
                )
        except RenderError:
            pass
    bos = variables.get("bos_token") or ""
    if bos and add_bos_token and any(out.startswith(bos) for out in outputs.values()):
        add(
            Problem(
                "warning",
                "double-bos",
                f"the template writes {bos!r} and tokenizer.ggml.add_bos_token is true: llama.cpp will see BOS twice",
            )
        )
    if tokens is not None and outputs:
        vocab = set(tokens.tolist() if hasattr(tokens, "tolist") else tokens)
        written = set()
        for out in outputs.values():
            written.update(SPECIAL.findall(out))
        missing = sorted(t for t in written if t not in vocab)
        if missing:
            add(
                Problem(
                    "error",
                    "token-mismatch",
                    f"writes {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}, "
                    "which the model's vocabulary does not have: they are tokenized as plain text",
                )
            )
    return result


# -- llama.cpp ------------------------------------------------------------------------------------

_SANDBOX_ATTR = re.compile(r"access to attribute '(\w+)' of '(\w+)' object is unsafe")


def _what(e: RenderError) -> str:
    """A failure in a few words: ``list.append`` for the sandbox's refusal of a list method."""
    m = _SANDBOX_ATTR.search(e.message)
    if m:
        return f"{m.group(2)}.{m.group(1)}"
    return e.message


def _llamacpp_checks(
    source: str, variables: dict[str, Any], outputs: dict[str, str], failures: dict[str, RenderError], add: Any
) -> bool:
    """Render each built-in conversation as llama-server does and compare with transformers.
    Returns False when the command's time budget ran out (nothing more to check)."""
    from ggufx.chat.llamacpp import compile_program
    from ggufx.chat.llamacpp.caps import caps_of, render_server

    try:
        compile_program(source)
        caps = caps_of(source)
    except RenderError as e:
        if e.kind == "syntax":
            add(
                Problem(
                    "warning",
                    "llamacpp-syntax",
                    f"llama.cpp cannot parse the template (llama-server refuses to start with it): {e.message}",
                    e.line,
                )
            )
            return True
        add(Problem("error", "llamacpp-timeout", f"llama.cpp's capability probes fail: {e.message}", e.line))
        return False
    only_llama: dict[tuple[str, int | None], list[str]] = {}
    only_hf: dict[tuple[str, int | None], list[str]] = {}
    hazards: dict[str, list[str]] = {}
    for name in NAMES:
        conv = sample(name)
        try:
            _, parts = render_server(source, conv["messages"], tools=conv.get("tools"), variables=variables, caps=caps)
        except RenderError as e:
            if e.kind == "timeout":
                add(Problem("error", "llamacpp-timeout", f"llama.cpp: {e.message}", e.line))
                return False
            if name in outputs:
                only_hf.setdefault((e.message, e.line), []).append(name)
            continue
        if name in failures:
            f = failures[name]
            only_llama.setdefault((_what(f), f.line), []).append(name)
        for token in marking_hazards(parts):
            hazards.setdefault(token, []).append(name)
    for (msg, line), names in only_hf.items():
        at = f" at line {line}" if line else ""
        add(
            Problem(
                "warning",
                "fails-in-llamacpp",
                f"renders in transformers, fails in llama.cpp ({', '.join(names)}): {msg}{at}",
                line,
            )
        )
    for (msg, line), names in only_llama.items():
        at = f" at line {line}" if line else ""
        add(
            Problem(
                "info",
                "fails-in-transformers",
                f"renders in llama.cpp, fails in transformers ({', '.join(names)}): {msg}{at}",
                line,
            )
        )
    by_line: dict[int | None, list[str]] = {}
    for token in hazards:
        by_line.setdefault(_assembly_line(source, token), []).append(token)
    for line, tokens in by_line.items():
        names = sorted({n for t in tokens for n in hazards[t]}, key=NAMES.index)
        add(
            Problem(
                "warning",
                "input-marking",
                f"assembles the special token{'s' if len(tokens) > 1 else ''} {', '.join(tokens)} from message "
                f"fields ({', '.join(names)}): llama.cpp marks message text as input, so "
                f"{'they are' if len(tokens) > 1 else 'it is'} not special to it; write each token whole "
                "(an if/else on the role, not '<|' + message['role'] + '|>')",
                line,
            )
        )
    return True


def marking_hazards(parts: list[tuple[str, bool]]) -> list[str]:
    """Special tokens in rendered (text, is_input) parts that are made partly of input text."""
    text = "".join(t for t, _ in parts)
    spans = []
    pos = 0
    for t, inp in parts:
        if inp:
            spans.append((pos, pos + len(t)))
        pos += len(t)
    found = []
    for m in SPECIAL.finditer(text):
        a, b = m.span()
        inside = [(max(a, s), min(b, e)) for s, e in spans if s < b and e > a]
        covered = sum(e - s for s, e in inside)
        if 0 < covered < b - a and m.group(0) not in found:
            found.append(m.group(0))
    return found


def _assembly_line(source: str, token: str) -> int | None:
    """The first line that concatenates a piece of ``token`` (a string literal) with something."""
    pieces = [token[:i] for i in range(len(token) - 1, 0, -1)] + [token[i:] for i in range(1, len(token))]
    for lineno, line in enumerate(source.splitlines(), 1):
        for piece in pieces:
            lit = re.escape(piece)
            if re.search(rf"(['\"]){lit}\1\s*[+~]|[+~]\s*(['\"]){lit}\2", line):
                return lineno
    return None
