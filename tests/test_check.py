"""Policy checks: every rule passes and fails where it should; bad policies are errors with lines;
JUnit XML has the structure CI systems read."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.hashing import hash_model
from ggufx.analysis.policy import PolicyError, check, load_policy
from tests.support import FIXTURES, CliRun

V3 = FIXTURES / "all-types-v3.gguf"


def _check(tmp_path: Path, toml: str, path: Path = V3) -> dict[str, bool]:
    p = tmp_path / "policy.toml"
    p.write_text(toml)
    rep = check(ggufx.open(path), load_policy(str(p)))
    return {r.rule: r.passed for r in rep.results}


CASES = [
    ('[model]\narchitecture = "llama"', '[model]\narchitecture = ["qwen35", "gemma3"]', "model.architecture"),
    ('[model]\nfile_type = "Q4_K_M"', '[model]\nfile_type = "Q8_0"', "model.file_type"),
    ("[model]\nbpw = { min = 7.5, max = 8.0 }", "[model]\nbpw = { max = 4.0 }", "model.bpw"),
    ("[model]\nbpw_weights = { min = 1 }", "[model]\nbpw_weights = { min = 9 }", "model.bpw_weights"),
    ("[model]\nparameters = { min = 1000, max = 100000 }", "[model]\nparameters = { min = 1e9 }", "model.parameters"),
    ('[tensors]\n"attn_v" = { min = "Q5_K" }', '[tensors]\n"attn_v" = { min = "Q8_0" }', "tensors[attn_v]"),
    ('[tensors]\n"attn_v" = { max = "Q8_0" }', '[tensors]\n"attn_v" = { max = "Q4_K" }', "tensors[attn_v]"),
    (
        '[tensors]\n"token_embd" = { allowed = ["Q8_0", "Q6_K"] }',
        '[tensors]\n"token_embd" = { allowed = ["Q4_K"] }',
        "tensors[token_embd]",
    ),
    (
        '[tensors]\n"output\\\\.weight" = { type = "Q4_0" }',
        '[tensors]\n"output\\\\.weight" = { type = "Q6_K" }',
        "tensors[output\\.weight]",
    ),
    (
        '[metadata]\nrequired = ["general.name"]',
        '[metadata]\nrequired = ["general.url"]',
        "metadata.required[general.url]",
    ),
    (
        '[metadata]\nforbidden = ["general.url"]',
        '[metadata]\nforbidden = ["general.name"]',
        "metadata.forbidden[general.name]",
    ),
    (
        '[metadata.equals]\n"llama.context_length" = 4096',
        '[metadata.equals]\n"llama.context_length" = 8192',
        "metadata.equals[llama.context_length]",
    ),
    ('[chat_template]\ndialect = "none"', '[chat_template]\ndialect = "hermes-json"', "chat_template.dialect"),
    ('[memory]\nctx = 4096\nbudget = "1GiB"', '[memory]\nctx = 4096\nbudget = "1KiB"', "memory.budget"),
]


@pytest.mark.parametrize("good,bad,rule", CASES, ids=[c[2] for c in CASES])
def test_every_rule_passes_and_fails(tmp_path: Path, good: str, bad: str, rule: str) -> None:
    ok = _check(tmp_path, good)
    assert all(ok.values()), ok
    failed = _check(tmp_path, bad)
    assert failed.get(rule) is False, failed


def test_template_sha256_lint_and_fingerprint(tmp_path: Path) -> None:
    import hashlib

    tmpl = ggufx.open(V3).metadata["tokenizer.chat_template"]
    digest = hashlib.sha256(tmpl.encode()).hexdigest()
    fp = hash_model(ggufx.open(V3)).fingerprint
    ok = _check(tmp_path, f'[chat_template]\nsha256 = "{digest}"\n[fingerprint]\nequals = "{fp}"')
    assert ok == {"chat_template.sha256": True, "fingerprint.equals": True}
    wrong_sha, wrong_fp = "0" * 64, "0" * 32  # well-formed digests of nothing in the file
    bad = _check(
        tmp_path, f'[chat_template]\nsha256 = "{wrong_sha}"\nlint_clean = true\n[fingerprint]\nequals = "{wrong_fp}"'
    )
    assert bad["chat_template.sha256"] is False and bad["fingerprint.equals"] is False
    # the fixture's ChatML template lints clean against its own vocabulary
    assert bad["chat_template.lint_clean"] is True
    missing = _check(tmp_path, "[chat_template]\nlint_clean = true", FIXTURES / "raw-base.gguf")
    assert missing == {"chat_template.lint_clean": False}


def test_failure_names_offending_tensors_collapsed(cli: CliRun, tmp_path: Path, gemma_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[tensors]\n"blk\\\\.\\\\d+\\\\.ffn_down" = { min = "Q5_K" }\n')
    r = cli("check", str(gemma_path), "--policy", str(p))
    assert r.exit_code == 1
    assert "9 of 18 tensors break min Q5_K: ffn_down Q4_K (layers 2-3, 5-6, 8-9, 11-12, 14)" in r.output


@pytest.mark.parametrize(
    "toml,phrase",
    [
        ("[model]\nbpww = 3\n", "line 2: unknown key 'bpww' in [model]"),
        ("[modle]\nbpw = 3\n", "line 1: unknown section [modle]"),
        ('[tensors]\n"ffn_down" = { min = "Q9_K" }\n', "line 2: unknown ggml type 'Q9_K'"),
        ('[tensors]\n"ffn_(down" = { min = "Q4_K" }\n', "invalid regular expression"),
        ('[tensors]\n"ffn_down" = { minimum = "Q4_K" }\n', "line 2: tensor rule"),
        ("[model\n", "invalid TOML"),
        ("", "no rules: a policy that checks nothing"),  # an empty file passed every model, exit 0
        ("# to do\n[model]\n", "no rules: a policy that checks nothing"),
    ],
)
def test_bad_policy_is_an_error_naming_the_line(cli: CliRun, tmp_path: Path, toml: str, phrase: str) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(toml)
    with pytest.raises(PolicyError) as e:
        load_policy(str(p))
    assert phrase in e.value.message
    r = cli("check", str(V3), "--policy", str(p))
    assert r.exit_code == 2 and phrase in r.stderr


def test_unreadable_file_exit_2_and_json(cli: CliRun, tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[model]\narchitecture = "llama"\n')
    r = cli("check", str(V3), str(FIXTURES / "malformed" / "bad-magic.gguf"), "--policy", str(p), "--json")
    assert r.exit_code == 2
    d = json.loads(r.stdout)
    assert d["files"][0]["passed"] is True and d["files"][1]["passed"] is False


def test_junit_xml(cli: CliRun, tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[model]\narchitecture = "llama"\nbpw = { max = 1.0 }\n[metadata]\nrequired = ["a<b&c"]\n')
    out = tmp_path / "results.xml"
    r = cli("check", str(V3), str(FIXTURES / "big-endian.gguf"), "--policy", str(p), "--junit", str(out))
    assert r.exit_code == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "4"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(V3), str(FIXTURES / "big-endian.gguf")]
    for s in suites:
        cases = s.findall("testcase")
        assert int(s.get("tests")) == len(cases) and int(s.get("failures")) == sum(
            1 for c in cases if c.find("failure") is not None
        )
        for c in cases:
            assert c.get("name") and c.get("classname")
            f = c.find("failure")
            if f is not None:
                assert f.get("message") and f.get("type") == "PolicyViolation"
    assert any(c.get("name") == "metadata.required[a<b&c]" for c in root.iter("testcase"))
    import xmlschema

    xmlschema.XMLSchema(str(FIXTURES / "schemas" / "junit.xsd")).validate(str(out))


# --- strictness: every rule of the schema, each kind of mistake -----------------------------------
# For each (section, key) of policy.SCHEMA (and each key of a [tensors] rule): a value that is valid,
# then mistakes as a user makes them (a typo'd key inside a table, an empty table or array, a scalar
# where a table, array or string is wanted, a bound of the wrong kind, a min above its max). Each
# mistake must be a PolicyError naming the key and the line it is on (the key sits on line 3, after a
# comment and the section header), and `ggufx check` must exit 2 with it; none may become a rule.

GOOD = {
    ("model", "architecture"): '"llama"',
    ("model", "file_type"): '"Q4_K_M"',
    ("model", "bpw"): "{ min = 4.8, max = 5.6 }",
    ("model", "bpw_weights"): "{ min = 4.5 }",
    ("model", "parameters"): "{ max = 2e9 }",
    ("metadata", "required"): '["general.name"]',
    ("metadata", "forbidden"): '["general.url"]',
    ("metadata", "equals"): '{ "general.architecture" = "llama", "llama.context_length" = 4096 }',
    ("chat_template", "sha256"): '"' + "ab" * 32 + '"',
    ("chat_template", "dialect"): '["none", "hermes-json"]',
    ("chat_template", "lint_clean"): "true",
    ("memory", "ctx"): "4096",
    ("memory", "cache_type"): '"q8_0"',
    ("memory", "budget"): '"24GiB"',
    ("memory", "parallel"): "2",
    ("fingerprint", "equals"): '"' + "0f" * 16 + '"',
    ("companions", "mmproj"): '"mmproj.gguf"',
    ("companions", "draft"): '"draft.gguf"',
    ("companions", "lora"): '"adapter.gguf"',
    ("companions", "imatrix"): '"imatrix.gguf"',
    ("companions", "control_vector"): '"cvec.gguf"',
}
RANGE = [
    "{ mn = 5.0 }",
    "{ minimum = 9.0 }",
    "{ maxx = 1 }",
    "{}",
    "5.0",
    '"5"',
    "[4, 5]",
    "true",
    '{ min = "4" }',
    "{ max = true }",
    "{ min = nan }",
    "{ min = 6, max = 5 }",
    "{ min = 1, mx = 2 }",
]
STRING = ["5", "5.0", "true", '""', "[1]", "{ a = 1 }"]
STRINGS = ["[]", '"general.url"', "5", '["ok", 5]', '[""]', "{ a = 1 }"]
BAD = {
    ("model", "architecture"): ["5", "[]", "[5]", "{ name = 'llama' }", "true"],
    ("model", "file_type"): [*STRING, '"Q4_K_MM"', '"q4_k_m"'],
    ("model", "bpw"): RANGE,
    ("model", "bpw_weights"): RANGE,
    ("model", "parameters"): RANGE,
    ("metadata", "required"): STRINGS,
    ("metadata", "forbidden"): STRINGS,
    ("metadata", "equals"): [
        "{}",
        '"general.name"',
        "5",
        "[1]",
        "{ general.name = 'x' }",
        "{ a = 1979-05-27 }",
        "{ a = { b = 1 } }",
    ],
    ("chat_template", "sha256"): [*STRING, '"00"', '"' + "g" * 64 + '"'],
    ("chat_template", "dialect"): [*STRING, "[]", '"hermes"', '["none", "qwen"]'],
    ("chat_template", "lint_clean"): ['"true"', "1", "{}", "[true]"],
    ("memory", "ctx"): ['"4096"', "4096.0", "-1", "true", "{ value = 4096 }"],
    ("memory", "cache_type"): [*STRING, '"q8"', '"F16 "'],
    ("memory", "budget"): ['"24 gigs"', '""', "0", "-5", "true", "{ max = '24GiB' }", "[1]", '"24"'],  # "24": 24 bytes
    ("memory", "parallel"): ["0", '"2"', "2.5", "{}"],
    ("fingerprint", "equals"): STRING,
    ("companions", "mmproj"): ['""', "5", "[]", "{}"],
    ("companions", "draft"): ['""', "5", "[]", "{}"],
    ("companions", "lora"): ['""', "5", "[]", "{}"],
    ("companions", "imatrix"): ['""', "5", "[]", "{}"],
    ("companions", "control_vector"): ['""', "5", "[]", "{}"],
}
TENSOR_GOOD = [
    '{ min = "Q5_K" }',
    '{ max = "F16" }',
    '{ allowed = ["Q8_0", "q6_k"] }',
    '{ type = "Q6_K" }',
    '{ min = "Q4_K", max = "Q8_0" }',
]
TENSOR_BAD = [
    "{}",
    '{ minimum = "Q4_K" }',
    '{ min = "Q4_K", mx = "Q8_0" }',
    '"Q4_K"',
    "5",
    '["Q4_K"]',
    "{ min = 5 }",
    '{ max = ["Q8_0"] }',
    '{ type = "Q9_K" }',
    "{ allowed = [] }",
    '{ allowed = "Q8_0" }',
    '{ allowed = ["Q8_0", 4] }',
    '{ min = "Q8_0", max = "Q4_K" }',
    '{ type = "" }',
]


def _policy_error(tmp_path: Path, toml: str) -> PolicyError:
    p = tmp_path / "policy.toml"
    p.write_text(toml)
    with pytest.raises(PolicyError) as e:
        load_policy(str(p))
    return e.value


def test_the_tables_cover_every_rule_of_the_schema() -> None:
    from ggufx.analysis.policy import SCHEMA, TENSOR_RULE_KEYS

    every = {(s, k) for s, keys in SCHEMA.items() for k in keys}
    assert set(GOOD) == every == set(BAD)
    for k in TENSOR_RULE_KEYS:
        assert any(f"{k} =" in v for v in TENSOR_GOOD) and any(f"{k} =" in v for v in TENSOR_BAD), k


@pytest.mark.parametrize("section,key", list(GOOD), ids=[f"{s}.{k}" for s, k in GOOD])
def test_every_rule_accepts_its_documented_form(tmp_path: Path, section: str, key: str) -> None:
    p = tmp_path / "policy.toml"
    extra = '\nbudget = "24GiB"' if section == "memory" and key != "budget" else ""
    p.write_text(f"# a policy\n[{section}]\n{key} = {GOOD[section, key]}{extra}\n")
    assert key in load_policy(str(p))[section]


BAD_CASES = [(s, k, v) for (s, k), values in BAD.items() for v in values]


@pytest.mark.parametrize("section,key,value", BAD_CASES, ids=[f"{s}.{k}={v}" for s, k, v in BAD_CASES])
def test_every_mistake_in_every_rule_is_an_error_naming_key_and_line(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    extra = '\nbudget = "24GiB"' if section == "memory" and key != "budget" else ""
    err = _policy_error(tmp_path, f"# a policy\n[{section}]\n{key} = {value}{extra}\n")
    assert err.message.startswith("line 3: "), err.message
    assert f"[{section}] {key}" in err.message or f"in [{section}] {key}" in err.message, err.message


TENSOR_CASES = [('"blk\\\\.\\\\d+\\\\.ffn_down"', "blk\\.\\d+\\.ffn_down"), ('"token_embd"', "token_embd")]


@pytest.mark.parametrize("value", TENSOR_GOOD)
def test_every_tensor_rule_form_is_accepted(tmp_path: Path, value: str) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(f'[tensors]\n"ffn_down" = {value}\n')
    assert load_policy(str(p))["tensors"]["ffn_down"]


@pytest.mark.parametrize("value", TENSOR_BAD)
@pytest.mark.parametrize("quoted,pattern", TENSOR_CASES, ids=["escaped", "plain"])
def test_every_tensor_rule_mistake_is_an_error_naming_the_rule_and_line(
    tmp_path: Path, value: str, quoted: str, pattern: str
) -> None:
    # the escaped pattern's text differs from its value: the line is found from the parsed key
    err = _policy_error(tmp_path, f'[tensors]\n"attn_v" = {{ min = "Q4_K" }}\n{quoted} = {value}\n')
    assert err.message.startswith("line 3: "), err.message
    assert repr(pattern) in err.message, err.message


@pytest.mark.parametrize(
    "toml,line,phrase",
    [
        # the issue's own examples
        ("[model]\nbpw = { mn = 5.0 }\n", 2, "unknown key 'mn' in [model] bpw (known: min, max)"),
        ("[model]\nbpw = {}\n", 2, "[model] bpw is empty"),
        ("[model]\nbpw = 5.0\n", 2, "[model] bpw must be a table such as { min = 4.5, max = 5.6 }, not a float (5.0)"),
        ("[model]\nparameters = {mx = 1}\n", 2, "unknown key 'mx' in [model] parameters"),
        ("[model]\nbpw_weights = {maxx = 1}\n", 2, "unknown key 'maxx' in [model] bpw_weights"),
        ("[model]\nbpw = {minimum = 9.0}\n", 2, "unknown key 'minimum' in [model] bpw"),
        # the key's line, not the first line that happens to contain its text
        (
            "# bpw = { mn = 1 } was the old rule\n[metadata]\nrequired = ['mn = 3', \"[model]\"]\n\n"
            "[model]  # sizes\narchitecture = 'llama'\nbpw = { max = 6, mn = 5.0 }\n",
            7,
            "unknown key 'mn'",
        ),
        ("[model]\nbpw.min = 6\nbpw.max = 5\n", 2, "min 6"),
        ("model.bpw.mn = 3\n", 1, "unknown key 'mn' in [model] bpw"),
        ('[metadata.equals]\n"a.b" = 1\nc = { d = 1 }\n', 3, "[metadata] equals.c is a table"),
        ('[metadata]\nequals = { "general.name" = "x", general.url = "y" }\n', 2, '"general.url" = ...'),
        ('[tensors]\n"x" = { allowed = [\n  "Q8_0",\n  5,\n] }\n', 2, "not an integer (5)"),
        ('[tensors]\n"z" = { allowed = ["Q8_0",\n  "Q4_K"], type = 3 }\n', 3, "'z' type must be a ggml type name"),
        (  # a table header and key inside a multi-line string are text, not TOML
            '# x\n[companions]\nmmproj = """\n[memory]\nctx = "1"\n"""\n[memory]\nctx = "1"\nbudget = 1\n',
            8,
            "[memory] ctx must be",
        ),
        ("[memory]\nctx = 4096\n", 1, "[memory] has no budget"),
        ("model = 5\n", 1, "[model] must be a table, not an integer (5)"),
        ("[[model]]\nbpw = { min = 1 }\n", 1, "[model] must be a table, not an array"),
    ],
)
def test_policy_errors_name_the_key_and_its_line(
    cli: CliRun, tmp_path: Path, toml: str, line: int, phrase: str
) -> None:
    err = _policy_error(tmp_path, toml)
    assert err.message.startswith(f"line {line}: ") and phrase in err.message, err.message
    p = tmp_path / "policy.toml"
    r = cli("check", str(V3), "--policy", str(p))
    assert r.exit_code == 2 and r.stdout == "" and phrase in r.stderr and "internal error" not in r.stderr


def test_a_policy_given_as_a_dict_is_validated_too() -> None:
    with pytest.raises(PolicyError, match=r"\[model\] bpw is empty"):
        check(ggufx.open(V3), {"model": {"bpw": {}}})


@pytest.mark.parametrize("key", ["bpw", "bpw_weights", "parameters"])
@pytest.mark.parametrize(
    "bounds,said", [("min = 0", ">= 0"), ("max = 1", "<= 1"), ("min = 0.5, max = 100000", ">= 0.5 and <= 100000")]
)
def test_range_sentences_are_complete(tmp_path: Path, key: str, bounds: str, said: str) -> None:
    import re

    p = tmp_path / "policy.toml"
    p.write_text(f"[model]\n{key} = {{ {bounds} }}\n")
    (res,) = check(ggufx.open(V3), load_policy(str(p))).results
    assert re.fullmatch(rf"{key} [\d.,]+ {'is' if res.passed else 'is not'} {said}", res.reason), res.reason


@pytest.mark.parametrize("layout", ["header", "dotted", "inline"])
@pytest.mark.parametrize("section,key", list(GOOD), ids=[f"{s}.{k}" for s, k in GOOD])
def test_the_line_is_the_typos_own_whatever_the_layout(tmp_path: Path, section: str, key: str, layout: str) -> None:
    # the typo'd key also appears earlier in a comment and inside a string, where a text search finds it
    typo = key + "x"
    other = "fingerprint" if section == "companions" else "companions"
    value = {"fingerprint": '"00"', "companions": '"mmproj.gguf"'}[other]
    decoy = f"# {typo} = 1 was the old name\n[{other}]\n{'equals' if other == 'fingerprint' else 'mmproj'} = {value}"
    decoy += f'  # "{typo} ="\n'
    if other == "companions":
        decoy = decoy.replace('"mmproj.gguf"', f'"{typo} = {{"')
    budget = ', budget = "1GiB"' if section == "memory" else ""
    body = {
        "header": f"[{section}]\n{typo} = {GOOD[section, key]}\n"
        + ('budget = "1GiB"\n' if section == "memory" else ""),
        "dotted": f"{section}.{typo} = {GOOD[section, key]}\n",
        "inline": f"{section} = {{ {typo} = {GOOD[section, key]}{budget} }}\n",
    }[layout]
    err = _policy_error(tmp_path, body + decoy if layout != "header" else decoy + body)
    line = int(err.message.split(":")[0].removeprefix("line "))
    text = (tmp_path / "policy.toml").read_text().splitlines()
    assert text[line - 1].lstrip().startswith((typo, f"{section}.{typo}", f"{section} = {{ {typo}")), err.message


def test_dialect_rule_accepts_a_familys_other_names(tmp_path: Path, cli: CliRun) -> None:
    """llama.cpp calls the harmony family 'gpt-oss': a policy may name it either way."""
    import shutil

    model = tmp_path / "oss.gguf"
    shutil.copy(V3, model)
    template = FIXTURES / "templates" / "openai-gpt-oss-120b.jinja"
    assert cli("template", "set", str(model), "--from", str(template)).exit_code == 0
    for name in ("harmony", "gpt-oss", '["none", "gpt-oss"]'):
        value = name if name.startswith("[") else f'"{name}"'
        assert _check(tmp_path, f"[chat_template]\ndialect = {value}", model) == {"chat_template.dialect": True}
    assert _check(tmp_path, '[chat_template]\ndialect = "kimi-k2"', model) == {"chat_template.dialect": False}
