"""llama.cpp's verdict on chat templates: its Jinja engine (``ggufx.chat.llamacpp``), its capability
flags and llama-server's inputs (``ggufx.chat.llamacpp.caps``), lint's engine comparison and the
per-command time budget.

The reference is llama-server itself. ``tests/fixtures/templates/llamacpp/llama-server.json`` holds
what it answered, for every template shipped with the pinned llama.cpp (``models/templates/``,
copied beside the file where not already in ``tests/fixtures/templates/``): its ``/props``
``chat_template_caps`` and the sha256 of the prompt its ``/apply-template`` renders for each built-in
conversation. ``tools/record_llamacpp_templates.py`` records it; the tests under the ``llamacpp``
marker record it again from a live llama-server and compare, so the file cannot go stale unnoticed,
and check the engine's rules (``SEMANTICS``) against the live server too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ggufx.chat.dialect import analyze
from ggufx.chat.lint import lint, marking_hazards
from ggufx.chat.llamacpp import compile_program, run_json
from ggufx.chat.llamacpp.caps import FLAGS, caps_of, handler_of, render_server, supports_thinking
from ggufx.chat.render import RenderError, budget_deadline, time_budget
from ggufx.chat.samples import NAMES, sample
from tests.support import FIXTURES, LLAMA_CPP_VERSION, CliRun

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = FIXTURES / "templates"
GROUND_TRUTH = TEMPLATES / "llamacpp" / "llama-server.json"
RECORDED = json.loads(GROUND_TRUTH.read_text(encoding="utf-8"))
NAMES_LLAMA = sorted(RECORDED["templates"])


def _path(name: str) -> Path:
    p = TEMPLATES / "llamacpp" / f"{name}.jinja"
    return p if p.is_file() else TEMPLATES / f"{name}.jinja"


def _source(name: str) -> str:
    return _path(name).read_text(encoding="utf-8")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@pytest.fixture
def recorded_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """The recording's time zone (prompts with the date in them depend on it)."""
    if RECORDED["utc_offset"] == "+0000":
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        yield RECORDED["recorded_at"]
        monkeypatch.undo()
        time.tzset()
    else:
        yield RECORDED["recorded_at"]


# -- the recording ---------------------------------------------------------------------------------


def test_recording_covers_every_llama_cpp_template_and_the_current_conversations() -> None:
    assert RECORDED["llama_cpp_version"] == LLAMA_CPP_VERSION
    assert len(NAMES_LLAMA) == 71
    for name in NAMES_LLAMA:
        assert _sha(_source(name)) == RECORDED["templates"][name]["sha256"], name
    convs = {n: sample(n) for n in NAMES}
    assert RECORDED["conversations"] == sorted(NAMES)
    assert RECORDED["conversations_sha256"] == _sha(json.dumps(convs, sort_keys=True)), (
        "the built-in conversations changed: run tools/record_llamacpp_templates.py"
    )
    assert all(t["loaded"] for t in RECORDED["templates"].values())


# -- capability flags ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES_LLAMA)
def test_capabilities_equal_llama_server_props(name: str) -> None:
    assert caps_of(_source(name)).to_dict() == RECORDED["templates"][name]["caps"]


def test_capability_agreement_per_flag() -> None:
    agree = {f: 0 for f in FLAGS}
    for name in NAMES_LLAMA:
        mine = caps_of(_source(name)).to_dict()
        for f in FLAGS:
            agree[f] += mine[f] == RECORDED["templates"][name]["caps"][f]
    assert agree == {f: len(NAMES_LLAMA) for f in FLAGS}  # 639 of 639 (template, flag) pairs


def test_issue_verdicts_differ_from_transformers_as_llama_cpp_says() -> None:
    """The eight (template, flag) pairs of the issue: transformers fails where llama.cpp renders."""
    kimi = caps_of(_source("Kimi-K2-Instruct"))  # list.append, refused by the jinja2 sandbox
    assert kimi.supports_tools and kimi.supports_tool_calls and kimi.supports_object_arguments
    for name in ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "CohereForAI-c4ai-command-r-plus-tool_use"):
        c = caps_of(_source(name))  # `for tool in tools` with no tools: undefined, zero iterations
        assert c.supports_system_role and c.supports_tools, name
    fire = caps_of(_source("fireworks-ai-llama-3-firefunction-v2"))  # reads an undefined `functions`
    assert fire.supports_system_role and not fire.supports_tools
    r1 = caps_of(_source("llama-cpp-deepseek-r1"))  # tojson of a generator-like map
    assert r1.supports_tools and r1.supports_tool_calls


