"""The MCP server (#10), driven by the official SDK's own client over stdio, and ``--server URL``.

Every tool's answer must be the text the CLI prints with ``--json`` for the same file; errors must
be tool errors carrying the CLI's one-line message; paths outside the roots (also through
symlinks and shards) are refused; write tools exist only with --allow-write.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support import FIXTURES, HOSTILE_TEMPLATES, CliRun

from .httpserver import FakeLlamaServer

READ_TOOLS = {
    "list_models",
    "pick",
    "info",
    "type_histogram",
    "roles",
    "layers",
    "tensors",
    "metadata",
    "recipe",
    "imatrix",
    "memory",
    "fit",
    "diff",
    "template_info",
    "template_lint",
    "template_render",
    "hash",
    "verify",
    "server_model",
}
WRITE_TOOLS = {"set_metadata", "delete_metadata", "set_template"}


def session(args: list[str], fn: Callable[[Client], Awaitable[Any]]) -> Any:
    """Start `python -m ggufx mcp ARGS` and run ``fn`` with a connected client."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "ggufx", "mcp", *args], env={**os.environ, "GGUFX_NO_CACHE": "1"}
    )

    async def go() -> Any:
        async with Client(params) as client:
            return await fn(client)

    return anyio.run(go)


def text(result: Any) -> str:
    assert len(result.content) == 1
    return result.content[0].text


# -- every tool answers what the CLI prints ----------------------------------------------------


