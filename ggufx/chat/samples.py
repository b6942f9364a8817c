"""Built-in sample conversations, so that ``ggufx template render FILE`` shows something useful and
lint and dialect detection have something to render. Messages follow the Hugging Face / OpenAI
chat format that ``apply_chat_template`` takes (tool call arguments as an object)."""

from __future__ import annotations

import copy
from typing import Any

SYSTEM_MARKER = "SYSTEM-MARKER-7"
REASONING_MARKER = "REASONING-MARKER-3"
TOOL_DESCRIPTION = "Get the current weather in a city."
SYSTEM_TEXT = f"You are a concise assistant. {SYSTEM_MARKER}"
REASONING_TEXT = f"The user greets me; {REASONING_MARKER} a short answer fits."
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

TOOL_RESULT = '{"temperature": 22, "condition": "sunny"}'

_SAMPLES: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "Hello! How are you?"}]},
    "system": {
        "messages": [
            {"role": "system", "content": SYSTEM_TEXT},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    },
    "multi-turn": {
        "messages": [
            {"role": "user", "content": "Hi, my name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada!"},
            {"role": "user", "content": "What is my name?"},
        ]
    },
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},  # USER_QUESTION
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call00001",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": TOOL_RESULT},
            {"role": "assistant", "content": "It is 22 °C and sunny in Paris."},
            {"role": "user", "content": "Thanks!"},
        ],
    },
    "reasoning": {
        "messages": [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!", "reasoning_content": REASONING_TEXT},
            {"role": "user", "content": "Again."},
        ]
    },
}

NAMES = tuple(_SAMPLES)
USER_QUESTION = "What is the weather in Paris?"  # tool calls are looked for after it


def with_string_arguments(conv: dict[str, Any]) -> dict[str, Any]:
    """The same conversation with tool call arguments as JSON text (OpenAI's wire format), which
    some templates (Functionary v3.2) expect instead of an object."""
    import json

    conv = copy.deepcopy(conv)
    for m in conv["messages"]:
        for call in m.get("tool_calls", []):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    return conv


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of a built-in conversation: ``{"messages": [...], "tools": [...]?}``."""
    try:
        return copy.deepcopy(_SAMPLES[name])
    except KeyError:
        raise ValueError(f"unknown sample {name!r} (one of {', '.join(NAMES)})") from None
