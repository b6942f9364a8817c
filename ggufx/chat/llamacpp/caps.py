"""llama.cpp's verdict on a chat template: the capability flags ``common/jinja/caps.cpp`` computes
(what llama-server reports as ``/props`` ``chat_template_caps``), and the inputs llama-server builds
before it renders (``common/chat.cpp``).

``caps.cpp`` renders probe conversations with usage statistics on and reads which input values the
template touched: the system message's content (``supports_system_role``), ``tools[0].function.name``
(``supports_tools``), ``messages[1].tool_calls`` (``supports_tool_calls``), an argument of an object
``arguments`` (``supports_object_arguments``), the second of two calls (``supports_parallel_tool_calls``),
whether content is tested as a string or read as an array (``supports_string_content``,
``supports_typed_content``), a reasoning placeholder deep in the history
(``supports_preserve_reasoning``) and ``reasoning_effort`` (``supports_reasoning_effort``). A probe
that fails counts as caps.cpp counts it (some checks need success, some read the statistics of the
part that ran). The probes run in :mod:`ggufx.chat.llamacpp`, with llama.cpp's rules (this is ``caps.cpp``).

llama-server then adapts the messages to the flags before every render: a system message is merged
into the next one when the system role is unsupported, tool call arguments become objects when
object arguments are supported, content becomes typed parts (or parts are joined) when only one
form is supported, ``developer`` becomes ``system``. :func:`server_context` does the same.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from typing import Any

from ggufx.chat.dialects import canonical
from ggufx.chat.llamacpp.driver import LIMITS, compile_program, execute, run_json
from ggufx.chat.llamacpp.parser import Program
from ggufx.chat.llamacpp.value import Arr, JStr, Obj, from_json
from ggufx.chat.render import Limits
from ggufx.errors import RenderError

CONTENT_MARKER = "STRING_MARKER"
REASONING_PLACEHOLDER = "<REASONING_CONTENT_PLACEHOLDER>"


@dataclass(slots=True)
class Caps:
    """jinja::caps, with caps.cpp's defaults."""

    supports_tools: bool = True
    supports_tool_calls: bool = True
    supports_system_role: bool = True
    supports_parallel_tool_calls: bool = True
    supports_object_arguments: bool = False
    supports_string_content: bool = True
    supports_typed_content: bool = False
    supports_preserve_reasoning: bool = False
    supports_reasoning_effort: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


FLAGS = tuple(f.name for f in fields(Caps))


def _tool_conversation(arguments: Any, calls: int = 1) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "User message"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": f"call0000{i + 1}",
                    "type": "function",
                    "function": {"name": "tool1", "arguments": arguments},
                }
                for i in range(calls)
            ],
        },
        {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ]


PROBE_TOOLS = [
    {
        "name": "tool",
        "type": "function",
        "function": {
            "name": "tool1",
            "description": "Tool description",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "Arg description"}},
                "required": ["arg"],
            },
        },
    }
]


@dataclass(slots=True)
class _Probe:
    ok: bool
    output: str
    values: dict[str, Any]
    error: RenderError | None


def _probe(
    prog: Program, messages: list[dict[str, Any]], tools: list[Any] | None, extra: dict[str, Any], limits: Limits
) -> _Probe:
    """caps_try_execute: the context as caps.cpp builds it, statistics on, failures kept."""
    values = {
        k: from_json(v, True)
        for k, v in {
            "messages": messages,
            "tools": tools if tools is not None else [],
            "bos_token": "",
            "eos_token": "",
            "add_generation_prompt": True,
        }.items()
    }
    values.update(extra)
    try:
        out = execute(prog, values, limits=limits, stats=True)
        return _Probe(True, "".join(t for t, _ in out.parts), values, None)
    except RenderError as e:
        if e.kind in ("timeout", "too-large"):
            raise  # a runaway: no verdict
        return _Probe(False, "", values, e)


def _content(p: _Probe, i: int = 0) -> Any:
    return p.values["messages"][i]["content"]


def _ops(v: Any) -> set[str]:
    return (v.ops or set()) if isinstance(v, (Arr, Obj, JStr)) else set()


def _used(v: Any) -> bool:
    return bool(getattr(v, "used", False))


def _preserve(enabled: bool) -> dict[str, Any]:
    return {
        "preserve_thinking": enabled,
        "clear_thinking": not enabled,
        "truncate_history_thinking": not enabled,
        "drop_thinking": not enabled,
    }