def test_handlers_and_dialect_detection_name_a_family_alike() -> None:
    """caps.handler_of (which of llama.cpp's model-specific handlers takes a template) and
    dialect.analyze (which dialect the rendered tool call is in) use one name per family."""
    seen: dict[str, set[str]] = {}
    for path in sorted({_path(n) for n in NAMES_LLAMA} | set(TEMPLATES.glob("*.jinja"))):
        src = path.read_text(encoding="utf-8")
        handler = handler_of(src)
        if handler is not None:
            seen.setdefault(handler, set()).add(analyze(src).dialect)
    # each of the 15 families handler_of can name (its 17 llama.cpp handlers) takes a template here, and
    # where a dialect is detected at all it is the handler's
    assert {h: d - {"none", "unknown"} for h, d in seen.items()} == {
        "atem-xml": {"atem-xml"},
        "command-r": {"command-r"},
        "deepseek-dsml": {"deepseek-dsml"},
        "functionary-v3.2": {"functionary-v3.2"},
        "gemma4": {"gemma4"},
        "gigachat": {"gigachat"},
        "glm-xml": {"glm-xml"},
        "harmony": {"harmony"},
        "kimi": {"kimi"},
        "kimi-k3": {"kimi-k3"},
        "lfm2": {"lfm2"},
        "minicpm-xml": {"minicpm-xml"},
        "minimax-m3": {"minimax-m3"},
        "mistral": {"mistral"},
        "qwen3-coder-xml": {"qwen3-coder-xml"},
    }


# -- rendering as llama-server does ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES_LLAMA)
def test_prompts_equal_llama_server_apply_template(name: str, recorded_clock: float) -> None:
    src = _source(name)
    variables = {"bos_token": RECORDED["bos_token"], "eos_token": RECORDED["eos_token"]}
    for conv_name, expected in RECORDED["templates"][name]["apply_template"].items():
        conv = sample(conv_name)
        try:
            out, _ = render_server(
                src,
                conv["messages"],
                tools=conv.get("tools"),
                variables=variables,
                add_bos=RECORDED["add_bos"],
                add_eos=RECORDED["add_eos"],
                now=recorded_clock,
            )
        except RenderError as e:
            assert "error" in expected, (conv_name, str(e))
            assert e.message.removeprefix("the template raised: ") in expected["error"], (conv_name, str(e))
            continue
        assert "error" not in expected, (conv_name, expected)
        assert (_sha(out), len(out)) == (expected["sha256"], expected["length"]), (conv_name, out)


def test_thinking_is_on_where_llama_server_turns_it_on() -> None:
    # Apertus switches "Deliberation: enabled/disabled" but has no reasoning markers: llama-server's
    # autoparser finds no thinking mode, so it passes enable_thinking=false
    for name, on in {
        "Apertus-8B-Instruct": False,
        "Qwen-Qwen3-0.6B": True,
        "HuggingFaceTB-SmolLM3-3B": True,
        "deepseek-ai-DeepSeek-V3.1": True,
        "Qwen3.5-4B": True,
    }.items():
        src = _source(name)
        assert supports_thinking(src, caps_of(src)) is on, name


