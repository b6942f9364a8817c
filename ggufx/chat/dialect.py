"""What a chat template speaks: its family (turn markup) and its tool-call dialect (one of
:mod:`ggufx.chat.dialects`' table).

Detection renders the built-in conversations and inspects the *output*, not only the source:
a template that mentions ``<tool_call>`` in a comment but never emits one is not a tool template,
and the same ``<tool_call>`` tag wraps JSON in Qwen 2.5/3 and Hermes but XML
(``<function=NAME><parameter=ARG>``) in Qwen3-Coder and Qwen 3.5/3.6. When nothing matches the
answer is ``unknown``, never a guess.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ggufx.chat.dialects import DIALECTS, lookup
from ggufx.chat.render import RenderError, render
from ggufx.chat.samples import (
    REASONING_MARKER,
    SYSTEM_MARKER,
    TOOL_DESCRIPTION,
    USER_QUESTION,
    sample,
    with_string_arguments,
)

# (family, marker in rendered output); first match wins
FAMILIES: tuple[tuple[str, str], ...] = (
    ("harmony", "<|start|>"),
    ("deepseek", "<｜User｜>"),
    ("llama3", "<|start_header_id|>"),
    ("gemma", "<start_of_turn>"),
    ("gemma4", "<|turn>"),
    ("command-r", "<|START_OF_TURN_TOKEN|>"),
    ("granite", "<|start_of_role|>"),
    ("glm", "[gMASK]"),
    ("kimi", "<|im_user|>"),
    ("minimax", "]~b]"),
    ("seed-oss", "<seed:bos>"),
    ("chatml", "<|im_start|>"),
    ("phi", "<|assistant|>"),
    ("mistral", "[INST]"),
    ("solar", "<|begin|>"),
    ("apertus", "<|assistant_start|>"),
    ("apriel", "<|begin_assistant|>"),
    ("gigachat", "<|role_sep|>"),
    ("kimi-k3", "<|open|>message"),
    ("hunyuan", "<｜hy_"),
)


@dataclass(slots=True)
class TemplateInfo:
    """What ``ggufx template info`` reports; ``to_dict()`` is its JSON."""

    length: int
    sha256: str
    family: str
    dialect: str
    dialect_description: str | None
    supports_tools: bool
    renders_tool_calls: bool
    reasoning: bool
    system_role: str  # "yes", "ignored", "refused", "error"
    errors: dict[str, str] = field(default_factory=dict)  # sample -> error message

    def to_dict(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "sha256": self.sha256,
            "family": self.family,
            "dialect": self.dialect,
            "dialect_description": self.dialect_description,
            "supports_tools": self.supports_tools,
            "renders_tool_calls": self.renders_tool_calls,
            "reasoning": self.reasoning,
            "system_role": self.system_role,
            "errors": self.errors,
        }


def render_sample(
    source: str, name: str, variables: dict[str, Any], add_generation_prompt: bool = False
) -> tuple[str, bool]:
    """Render a built-in conversation. The tool conversation is retried with call arguments as
    JSON text, which some templates (Functionary v3.2) expect. Returns (output, whether that retry
    was needed); raises the first attempt's RenderError."""
    conv = sample(name)
    try:
        return render(
            source,
            conv["messages"],
            tools=conv.get("tools"),
            variables=variables,
            add_generation_prompt=add_generation_prompt,
        ), False
    except RenderError as e:
        if name == "tools" and e.kind == "error":
            conv = with_string_arguments(conv)
            try:
                return render(
                    source,
                    conv["messages"],
                    tools=conv["tools"],
                    variables=variables,
                    add_generation_prompt=add_generation_prompt,
                ), True
            except RenderError:
                pass
        raise e


def _try(source: str, name: str, variables: dict[str, Any], errors: dict[str, str], **kw: Any) -> str | None:
    try:
        return render_sample(source, name, variables, **kw)[0]
    except RenderError as e:
        errors[name] = str(e)
        return None


def family_of(output: str) -> str:
    for name, marker in FAMILIES:
        if marker in output:
            return name
    return "unknown"


def dialect_of(output: str) -> str:
    """The tool-call dialect of a rendered tool conversation. Only the part after the user's
    question is searched: tool *definitions* (and examples in the system prompt) come before it."""
    at = output.find(USER_QUESTION)
    calls = output[at + len(USER_QUESTION) :] if at >= 0 else output
    for d in DIALECTS:
        if re.search(d.pattern, calls):
            return d.name
    return "none" if "get_weather" not in calls else "unknown"


def analyze(source: str, variables: dict[str, Any] | None = None) -> TemplateInfo:
    """Render the built-in conversations and say what the template speaks."""
    variables = dict(variables or {})
    variables.setdefault("bos_token", "")
    variables.setdefault("eos_token", "")
    errors: dict[str, str] = {}
    plain = _try(source, "plain", variables, errors, add_generation_prompt=True)
    tools_out = _try(source, "tools", variables, errors, add_generation_prompt=True)
    system_out = _try(source, "system", variables, errors)
    reasoning_out = _try(source, "reasoning", variables, errors)
    family = family_of((plain or "") + (tools_out or "") + (system_out or ""))
    # the tool conversation's output minus what the plain one already contains (the tool definitions
    # are in the prompt; the tool *call* is what reveals the dialect)
    if tools_out is not None:
        dialect = dialect_of(tools_out)
    else:
        dialect = "none" if "tool" not in source else "unknown"
    supports_tools = tools_out is not None and TOOL_DESCRIPTION in tools_out
    at = tools_out.find(USER_QUESTION) if tools_out else -1
    renders_calls = (
        tools_out is not None and "get_weather" in tools_out[at + len(USER_QUESTION) :] if at >= 0 else False
    )
    if system_out is None:
        system_role = "refused" if "system" in errors and "raised" in errors["system"] else "error"
    else:
        system_role = "yes" if SYSTEM_MARKER in system_out else "ignored"
    reasoning = (
        reasoning_out is not None
        and REASONING_MARKER in reasoning_out
        or any(k in source for k in ("reasoning_content", "enable_thinking", "<think>"))
    )
    return TemplateInfo(
        len(source),
        hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest(),
        family,
        dialect,
        found.description if (found := lookup(dialect)) is not None else None,
        supports_tools,
        renders_calls,
        reasoning,
        system_role,
        errors,
    )