_CAPS: dict[tuple[str, Limits], Caps] = {}


def caps_of(source: str, limits: Limits = LIMITS) -> Caps:
    """The capability flags of ``source`` as llama.cpp computes them (caps_get). A template
    llama.cpp cannot parse raises RenderError ``syntax`` (llama-server refuses to start with it)."""
    key = (source, limits)
    if key not in _CAPS:
        if len(_CAPS) >= 16:
            _CAPS.pop(next(iter(_CAPS)))
        _CAPS[key] = _caps_get(source, limits)
    return Caps(**_CAPS[key].to_dict())


def _caps_get(source: str, limits: Limits) -> Caps:
    prog = compile_program(source)
    caps = Caps()

    # typed content
    p = _probe(prog, [{"role": "user", "content": CONTENT_MARKER}], None, {}, limits)
    content = _content(p)
    checks_for_string = "test_is_string" in _ops(content)
    as_array = bool(_ops(content) & {"selectattr", "array_access"})
    if as_array:
        caps.supports_typed_content = True
    if not p.ok or (as_array and CONTENT_MARKER not in p.output):
        caps.supports_string_content = False
    if checks_for_string:
        p = _probe(prog, [{"role": "user", "content": []}], None, {}, limits)
        if p.ok and _ops(_content(p)) & {"selectattr", "array_access"}:
            caps.supports_typed_content = True

    # system role: the system message's content was read at all (success not needed)
    p = _probe(
        prog,
        [{"role": "system", "content": "System message"}, {"role": "user", "content": "User message"}],
        None,
        {},
        limits,
    )
    if not _used(_content(p)):
        caps.supports_system_role = False

    # one tool call with object arguments
    p = _probe(prog, _tool_conversation({"arg": "value"}), PROBE_TOOLS, {}, limits)
    if p.ok:
        if not _used(p.values["tools"][0]["function"]["name"]):
            caps.supports_tools = False
        calls = p.values["messages"][1]["tool_calls"]
        if not _used(calls):
            caps.supports_tool_calls = False
        elif _used(calls[0]["function"]["arguments"]["arg"]):
            caps.supports_object_arguments = True

    if not caps.supports_object_arguments:
        # one tool call with arguments as JSON text
        p = _probe(prog, _tool_conversation('{"arg": "value"}'), PROBE_TOOLS, {}, limits)
        if not p.ok:
            caps.supports_tool_calls = False
            caps.supports_tools = False
        else:
            if not _used(p.values["tools"][0]["function"]["name"]):
                caps.supports_tools = False
            if not _used(p.values["messages"][1]["tool_calls"]):
                caps.supports_tool_calls = False

    # parallel calls
    args: Any = {"arg": "value"} if caps.supports_object_arguments else '{"arg": "value"}'
    p = _probe(prog, _tool_conversation(args, calls=2), PROBE_TOOLS, {}, limits)
    if not p.ok or not _used(p.values["messages"][1]["tool_calls"][1]["function"]):
        caps.supports_parallel_tool_calls = False

    # reasoning kept deep in the history (read from the output: a test of it is not keeping it)
    history = [
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": REASONING_PLACEHOLDER},
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": "Reasoning content"},
        {"role": "user", "content": "User message"},
    ]
    p = _probe(prog, history, None, {"enable_thinking": True, **_preserve(True)}, limits)
    if REASONING_PLACEHOLDER in p.output:
        caps.supports_preserve_reasoning = True

    # reasoning effort: the variable was read
    effort = JStr("low")
    p = _probe(
        prog,
        [{"role": "user", "content": "User message"}],
        None,
        {"enable_thinking": True, "reasoning_effort": effort, "reasoning_strength": effort},
        limits,
    )
    caps.supports_reasoning_effort = _used(effort)
    return caps


def caps_report(source: str) -> dict[str, Any]:
    """``llama_cpp_caps`` (the nine flags, or None when llama.cpp cannot parse or probe the
    template) and ``llama_cpp_error`` (why, or None): the keys ``template info --json`` adds."""
    try:
        return {"llama_cpp_caps": caps_of(source).to_dict(), "llama_cpp_error": None}
    except RenderError as e:
        return {"llama_cpp_caps": None, "llama_cpp_error": str(e)}


