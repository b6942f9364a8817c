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
    bad = _check(tmp_path, '[chat_template]\nsha256 = "00"\nlint_clean = true\n[fingerprint]\nequals = "00"')
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