# (template, output) rendered with the conversation [user "hi"], or (template, (kind, words of the
# error)): the rules where llama.cpp's engine differs from jinja2. The llamacpp-marker test checks
# each against a live llama-server (an error there: the server refuses to start with the template).
SEMANTICS: list[tuple[str, str | tuple[str, str]]] = [
    ("{{ x.y.z }}|{{ none }}|{{ [1, 'a', [2]] }}", "||1a2"),
    ("{{ 'a' + none }}|{{ none ~ 'b' }}|{{ undefined_var + 'c' }}", "a|b|c"),
    ("{% for x in undefined_var %}x{% else %}empty{% endfor %}", "empty"),
    ("{% for x in none %}{% endfor %}", ("error", "Expected iterable or object type in for loop: got None")),
    ("{% set l = [1] %}{% set _ = l.append(2) %}{{ l|length }}", "2"),
    ("{{ 'é'|length }}|{{ 'a b  c'.split()|length }}", "2|4"),
    ("{{ none|default('d') }}", "d"),
    ("{{ {'a': 1}|default('x') }}", ("error", "Unknown (built-in) filter 'default' for type Object")),
    ("{{ 'abc'|join(',') }}", ("unsupported", "String join builtin not implemented")),
    ("{{ 'a' < 'b' }}", ("error", 'Unknown operator "<" between String and String')),
    ("{{ 0.1 + 0.2 }}|{{ 1 / 3 }}|{{ 3.0 }}|{{ true }}|{{ 5 % 3 }}|{{ -5 % 3 }}", "0.3|0.333333|3.0|True|2|-2"),
    ("{% macro m() %}{{ item }}{% endmacro %}{% for item in ['x'] %}{{ m() }}{% endfor %}", "x"),
    ("{% for i in [1,2,3] %}{% if i > 1 %}{{ prev }}{% endif %}{% set prev = i %}{% endfor %}", "12"),
    ("{{ [1,2]|map('string') }}", ("unsupported", "map: filter-mapping not implemented")),
    ("{{ 'ab'|replace('a','x',1) }}", ("unsupported", "String replace with count argument not implemented")),
    (
        "{{ {'b':1,'a':2}|tojson }}|{{ [1,2]|tojson(indent=2) }}|{{ 'é\"'|tojson }}|{{ 22.5|tojson }}",
        '{"b": 1, "a": 2}|[\n  1,\n  2\n]|"é\\""|22.5',
    ),
    ("{{ 'a' if false }}|{{ 'abc'[-1] }}|{{ 'abc'[1] }}|{{ 'x' * 3 }}", "||b|xxx"),
    ("{% set ns = namespace(a=1) %}{% set ns.a = 2 %}{{ ns.a }}", "2"),
    ("{% set d = {'a':1} %}{% set d.b = 2 %}{{ d|tojson }}", '{"a": 1, "b": 2}'),
    ("{{ (1, 2) }}|{{ range(3)|list|length }}|{{ undefined_var|upper }}", "12|3|"),
    ("{{ undefined_var|tojson }}", ("error", "Unknown (built-in) filter 'tojson' for type Undefined")),
    ("{{ none|length }}", ("error", "Unknown (built-in) filter 'length' for type None")),
    ("{{ 7 // 2 }}", ("syntax", "no rule for the // operator")),
    (
        "{{ 'hello wORLD'|title }}|{{ 'hello'|capitalize }}|{{ '  x  '|trim }}|{{ 'a-b'.split('-')|join('+') }}",
        "Hello World|Hello|x|a+b",
    ),
    (
        "{{ messages[0].content }}|{{ messages[0]['content'] }}|{{ messages|length }}|{{ messages[0].items()|length }}",
        "hi|hi|1|2",
    ),
    (
        "{{ {'a':1}.items()|list|length }}|{% for k, v in {'a':1, 'b':2}.items() %}{{ k }}{{ v }}{% endfor %}|"
        "{% for k in {'a':1} %}{{ k }}{% endfor %}",
        "1|a1b2|a",
    ),
    ("{{ 'x'.count('x') }}", ("error", "Callee is not a function: got Undefined")),
    ("{{ [1,2,3][1:] }}|{{ 'abcdef'[1:3] }}|{{ [1,2,3][::-1] }}", "23|bc|321"),
    ("{{ '%s' % 'x' }}", ("error", 'Unknown operator "%" between String and String')),
    (
        "{{ x is defined }}|{{ none is none }}|{{ 'a' is string }}|{{ [] is iterable }}|{{ {} is mapping }}",
        "False|True|True|True|True",
    ),
    (
        "{{ [{'a':1},{'a':2}]|map(attribute='a')|join(',') }}|"
        "{{ [{'r':'u'},{'r':'a'}]|selectattr('r','equalto','u')|list|length }}",
        "1,2|1",
    ),
    ("{{ raise_exception('boom') }}", ("exception", "boom")),
    ('{{ "a\\nb"|indent(2) }}|{{ "a\\nb"|indent(2, true) }}', "a\n  b|  a\n  b"),
    ("{{ 'abc'|reverse }}", ("error", "Unknown (built-in) filter 'reverse' for type String")),
    (
        "{% for m in messages %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{% endfor %}",
        "1TrueTrue1",
    ),
    ("{{ 'ab' ~ 1 ~ true ~ none }}", "ab1True"),
]


