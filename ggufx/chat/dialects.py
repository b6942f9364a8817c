"""The tool-call dialects ggufx knows: one table, one name per family.

Each :class:`Dialect` has its canonical name (what ``template info --json`` prints as ``dialect``),
the pattern that finds it in a rendered tool conversation (:func:`ggufx.chat.dialect.dialect_of`
tries them in this order, first match wins), a description, and ``aliases``: the other names the
family goes by. These are llama.cpp's names for its model-specific chat handlers
(``common/chat.cpp``'s ``common_chat_try_specialized_template``), which
:func:`ggufx.chat.llamacpp.caps.handler_of` detects; two handlers can parse one dialect (``gpt-oss``
and ``llm-jp-harmony`` both read harmony, ``lfm2`` and ``lfm2.5`` both LFM2's calls). Every
template of ``tests/fixtures/templates`` and llama.cpp's ``models/templates`` that one of those
handlers takes renders, where ggufx detects a dialect at all, the dialect its alias names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    """A tool-call dialect: canonical ``name``, ``pattern`` (a regex on the rendered tool call),
    ``description``, and the other names of the same family (``aliases``)."""

    name: str
    pattern: str
    description: str
    aliases: tuple[str, ...] = ()


DIALECTS: tuple[Dialect, ...] = (
    Dialect(
        "qwen3-coder-xml",
        r"<tool_call>\s*<function=get_weather>\s*<parameter=city>",
        "<tool_call><function=NAME><parameter=ARG>...</parameter></function></tool_call> (Qwen3-Coder, Qwen 3.5/3.6)",
        ("qwen3-coder",),
    ),
    Dialect(
        "seed-oss-xml",
        r"<seed:tool_call>\s*<function=get_weather>",
        "<seed:tool_call><function=NAME><parameter=ARG> (Seed-OSS)",
    ),
    Dialect(
        "glm-xml",
        r"<tool_call>\s*get_weather\s*<arg_key>city</arg_key>",
        "<tool_call>NAME<arg_key>ARG</arg_key><arg_value>... (GLM 4.5+)",
        ("ling3",),
    ),
    Dialect(
        "hermes-json",
        r"<tool_call>\s*\{\s*\"name\"\s*:\s*\"get_weather\"",
        '<tool_call>{"name": ..., "arguments": ...}</tool_call> (Qwen 2.5/3, Hermes)',
    ),
    Dialect("minimax-xml", r"<minimax:tool_call>", "<minimax:tool_call><invoke name=NAME> (MiniMax M2)"),
    Dialect("minimax-m3", r"\]<\]minimax\[>\[<tool_call>", "]<]minimax[>[<tool_call> (MiniMax M3)"),
    Dialect(
        "deepseek-dsml",
        r"<｜DSML｜function_calls>",
        "<｜DSML｜function_calls><｜DSML｜invoke name=NAME> (DeepSeek V3.2/V4)",
        ("deepseek-v3.2",),
    ),
    Dialect("kimi-k3", r"<\|open\|>call tool=\"get_weather\"", "<|open|>call tool=NAME (Kimi K3)"),
    Dialect("hunyuan", r"<tool_call:opensource>", "<tool_call:opensource>NAME<arg_key:opensource> (Hunyuan)"),
    Dialect("apertus", r"<\|tools_prefix\|>", "<|tools_prefix|>[{NAME: {...}}] (Apertus)"),
    Dialect("apriel", r"<tool_calls>\s*\[\s*\{\s*\"name\"", '<tool_calls>[{"name": ...}]</tool_calls> (Apriel)'),
    Dialect("gigachat", r"function call<\|role_sep\|>", "function call<|role_sep|>{...} (GigaChat)", ("gigachat-v3",)),
    Dialect(
        "minicpm-xml",
        r"<function name=\"get_weather\">\s*<param name=",
        "<function name=NAME><param name=ARG> (MiniCPM)",
        ("minicpm5",),
    ),
    Dialect("atem-xml", r"<atem:function_calls>", "<atem:function_calls> (Muse)", ("muse-glimmer",)),
    Dialect("kimi", r"<\|tool_calls_section_begin\|>", "<|tool_calls_section_begin|> (Kimi K2)", ("kimi-k2",)),
    Dialect("deepseek", r"<｜tool▁call▁begin｜>|<｜tool▁calls▁begin｜>", "<｜tool▁calls▁begin｜> (DeepSeek)"),
    Dialect(
        "harmony",
        r"to=functions\.get_weather",
        "<|start|>assistant<|channel|>commentary to=functions.NAME (gpt-oss harmony)",
        ("gpt-oss", "llm-jp-harmony"),
    ),
    Dialect(
        "llama3-json",
        r"<\|python_tag\|>|\{\s*\"name\"\s*:\s*\"get_weather\"\s*,\s*\"parameters\"",
        '{"name": ..., "parameters": ...} / <|python_tag|> (Llama 3.x)',
    ),
    Dialect("mistral", r"\[TOOL_CALLS\]", "[TOOL_CALLS][{...}] (Mistral)", ("ministral-3",)),
    Dialect(
        "command-r",
        r"<\|START_ACTION\|>|Action:\s*```json",
        "<|START_ACTION|> / Action: ```json (Command-R)",
        ("cohere2moe",),
    ),
    Dialect("granite", r"<\|tool_call\|>", "<|tool_call|>[{...}] (Granite 3.x)"),
    Dialect("functionary-v3.2", r">>>\s*get_weather", ">>>NAME\\n{...} (Functionary v3.2)"),
    Dialect("functionary-v3.1", r"<function=get_weather>\s*\{", "<function=NAME>{...}</function> (Functionary v3.1)"),
    Dialect("gemma4", r"<\|tool_call>", "<|tool_call>call:NAME{...} (Gemma 4)"),
    Dialect("lfm2", r"<\|tool_call_start\|>", "<|tool_call_start|>[NAME(...)] (LFM2)", ("lfm2.5",)),
    Dialect("solar", r"<\|tool_call:begin\|>", "<|tool_call:begin|> (Solar Open)"),
    Dialect("nemotron-json", r"<TOOLCALL>", "<TOOLCALL>[{...}]</TOOLCALL> (Nemotron Nano v2)"),
    Dialect(
        "xml-function",
        r"<function=get_weather>\s*<parameter=city>",
        "<function=NAME><parameter=ARG> without <tool_call>",
    ),
    Dialect("json-in-tool-call-tag", r"<tool_call>[^<]*get_weather", "<tool_call>...NAME...</tool_call>"),
)

# every name, canonical or alias -> its dialect (a test checks that no name is used twice)
_BY_NAME: dict[str, Dialect] = {n: d for d in DIALECTS for n in (d.name, *d.aliases)}


def lookup(name: str) -> Dialect | None:
    """The dialect called ``name`` (its canonical name or an alias), or None."""
    return _BY_NAME.get(name)


def canonical(name: str) -> str:
    """The canonical name of the family ``name`` (canonical or alias) belongs to; KeyError for a
    name in no family."""
    return _BY_NAME[name].name