# -- does llama-server turn thinking on? ----------------------------------------------------------
#
# llama-server passes enable_thinking=true only to a template it believes can think: one of its
# model-specific handlers says so (common_chat_try_specialized_template), or its differential
# "autoparser" finds reasoning markers by rendering variants (common/chat-diff-analyzer.cpp:
# compare_reasoning_presence and compare_thinking_enabled, with common/chat-auto-parser-helpers.cpp's
# marker segmentation and calculate_diff_split). This is that decision.

_USER_MSG = "U_USER_MSG Hello END_U"
_ASSISTANT_MSG = "A_ASST_MSG I can help END_A"
_THINKING = "REASON_PART I am thinking END_R"
_WS = " \t\n\v\f\r"


def handler_of(src: str) -> str | None:
    """The model-specific handler llama-server picks for ``src`` (common_chat_try_specialized_template,
    first match wins), named by the tool-call dialect it parses (:mod:`ggufx.chat.dialects`' canonical
    name; the checks below use llama.cpp's own handler names, the table's aliases), or None: its
    generic differential autoparser."""
    has = src.__contains__
    checks: tuple[tuple[str, bool], ...] = (
        ("ministral-3", has("[SYSTEM_PROMPT]") and has("[TOOL_CALLS]") and has("[ARGS]") and not has("[CALL_ID]")),
        ("llm-jp-harmony", has("chat_format=llm-jp-harmony-v1")),
        ("gpt-oss", has("<|channel|>")),
        ("muse-glimmer", has("<atem:function_calls>") and has("<|eom|>")),
        ("functionary-v3.2", has(">>>all") and has(">>>${recipient}")),
        ("kimi-k2", has("<|tool_calls_section_begin|>") and has("<|tool_call_begin|>")),
        ("kimi-k3", has("<|open|>") and has("<|close|>") and has("<|end_of_msg|>")),
        ("ling3", has("<role>ASSISTANT</role>") and has("<arg_key>")),
        ("cohere2moe", has("<|START_TEXT|>") and has("<|START_ACTION|>")),
        ("lfm2", has("<|tool_list_start|>") and has("<|tool_list_end|>")),
        ("lfm2.5", has("List of tools: [") and not has("<|tool_list_start|>")),
        ("gigachat-v3", has("<|role_sep|>") and has("<|message_sep|>") and not has("<|function_call|>")),
        ("minimax-m3", has("]<]minimax[>[") and has("<tool_call>") and has("<invoke name=")),
        ("deepseek-v3.2", has("dsml_token") and has("DSML") and (has("function_calls") or has("tool_calls"))),
        ("gemma4", has("'<|tool_call>call:'")),
        ("minicpm5", has("Tool usage guidelines:") and has('<function name="') and has('<param name="')),
        (
            "qwen3-coder",
            has("<tool_call>")
            and has("<function=")
            and has("<parameter=")
            and not has("'<tool_call><function=' ~ tool_call.name ~ '>'"),
        ),
    )
    return next((canonical(name) for name, hit in checks if hit), None)


def _specialized_thinking(src: str) -> bool | None:
    """supports_thinking of llama-server's model-specific handler for ``src`` (None: no handler)."""
    handler = handler_of(src)
    if handler is None:
        return None
    if handler == "qwen3-coder-xml":
        return "<think>" in src
    return handler not in ("functionary-v3.2", "gigachat")