@pytest.mark.parametrize("template,expected", SEMANTICS, ids=[str(i) for i in range(len(SEMANTICS))])
def test_llama_cpp_rules(template: str, expected: str | tuple[str, str]) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    if isinstance(expected, str):
        out, _ = render_server(template, msgs)
        assert out == expected
    else:
        kind, words = expected
        with pytest.raises(RenderError) as e:
            render_server(template, msgs)
        assert e.value.kind == kind and words in e.value.message, str(e.value)


def test_input_marking_follows_strings_through_concatenation() -> None:
    out = run_json(
        "{{ '<|' + messages[0].role + '|>' }}{{ messages[0].content | upper }}",
        {"messages": [{"role": "user", "content": "hi"}]},
    )
    assert out.parts == [("<|", False), ("user", True), ("|>", False), ("HI", True)]
    assert marking_hazards(out.parts) == ["<|user|>"]
    # a token written whole is the template's
    whole = run_json("{{ '<|user|>' + messages[0].content }}", {"messages": [{"role": "user", "content": "hi"}]})
    assert marking_hazards(whole.parts) == []


def test_only_values_made_by_the_engine_reach_a_template() -> None:
    # no Python attribute is reachable: every "escape" is an undefined, and calling one fails
    for src in (
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('id') }}",
        "{{ self._TemplateReference__context }}{{ messages.__class__.__mro__[1].__subclasses__() }}",
    ):
        with pytest.raises(RenderError) as e:
            render_server(src, [{"role": "user", "content": "hi"}])
        assert e.value.kind == "error" and "Callee is not a function" in e.value.message


# hostile/NAME.jinja under llama.cpp's engine: (kind, words of the message). llama.cpp allows list
# mutation (on ggufx's copy of the messages) and has no ** operator; the bounds are ggufx's.
HOSTILE_LLAMA = {
    "class-escape": ("error", "Callee is not a function"),
    "cve-2024-34359": ("error", "Callee is not a function"),
    "cycler-globals": ("error", "Callee is not a function"),
    "globals-os-system": ("error", "Callee is not a function"),
    "mro": None,  # an undefined chain, printed as nothing
    "mutate-messages": None,
    "range-bomb": ("syntax", "no rule for the ** operator"),
    "nested-loops": ("timeout", "rendering took too long"),
    "string-multiply": ("syntax", "no rule for the ** operator"),
    "namespace-doubling": ("too-large", "the template built a value of 8,388,608 items (limit 4,194,304)"),
    "recursion": ("too-large", "the template recursed too deeply"),
    "huge-output": ("too-large", "output exceeds 1,048,576 characters"),
    "power-tower": ("syntax", "no rule for the ** operator"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LLAMA))
def test_hostile_templates_under_llama_cpp_rules(name: str) -> None:
    src = (TEMPLATES / "hostile" / f"{name}.jinja").read_text()
    msgs = [{"role": "user", "content": "hi"}]
    if HOSTILE_LLAMA[name] is None:
        assert run_json(src, {"messages": msgs}).parts == []
        return
    kind, words = HOSTILE_LLAMA[name]
    with pytest.raises(RenderError) as e:
        run_json(src, {"messages": msgs})
    assert e.value.kind == kind and words in e.value.message, str(e.value)


def test_bounds_without_the_power_operator() -> None:
    msgs = {"messages": [{"role": "user", "content": "hi"}]}
    for src, words in (
        ("{{ range(100000000)|length }}", "range() of 100,000,000 items is too large"),
        ("{{ 'x' * 1000000000 }}", "a value of 1,000,000,000 items is too large"),
        (
            "{% set l = [] %}{% for i in range(10) %}{% set _ = l.append(l) %}{% endfor %}{{ l|tojson }}",
            "recursed too deeply",
        ),
    ):
        with pytest.raises(RenderError) as e:
            run_json(src, msgs)
        assert e.value.kind == "too-large" and words in e.value.message, str(e.value)


