"""The command line's conventions, checked on every command (issue 22, items 5 and 6): one error
format, one option name per idea, grouped remote options, help and an example everywhere, and the
details a careful user noticed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
import pytest

from tests.support import FIXTURES, CliRun

REMOTE = ("--cache", "--no-cache", "--offline", "--allow-full-download", "--timeout")
RETIRED = ("--set-file", "--from ", "--no-flash-attn", "--flash-attn/--no-flash-attn")  # hidden aliases now


def _commands() -> list[tuple[str, click.Command]]:
    from ggufx.cli import COMMANDS, main

    ctx = click.Context(main)
    out = []
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            out += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
        else:
            out.append((name, cmd))
    return out


COMMAND_NAMES = [n for n, _ in _commands()]


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_command_s_help_follows_the_conventions(cli: CliRun, name: str) -> None:
    cmd = dict(_commands())[name]
    code, out, err = cli(*name.split(), "--help")
    assert code == 0 and not err
    assert "Examples:" in out, f"{name}: no example"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and p.name != "help":
            assert p.help, f"{name} {p.opts}: no help"
    options, _, remote = out.partition("Remote sources (https://, hf://):")
    for opt in REMOTE:
        assert f"  {opt} " not in options, f"{name}: {opt} outside the remote-sources heading"
    if any(isinstance(p, click.Option) and p.opts[0] == "--offline" for p in cmd.params):
        assert all(f"  {opt} " in remote for opt in REMOTE), name
    for retired in RETIRED:
        assert retired not in out, f"{name}: {retired.strip()} is a hidden alias now"
    # a placeholder the help names exists (-o wrote "to OUT", a name no option or argument has)
    assert " OUT " not in out.replace("\n", " "), name
    # an argument the help names exists (template set spoke of a SOURCE it does not have)
    assert "SOURCE" not in out or any(
        isinstance(p, click.Argument) and p.name in ("source", "sources") for p in cmd.params
    ), name


def test_one_name_for_reading_a_value_from_a_file(cli: CliRun) -> None:
    for args in (("set", "--help"), ("template", "set", "--help"), ("edit", "--help")):
        assert "--from-file" in cli(*args).stdout, args


def test_usage_errors_are_one_line(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """click's own errors (a directory for a file, an unknown option, a missing one) and ggufx's
    (-ctv q4_0 with -fa off) all read ``ggufx: error: ...`` on one line, exit 2."""
    for args in (
        ("info", str(tmp_path)),
        ("mem", str(smollm2_path), "-ctv", "q4_0", "-fa", "off"),
        ("--bogus",),
        ("info", "--bogus", str(smollm2_path)),
        ("template", "set", str(smollm2_path)),
        ("nope",),
        ("tensors", str(smollm2_path), "--grep", "("),
    ):
        code, out, err = cli(*args)
        assert code == 2 and not out, args
        assert err.startswith("ggufx: error: ") and err.count("\n") == 1, (args, err)
    assert "a quantized V cache needs flash attention" in cli("mem", str(smollm2_path), "-ctv", "q4_0", "-fa", "off")[2]


def _template_file(tmp_path: Path, text: str) -> Path:
    gguf = tmp_path / "m.gguf"
    shutil.copy(FIXTURES / "raw-base.gguf", gguf)
    (tmp_path / "old.jinja").write_text(text, encoding="utf-8")
    return gguf


def test_template_diffs_never_join_the_last_old_line_and_the_first_new_one(cli: CliRun, tmp_path: Path) -> None:
    gguf = _template_file(tmp_path, "{{ messages }}{% endif %}")
    assert cli("template", "set", str(gguf), "--from-file", str(tmp_path / "old.jinja"))[0] == 0
    (tmp_path / "new.jinja").write_text("{{ messages }}\n{%- if tools %}x{% endif %}\n", encoding="utf-8")
    code, out, _ = cli("template", "set", str(gguf), "--from-file", str(tmp_path / "new.jinja"), "--dry-run")
    assert code == 0
    assert "-{{ messages }}{% endif %}\n\\ No newline at end of file\n+{{ messages }}\n" in out
    code, out, _ = cli("template", "diff", str(gguf), str(tmp_path / "new.jinja"))
    assert code == 1 and "{% endif %}\n\\ No newline at end of file\n+" in out
    assert "%}+{" not in out


def test_report_and_manifest_files_get_the_umask_s_mode(cli: CliRun, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for args, out in (
            (("report", str(FIXTURES / "raw-base.gguf"), "-o"), tmp_path / "r.html"),
            (("manifest", str(FIXTURES / "raw-base.gguf"), "-o"), tmp_path / "m.json"),
        ):
            assert cli(*args, str(out))[0] == 0
            assert out.stat().st_mode & 0o777 == 0o644, args
        out.chmod(0o600)  # a file replaced keeps its mode
        assert cli("manifest", str(FIXTURES / "raw-base.gguf"), "-o", str(out))[0] == 0
        assert out.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_info_lists_a_split_model_once(cli: CliRun) -> None:
    shards = sorted(str(p) for p in FIXTURES.glob("split-0000?-of-00003.gguf"))
    res = json.loads(cli("info", "--json", *shards, str(FIXTURES / "raw-base.gguf")).stdout)
    assert [len(r["shards"]) for r in res] == [3, 1]
    assert cli("info", *shards).stdout.count("in 3 shards") == 1


def test_mem_flash_attention_is_llama_cpp_s_option(cli: CliRun, smollm2_path: Path) -> None:
    help_text = cli("mem", "--help").stdout
    assert "-fa, --flash-attn [on|off|auto]" in help_text and "--no-flash-attn" not in help_text

    def fa(*args: str) -> bool:
        return json.loads(cli("mem", str(smollm2_path), "-c", "4096", *args, "--json").stdout)["flash_attn"]

    assert fa() and fa("-fa", "on") and fa("--flash-attn") and fa("--flash-attn", "auto")
    assert not fa("-fa", "off") and not fa("--no-flash-attn") and not fa("--flash-attn", "off")


def test_the_earlier_option_names_still_work(cli: CliRun, tmp_path: Path) -> None:
    gguf = _template_file(tmp_path, "A")
    for args in (
        ("template", "set", str(gguf), "--from", str(tmp_path / "old.jinja"), "--dry-run", "--json"),
        ("edit", str(gguf), "--set-file", f"tokenizer.chat_template={tmp_path / 'old.jinja'}", "--dry-run", "--json"),
        ("edit", str(gguf), "--from-file", f"tokenizer.chat_template={tmp_path / 'old.jinja'}", "--dry-run", "--json"),
    ):
        code, out, err = cli(*args)
        assert code == 0 and json.loads(out)["changes"][0]["key"] == "tokenizer.chat_template", (args, err)


def test_imatrix_has_no_server_option(cli: CliRun) -> None:
    assert "--server" not in cli("imatrix", "--help").stdout
    code, _, err = cli("imatrix", "--server", "http://127.0.0.1:1", "x.gguf")
    assert code == 2 and "No such option" in err


def test_fit_says_what_its_free_memory_is(cli: CliRun, gemma_path: Path) -> None:
    """One GPU and no recurrent state: llama.cpp's fit reads the size given; on two GPUs its dry run
    holds a 2 MiB page on each, and the text says how much it took off."""
    out = cli("mem", str(gemma_path), "--fit", "1GiB").stdout
    assert "MiB free, 1,024 kept free" in out
    assert "(free: the size given; kept free: the -fitt margin)" in out
    out = cli("mem", str(gemma_path), "--fit", "2GiB,2GiB").stdout
    assert "2,046 MiB free" in out
    assert "free: the size given less what llama.cpp's fit holds as it reads it (CUDA0 2 MiB, CUDA1 2 MiB: " in out


def test_mem_with_gpus_is_a_check(cli: CliRun, gemma_path: Path) -> None:
    """--gpus sizes the model does not fit: exit 1, as every check; it fits: exit 0."""
    code, out, _ = cli("mem", str(gemma_path), "--gpus", "100MiB")
    assert code == 1 and "MiB short" in out
    assert cli("mem", str(gemma_path), "--gpus", "24GiB")[0] == 0
    assert cli("mem", str(gemma_path))[0] == 0  # no --gpus: nothing to check


def test_mem_check_table_has_every_header(cli: CliRun, smollm2_path: Path) -> None:
    log = FIXTURES / "llamacpp-logs" / "2g-smol-ngl99-c8192.log"
    out = cli("mem", str(smollm2_path), "--llama-args", "-ngl 99 -c 8192", "--check", str(log)).stdout
    header = out.splitlines()[0].split()
    assert header[-2:] == ["figure", "check"] and len(header) == 10, header


def test_edit_delete_missing_ok(cli: CliRun, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    shutil.copy(FIXTURES / "raw-base.gguf", gguf)
    code, _, err = cli("edit", str(gguf), "--delete", "general.url")
    assert code == 2 and "no metadata key 'general.url' to delete" in err
    code, out, _ = cli("edit", str(gguf), "--delete", "general.url", "--missing-ok")
    assert (code, out) == (0, "nothing to change\n")
    before = gguf.read_bytes()
    code, out, _ = cli("edit", str(gguf), "--delete", "general.url", "--delete", "general.name", "--missing-ok")
    assert code == 0 and "- general.name" in out and gguf.read_bytes() != before
    assert "general.name" not in cli("meta", str(gguf), "--json").stdout


def test_scan_does_not_say_none_for_a_model_with_a_template(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """SmolLM2's ChatML template renders no tool calls (dialect "none"): the column says so, and a
    file without a template shows "-"."""
    (tmp_path / "smol.gguf").symlink_to(smollm2_path)
    shutil.copy(FIXTURES / "raw-base.gguf", tmp_path / "raw.gguf")
    lines = cli("scan", str(tmp_path)).stdout.splitlines()
    assert "tool calls" in lines[0]
    row = {line.split()[0].rsplit("/", 1)[-1]: line.split() for line in lines[2:4]}
    assert "not rendered" in " ".join(row["smol.gguf"]) and "none" not in row["smol.gguf"]
    assert row["raw.gguf"][-2] == "-"


def test_no_color_turns_colour_off_on_a_terminal(smollm2_path: Path, tmp_path: Path) -> None:
    """NO_COLOR (https://no-color.org): set and not empty, the edit diff and check's PASS/FAIL carry no
    escape sequence even where the output is a terminal (CliRunner's color=True)."""
    from click.testing import CliRunner

    from ggufx.cli import main

    for args in (
        ("set", str(smollm2_path), "general.name", "Foo", "--dry-run"),
        ("check", str(smollm2_path), "--mmproj", str(smollm2_path)),
    ):
        coloured = CliRunner().invoke(main, list(args), color=True)
        assert "\x1b[" in coloured.stdout, args
        for value, escapes in (("1", False), ("", True)):
            r = CliRunner().invoke(main, list(args), color=True, env={"NO_COLOR": value})
            assert r.exit_code == coloured.exit_code and ("\x1b[" in r.stdout) == escapes, (args, value)


def test_a_gpu_size_needs_its_unit(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """`--gpus 24` was a GPU of 24 bytes (mem: "0 MiB free, short"; pick: "2.23517e-08 GiB GPU"): a bare
    number is refused wherever a GPU's free memory is given, naming the option; with a unit it is read."""
    model = str(smollm2_path)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.gguf").symlink_to(smollm2_path)
    for args, option in (
        (("mem", model, "--gpus", "24"), "--gpus"),
        (("mem", model, "--gpus", "24GiB,24"), "--gpus"),
        (("mem", model, "--fit", "24"), "--fit"),
        (("pick", model, "--gpus", "24"), "--gpus"),
        (("report", model, "--gpus", "24"), "--gpus"),
        (("report", str(folder), "--gpus", "24"), "--gpus"),
    ):
        code, out, err = cli(*args)
        assert code == 2 and not out, args
        assert err.startswith("ggufx: error: ") and err.count("\n") == 1, (args, err)
        assert f"{option}: '24' has no unit" in err, (args, err)
    assert json.loads(cli("mem", model, "--gpus", "24G", "--json").stdout)["devices"][0]["free"] == 24 << 30
    assert cli("pick", model, "--gpus", "24 GiB").exit_code == 0
    assert cli("mem", model, "--gpus", "0").exit_code == 0  # no GPU, as --gpus none


def test_json_keeps_the_errors_of_the_text_answer(cli: CliRun, smollm2_path: Path) -> None:
    """`template show --json --name nope` printed every template and exited 0: --json changes the answer's
    form, never what is an error."""
    for args in (("template", "show", str(smollm2_path), "--name", "nope"), ("meta", str(smollm2_path), "no.such")):
        text, as_json = cli(*args), cli(*args, "--json")
        assert text.exit_code == as_json.exit_code == 2 and not as_json.stdout, args
        assert as_json.stderr == text.stderr and text.stderr.startswith("ggufx: error: "), args


def test_template_set_refuses_an_empty_template(cli: CliRun, tmp_path: Path) -> None:
    """An empty (or blank) --from-file wrote an empty chat template, erasing the model's: refused, saying how
    a template is removed on purpose; the file is unchanged."""
    gguf = _template_file(tmp_path, "{{ messages }}")
    assert cli("template", "set", str(gguf), "--from-file", str(tmp_path / "old.jinja"))[0] == 0
    before = gguf.read_bytes()
    (tmp_path / "empty.jinja").write_text("")
    (tmp_path / "blank.jinja").write_text(" \n")
    for source in ("empty.jinja", "blank.jinja"):
        for extra in ((), ("--dry-run",)):
            code, out, err = cli("template", "set", str(gguf), "--from-file", str(tmp_path / source), *extra)
            assert code == 2 and not out and err.count("\n") == 1, (source, err)
            assert err.startswith("ggufx: error: ") and "the template is empty" in err
            assert "ggufx delete FILE tokenizer.chat_template" in err
    assert gguf.read_bytes() == before


def test_a_file_that_cannot_be_written_is_one_line(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """-o or --junit into a folder that does not exist was an internal error naming a temporary file: one line
    naming the file asked for, exit 2."""
    missing = tmp_path / "no" / "such"
    model = str(smollm2_path)
    for args, out in (
        (("report", model, "-o"), missing / "r.html"),
        (("manifest", model, "-o"), missing / "m.json"),
        (("check", model, "--mmproj", model, "--junit"), missing / "r.xml"),
    ):
        code, _, err = cli(*args, str(out))
        assert code == 2 and err == f"ggufx: error: {out}: No such file or directory\n", (args, err)


def test_a_context_in_k_is_refused_saying_what_to_write(cli: CliRun, smollm2_path: Path) -> None:
    """`-c 32k`: llama.cpp's std::stoi reads it as 32 tokens; ggufx refuses it (mem, pick) and says what to write,
    in words a user knows (click said "'32k' is not a valid integer range")."""
    for args in (("mem", str(smollm2_path)), ("pick", str(smollm2_path), "--gpus", "24GiB")):
        code, out, err = cli(*args, "-c", "32k")
        assert code == 2 and not out and err.count("\n") == 1, (args, err)
        assert "'32k' is not a whole number. Write 32768 for 32K tokens (llama.cpp would read 32k as 32)." in err
    assert cli("tensors", str(smollm2_path), "--limit", "x").stderr.endswith("'x' is not a whole number.\n")


def test_tensors_of_layers_the_model_lacks_is_an_error(cli: CliRun, smollm2_path: Path) -> None:
    """`tensors --layers 50-60` of a 30-layer model printed an empty table, exit 0, as if layers 50-60 had no
    tensors: it names the layers the model has; a range that overlaps them still lists what it holds."""
    for span in ("50-60", "30"):
        for extra in ((), ("--json",)):
            code, out, err = cli("tensors", str(smollm2_path), "--layers", span, *extra)
            assert code == 2 and not out and err.count("\n") == 1, (span, err)
            assert f"'{span}': no such layer in {smollm2_path} (its layers are 0-29)" in err
    d = json.loads(cli("tensors", str(smollm2_path), "--layers", "29-40", "--json").stdout)
    assert d["count"] == 9 and {t["name"].split(".")[1] for t in d["tensors"]} == {"29"}


def test_scan_of_a_folder_that_is_not_there_is_an_error(cli: CliRun, tmp_path: Path) -> None:
    """`scan ~/modles` printed an empty table, exit 0: a folder named on the command line must exist (the
    Hugging Face cache and the Ollama store may be absent: nothing to scan there)."""
    code, out, err = cli("scan", str(tmp_path / "modles"))
    assert code == 2 and not out and err == f"ggufx: error: {tmp_path / 'modles'}: no such folder\n"
    env = {
        "HF_HUB_CACHE": str(tmp_path / "no-hf"),
        "HF_HOME": str(tmp_path / "no-hf"),
        "OLLAMA_MODELS": str(tmp_path / "no"),
    }
    assert cli("scan", "--hf-cache", "--ollama", env=env).exit_code == 0


def test_template_render_checks_its_json_inputs(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """--messages [1, 2] failed inside the template (exit 1, the template blamed) and --tools {"x": 1} was taken
    as tools: each is an input error naming the option, exit 2; a conversation with "tools": null has none."""
    cases = {
        "nums.json": ("--messages", [1, 2], 'message 0 is not an object with a "role"'),
        "norole.json": ("--messages", [{"content": "hi"}], 'message 0 is not an object with a "role"'),
        "objtools.json": ("--tools", {"x": 1}, "expected a JSON list of tool schemas"),
        "convtools.json": (
            "--messages",
            {"messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}},
            '"tools" must be a list',
        ),
    }
    for name, (option, doc, said) in cases.items():
        (tmp_path / name).write_text(json.dumps(doc))
        code, out, err = cli("template", "render", str(smollm2_path), option, str(tmp_path / name))
        assert code == 2 and not out and err.count("\n") == 1, (name, err)
        assert err.startswith(f"ggufx: error: Invalid value for {option}: {tmp_path / name}: {said}"), (name, err)
    (tmp_path / "ok.json").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": None}))
    assert cli("template", "render", str(smollm2_path), "--messages", str(tmp_path / "ok.json")).exit_code == 0