def _handler_messages(src: str, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages a model-specific handler renders instead (Ministral 3: reasoning and text as
    content blocks; LFM2: reasoning copied to ``thinking``; an outdated Gemma 4 template: tool
    results folded into the assistant turn as ``tool_responses``)."""
    handler = handler_of(src)
    if handler == "mistral":  # only Ministral 3's templates have a handler (ministral-3)
        out = []
        for m in msgs:
            if m.get("role") not in ("system", "assistant"):
                out.append(m)
                continue
            blocks: list[Any] = []
            if isinstance(m.get("reasoning_content"), str):
                blocks.append({"type": "thinking", "thinking": m["reasoning_content"]})
            if isinstance(m.get("content"), str):
                blocks.append({"type": "text", "text": m["content"]})
            elif isinstance(m.get("content"), list):
                blocks.extend(m["content"])
            m = {k: v for k, v in m.items() if k != "reasoning_content"}
            m["content"] = blocks
            out.append(m)
        return out
    if handler == "lfm2":  # lfm2 and lfm2.5
        for m in msgs:
            if isinstance(m.get("reasoning_content"), str):
                m["thinking"] = m["reasoning_content"]
        return msgs
    if handler == "gemma4" and "{#- OpenAI Chat Completions:" not in src:
        return _gemma4_tool_responses(msgs)
    return msgs


def _gemma4_tool_responses(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """workaround::convert_tool_responses_gemma4: assistant(tool_calls) + tool results (+ the
    following assistant text) become one assistant message with ``tool_responses``."""

    def has_content(m: dict[str, Any]) -> bool:
        c = m.get("content")
        return bool(c) and isinstance(c, (str, list))

    out: list[dict[str, Any]] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        if m.get("role") != "assistant" or not isinstance(m.get("tool_calls"), list) or not m["tool_calls"]:
            out.append(m)
            i += 1
            continue
        calls = list(m["tool_calls"])
        reasoning = m.get("reasoning_content") if isinstance(m.get("reasoning_content"), str) else None
        responses: list[dict[str, Any]] = []
        i += 1
        while i < len(msgs) and msgs[i].get("role") == "tool":
            t = msgs[i]
            response: Any = None
            if "content" in t:
                response = t["content"]
                if isinstance(response, str):
                    try:
                        response = json.loads(response)
                    except ValueError:
                        pass
            name = ""
            if len(responses) < len(calls) and isinstance(calls[len(responses)].get("function"), dict):
                name = calls[len(responses)]["function"].get("name", "") or ""
            if not name:
                name = t.get("tool_call_id", "")
            responses.append({"name": name, "response": response})
            i += 1
        content = None
        if i < len(msgs) and msgs[i].get("role") == "assistant":
            nxt = msgs[i]
            if not (isinstance(nxt.get("tool_calls"), list) and nxt["tool_calls"]) and has_content(nxt):
                content = nxt["content"]
                i += 1
        merged: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
        if responses:
            merged["tool_responses"] = responses
        if content is not None:
            merged["content"] = content
        if reasoning is not None:
            merged["reasoning_content"] = reasoning
        out.append(merged)
    return out


def _segments(text: str) -> list[tuple[bool, str]]:
    """segmentize_markers: (is_marker, text) pieces; a marker is <...> or [...]."""
    out: list[tuple[bool, str]] = []
    border = 0
    opener = ""
    for i, c in enumerate(text):
        if not opener and c in "<[":
            if border < i:
                out.append((False, text[border:i]))
            border, opener = i, c
        elif opener and c == (">" if opener == "<" else "]"):
            out.append((True, text[border : i + 1]))
            border, opener = i + 1, ""
    if border < len(text):
        out.append((False, text[border:]))
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _diff(left: str, right: str) -> tuple[str, str]:
    """calculate_diff_split: the differing middles (left, right) of two renders."""
    ls, rs = _segments(left), _segments(right)
    if not ls:
        return "", right
    if not rs:
        return left, ""
    l0, l1, r0, r1 = 0, len(ls) - 1, 0, len(rs) - 1
    l_done = r_done = False
    while l0 != l1 and r0 != r1:
        moved = False
        if ls[l0] == rs[r0]:
            l0, r0, moved = l0 + 1, r0 + 1, True
        if ls[l1] == rs[r1]:
            if l0 != l1:
                l1 -= 1
            else:
                l_done = True
            if r0 != r1:
                r1 -= 1
            else:
                r_done = True
            moved = True
        if not moved:
            break
    if l0 == l1 and r0 != r1:
        if ls[l0] == rs[r1]:
            r1 -= 1
            l_done = True
        elif ls[l0] == rs[r0]:
            r0 += 1
            l_done = True
    elif r0 == r1 and l0 != l1:
        if ls[l1] == rs[r0]:
            l1 -= 1
            r_done = True
        elif ls[l0] == rs[r0]:
            l0 += 1
            r_done = True
    elif l0 == l1 and r0 == r1 and ls[l0] == rs[r0] and ls[l0][0]:
        l_done = r_done = True
    text_suffix = not ls[l1][0] and not rs[r1][0]
    text_prefix = not rs[r0][0] and not ls[l0][0]
    rem_l = "".join(t for _, t in ls[l0 : l1 if l_done else l1 + 1])
    rem_r = "".join(t for _, t in rs[r0 : r1 if r_done else r1 + 1])
    suffix = _common_suffix(rem_l, rem_r) if text_suffix else 0
    prefix = _common_prefix(rem_l[: len(rem_l) - suffix], rem_r[: len(rem_r) - suffix]) if text_prefix else 0
    d_left = rem_l[prefix : len(rem_l) - suffix]
    d_right = rem_r[prefix : len(rem_r) - suffix]
    if not d_left and d_right and len(left) <= len(right) and right.startswith(left):
        d_right = right[len(left) :]
    return d_left, d_right


def _marker_after(text: str, at: int) -> bool:
    """A marker (<...> or [...]) right after position ``at``, past whitespace."""
    rest = text[at:].lstrip(_WS)
    if rest[:1] == "<":
        return ">" in rest[1:]
    if rest[:1] == "[":
        return "]" in rest[1:]
    return False


def _autoparser_thinking(source: str, caps: Caps, bos: str, eos: str, limits: Limits) -> bool:
    def apply(messages: list[dict[str, Any]], agp: bool, thinking: bool) -> str | None:
        ctx: dict[str, Any] = {
            "messages": _normalize_content(json.loads(json.dumps(messages)), caps),
            "bos_token": bos,
            "eos_token": eos,
            "enable_thinking": thinking,
        }
        if agp:
            ctx["add_generation_prompt"] = True
        try:
            return "".join(t for t, _ in run_json(source, ctx, limits=limits).parts)
        except RenderError as e:
            if e.kind in ("timeout", "too-large"):
                raise
            return None

    user = {"role": "user", "content": _USER_MSG}
    thinking = False
    a = apply([user, {"role": "assistant", "content": _ASSISTANT_MSG}], False, True)
    b = apply([user, {"role": "assistant", "content": _ASSISTANT_MSG, "reasoning_content": _THINKING}], False, True)
    if a is not None and b is not None and _THINKING in _diff(a, b)[1]:
        at = b.find(_THINKING)
        thinking = _marker_after(b, at + len(_THINKING))
    a = apply([user], True, False)
    b = apply([user], True, True)
    if a is not None and b is not None and not thinking:
        left, right = _diff(a, b)
        lt, rt = left.strip(_WS), right.strip(_WS)
        if not lt and right:
            thinking = bool(rt) and b.endswith(rt)
        elif not rt and left:
            thinking = bool(lt) and a.endswith(lt)
        elif lt and rt:
            for base, extended in ((b, a), (a, b)):
                anchor = base[-64:]
                pos = extended.rfind(anchor)
                if pos < 0 or pos + len(anchor) >= len(extended):
                    continue
                extra = extended[pos + len(anchor) :].strip(_WS)
                seg = [x for x in _segments(extra) if x[1].strip(_WS)]
                if extra and len(seg) == 2 and seg[0][0] and seg[1][0]:
                    thinking = True
                    break
    if not thinking:
        # the autoparser's patches: old Qwen/DeepSeek thinking templates, Granite 3.3, Nemotron Nano v2
        thinking = (
            (
                "content.split('</think>')" in source
                and "reasoning_content" not in source
                and "<SPECIAL_12>" not in source
            )
            or "Write your thoughts between <think></think> and write your response between <response></response>"
            in source
            or all(t in source for t in ("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>", "<TOOL_RESPONSE>"))
        )
    return thinking


def supports_thinking(source: str, caps: Caps, bos: str = "", eos: str = "", limits: Limits = LIMITS) -> bool:
    """Whether llama-server turns thinking on for ``source`` (its default ``enable_thinking``)."""
    special = _specialized_thinking(source)
    if special is not None:
        return special
    return _autoparser_thinking(source, caps, bos, eos, limits)


# -- what llama-server passes to a template -------------------------------------------------------


def _dump(v: Any) -> str:
    """nlohmann::json::dump(): compact, UTF-8 kept."""
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def _parse_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """common_chat_msgs_parse_oaicompat then to_json_oaicompat: what survives the trip through
    llama-server's own message type (RenderError ``input`` for what it refuses)."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise RenderError("input", f"llama-server refuses the messages: expected an object, got {_dump(m)}")
        if "role" not in m:
            raise RenderError("input", "llama-server refuses the messages: missing 'role' in a message")
        role = m["role"]
        if role != "assistant" and "content" not in m:
            raise RenderError(
                "input", "llama-server refuses the messages: all non-assistant messages must contain 'content'"
            )
        if "content" not in m and "tool_calls" not in m:
            raise RenderError("input", "llama-server refuses the messages: expected 'content' or 'tool_calls'")
        j: dict[str, Any] = {"role": role}
        content = m.get("content")
        if isinstance(content, str) and content:
            j["content"] = content
        elif isinstance(content, list) and content:
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "media_marker"):
                    raise RenderError("input", f"llama-server refuses content part type {kind!r}")
                parts.append({"type": kind, "text": part.get("text", "")})
            if any(p["type"] == "media_marker" for p in parts):
                j["content"] = _join_parts(parts)
            else:
                j["content"] = parts
        elif content is None or isinstance(content, (str, list)):
            j["content"] = ""
        else:
            raise RenderError("input", "llama-server refuses the messages: 'content' must be a string or an array")
        if m.get("reasoning_content"):
            j["reasoning_content"] = m["reasoning_content"]
        if m.get("name"):
            j["name"] = m["name"]
        if m.get("tool_call_id"):
            j["tool_call_id"] = m["tool_call_id"]
        calls = []
        for c in m.get("tool_calls") or []:
            if not isinstance(c, dict) or c.get("type") != "function" or not isinstance(c.get("function"), dict):
                raise RenderError("input", "llama-server refuses a tool call that is not of type 'function'")
            fn = c["function"]
            args = fn.get("arguments")
            tc: dict[str, Any] = {
                "type": "function",
                "function": {"name": fn.get("name"), "arguments": args if isinstance(args, str) else _dump(args)},
            }
            if c.get("id"):
                tc["id"] = c["id"]
            calls.append(tc)
        if calls:
            j["tool_calls"] = calls
        out.append(j)
    return out


