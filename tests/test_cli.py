"""The command line: output, JSON interface, exit codes, one-line errors, start-up imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ggufx.cli import COMMANDS, main
from ggufx.errors import FormatError
from tests.support import FIXTURES, CliRun

V3 = str(FIXTURES / "all-types-v3.gguf")


def _all_commands() -> list[tuple[str, ...]]:
    import click

    out = []
    for name in COMMANDS:
        cmd = main.get_command(None, name)
        if isinstance(cmd, click.Group):
            out += [(name, sub) for sub in cmd.list_commands(None)]
        else:
            out.append((name,))
    return out


@pytest.mark.parametrize("command", _all_commands(), ids=" ".join)
def test_every_command_has_help_with_examples(cli: CliRun, command: tuple[str, ...]) -> None:
    r = cli(*command, "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.output and f"ggufx {' '.join(command)}" in r.output
    assert "--json" in r.output


def test_info_json_interface(cli: CliRun) -> None:
    r = cli("info", "--json", V3)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for key in ("architecture", "tensor_count", "parameters", "tensor_bytes", "file_bytes", "bpw", "types"):
        assert key in d
    assert d["architecture"] == "llama" and d["tensor_count"] == 9
    assert d["file_bytes"] == (FIXTURES / "all-types-v3.gguf").stat().st_size
    assert set(d["types"]) == {"Q8_0", "F32", "Q4_K", "Q5_0", "Q6_K", "F16", "BF16", "Q4_0"}
    assert d["types"]["F32"] == {
        "count": 2,
        "parameters": 128,
        "bytes": 512,
        "share": round(512 / d["tensor_bytes"], 6),
        "bpw": 32.0,
    }
    assert sum(t["bytes"] for t in d["types"].values()) == d["tensor_bytes"]
    assert sum(t["parameters"] for t in d["types"].values()) == d["parameters"]
    assert d["bpw"] == round(8 * d["tensor_bytes"] / d["parameters"], 4)
    assert d["file_type_label"] == "Q4_K_M" and d["context_length"] == 4096


def test_info_text(cli: CliRun) -> None:
    r = cli("info", V3)
    assert r.exit_code == 0
    for phrase in ("architecture      llama", "file type         Q4_K_M", "Q4_K ", "BPW", "chat template     "):
        assert phrase in r.output
    assert "\x1b[" not in r.output  # no colour when not a terminal


def test_info_several_files_continue_after_a_bad_one(cli: CliRun) -> None:
    bad = str(FIXTURES / "malformed" / "bad-magic.gguf")
    r = cli("info", "--json", V3, bad, str(FIXTURES / "big-endian.gguf"))
    assert r.exit_code == 2
    docs = json.loads(r.stdout)
    assert len(docs) == 2
    assert f"ggufx: error: {bad}: offset 0: not a GGUF file" in r.stderr


def test_tablefmt_github(cli: CliRun) -> None:
    r = cli("info", V3, "--tablefmt", "github")
    assert r.exit_code == 0 and "| type " in r.output


def test_tensors_filters_and_sort(cli: CliRun) -> None:
    r = cli("tensors", V3, "--json", "--grep", r"^blk\.0\.", "--sort", "size")
    d = json.loads(r.output)
    names = [t["name"] for t in d["tensors"]]
    assert all(n.startswith("blk.0.") for n in names) and d["count"] == 6
    sizes = [t["bytes"] for t in d["tensors"]]
    assert sizes == sorted(sizes, reverse=True)
    r = cli("tensors", V3, "--json", "--type", "q4_k", "--type", "F32")
    assert {t["type"] for t in json.loads(r.output)["tensors"]} == {"Q4_K", "F32"}
    r = cli("tensors", V3)
    assert r.exit_code == 0
    assert re.search(r"^blk\.0\.attn_q\.weight +Q4_K +256 x 4 +1,024 +576 +4\.50 +[\d,]+$", r.output, re.M)


def test_tensors_bad_options_are_usage_errors(cli: CliRun) -> None:
    assert cli("tensors", V3, "--type", "Q9_X").exit_code == 2
    assert cli("tensors", V3, "--grep", "(").exit_code == 2
    assert cli("tensors", V3, "--sort", "color").exit_code == 2


def test_tensors_on_split_model_show_shard(cli: CliRun) -> None:
    r = cli("tensors", str(FIXTURES / "split-00002-of-00003.gguf"), "--json")
    d = json.loads(r.output)
    assert [t["shard"] for t in d["tensors"]] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert "shard" in cli("tensors", str(FIXTURES / "split-00002-of-00003.gguf")).output


def test_meta_listing_and_single_keys(cli: CliRun) -> None:
    r = cli("meta", V3)
    assert r.exit_code == 0
    assert "tokenizer.ggml.tokens" in r.output and "arr[str,5]" in r.output
    assert "test.arr.nested" in r.output and "arr[arr[i32,2],3]" in r.output
    d = json.loads(cli("meta", V3, "--json").output)["metadata"]
    assert d["test.f32"] == {"type": "f32", "value": 0.1, "offset": d["test.f32"]["offset"]}
    assert d["test.u64"]["value"] == 2**63 + 5
    assert d["tokenizer.ggml.tokens"]["length"] == 5 and d["tokenizer.ggml.tokens"]["element_type"] == "str"
    assert cli("meta", V3, "llama.context_length").output == "4096\n"
    assert cli("meta", V3, "test.bool").output == "true\n"
    assert json.loads(cli("meta", V3, "test.arr.nested").output) == [[1, 2], [3], [4, 5, 6]]
    raw = cli("meta", V3, "tokenizer.chat_template")
    assert raw.stdout_bytes.startswith(b"{% for message in messages %}") and not raw.stdout_bytes.endswith(b"\n")
    missing = cli("meta", V3, "no.such.key")
    assert missing.exit_code == 2 and "no metadata key" in missing.output


def test_meta_full_arrays(cli: CliRun) -> None:
    big = cli("meta", V3, "--json").output
    assert json.loads(big)["metadata"]["test.arr.str"]["truncated"] is False
    full = json.loads(cli("meta", V3, "--json", "--full").output)["metadata"]
    assert full["test.arr.str"]["value"] == ["a", "", "ünï", "<|im_start|>"]


def test_invalid_utf8_value_survives_json(cli: CliRun) -> None:
    r = cli("meta", str(FIXTURES / "edge-values.gguf"), "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)["metadata"]
    assert d["edge.bad_utf8_value"]["value"] == "ok\udcff\udcfe"


@pytest.mark.parametrize("name", ["bad-magic", "truncated-in-tensor-info", "duplicate-key", "version-1"])
def test_bad_input_is_one_line_exit_2_no_traceback(cli: CliRun, name: str) -> None:
    path = FIXTURES / "malformed" / f"{name}.gguf"
    for cmd in ("info", "tensors", "meta"):
        r = cli(cmd, str(path))
        assert r.exit_code == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ggufx: error: {path}: ")
        assert "Traceback" not in r.output


def test_error_names_offset(cli: CliRun) -> None:
    r = cli("info", str(FIXTURES / "malformed" / "duplicate-key.gguf"))
    expected = json.loads((FIXTURES / "malformed" / "expected.json").read_text())["duplicate-key"]
    assert f": offset {expected['offset']}: duplicate metadata key 'general.name'" in r.stderr


def test_debug_shows_traceback(cli: CliRun) -> None:
    # without --debug the error is a one-line message and SystemExit(2); with it, the exception itself
    r = cli("--debug", "info", str(FIXTURES / "malformed" / "bad-magic.gguf"), catch_exceptions=True)
    assert r.exit_code == 1 and type(r.exception) is FormatError and "not a GGUF file" in str(r.exception)


def test_missing_file_exit_2(cli: CliRun) -> None:
    r = cli("info", str(FIXTURES / "missing.gguf"))
    assert r.exit_code == 2 and "no such file" in r.stderr


def _modules_after(args: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main({args!r}, prog_name='ggufx')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(','.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(proc.stderr.strip().split(","))


def test_help_and_info_do_not_import_numpy_or_tabulate() -> None:
    for args in (["--help"], ["info", V3], ["info", "--json", V3]):
        mods = _modules_after(args)
        assert "numpy" not in mods, args
        assert "tabulate" not in mods, args
        assert "jinja2" not in mods, args
        # remote reading and the MCP SDK cost nothing until used
        assert not mods & {"http.client", "ssl", "ggufx.io.remote", "ggufx.analysis.memory", "mcp", "pydantic"}, args
    assert "ggufx.cli.inspect" not in _modules_after(["--help"])


def test_mem_imports_the_projector_only_for_a_projector(tmp_path: Path) -> None:
    """``mem`` without --mmproj imports no projector graph nor the companion checks (ProjectorOptions
    lives in a light module), ``info`` no memory module; with --mmproj both come (the check can fail)."""
    from tests.companion_files import write_base, write_projector

    base, mmproj = tmp_path / "base.gguf", tmp_path / "mmproj.gguf"
    write_base(base)
    write_projector(mmproj)
    heavy = {"ggufx.analysis.memory.graph.projector", "ggufx.analysis.companions"}
    plain = _modules_after(["mem", str(base), "-c", "256", "--json"])
    assert "ggufx.analysis.memory.buffers" in plain  # it did compute the memory
    assert not plain & heavy, plain & heavy
    # llama.cpp's argument table is read only for a command line (--llama-args)
    args_table = {"ggufx.analysis.memory.llamaargs", "ggufx.analysis.memory.llama_arg_table"}
    assert not plain & args_table, plain & args_table
    assert args_table <= _modules_after(["mem", str(base), "--llama-args", "llama-server -c 256", "--json"])
    assert heavy <= _modules_after(["mem", str(base), "-c", "256", "--mmproj", str(mmproj), "--json"])
    info = _modules_after(["info", str(base)])
    assert not {m for m in info if m.startswith("ggufx.analysis.memory")}
    # the results package imports a result module on first use: info neither memory's nor the templates'
    assert "ggufx.results.inspection" in info
    assert not info & {"ggufx.results.memory", "ggufx.results.templates", "ggufx.results.report", "ggufx.chat"}


def test_results_names_are_the_functions_once_their_modules_are_imported() -> None:
    """``results.memory``, ``results.report`` and ``results.pick`` are functions, also after their
    modules of the same name were imported (which binds a module on its package)."""
    code = (
        "import ggufx.results.memory, ggufx.results.report, ggufx.results.pick\n"
        "from ggufx import results\n"
        "print(all(callable(f) and f.__module__.startswith('ggufx.results.') "
        "for f in (results.memory, results.report, results.pick)), results.MemoryRequest.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["True", "MemoryRequest"]
    with pytest.raises(AttributeError):
        import ggufx.results

        _ = ggufx.results.no_such_name


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "ggufx", "info", "--json", V3], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["tensor_count"] == 9


def test_report_and_manifest_files_are_written_whole_and_alone(cli: CliRun, tmp_path: Path) -> None:
    """-o writes through a uniquely named file beside the target and a rename: nothing else is left."""
    model = str(FIXTURES / "all-types-v3.gguf")
    out = tmp_path / "out"
    out.mkdir()
    assert cli("report", model, "-o", str(out / "r.html")).exit_code == 0
    assert cli("manifest", model, "-o", str(out / "m.json")).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["m.json", "r.html"]
    assert "<h1>" in (out / "r.html").read_text() and json.loads((out / "m.json").read_text())["models"]
