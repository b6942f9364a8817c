"""Lint a chat template: what would break chats, tool calls or tokenization.

Checks: syntax errors (with line numbers); each built-in conversation renders; a template that
refuses system messages or fails on the tool conversation; variables ``apply_chat_template`` does
not pass; ``add_generation_prompt`` having no effect; BOS written by the template *and* added by
the tokenizer (``tokenizer.ggml.add_bos_token``); special tokens the template writes
(``<|im_start|>``, ``<start_of_turn>``, ``<|start_header_id|>``...) that are not tokens of the
model's vocabulary. Severity ``error`` and ``warning`` make ``ggufx template lint`` exit 1;
``info`` notes do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ggufx.chat.dialect import TemplateInfo, analyze, render_sample
from ggufx.chat.render import RenderError, compile_template, render
from ggufx.chat.samples import NAMES, sample

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
    for name in NAMES:
        try:
            outputs[name], string_arguments = render_sample(source, name, variables, add_generation_prompt=True)
            if string_arguments:
                add(Problem("info", "string-arguments", "tool call arguments must be JSON text, not an object"))
        except RenderError as e:
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