def _normalize_content(msgs: list[dict[str, Any]], caps: Caps) -> list[dict[str, Any]]:
    """messages_inp_normalizer: typed parts joined or strings wrapped, when only one form is supported."""
    only_string = caps.supports_string_content and not caps.supports_typed_content
    only_typed = caps.supports_typed_content and not caps.supports_string_content
    for m in msgs:
        c = m.get("content") if isinstance(m, dict) else None
        if only_typed and isinstance(c, str):
            m["content"] = [{"type": "text", "text": c}]
        elif only_string and isinstance(c, list):
            m["content"] = _join_parts(c)
    return msgs


def _join_parts(parts: list[dict[str, Any]]) -> str:
    text = ""
    last_media = False
    for p in parts:
        if p["type"] == "text":
            if not last_media and text:
                text += "\n"
            last_media = False
        else:
            last_media = True
        text += p.get("text", "")
    return text


def server_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """common_chat_tools_parse_oaicompat then to_json: type, function {name, description, parameters}."""
    if not tools:
        return None
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) or "name" not in fn:
            raise RenderError("input", "llama-server refuses a tool that is not of type 'function' with a name")
        params = fn.get("parameters", {})
        out.append(
            {
                "type": "function",
                "function": {"name": fn["name"], "description": fn.get("description", ""), "parameters": params},
            }
        )
    return out