def test_llama_cpp_parser_refusals_are_syntax_errors_with_lines() -> None:
    for src, words, line in (
        ("a\n{% with x = 1 %}{{ x }}{% endwith %}", "{% with %}", 2),
        ("{% for x in y recursive %}{% endfor %}", "recursive loops", 1),
        ("\n\n{{ '\\u00e9' }}", "no escape \\u", 3),
        ("{% if %}", "syntax error", 1),
    ):
        with pytest.raises(RenderError) as e:
            compile_program(src)
        assert e.value.kind == "syntax" and words in e.value.message and e.value.line == line, str(e.value)


# -- lint: the two engines side by side ------------------------------------------------------------


def test_lint_says_where_the_engines_disagree() -> None:
    res = lint(_source("Kimi-K2-Instruct"))
    (p,) = [p for p in res.problems if p.code == "fails-in-transformers"]
    assert p.message == "renders in llama.cpp, fails in transformers (tools): list.append at line 41" and p.line == 41
    hermes = lint(_source("NousResearch-Hermes-3-Llama-3.1-8B-tool_use"))
    (p,) = [p for p in hermes.problems if p.code == "fails-in-transformers"]
    assert p.message.startswith("renders in llama.cpp, fails in transformers (plain, system, multi-turn, reasoning): ")
    # the reverse is a warning: a template for llama.cpp must render there
    src = "{% for m in messages %}{{ m.content | trim | e }}{% endfor %}"
    codes = {p.code: p for p in lint(src).problems}
    assert codes["fails-in-llamacpp"].severity == "warning"
    assert "Unknown (built-in) filter 'escape' for type String" in codes["fails-in-llamacpp"].message