def cli_equivalents(p: str, other: str, manifest: str) -> dict[str, tuple[dict, list[str]]]:
    return {
        "info": ({"path": p}, ["info", "--json", p]),
        "roles": ({"path": p}, ["roles", "--json", p]),
        "layers": ({"path": p}, ["layers", "--json", p]),
        "layers_nocollapse": ({"path": p, "collapse": False}, ["layers", "--json", "--no-collapse", p]),
        "tensors": ({"path": p, "limit": 1000}, ["tensors", "--json", "--limit", "1000", p]),
        "tensors_page": (
            {"path": p, "types": ["F32"], "sort": "size", "limit": 7, "offset": 3},
            ["tensors", "--json", "--type", "F32", "--sort", "size", "--limit", "7", "--offset", "3", p],
        ),
        "tensors_layers": (
            {"path": p, "layers": "2-4", "grep": "ffn"},
            ["tensors", "--json", "--layers", "2-4", "--grep", "ffn", "--limit", "100", p],
        ),
        "metadata": ({"path": p}, ["meta", "--json", p]),
        "metadata_key": ({"path": p, "key": "general.architecture"}, ["meta", "--json", p, "general.architecture"]),
        "recipe": ({"path": p}, ["recipe", "--json", p]),
        "memory": (
            {"path": p, "ctx": 8192, "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
            ["mem", "--json", "--ctx", "8192", "-ctk", "q8_0", "-ctv", "q8_0", p],
        ),
        "fit": ({"path": p, "budget": "2GiB"}, ["mem", "--json", "--fit", "2GiB", p]),
        "diff": ({"a": p, "b": other}, ["diff", "--json", p, other]),
        "template_info": ({"path": p}, ["template", "info", "--json", p]),
        "template_lint": ({"path": p}, ["template", "lint", "--json", p]),
        "template_render": ({"path": p, "sample": "tools"}, ["template", "render", "--json", "--sample", "tools", p]),
        "hash": ({"path": p}, ["hash", "--json", p]),
        "verify": ({"manifest": manifest, "path": p}, ["verify", "--json", manifest, p]),
    }


@pytest.fixture(scope="module")
def model_root(smollm2_path: Path, gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding both real models, with a manifest of SmolLM2 next to them."""
    root = smollm2_path.parent
    assert gemma_path.parent == root
    return root


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_every_read_tool_equals_cli_json(
    cli: CliRun, model_root: Path, smollm2_path: Path, gemma_path: Path, which: str, tmp_path: Path
) -> None:
    p, other = (smollm2_path, gemma_path) if which == "smollm2" else (gemma_path, smollm2_path)
    manifest = tmp_path / "manifest.json"
    assert cli("manifest", "-o", str(manifest), str(p))[0] == 0
    cases = cli_equivalents(str(p), str(other), str(manifest))

    async def calls(c: Client) -> dict[str, Any]:
        listed = {t.name for t in (await c.list_tools()).tools}
        out = {"_tools": listed}
        for name, (args, _) in cases.items():
            out[name] = await c.call_tool(
                name.split("_page")[0].split("_nocollapse")[0].split("_layers")[0].split("_key")[0], args
            )
        out["type_histogram"] = await c.call_tool("type_histogram", {"path": str(p)})
        return out

    got = session(["--root", str(model_root), "--root", str(tmp_path)], calls)
    assert got["_tools"] == READ_TOOLS  # no write tool without --allow-write
    checked: set[str] = set()
    for name, (_, argv) in cases.items():
        r = got[name]
        code, out, err = cli(*argv)
        if code == 2:  # Gemma has no chat template: the same error both ways
            assert r.is_error and "ggufx: error: " + text(r) == err.strip(), name
            continue
        assert not r.is_error, (name, text(r))
        assert text(r) + "\n" == out, name
        assert r.structured_content == json.loads(out), name
        checked.add(name)
    no_template = {"template_info", "template_lint", "template_render"}
    assert checked == set(cases) - (no_template if which == "gemma" else set())
    info = json.loads(cli("info", "--json", str(p))[1])
    hist = json.loads(text(got["type_histogram"]))
    assert hist == {"path": str(p), "tensor_count": info["tensor_count"], "bpw": info["bpw"], "types": info["types"]}


def test_tensor_paging_walks_every_tensor_once(cli: CliRun, gemma_path: Path) -> None:
    async def pages(c: Client) -> list[dict]:
        out, offset = [], 0
        while offset is not None:
            r = await c.call_tool("tensors", {"path": gemma_path.name, "limit": 50, "offset": offset})
            d = json.loads(text(r))
            out.append(d)
            offset = d["next_offset"]
        return out

    got = session(["--root", str(gemma_path.parent)], pages)
    full = json.loads(cli("tensors", "--json", str(gemma_path))[1])
    assert [len(d["tensors"]) for d in got][:-1] == [50] * (len(got) - 1)
    assert [t for d in got for t in d["tensors"]] == full["tensors"]
    assert all(d["count"] == full["count"] for d in got) and len(got) == -(-full["count"] // 50)


# -- errors, roots and symlinks ------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(FIXTURES / "all-types-v3.gguf", root / "model.gguf")
    shutil.copy(FIXTURES / "all-types-v3.gguf", outside / "secret.gguf")
    os.symlink(outside / "secret.gguf", root / "escape.gguf")
    os.symlink(root / "model.gguf", root / "inner-link.gguf")
    for i in (1, 2, 3):
        name = f"split-0000{i}-of-00003.gguf"
        if i == 2:
            shutil.copy(FIXTURES / name, outside / name)
            os.symlink(outside / name, root / name)
        else:
            shutil.copy(FIXTURES / name, root / name)
    shutil.copy(FIXTURES / "malformed" / "bad-magic.gguf", root / "bad.gguf")
    return root, outside


def test_errors_are_tool_errors_with_the_cli_message(cli: CliRun, roots: tuple[Path, Path]) -> None:
    root, outside = roots

    async def calls(c: Client) -> dict[str, Any]:
        names = {t.name for t in (await c.list_tools()).tools}
        r = {"names": names}
        r["relative_escape"] = await c.call_tool("info", {"path": "../outside/secret.gguf"})
        r["absolute_outside"] = await c.call_tool("info", {"path": str(outside / "secret.gguf")})
        r["symlink_escape"] = await c.call_tool("roles", {"path": "escape.gguf"})
        r["inner_link"] = await c.call_tool("info", {"path": "inner-link.gguf"})
        r["shard_escape"] = await c.call_tool("info", {"path": "split-00001-of-00003.gguf"})
        r["shard_escape_template"] = await c.call_tool("template_info", {"path": "split-00001-of-00003.gguf"})
        r["malformed"] = await c.call_tool("info", {"path": "bad.gguf"})
        r["missing"] = await c.call_tool("info", {"path": "nope.gguf"})
        r["bad_regex"] = await c.call_tool("tensors", {"path": "model.gguf", "grep": "(unclosed"})
        r["bad_type"] = await c.call_tool("tensors", {"path": "model.gguf", "types": ["Q9_K"]})
        r["bad_limit"] = await c.call_tool("tensors", {"path": "model.gguf", "limit": 0})
        r["bad_layers"] = await c.call_tool("tensors", {"path": "model.gguf", "layers": "9-2"})
        r["missing_key"] = await c.call_tool("metadata", {"path": "model.gguf", "key": "no.such.key"})
        r["bad_budget"] = await c.call_tool("fit", {"path": "model.gguf", "budget": "lots"})
        r["remote"] = await c.call_tool("info", {"path": "hf://org/repo/model.gguf"})
        r["far_server"] = await c.call_tool("server_model", {"url": "http://192.0.2.1:8080"})
        r["manifest_outside"] = await c.call_tool("verify", {"manifest": str(outside / "m.json"), "path": "model.gguf"})
        r["alive"] = await c.call_tool("info", {"path": "model.gguf"})
        r["list"] = await c.call_tool("list_models", {"lint": True})
        return r

    r = session(["--root", str(root)], calls)
    assert not r["names"] & WRITE_TOOLS
    rroot = os.path.realpath(root)
    for case in ("relative_escape", "absolute_outside", "symlink_escape"):
        assert r[case].is_error, case
        assert "outside the allowed roots" in text(r[case]) and rroot in text(r[case]), case
    assert not r["inner_link"].is_error
    for case in ("shard_escape", "shard_escape_template"):
        assert r[case].is_error and "a shard of split-00001-of-00003.gguf lies outside the allowed roots" in text(
            r[case]
        )
    # the one-line message the CLI prints after "ggufx: error: "
    for case, rel in (("malformed", "bad.gguf"), ("missing", "nope.gguf")):
        code, _, err = cli("info", os.path.join(rroot, rel))
        assert code == 2 and r[case].is_error
        assert "ggufx: error: " + text(r[case]) == err.strip(), case
    assert text(r["bad_regex"]).startswith("--grep: invalid regular expression")
    assert r["bad_type"].is_error and "Q9_K" in text(r["bad_type"])  # rejected by the input schema's enumeration
    assert r["bad_limit"].is_error and r["bad_layers"].is_error and "ends before it starts" in text(r["bad_layers"])
    assert r["missing_key"].is_error and "no metadata key 'no.such.key'" in text(r["missing_key"])
    assert r["bad_budget"].is_error and text(r["bad_budget"]).startswith("--fit: ")
    assert r["remote"].is_error and "remote sources are disabled" in text(r["remote"])
    assert r["far_server"].is_error and "only a llama-server on this machine" in text(r["far_server"])
    assert r["manifest_outside"].is_error and "outside the allowed roots" in text(r["manifest_outside"])
    assert not r["alive"].is_error  # the server survived all of it
    listed = json.loads(text(r["list"]))
    paths = sorted(m["path"] for m in listed["models"])
    # (model.gguf is the same file as inner-link.gguf: scan lists a file once)
    assert paths == sorted(os.path.join(rroot, n) for n in ("bad.gguf", "inner-link.gguf", "split-00001-of-00003.gguf"))
    # the same rows as `ggufx scan --json ROOT`, without the link that escapes the root
    cli_rows = [
        m for m in json.loads(cli("scan", "--json", rroot)[1])["models"] if not m["path"].endswith("escape.gguf")
    ]
    assert listed["models"] == cli_rows


def test_resources_and_prompt(cli: CliRun, roots: tuple[Path, Path]) -> None:
    root, _ = roots

    async def calls(c: Client) -> dict[str, Any]:
        res = (await c.list_resources()).resources
        model = next(x for x in res if str(x.uri).endswith("/model.gguf"))
        content = await c.read_resource(model.uri)
        prompts = (await c.list_prompts()).prompts
        prompt = await c.get_prompt("audit_quant", {"path": "model.gguf", "ctx": "65536"})
        return {
            "uris": sorted(str(x.uri) for x in res),
            "content": content,
            "prompts": [p.name for p in prompts],
            "prompt": prompt,
        }

    r = session(["--root", str(root)], calls)
    rroot = os.path.realpath(root)
    # one resource per model: the split model once (first shard); the escaping link reads as an error
    assert f"gguf://{rroot}/model.gguf" in r["uris"] and f"gguf://{rroot}/split-00001-of-00003.gguf" in r["uris"]
    assert not any("split-00002" in u for u in r["uris"])
    assert json.loads(r["content"].contents[0].text) == json.loads(
        cli("info", "--json", os.path.join(rroot, "model.gguf"))[1]
    )
    assert r["prompts"] == ["audit_quant"]
    body = r["prompt"].messages[0].content.text
    for step in ("`info`", "`roles`", "`template_lint`", "`memory` with ctx=65536"):
        assert step in body


def test_write_tools_only_with_allow_write(cli: CliRun, roots: tuple[Path, Path]) -> None:
    root, outside = roots
    before_outside = (outside / "secret.gguf").read_bytes()
    tmpl = "{% for m in messages %}{{ m.content }}{% endfor %}"

    async def calls(c: Client) -> dict[str, Any]:
        r = {"names": {t.name for t in (await c.list_tools()).tools}}
        r["set"] = await c.call_tool(
            "set_metadata", {"path": "model.gguf", "key": "general.name", "value": "Patched by an agent"}
        )
        r["template"] = await c.call_tool("set_template", {"path": "model.gguf", "template": tmpl})
        r["delete"] = await c.call_tool(
            "delete_metadata", {"path": "model.gguf", "keys": ["general.name"], "dry_run": True}
        )
        r["escape"] = await c.call_tool("set_metadata", {"path": "escape.gguf", "key": "general.name", "value": "x"})
        r["outside"] = await c.call_tool(
            "set_metadata", {"path": str(outside / "secret.gguf"), "key": "general.name", "value": "x"}
        )
        r["protected"] = await c.call_tool(
            "set_metadata", {"path": "model.gguf", "key": "general.alignment", "value": 64}
        )
        r["info"] = await c.call_tool("metadata", {"path": "model.gguf", "key": "general.name"})
        return r

    r = session(["--root", str(root), "--allow-write"], calls)
    assert WRITE_TOOLS <= r["names"]
    assert not r["set"].is_error and json.loads(text(r["set"]))["dry_run"] is False
    assert not r["template"].is_error
    assert json.loads(text(r["delete"]))["dry_run"] is True
    assert json.loads(text(r["info"]))["value"] == "Patched by an agent"
    assert cli("meta", str(root / "model.gguf"), "tokenizer.chat_template")[1] == tmpl
    for case in ("escape", "outside"):
        assert r[case].is_error and "outside the allowed roots" in text(r[case])
    assert r["protected"].is_error and "general.alignment" in text(r["protected"])
    assert (outside / "secret.gguf").read_bytes() == before_outside


def test_mcp_command_without_sdk_says_how_to_install(tmp_path: Path) -> None:
    import subprocess

    blocker = tmp_path / "mcp.py"
    blocker.write_text("raise ImportError('blocked for the test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "ggufx", "mcp"], capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert p.stderr.strip() == "ggufx: error: the MCP server needs the official MCP SDK: pip install 'ggufx[mcp]'"


def test_list_tools_json_has_units_and_enumerations(cli: CliRun) -> None:
    code, out, _ = cli("mcp", "--root", str(FIXTURES), "--list-tools", "--json")
    assert code == 0
    tools = {t["name"]: t for t in json.loads(out)}
    assert set(tools) == READ_TOOLS
    mem = tools["memory"]["input_schema"]["properties"]
    assert mem["cache_type_k"]["enum"] == ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
    assert "tokens" in mem["ctx"]["description"]
    assert "Q6_K" in tools["tensors"]["input_schema"]["properties"]["types"]["anyOf"][0]["items"]["enum"]
    assert "bytes" in tools["info"]["description"]


# -- the model a llama-server runs -------------------------------------------------------------


def test_server_option_and_tool_against_a_fake_llama_server(cli: CliRun, smollm2_path: Path) -> None:
    template = cli("meta", str(smollm2_path), "tokenizer.chat_template")[1]
    plain = json.loads(cli("info", "--json", str(smollm2_path))[1])
    with FakeLlamaServer(str(smollm2_path), template, n_ctx=8192) as same:
        code, out, err = cli("info", "--json", "--server", same.url)
        assert code == 0, err
        d = json.loads(out)
        server = d.pop("server")
        assert d == plain
        assert server == {
            "url": same.url,
            "model_path": str(smollm2_path),
            "model_ids": [smollm2_path.name],
            "n_ctx": 8192,
            "build_info": "b0-fake",
            "template_matches_file": True,
            "note": None,
        }
        assert "note:" not in err
        code, out, _ = cli("tensors", "--server", same.url, "--json", "--limit", "3")
        assert code == 0 and json.loads(out)["path"] == str(smollm2_path)
        code, out, _ = cli("template", "show", f"--server={same.url}")
        assert out == template

        async def calls(c: Client) -> Any:
            return await c.call_tool("server_model", {"url": same.url})

        r = session(["--root", str(smollm2_path.parent)], calls)
        d = json.loads(text(r))
        assert d["server"]["template_matches_file"] is True and d["info"] == plain
    with FakeLlamaServer(str(smollm2_path), "{{ messages[0].content }}") as other:
        code, out, err = cli("info", "--server", other.url)
        assert code == 0
        assert "ggufx: note: the server uses a different chat template than the file's tokenizer.chat_template" in err
        assert "chat template NOT the file's" in out
    with FakeLlamaServer("/nonexistent/model.gguf", None) as gone:
        code, _, err = cli("info", "--server", gone.url)
        assert code == 2
        assert (
            err.strip()
            == f"ggufx: error: /nonexistent/model.gguf: the llama-server at {gone.url} has this file loaded, but it is not on this machine"
        )
    code, _, err = cli("info", "--server", "http://127.0.0.1:9")
    assert code == 2 and "no llama-server reachable" in err and len(err.strip().splitlines()) == 1


def test_every_tool_rejects_bad_arguments_and_hostile_templates_stay_bounded(cli: CliRun, tmp_path: Path) -> None:
    hostile = FIXTURES / "templates" / "hostile"
    root = tmp_path / "root"
    shutil.copytree(hostile, root)
    names = sorted(p.name for p in hostile.glob("*.jinja"))

    async def calls(c: Client) -> dict[str, Any]:
        out: dict[str, Any] = {"empty": {}, "render": {}}
        for tool in sorted(READ_TOOLS - {"list_models"}):
            out["empty"][tool] = await c.call_tool(tool, {})  # every other tool has a required argument
        out["wrong_lint"] = await c.call_tool("list_models", {"lint": "very"})
        out["wrong_type"] = await c.call_tool("memory", {"path": "x.gguf", "ctx": "lots"})
        out["wrong_enum"] = await c.call_tool("memory", {"path": "x.gguf", "cache_type_k": "q3_0"})
        for n in names:
            out["render"][n] = await c.call_tool("template_render", {"path": n, "sample": "plain"})
        out["alive"] = await c.list_tools()
        return out

    r = session(["--root", str(root)], calls)
    for tool, res in r["empty"].items():
        assert res.is_error, tool
    assert r["wrong_lint"].is_error
    assert r["wrong_type"].is_error and r["wrong_enum"].is_error and "q3_0" in text(r["wrong_enum"])
    assert sorted(names) == sorted(f"{n}.jinja" for n in HOSTILE_TEMPLATES)
    for n in names:
        code, out, err = cli("template", "render", "--json", "--sample", "plain", str(root / n))
        res = r["render"][n]
        # a template's failure is a result (exit 1), not a tool error: the answer is the CLI's JSON
        assert code == 1 and not res.is_error and text(res) + "\n" == out, (n, code, err)
        # every hostile template is stopped, in the server too, by the bound or sandbox rule its error names
        kind, stopped_by = HOSTILE_TEMPLATES[n.removesuffix(".jinja")]
        (result,) = res.structured_content["results"]
        assert result["output"] is None and result["kind"] == kind and stopped_by in result["error"], (n, result)
    assert {t.name for t in r["alive"].tools} == READ_TOOLS


def test_streamable_http_transport(cli: CliRun, tmp_path: Path) -> None:
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ggufx", "mcp", "--root", str(FIXTURES), "--http", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)

        async def go() -> Any:
            async with Client(f"http://127.0.0.1:{port}/mcp") as c:
                return await c.call_tool("info", {"path": "all-types-v3.gguf"})

        r = anyio.run(go)
        assert not r.is_error
        assert text(r) + "\n" == cli("info", "--json", str(FIXTURES / "all-types-v3.gguf"))[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_remote_sources_with_allow_remote(cli: CliRun, tmp_path: Path) -> None:
    from .httpserver import RangeServer

    with RangeServer({"model.gguf": FIXTURES / "all-types-v3.gguf"}) as srv:
        url = srv.url("model.gguf")

        async def calls(c: Client) -> Any:
            return await c.call_tool("info", {"path": url}), await c.call_tool("template_show_missing", {})

        info, unknown = session(["--root", str(tmp_path), "--allow-remote"], calls)
        assert not info.is_error
        assert text(info) + "\n" == cli("info", "--json", "--no-cache", url)[1]
        assert unknown.is_error  # an unknown tool is an error, not a crash


def test_server_option_with_an_api_key(cli: CliRun, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    with FakeLlamaServer(str(smollm2_path), None, api_key="sekrit") as srv:
        code, _, err = cli("info", "--server", srv.url)
        assert code == 2 and "started with --api-key): set LLAMA_API_KEY" in err
        monkeypatch.setenv("LLAMA_API_KEY", "sekrit")
        code, out, err = cli("info", "--json", "--server", srv.url)
        assert code == 0, err
        assert json.loads(out)["server"]["model_path"] == str(smollm2_path)
        assert "sekrit" not in err + out


def test_memory_and_fit_with_a_projector_equal_cli_json(cli: CliRun, hole_models: dict[str, Path]) -> None:
    """An agent asking whether the Qwen3.6 27B and its projector fit gets what `mem --mmproj` prints."""
    model, mmproj = str(hole_models["qwen36-27b"]), str(hole_models["mmproj-qwen36-27b"])

    async def calls(c: Client) -> dict[str, Any]:
        return {
            "memory": await c.call_tool("memory", {"path": model, "ctx": 32768, "mmproj": mmproj}),
            "fit": await c.call_tool("fit", {"path": model, "budget": "24GiB", "mmproj": mmproj}),
        }

    got = session(["--root", str(Path(model).parent)], calls)
    for name, argv in (
        ("memory", ["mem", "--json", "--ctx", "32768", "--mmproj", mmproj, model]),
        ("fit", ["mem", "--json", "--fit", "24GiB", "--mmproj", mmproj, model]),
    ):
        code, out, _ = cli(*argv)
        assert code == 0 and not got[name].is_error, (name, text(got[name]))
        assert got[name].structured_content == json.loads(out), name
    buffers = got["memory"].structured_content["buffers"]
    assert {(b["kind"], b["buft"]) for b in buffers if b["kind"].startswith("projector")} == {
        ("projector", "CUDA0"),
        ("projector_compute", "CUDA0"),
        ("projector_compute", "CPU"),
    }
    # llama-server keeps the projector's tensors and warmup compute free on CUDA0 (884.62 + 248.10 MiB
    # in the recorded q27-mmproj-c32768 log)
    (reserved,) = got["fit"].structured_content["projector_bytes"].items()
    assert reserved[0] == "CUDA0" and abs(reserved[1] / (1 << 20) - (884.62 + 248.10)) <= 0.01


def test_memory_of_an_embedding_run_equals_cli_json(cli: CliRun, smollm2_path: Path) -> None:
    """The memory tool's embedding and pooling arguments are `mem --embedding --pooling`: an agent sizing an
    embedding server gets the embeddings in the output buffer and the pooling's note, as the CLI prints them."""

    async def calls(c: Client) -> dict[str, Any]:
        return {
            "embedding": await c.call_tool(
                "memory", {"path": str(smollm2_path), "ctx": 2048, "embedding": True, "pooling": "mean"}
            ),
            "plain": await c.call_tool("memory", {"path": str(smollm2_path), "ctx": 2048}),
            "bad": await c.call_tool("memory", {"path": str(smollm2_path), "pooling": "max"}),
        }

    got = session(["--root", str(smollm2_path.parent)], calls)
    code, out, err = cli("mem", "--json", "-c", "2048", "--embedding", "--pooling", "mean", str(smollm2_path))
    assert code == 0 and not got["embedding"].is_error, (err, text(got["embedding"]))
    emb, plain = got["embedding"].structured_content, got["plain"].structured_content
    assert emb == json.loads(out)
    assert (emb["embeddings"], emb["pooling"], plain["embeddings"]) == (True, "mean", False)

    def output(d: dict[str, Any]) -> int:
        return sum(b["bytes"] for b in d["buffers"] if b["kind"] == "output")

    assert output(emb) > output(plain)
    assert got["bad"].is_error


def test_memory_with_the_mtp_draft_context_equals_cli_json(
    cli: CliRun, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The memory tool's spec_type is `mem --spec-type`: draft-mtp adds the MTP context's rows (mtp_*) on a model
    with a NextN block, as the CLI prints them; an unknown type is an error in llama.cpp's words."""
    from tests.graph_arch_logs import cpu_model

    model = str(cpu_model("qwen35moe-mtp", tmp_path_factory.mktemp("mcp-mtp"), smollm2_path))

    async def calls(c: Client) -> dict[str, Any]:
        return {
            "mtp": await c.call_tool("memory", {"path": model, "ctx": 8192, "spec_type": "draft-mtp"}),
            "bad": await c.call_tool("memory", {"path": model, "ctx": 8192, "spec_type": "draft-nope"}),
        }

    got = session(["--root", str(Path(model).parent)], calls)
    code, out, err = cli("mem", "--json", "-c", "8192", "--spec-type", "draft-mtp", model)
    assert code == 0 and not got["mtp"].is_error, (err, text(got["mtp"]))
    assert got["mtp"].structured_content == json.loads(out)
    kinds = {b["kind"] for b in got["mtp"].structured_content["buffers"]}
    assert {"mtp_kv", "mtp_compute"} <= kinds
    assert got["bad"].is_error and "unknown speculative type" in text(got["bad"])
