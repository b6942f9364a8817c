"""What a chat template speaks: its family (turn markup) and its tool-call dialect.

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

# (dialect, regex on the rendered tool conversation, description); first match wins
DIALECTS: tuple[tuple[str, str, str], ...] = (
    (
        "qwen3-coder-xml",
        r"<tool_call>\s*<function=get_weather>\s*<parameter=city>",
        "<tool_call><function=NAME><parameter=ARG>...</parameter></function></tool_call> (Qwen3-Coder, Qwen 3.5/3.6)",
    ),
    (
        "seed-oss-xml",
        r"<seed:tool_call>\s*<function=get_weather>",
        "<seed:tool_call><function=NAME><parameter=ARG> (Seed-OSS)",
    ),
    (
        "glm-xml",
        r"<tool_call>\s*get_weather\s*<arg_key>city</arg_key>",
        "<tool_call>NAME<arg_key>ARG</arg_key><arg_value>... (GLM 4.5+)",
    ),
    (
        "hermes-json",
        r"<tool_call>\s*\{\s*\"name\"\s*:\s*\"get_weather\"",
        '<tool_call>{"name": ..., "arguments": ...}</tool_call> (Qwen 2.5/3, Hermes)',
    ),
    ("minimax-xml", r"<minimax:tool_call>", "<minimax:tool_call><invoke name=NAME> (MiniMax M2)"),
    ("minimax-m3", r"\]<\]minimax\[>\[<tool_call>", "]<]minimax[>[<tool_call> (MiniMax M3)"),
    (
        "deepseek-dsml",
        r"<｜DSML｜function_calls>",
        "<｜DSML｜function_calls><｜DSML｜invoke name=NAME> (DeepSeek V3.2/V4)",
    ),
    ("kimi-k3", r"<\|open\|>call tool=\"get_weather\"", "<|open|>call tool=NAME (Kimi K3)"),
    ("hunyuan", r"<tool_call:opensource>", "<tool_call:opensource>NAME<arg_key:opensource> (Hunyuan)"),
    ("apertus", r"<\|tools_prefix\|>", "<|tools_prefix|>[{NAME: {...}}] (Apertus)"),
    ("apriel", r"<tool_calls>\s*\[\s*\{\s*\"name\"", '<tool_calls>[{"name": ...}]</tool_calls> (Apriel)'),
    ("gigachat", r"function call<\|role_sep\|>", "function call<|role_sep|>{...} (GigaChat)"),
    (
        "minicpm-xml",
        r"<function name=\"get_weather\">\s*<param name=",
        "<function name=NAME><param name=ARG> (MiniCPM)",
    ),
    ("atem-xml", r"<atem:function_calls>", "<atem:function_calls> (Muse)"),
    ("kimi", r"<\|tool_calls_section_begin\|>", "<|tool_calls_section_begin|> (Kimi K2)"),
    ("deepseek", r"<｜tool▁call▁begin｜>|<｜tool▁calls▁begin｜>", "<｜tool▁calls▁begin｜> (DeepSeek)"),
    (
        "harmony",
        r"to=functions\.get_weather",
        "<|start|>assistant<|channel|>commentary to=functions.NAME (gpt-oss harmony)",
    ),
    (
        "llama3-json",
        r"<\|python_tag\|>|\{\s*\"name\"\s*:\s*\"get_weather\"\s*,\s*\"parameters\"",
        '{"name": ..., "parameters": ...} / <|python_tag|> (Llama 3.x)',
    ),
    ("mistral", r"\[TOOL_CALLS\]", "[TOOL_CALLS][{...}] (Mistral)"),
    ("command-r", r"<\|START_ACTION\|>|Action:\s*```json", "<|START_ACTION|> / Action: ```json (Command-R)"),
    ("granite", r"<\|tool_call\|>", "<|tool_call|>[{...}] (Granite 3.x)"),
    ("functionary-v3.2", r">>>\s*get_weather", ">>>NAME\\n{...} (Functionary v3.2)"),
    ("functionary-v3.1", r"<function=get_weather>\s*\{", "<function=NAME>{...}</function> (Functionary v3.1)"),
    ("gemma4", r"<\|tool_call>", "<|tool_call>call:NAME{...} (Gemma 4)"),
    ("lfm2", r"<\|tool_call_start\|>", "<|tool_call_start|>[NAME(...)] (LFM2)"),
    ("solar", r"<\|tool_call:begin\|>", "<|tool_call:begin|> (Solar Open)"),
    ("nemotron-json", r"<TOOLCALL>", "<TOOLCALL>[{...}]</TOOLCALL> (Nemotron Nano v2)"),
    (
        "xml-function",
        r"<function=get_weather>\s*<parameter=city>",
        "<function=NAME><parameter=ARG> without <tool_call>",
    ),
    ("json-in-tool-call-tag", r"<tool_call>[^<]*get_weather", "<tool_call>...NAME...</tool_call>"),
)
DIALECT_DESCRIPTIONS = {d: text for d, _, text in DIALECTS}


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
    for name, pattern, _ in DIALECTS:
        if re.search(pattern, calls):
            return name
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
        DIALECT_DESCRIPTIONS.get(dialect),
        supports_tools,
        renders_calls,
        reasoning,
        system_role,
        errors,
    )