def server_context(
    source: str,
    caps: Caps,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The context llama-server renders ``source`` with (common_chat_templates_apply_jinja and
    common_chat_template_direct_apply): its message shape, the workarounds its flags call for,
    ``enable_thinking``, ``datetime``/``date_string``, and ``variables`` as chat_template_kwargs."""
    msgs = _normalize_content(_parse_messages(messages), caps)
    if "You have access to the following functions in JSONSchema format" in source:
        for m in msgs:  # StepFun: contents trimmed
            if isinstance(m.get("content"), str):
                m["content"] = m["content"].strip(" \t\n\r\v\f")
            elif isinstance(m.get("content"), list):
                for p in m["content"]:
                    if p["type"] == "text":
                        p["text"] = p["text"].strip(" \t\n\r\v\f")
            if m.get("reasoning_content"):
                m["reasoning_content"] = m["reasoning_content"].strip(" \t\n\r\v\f")
                if not m["reasoning_content"]:
                    del m["reasoning_content"]
    if "<|channel|>" not in source:
        for m in msgs:
            if m["role"] == "developer":
                m["role"] = "system"
    if not caps.supports_system_role and msgs and msgs[0]["role"] == "system":
        first = msgs.pop(0)
        if msgs:
            first_text = first["content"] if isinstance(first["content"], str) else ""
            second = msgs[0]["content"] if isinstance(msgs[0]["content"], str) else ""
            msgs[0]["content"] = first_text + "\n" + second
    if caps.supports_object_arguments:
        for m in msgs:
            for c in m.get("tool_calls", []):
                args = c["function"].get("arguments")
                if isinstance(args, str):
                    try:
                        c["function"]["arguments"] = json.loads(args)
                    except ValueError as e:
                        raise RenderError("input", f"Failed to parse tool call arguments as JSON: {e}") from None
    msgs = _handler_messages(source, msgs)
    t = time.localtime(time.time() if now is None else now)
    variables = variables or {}
    bos, eos = variables.get("bos_token") or "", variables.get("eos_token") or ""
    thinking = "enable_thinking" in variables or supports_thinking(source, caps, bos, eos)
    ctx: dict[str, Any] = {
        "messages": msgs,
        "bos_token": bos,
        "eos_token": eos,
        "enable_thinking": thinking,
        "preserve_reasoning": True,  # llama-server's default chat_template_kwargs
    }
    st = server_tools(tools)
    if st:
        ctx["tools"] = st
    ctx["datetime"] = time.strftime("%b %d %Y", t)
    ctx["date_string"] = time.strftime("%d %b %Y", t)
    ctx["preserve_reasoning"] = ctx.pop("preserve_reasoning")
    for k, v in variables.items():
        ctx[k] = v
    if add_generation_prompt:
        ctx["add_generation_prompt"] = True
    return ctx


def render_server(
    source: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
    limits: Limits = LIMITS,
    caps: Caps | None = None,
    now: float | None = None,
) -> tuple[str, list[tuple[str, bool]]]:
    """Render as llama-server does (its inputs, llama.cpp's engine). Returns the prompt and its
    (text, is_input) parts. ``add_bos``/``add_eos``: the vocabulary's flags (the tokenizer adds
    those tokens, so a template's own leading BOS / trailing EOS is cut as llama-server cuts it)."""
    caps = caps if caps is not None else caps_of(source, limits)
    ctx = server_context(
        source, caps, messages, tools=tools, add_generation_prompt=add_generation_prompt, variables=variables, now=now
    )
    preserve = ctx.get("preserve_reasoning")
    effort = ctx.get("reasoning_effort")
    bos, eos = ctx.get("bos_token") or "", ctx.get("eos_token") or ""
    prog = compile_program(source)
    # llama-server marks every string of the context as input; only the messages' and tools' marks
    # matter to what a template assembles (bos_token is the model's, not the user's)
    values = {k: from_json(v, k in ("messages", "tools")) for k, v in ctx.items()}
    if isinstance(preserve, bool):
        values.update(_preserve(preserve))
    if isinstance(effort, str) and effort:
        values["reasoning_effort"] = values["reasoning_strength"] = JStr(effort)
    out = execute(prog, values, limits=limits, now=now)
    parts = list(out.parts)
    text = "".join(t for t, _ in parts)
    if add_generation_prompt and handler_of(source) == "gemma4" and text.endswith("<turn|>\n"):
        # llama-server opens the model's turn when the template did not (after a tool call)
        parts.append(("<|turn>model\n", False))
        text += "<|turn>model\n"
    if add_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
        parts = _cut(parts, len(bos), 0)
    if add_eos and eos and text.endswith(eos):
        text = text[: -len(eos)]
        parts = _cut(parts, 0, len(eos))
    return text, parts


def _cut(parts: list[tuple[str, bool]], head: int, tail: int) -> list[tuple[str, bool]]:
    out: list[list[Any]] = []
    for t, inp in parts:
        if head:
            n = min(head, len(t))
            t, head = t[n:], head - n
        if t:
            out.append([t, inp])
    while tail and out:
        t = out[-1][0]
        n = min(tail, len(t))
        out[-1][0] = t[: len(t) - n]
        tail -= n
        if not out[-1][0]:
            out.pop()
    return [(t, inp) for t, inp in out]


__all__ = ["Caps", "FLAGS", "caps_of", "caps_report", "render_server", "server_context", "run_json"]