def test_lint_flags_special_tokens_assembled_from_message_fields(cli: CliRun, tmp_path: Path) -> None:
    p = tmp_path / "t.jinja"
    p.write_text(
        "{% for m in messages %}\n{{- '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}\n{%- endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    r = cli("template", "lint", str(p), "--json")
    assert r.exit_code == 1
    (hazard,) = [x for x in json.loads(r.stdout)["problems"] if x["code"] == "input-marking"]
    assert hazard["line"] == 2 and hazard["severity"] == "warning"
    assert hazard["message"].startswith("assembles the special tokens <|user|>, <|system|>, <|assistant|>, <|tool|> ")
    # no real vendor template of the fixtures does it
    for name in ("Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct", "openai-gpt-oss-120b"):
        assert "input-marking" not in {x.code for x in lint(_source(name)).problems}, name


def test_lint_reports_a_template_llama_cpp_cannot_parse() -> None:
    (p,) = [
        p
        for p in lint("{{ 2 ** 3 }}{% for m in messages %}{{ m.content }}{% endfor %}").problems
        if p.code == "llamacpp-syntax"
    ]
    assert "llama-server refuses to start with it" in p.message and p.line == 1


# -- one time budget per command -----------------------------------------------------------------


def test_the_first_runaway_spends_the_commands_budget() -> None:
    src = (TEMPLATES / "hostile" / "nested-loops.jinja").read_text()
    with time_budget():
        with pytest.raises(RenderError) as first:
            render_server(src, [{"role": "user", "content": "hi"}])
        assert first.value.kind == "timeout" and "rendering took too long" in first.value.message
        # nothing else is attempted: the next render fails before it starts
        with pytest.raises(RenderError) as then:
            budget_deadline(1.0)
        assert then.value.kind == "timeout" and then.value.message.startswith("not rendered: ")
    budget_deadline(1.0)  # outside the command, renders run again


@pytest.mark.parametrize("command", ["render", "lint", "info"])
def test_a_runaway_template_stops_each_command_at_its_first_timeout(cli: CliRun, command: str) -> None:
    path = str(TEMPLATES / "hostile" / "nested-loops.jinja")
    r = cli("template", command, path, "--json")
    d = json.loads(r.stdout)
    if command == "render":
        errors = [x["error"] for x in d["results"]]
        assert "rendering took too long" in errors[0]
        assert all(e.startswith("not rendered: an earlier render") for e in errors[1:]), errors
    elif command == "lint":
        assert [p["code"] for p in d["problems"]] == ["fails-plain"]
        assert "rendering took too long" in d["problems"][0]["message"]
    else:
        assert "rendering took too long" in d["errors"]["plain"]
        assert all(e.startswith("not rendered: ") for n, e in d["errors"].items() if n != "plain"), d["errors"]
        assert d["llama_cpp_caps"] is None and d["llama_cpp_error"].startswith("not rendered: ")


# -- the commands ------------------------------------------------------------------------------------


def test_info_json_adds_llama_cpp_caps(cli: CliRun) -> None:
    r = cli("template", "info", str(TEMPLATES / "Kimi-K2-Instruct.jinja"), "--json")
    d = json.loads(r.stdout)
    assert d["llama_cpp_caps"] == RECORDED["templates"]["Kimi-K2-Instruct"]["caps"]
    assert d["llama_cpp_error"] is None and d["dialect"] == "unknown"  # transformers' view is unchanged
    text = cli("template", "info", str(TEMPLATES / "google-gemma-2-2b-it.jinja")).stdout
    assert "llama.cpp supports string_content\n" in text
    assert "llama.cpp lacks    tools, tool_calls, system_role, parallel_tool_calls" in text


def test_render_engine_llama_cpp(cli: CliRun) -> None:
    kimi = str(TEMPLATES / "Kimi-K2-Instruct.jinja")
    hf = cli("template", "render", kimi, "--sample", "tools")
    assert hf.exit_code == 1 and "'append' of 'list' object is unsafe" in hf.stderr
    r = cli("template", "render", kimi, "--sample", "tools", "--engine", "llama.cpp", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["engine"] == "llama.cpp" and d["results"][0]["error"] is None
    assert "<|tool_call_begin|>functions.get_weather:0" in d["results"][0]["output"]
    # the default engine and its JSON are unchanged but for the added key
    qwen = json.loads(cli("template", "render", str(TEMPLATES / "Qwen3.5-4B.jinja"), "--json").stdout)
    assert qwen["engine"] == "transformers" and [x["conversation"] for x in qwen["results"]] == list(NAMES)


# -- against a live llama-server (marker llamacpp) ---------------------------------------------------


def _recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_record_llamacpp_templates", ROOT / "tools" / "record_llamacpp_templates.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# -- the package follows llama.cpp's files ----------------------------------------------------------

ENGINE = ROOT / "ggufx" / "chat" / "llamacpp"
# what each module of ggufx.chat.llamacpp may import from the package: value <- builtins <- runtime <-
# driver <- caps <- server, the parser none of value, builtins or runtime, and nothing the package's
# __init__ (which re-exports the driver's entry points)
ENGINE_IMPORTS = {
    "value": set(),
    "builtins": {"value"},
    "runtime": {"value", "builtins"},
    "parser": set(),
    "driver": {"value", "builtins", "runtime", "parser"},
    "caps": {"value", "builtins", "runtime", "parser", "driver"},
    "server": {"value", "builtins", "runtime", "parser", "driver", "caps"},
    "__init__": {"driver"},
}
# and from the rest of ggufx, only modules that do not import the package
ENGINE_IMPORTS_OUTSIDE = {"ggufx.errors", "ggufx.chat.render", "ggufx.chat.dialects"}


def _ggufx_imports(path: Path) -> set[str]:
    """Every ggufx module ``path`` imports, anywhere in it (inside functions and ``if TYPE_CHECKING:``
    blocks too); ``from P import m`` counts as ``P.m`` when ``m`` is a module of the engine."""
    import ast

    package = "ggufx.chat.llamacpp"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base == package:
                found.update(f"{base}.{a.name}" if a.name in ENGINE_IMPORTS else base for a in node.names)
            else:
                found.add(base)
    return {m for m in found if m == "ggufx" or m.startswith("ggufx.")}


def test_the_engines_modules_import_one_way(tmp_path: Path) -> None:
    # the check sees every kind of import: inside a function, under TYPE_CHECKING, relative, a submodule
    # named in ``from PACKAGE import``, the package itself
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ggufx.chat.llamacpp.runtime import Runtime\n"
        "def f():\n    import ggufx.chat.lint\n    from . import caps\n    from .driver import run_json\n"
        "    from ggufx.chat.llamacpp import parser, compile_program\n",
        encoding="utf-8",
    )
    assert _ggufx_imports(probe) == {
        "ggufx.chat.llamacpp.runtime",
        "ggufx.chat.lint",
        "ggufx.chat.llamacpp.caps",
        "ggufx.chat.llamacpp.driver",
        "ggufx.chat.llamacpp.parser",
        "ggufx.chat.llamacpp",
    }
    assert {p.stem for p in ENGINE.glob("*.py")} == set(ENGINE_IMPORTS)
    for mod, allowed in ENGINE_IMPORTS.items():
        imported = _ggufx_imports(ENGINE / f"{mod}.py")
        inside = {m.removeprefix("ggufx.chat.llamacpp.") for m in imported if m.startswith("ggufx.chat.llamacpp.")}
        outside = {m for m in imported if not m.startswith("ggufx.chat.llamacpp.")}
        assert inside <= allowed, (mod, inside - allowed)
        assert outside <= ENGINE_IMPORTS_OUTSIDE, (mod, outside - ENGINE_IMPORTS_OUTSIDE)


@pytest.mark.llamacpp
def test_recording_is_what_llama_server_says_today(llama_bin: Path, smollm2_path: Path) -> None:
    rec = _recorder()
    src = rec.default_source(LLAMA_CPP_VERSION)
    if src is None:
        pytest.skip("llama.cpp source not found")
    live = rec.record(llama_bin, src, smollm2_path)
    assert rec.stable(live) == rec.stable(RECORDED), "stale: run tools/record_llamacpp_templates.py"
    # and ggufx renders today's prompts (some carry the date)
    variables = {"bos_token": live["bos_token"], "eos_token": live["eos_token"]}
    for name, entry in live["templates"].items():
        for conv_name, expected in entry["apply_template"].items():
            conv = sample(conv_name)
            if "error" in expected:
                with pytest.raises(RenderError):
                    render_server(_source(name), conv["messages"], tools=conv.get("tools"), variables=variables)
                continue
            out, _ = render_server(
                _source(name),
                conv["messages"],
                tools=conv.get("tools"),
                variables=variables,
                add_bos=live["add_bos"],
                add_eos=live["add_eos"],
                now=live["recorded_at"],
            )
            assert (_sha(out), len(out)) == (expected["sha256"], expected["length"]), (name, conv_name)


@pytest.mark.llamacpp
def test_llama_cpp_rules_are_llama_servers(llama_bin: Path, smollm2_path: Path, tmp_path: Path) -> None:
    """Each rule of SEMANTICS as the live llama-server applies it: the cases that render, joined into
    one template (one server), and each failing case alone (llama-server refuses to start with a
    template that fails on a plain chat, or that its parser rejects)."""
    rec = _recorder()
    renders = [(t, e) for t, e in SEMANTICS if isinstance(e, str)]
    p = tmp_path / "rules.jinja"
    p.write_text("@@@".join(t for t, _ in renders), encoding="utf-8")
    with rec.llama_server(llama_bin, smollm2_path, p) as (url, error):
        assert url is not None, error
        status, res = rec._request(f"{url}/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert res["prompt"].split("@@@") == [e for _, e in renders]
    for i, (template, expected) in enumerate(SEMANTICS):
        if isinstance(expected, str):
            continue
        p = tmp_path / f"fails-{i}.jinja"
        p.write_text(template, encoding="utf-8")
        with rec.llama_server(llama_bin, smollm2_path, p) as (url, error):
            assert url is None, f"llama-server started with {template!r}"
        kind, words = expected
        assert kind == "syntax" or words in error or "not supported" in error, (template, error)


@pytest.mark.llamacpp
def test_server_option_renders_through_the_servers_endpoint(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    rec = _recorder()
    kimi = TEMPLATES / "Kimi-K2-Instruct.jinja"
    with rec.llama_server(llama_bin, smollm2_path, kimi) as (url, error):
        assert url is not None, error
        r = cli("template", "render", "--server", url, "--engine", "llama.cpp", "--sample", "tools", "--json")
        assert r.exit_code == 0, r.stderr
        (res,) = json.loads(r.stdout)["results"]
        assert res["agrees"] is True and res["output"] == res["ggufx_output"]
        assert "functions.get_weather:0" in res["output"]
        info = json.loads(cli("template", "info", "--server", url, "--json").stdout)
        assert info["llama_server_caps"] == RECORDED["templates"]["Kimi-K2-Instruct"]["caps"]
