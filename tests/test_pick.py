"""``ggufx pick`` (#24): every quant of a folder or Hub repository against the GPUs and a context.

The folder is made by llama.cpp's own tools from the SmolLM2 test model (llama-quantize to several
types, llama-gguf-split for a split one), with two projectors of SmolVLM's shape (output 576, SmolLM2's
width; F16 and F32), a projector of another width and a file with a corrupt header. Each model's row
must give the same llama.cpp --fit decision and largest contexts as ``ggufx mem --fit`` on that file,
and its command line must be accepted by llama-server's own argument parser and allocate, by
``ggufx mem --llama-args``, the buffers the row promises. The same folder served as a Hub repository
by tests/httpserver.py gives the same table, from a few requests per file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ggufx.io.remote as remote
from tests.support import FIXTURES, CliRun

from .httpserver import RangeServer

pytestmark = pytest.mark.llamacpp

QUANTS = ("Q8_0", "Q4_K_M", "Q2_K")  # made by llama-quantize; Q6_K split in 3; the Q4_1 original
SPLIT = "Q6_K/SmolLM2-135M-Instruct.Q6_K"  # in a folder of its own, as Hub repositories keep split quants
GPUS = "1.5GiB"  # with the projector, the two 8-bit quants do not fit entirely at 8192 tokens, the rest do
CTX = 8192


def write_projector(path: Path, out: int = 576, f32: bool = False, gemma: bool = False) -> Path:
    """A header-only projector (make_projectors.py's SmolVLM-256M, or Gemma 3 4B), its data a hole."""
    sys.path.insert(0, str(FIXTURES / "projector-logs"))
    import make_projectors as mp  # noqa: PLC0415 - a script beside the recorded logs

    kv, tensors = mp.gemma3_4b() if gemma else mp.idefics3_256m()
    kv = {**kv, "clip.vision.projection_dim": out}
    if f32:
        kv["general.file_type"] = 0
        tensors = [(n, ne, mp.F32) for n, ne, _ in tensors]
    _, size = mp.write_model(path, "clip", path.stem, kv, tensors, None, 0)
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


@pytest.fixture(scope="session")
def quant_folder(llama_bin: Path, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a Hub repository holds it: quants, a split quant, two projectors, a corrupt file."""
    d = tmp_path_factory.mktemp("quants")
    stem = "SmolLM2-135M-Instruct"
    (d / "Q6_K").mkdir()
    shutil.copy(smollm2_path, d / smollm2_path.name)
    for t in (*QUANTS, "Q6_K"):
        out = d / f"{stem}.{t}.gguf" if t != "Q6_K" else d.parent / f"{stem}.{t}.gguf"
        proc = subprocess.run(
            [str(llama_bin / "llama-quantize"), "--allow-requantize", str(smollm2_path), str(out), t],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run(
        [
            str(llama_bin / "llama-gguf-split"),
            "--split",
            "--split-max-tensors",
            "120",
            str(d.parent / f"{stem}.Q6_K.gguf"),
            str(d / SPLIT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(d.glob(f"{SPLIT}-000*-of-00003.gguf"))) == 3
    write_projector(d / f"mmproj-{stem}-F32.gguf", f32=True)
    write_projector(d / f"mmproj-{stem}-F16.gguf")
    (d / f"{stem}.Q3_K_S.gguf").write_bytes((d / f"{stem}.Q2_K.gguf").read_bytes()[:1000])
    return d


def pick_json(cli: CliRun, *args: str) -> dict:
    r = cli("pick", "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def picked(quant_folder: Path) -> dict:
    """``pick FOLDER --gpus 1.5GiB -c 8192 --json`` (computed once: every test below reads it)."""
    from click.testing import CliRunner

    from ggufx import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.COMMANDS, "pick", ("pick", "pick", ""))
        r = CliRunner().invoke(cli.main, ["pick", "--json", str(quant_folder), "--gpus", GPUS, "-c", str(CTX)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_folder_rows_and_recommendation(picked: dict, quant_folder: Path) -> None:
    rows = {r["name"]: r for r in picked["models"]}
    stem = "SmolLM2-135M-Instruct"
    # one row per model (the 3 shards are one), the projectors listed as companions, not ranked
    assert set(rows) == {f"{stem}.{t}.gguf" for t in ("Q4_1", *QUANTS, "Q3_K_S")} | {f"{SPLIT}-*-of-00003.gguf"}
    assert rows[f"{SPLIT}-*-of-00003.gguf"]["shards"] == 3
    assert sorted(c["name"] for c in picked["companions"]) == [f"mmproj-{stem}-F16.gguf", f"mmproj-{stem}-F32.gguf"]
    # the corrupt header: a row with its error (file and offset), ranked last; the rest still ranked
    broken = rows[f"{stem}.Q3_K_S.gguf"]
    assert broken["error"].startswith(str(quant_folder / f"{stem}.Q3_K_S.gguf") + ": offset ")
    assert picked["models"][-1] is not None and picked["models"][-1]["name"] == broken["name"]
    good = [r for r in picked["models"] if r["error"] is None]
    assert len(good) == 5 and all(r["command"] for r in good)
    # quant label, BPW and parameters as `ggufx info` (llama.cpp's figures) gives them
    for r in good:
        info = ggufx_info(r["path"])
        assert (r["quant"], r["bpw"], r["parameters"], r["file_bytes"]) == (
            info.file_type_label,
            round(info.bpw, 4),
            info.parameters,
            info.file_bytes,
        )
    # F16 projector chosen over F32 (both fit), counted on the first GPU
    assert all(r["projector"] == str(quant_folder / f"mmproj-{stem}-F16.gguf") for r in good)
    assert all(r["projector_bytes"] > 0 and r["gpus"][0]["projector"] > 0 for r in good)
    assert not any("fits none" in n for n in picked["notes"])
    # the budget splits the quants: the recommendation is the highest BPW among those that fit entirely,
    # the runner-up a higher BPW that runs with layers on the host
    fitting = [r for r in good if r["fits"]]
    partial = [r for r in good if not r["fits"]]
    assert fitting and partial
    best = max(fitting, key=lambda r: r["bpw"])
    assert picked["recommendation"] == best["name"] == picked["models"][0]["name"]
    up = rows[picked["runner_up"]]
    assert not up["fits"] and up["bpw"] == max(r["bpw"] for r in partial) > best["bpw"]
    assert up["n_gpu_layers"] < up["n_layer"] + 1 and f"-ngl {up['n_gpu_layers']}" in up["command_line"]
    assert picked["summary"].startswith(f"Pick {best['name']} ") and up["name"] in picked["summary"]
    # ranked: entirely on the GPUs by BPW, then the rest by BPW
    assert [r["name"] for r in good] == [r["name"] for r in sorted(fitting, key=lambda r: -r["bpw"])] + [
        r["name"] for r in sorted(partial, key=lambda r: -r["bpw"])
    ]


def ggufx_info(path: str):  # noqa: ANN201
    import ggufx

    return ggufx.info(path)


def _mem(cli: CliRun, path: str, *args: str) -> dict:
    r = cli("mem", path, "--json", "--tool", "llama-server", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_each_row_equals_mem_on_that_file(cli: CliRun, picked: dict) -> None:
    """The fit decision, the largest contexts and the promised buffers are `mem`'s on that file."""
    for r in picked["models"]:
        if r["error"]:
            continue
        asked = f"--mmproj {shlex.quote(r['projector'])} -ctk f16 -ctv f16"
        at_ctx = _mem(cli, r["path"], "--fit", GPUS, "-fitt", "1024", "--llama-args", f"-c {CTX} {asked}")
        lc = at_ctx["llama_cpp"]
        assert (lc["status"], lc["args"]) == (r["llama_cpp_fit"]["status"], r["llama_cpp_fit"]["args"]), r["name"]
        assert r["fits"] == (lc["status"] == "unchanged")
        assert at_ctx["projector_bytes"] == {"CUDA0": r["projector_bytes"]}
        # the largest context per cache type: `mem --fit` without -c (up to the training context)
        free = _mem(cli, r["path"], "--fit", GPUS, "-fitt", "1024", "--llama-args", asked)
        assert {f["cache_type"]: f["n_ctx"] for f in free["fits"]} == r["largest_context"], r["name"]
        assert 0 < min(r["largest_context"].values()) <= r["n_ctx_train"]
        if r["fits"]:
            assert r["largest_context"]["f16"] >= CTX
        else:
            assert r["largest_context"]["f16"] < CTX
        # the printed command allocates what the row promises
        promised = _mem(cli, r["path"], "--gpus", GPUS, "--llama-args", shlex.join(r["command"][1:]))
        dev = next(d for d in promised["devices"] if d["name"] == "CUDA0")
        g = r["gpus"][0]
        assert (dev["model"], dev["context"], dev["compute"], dev["companions"]) == (
            g["model"],
            g["context"],
            g["compute"],
            g["projector"],
        ), r["name"]
        assert g["total"] == dev["self"] + dev["companions"] and g["headroom"] == g["free"] - g["total"]
        assert promised["n_ctx"] == r["n_ctx"] == CTX
        if r["fits"]:
            assert promised["layers_offloaded"] == r["n_layer"] + 1
        else:
            assert promised["layers_offloaded"] == r["n_gpu_layers"]


def test_llama_args_size_every_figure_and_stay_in_the_command(cli: CliRun, picked: dict, quant_folder: Path) -> None:
    """The user's other llama-server options (one slot, a 1024-token micro-batch): each row's fit decision and
    promised buffers are `mem`'s with them, and its command line carries them as given."""
    extra = "-np 1 -ub 1024"
    res = pick_json(cli, str(quant_folder), "--gpus", GPUS, "-c", str(CTX), "--llama-args", extra)
    assert res["llama_args"] == ["-np", "1", "-ub", "1024"] and picked["llama_args"] == []
    before = {r["name"]: r for r in picked["models"]}
    rows = [r for r in res["models"] if not r["error"]]
    assert len(rows) == 5
    for r in rows:
        cmd = r["command"]
        assert cmd[cmd.index("-np") : cmd.index("-np") + 4] == ["-np", "1", "-ub", "1024"], cmd
        asked = f"--mmproj {shlex.quote(r['projector'])} -ctk f16 -ctv f16 {extra}"
        lc = _mem(cli, r["path"], "--fit", GPUS, "-fitt", "1024", "--llama-args", f"-c {CTX} {asked}")["llama_cpp"]
        assert (lc["status"], lc["args"]) == (r["llama_cpp_fit"]["status"], r["llama_cpp_fit"]["args"]), r["name"]
        promised = _mem(cli, r["path"], "--gpus", GPUS, "--llama-args", shlex.join(cmd[1:]))
        dev = next(d for d in promised["devices"] if d["name"] == "CUDA0")
        g = r["gpus"][0]
        assert (dev["model"], dev["context"], dev["compute"]) == (g["model"], g["context"], g["compute"]), r["name"]
        # a 1024-token micro-batch: a larger graph than llama-server's default 512
        assert g["compute"] > before[r["name"]]["gpus"][0]["compute"], r["name"]


def test_report_of_the_folder_is_pick_with_the_same_options(cli: CliRun, quant_folder: Path, tmp_path: Path) -> None:
    """``report FOLDER`` takes pick's sizing options: its JSON is ``pick``'s with the same ones (projectors, the
    split quant, the corrupt file), at -c with the user's llama-server options and with --fit; its page
    states them and its command lines carry them."""
    for args in (
        ("-c", str(CTX), "--llama-args", "-np 1 -ub 1024", "-ctk", "q8_0", "-ctv", "q8_0"),
        ("--fit", "--mmproj", "none", "-fitt", "512", "--llama-args", "-np 2"),
    ):
        picked = pick_json(cli, str(quant_folder), "--gpus", GPUS, *args)
        r = cli("report", str(quant_folder), "--gpus", GPUS, *args, "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == picked, args
        given = shlex.split(args[args.index("--llama-args") + 1])
        assert picked["llama_args"] == given and len([m for m in picked["models"] if m["command"]]) == 5
        page = tmp_path / "quants.md"
        assert cli("report", str(quant_folder), "--gpus", GPUS, *args, "-o", str(page)).exit_code == 0
        text = page.read_text()
        assert f"llama-server options given: `{shlex.join(given)}`" in text
        assert ("context: 8,192" if "-c" in args else "context: llama.cpp's --fit chooses") in text
        for m in picked["models"]:
            if m["command"]:
                assert m["command"][m["command"].index(given[0]) :][: len(given)] == given
                assert f"`{m['command_line']}`" in text


def test_llama_server_parses_every_printed_command(cli: CliRun, llama_bin: Path, quant_folder: Path) -> None:
    """Every command line, on one GPU and split over two, passes llama-server's own argument parser
    (``--help`` after them: the parser runs every option's handler, then prints the usage and exits 0;
    an option it refuses exits 1 with the option named). No GPU here, so it is not loaded."""
    for gpus in (GPUS, "1.25GiB,1.25GiB", "2GiB,2GiB"):
        res = pick_json(cli, str(quant_folder), "--gpus", gpus, "-c", str(CTX), "-ctk", "q8_0", "-ctv", "q8_0")
        commands = [r["command"] for r in res["models"] if r["command"]]
        assert len(commands) == 5
        for cmd in commands:
            assert cmd[0] == "llama-server" and shlex.split(shlex.join(cmd)) == cmd
            proc = subprocess.run([str(llama_bin / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True)
            assert proc.returncode == 0, (cmd, proc.stderr[-1500:])
        if "," in gpus:
            assert any("-ts" in c for c in commands)
    bad = subprocess.run(
        [str(llama_bin / "llama-server"), "-m", "x.gguf", "--no-such-option", "--help"], capture_output=True
    )
    assert bad.returncode != 0  # the check can fail


def test_fit_mode_takes_llama_cpps_context(cli: CliRun, quant_folder: Path) -> None:
    """--fit (no -c): llama.cpp's fit starts at the training context and may reduce it; the command
    carries the context it chose, as `mem --fit` without -c says."""
    res = pick_json(cli, str(quant_folder), "--gpus", "1.3GiB", "--fit", "--mmproj", "none")
    assert res["n_ctx"] is None and res["mmproj"] == "none"
    for r in res["models"]:
        if r["error"]:
            continue
        assert r["projector"] is None and "--mmproj" not in r["command"]
        lc = _mem(cli, r["path"], "--fit", "1.3GiB", "-fitt", "1024", "--llama-args", "-ctk f16 -ctv f16")["llama_cpp"]
        assert (lc["status"], lc["n_ctx"]) == (r["llama_cpp_fit"]["status"], r["n_ctx"]), r["name"]
        assert r["command"][r["command"].index("-c") + 1] == str(r["n_ctx"])
        assert r["fits"] == (lc["status"] in ("unchanged", "context"))


def test_a_projector_that_fits_no_model_is_said(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    os.symlink(smollm2_path, tmp_path / smollm2_path.name)
    write_projector(tmp_path / "mmproj-gemma-3-4b-F16.gguf", out=2048, gemma=True)
    res = pick_json(cli, str(tmp_path), "--gpus", "8GiB", "-c", "4096")
    (note,) = res["notes"]
    assert note.startswith("the projector mmproj-gemma-3-4b-F16.gguf fits none of the models")
    assert "2048" in note and "576" in note
    (row,) = res["models"]
    assert row["projector"] is None and row["fits"] and "--mmproj" not in row["command"]
    assert any("no projector fits it" in n for n in row["notes"])
    # an explicit --mmproj that fits none: said the same way
    res = pick_json(
        cli,
        str(tmp_path / smollm2_path.name),
        "--gpus",
        "8GiB",
        "--mmproj",
        str(tmp_path / "mmproj-gemma-3-4b-F16.gguf"),
    )
    assert res["notes"][0].startswith(f"the projector {tmp_path / 'mmproj-gemma-3-4b-F16.gguf'} fits none")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "24XB"], "ggufx: error: --gpus: '24XB' is not a size"),
        (["--gpus", "0GiB"], "ggufx: error: --gpus: '0GiB': a GPU needs some memory"),
        (["--gpus", "24"], "ggufx: error: --gpus: '24' has no unit"),  # was a GPU of 24 bytes
        (["--gpus", "24GiB,,"], "ggufx: error: --gpus: "),
        ([], "ggufx: error: --gpus: give the free memory of your GPUs"),
        (["--gpus", "8GiB", "-c", "4096", "--fit"], "ggufx: error: -c: give either -c N or --fit"),
        (["--gpus", "8GiB", "--llama-args", "-ngl 99"], "ggufx: error: --llama-args: -ngl: llama.cpp's fit places"),
        (["--gpus", "8GiB", "--llama-args", "--ctx_size 4096"], "ggufx: error: --llama-args: --ctx_size: the context"),
        (["--gpus", "8GiB", "--llama-args", "-ot exps=CPU"], "ggufx: error: --llama-args: -ot: llama.cpp's fit places"),
        (["--gpus", "8GiB", "--llama-args", "-fitt 512"], "ggufx: error: --llama-args: -fitt: the margin is pick's"),
        (["--gpus", "8GiB", "--llama-args", "-md d.gguf"], "ggufx: error: --llama-args: -md: pick does not size"),
        (["--gpus", "8GiB", "--llama-args", "--mmproj p.gguf"], "ggufx: error: --llama-args: --mmproj: the projector"),
        (["--gpus", "8GiB", "--llama-args", "--bogus"], "ggufx: error: --llama-args: invalid argument: --bogus"),
        (
            ["--gpus", "8GiB", "--llama-args", "-np x"],
            'ggufx: error: --llama-args: error while handling argument "-np"',
        ),
        (["--gpus", "8GiB", "--llama-args", "-np"], 'ggufx: error: --llama-args: error while handling argument "-np"'),
        (["--gpus", "8GiB", "--llama-args", "-a 'b"], "ggufx: error: --llama-args: cannot split the command line"),
    ],
)
def test_bad_options_are_one_line(cli: CliRun, smollm2_path: Path, args: list[str], message: str) -> None:
    r = cli("pick", str(smollm2_path), *args)
    assert r.exit_code == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr


def test_llama_args_ggufx_does_not_model_are_said(cli: CliRun, smollm2_path: Path) -> None:
    """An option llama.cpp accepts whose memory ggufx does not model (-ncffn: dense FFN weights of the first
    layers on the host) is kept in the command lines and named in the notes, as `mem --llama-args` names it."""
    res = pick_json(cli, str(smollm2_path), "--gpus", "8GiB", "-c", "4096", "--llama-args", "-ncffn 2")
    assert res["notes"] == ["ggufx does not model what these llama.cpp options change in memory: -ncffn"]
    (row,) = res["models"]
    assert row["command"][row["command"].index("-ncffn") + 1] == "2"


def test_no_gguf_is_one_line(cli: CliRun, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    r = cli("pick", str(tmp_path), "--gpus", "8GiB")
    assert r.exit_code == 2 and r.stderr == f"ggufx: error: {tmp_path}: no GGUF file in this folder\n"
    write_projector(tmp_path / "mmproj-F16.gguf")
    r = cli("pick", str(tmp_path), "--gpus", "8GiB")
    assert r.exit_code == 2 and r.stderr.startswith(f"ggufx: error: {tmp_path}: no GGUF model in it (1 companion")


def test_an_unreadable_file_says_why(cli: CliRun, tmp_path: Path) -> None:
    """One file that is no GGUF: its own error, as `ggufx info` gives it, not "no GGUF model in it"; a folder
    of unreadable files names how many and the first one's error."""
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("pick", str(tmp_path / "notes.txt"), "--gpus", "8GiB")
    assert r.exit_code == 2 and r.stderr == cli("info", str(tmp_path / "notes.txt")).stderr
    assert "not a GGUF file" in r.stderr
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.gguf").write_text("hello")
    (tmp_path / "m" / "b.gguf").write_bytes(b"")
    r = cli("pick", str(tmp_path / "m"), "--gpus", "8GiB")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(
        f"ggufx: error: {tmp_path / 'm'}: no GGUF model in it; 2 file(s) unreadable, the first: "
    )
    assert "a.gguf: offset 0: not a GGUF file" in r.stderr


# -- the same folder as a Hub repository ------------------------------------------------------


@pytest.fixture
def hub(quant_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    files = {p.relative_to(quant_folder).as_posix(): p for p in quant_folder.rglob("*.gguf")}
    srv = RangeServer(files).start()
    cfg = remote.RemoteConfig(cache_dir=str(tmp_path / "cache"), retries=3, backoff=0.01, timeout=10)
    monkeypatch.setattr(remote, "BASE", cfg)
    monkeypatch.setattr(remote, "CONFIG", dataclasses.replace(cfg))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", srv.base)
    yield srv
    srv.stop()


def _comparable(res: dict, base: str) -> dict:
    """The result with where the files are taken out (the repository keeps them in gguf/)."""
    text = json.dumps({k: v for k, v in res.items() if k != "sources"}).replace(base, "<base>")
    return json.loads(re.sub(r'(?<=["\s])gguf/', "", text))


def test_hub_repository_gives_the_folders_table(
    cli: CliRun, hub: RangeServer, picked: dict, quant_folder: Path
) -> None:
    names = sorted(p.relative_to(quant_folder).as_posix() for p in quant_folder.rglob("*.gguf"))
    n_files = len(names)
    r = cli("pick", "--json", "hf://org/repo-GGUF", "--gpus", GPUS, "-c", str(CTX))
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert _comparable(res, "hf://org/repo-GGUF/gguf") == _comparable(picked, str(quant_folder))
    # headers only: a few requests per file (listing pages aside), never a whole file
    log = list(hub.state.log)
    listing = [e for e in log if e["path"].startswith("/api/models/")]
    files = [e for e in log if not e["path"].startswith("/api/models/")]
    assert 1 <= len(listing) <= -(-(n_files + 2) // 4)
    per_file: dict[str, int] = {}
    for e in files:
        per_file[e["path"]] = per_file.get(e["path"], 0) + 1
    assert set(per_file) == {f"/org/repo-GGUF/resolve/main/gguf/{n}" for n in names}
    assert max(per_file.values()) <= 3, per_file
    assert all(e["method"] == "HEAD" or e["range"] for e in files)
    # progress on stderr, one line per header
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("ggufx: header ")]
    assert len(progress) == n_files - 2 and progress[-1].startswith(f"ggufx: header {n_files - 2}/{n_files - 2}: ")
    # again: every header from the cache, one HEAD per file to check that it is unchanged
    hub.state.reset()
    url = f"{hub.base}/org/repo-GGUF/tree/main"  # the repository's page on the Hub, as a browser shows it
    r2 = cli("pick", "--json", url, "--gpus", GPUS, "-c", str(CTX))
    assert r2.exit_code == 0, r2.stderr
    assert _comparable(json.loads(r2.stdout), "hf://org/repo-GGUF@main/gguf") == _comparable(picked, str(quant_folder))
    again = [e for e in hub.state.log if not e["path"].startswith("/api/models/")]
    heads = sorted(e["path"].split("/gguf/", 1)[1] for e in again if e["method"] == "HEAD")
    gets = {e["path"].split("/gguf/", 1)[1] for e in again if e["method"] == "GET"}
    # the corrupt header was never cached (nothing valid to keep): read again, alone
    assert heads == [n for n in names if n != "SmolLM2-135M-Instruct.Q3_K_S.gguf"], again
    assert gets == {"SmolLM2-135M-Instruct.Q3_K_S.gguf"}


def test_hub_repository_without_gguf(cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = RangeServer({}).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", srv.base)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        r = cli("pick", "hf://org/empty-GGUF", "--gpus", "8GiB", "--no-cache")
        assert r.exit_code == 2 and r.stderr == "ggufx: error: hf://org/empty-GGUF: no GGUF file in this repository\n"
    finally:
        srv.stop()


# -- the MCP tool and the folder's page -------------------------------------------------------


def test_mcp_pick_tool_answers_the_cli_json(
    picked: dict, quant_folder: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("mcp")
    import anyio
    from mcp.server import MCPServer

    from ggufx.mcp.access import Access
    from ggufx.mcp.pick_tool import register

    access = Access([str(quant_folder)], allow_remote=False)
    server = MCPServer("test")
    register(server, access)

    async def go() -> tuple:
        tools = {t.name: t for t in await server.list_tools()}
        ok = await server.call_tool("pick", {"sources": [str(quant_folder)], "gpus": GPUS, "ctx": CTX})
        bad_gpus = await server.call_tool("pick", {"sources": [str(quant_folder)], "gpus": "lots"})
        remote_src = await server.call_tool("pick", {"sources": ["hf://org/repo-GGUF"], "gpus": GPUS})
        outside = await server.call_tool("pick", {"sources": [str(smollm2_path)], "gpus": GPUS})
        decided = await server.call_tool(
            "pick", {"sources": [str(quant_folder)], "gpus": GPUS, "llama_args": "-np 1 -ngl 3"}
        )
        return tools, ok, bad_gpus, remote_src, outside, decided

    tools, ok, bad_gpus, remote_src, outside, decided = anyio.run(go)
    assert decided.is_error and decided.content[0].text.startswith("--llama-args: -ngl: llama.cpp's fit places")
    t = tools["pick"]
    assert t.annotations.read_only_hint and not t.annotations.open_world_hint
    assert set(t.input_schema["required"]) == {"sources", "gpus"}
    assert not ok.is_error and json.loads(ok.content[0].text) == picked
    assert bad_gpus.is_error and bad_gpus.content[0].text.startswith("--gpus: 'lots' is not a size")
    assert remote_src.is_error and "remote sources are disabled" in remote_src.content[0].text
    assert outside.is_error and "outside the allowed roots" in outside.content[0].text
    # a link inside the root to a model outside it: found, but not read (a row saying why)
    inside = tmp_path / "root"
    inside.mkdir()
    os.symlink(smollm2_path, inside / "linked.gguf")
    shutil.copy(quant_folder / "SmolLM2-135M-Instruct.Q2_K.gguf", inside)
    from ggufx.mcp.pick_tool import PickTool

    res = PickTool(Access([str(inside)], allow_remote=False)).pick([str(inside)], GPUS, CTX)
    rows = {r["name"]: r for r in res["models"]}
    assert "outside the allowed roots" in rows["linked.gguf"]["error"] and rows["linked.gguf"]["quant"] is None
    assert rows["SmolLM2-135M-Instruct.Q2_K.gguf"]["error"] is None


def test_folder_page_opens_in_headless_chromium(picked: dict, tmp_path: Path) -> None:
    """The report's page for a folder (templates/pick.html.j2), in a real browser."""
    from ggufx.render.pick import pick_page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    html = pick_page(picked)
    md = pick_page(picked, "md")
    for m in picked["models"]:
        assert m["name"].replace("_", "\\_").replace("*", "\\*") in md
        if m["command_line"]:
            assert f"`{m['command_line']}`" in md
    page = tmp_path / "pick.html"
    page.write_text(html)
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert f'<p class="summary" id="pick-summary">{picked["summary"]}</p>' in dom
    table = dom[dom.index('<table id="pick">') : dom.index("</table>")]
    assert table.count("<tr") == len(picked["models"]) + 1 and table.count('class="recommended"') == 1
    assert dom.count("<code>llama-server ") == sum(1 for m in picked["models"] if m["command"])
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Refused to" in ln]
    assert console == []


def test_moe_experts_go_to_the_host(cli: CliRun, hole_models: dict[str, Path], llama_bin: Path, tmp_path: Path) -> None:
    """A MoE model (Qwen3 30B-A3B's header, its data a hole) on a GPU too small for it: llama.cpp's fit
    keeps every layer on the GPU and moves experts to the host; the runner-up says so, the command
    carries the -ot of mem --fit (less the pattern for the output layer, which has no experts), and
    llama-server's parser accepts it."""
    d = tmp_path / "moe"
    d.mkdir()
    os.symlink(hole_models["qwen3moe-30b-a3b"], d / "Qwen3-30B-A3B-Q4_K_M.gguf")
    res = pick_json(cli, str(d), "--gpus", "16GiB", "-c", "32768", "--tablefmt", "github")
    (r,) = res["models"]
    assert r["experts"] > 0 and not r["fits"] and r["llama_cpp_fit"]["status"] == "layers"
    assert res["recommendation"] is None and res["runner_up"] == r["name"]
    assert res["summary"].startswith(
        "No model runs entirely on 16 GiB GPU at 32,768 tokens; best with part on the host"
    )
    assert r["n_gpu_layers"] == r["n_layer"] + 1 and r["overrides"] and all(b == "CPU" for _, b in r["overrides"])
    lc = _mem(cli, r["path"], "--fit", "16GiB", "-fitt", "1024", "--llama-args", "-c 32768 -ctk f16 -ctv f16")[
        "llama_cpp"
    ]
    assert lc["args"] == r["llama_cpp_fit"]["args"]
    output_layer = rf"blk\.{r['n_layer']}\."
    assert [o for o in lc["overrides"] if not o[0].startswith(output_layer)] == r["overrides"]
    assert len(lc["overrides"]) == len(r["overrides"]) + 1
    layers = {re.search(r"blk\\\.(\d+)", p)[1] for p, _ in r["overrides"]}
    assert f"experts of {len(layers)} layer(s) on the host" in res["summary"]
    promised = _mem(cli, r["path"], "--gpus", "16GiB", "--llama-args", shlex.join(r["command"][1:]))
    dev = next(x for x in promised["devices"] if x["name"] == "CUDA0")
    assert dev["self"] == r["gpus"][0]["total"] <= 16 * 1024**3 - 1024**3
    proc = subprocess.run(
        [str(llama_bin / "llama-server"), *r["command"][1:], "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    # the text table: the offload in words, the command in full below it
    out = cli("pick", str(d), "--gpus", "16GiB", "-c", "32768", "--tablefmt", "github").stdout
    assert "| no: experts of" in out and f"`{r['command_line']}`" in out


def test_files_shards_and_no_gpu(cli: CliRun, quant_folder: Path) -> None:
    """Several files (a second shard names its set, -m the first shard), and --gpus none."""
    stem = "SmolLM2-135M-Instruct"
    files = [str(quant_folder / f"{SPLIT}-00002-of-00003.gguf"), str(quant_folder / f"{stem}.Q2_K.gguf")]
    res = pick_json(cli, *files, "--gpus", "none", "-c", "4096", "--mmproj", "none")
    rows = {r["name"]: r for r in res["models"]}
    assert set(rows) == {f"{stem}.Q6_K-*-of-00003.gguf", f"{stem}.Q2_K.gguf"}
    split = rows[f"{stem}.Q6_K-*-of-00003.gguf"]
    assert split["shards"] == 3 and split["command"][2] == str(quant_folder / f"{SPLIT}-00001-of-00003.gguf")
    assert res["gpus"] == [] and res["recommendation"] == split["name"]  # the higher BPW
    for r in res["models"]:
        assert r["gpus"] == [] and r["host_bytes"] > 0 and r["command"][-2:] == ["-ngl", "0"]
    assert res["summary"].startswith(f"No GPU: {split['name']} ")


def _serve_until_loaded(llama_bin: Path, argv: list[str], cwd: Path) -> str:
    """llama-server's ``-v`` log, run with ``argv`` (a printed command line, the program name left out),
    up to "model loaded"; the server is stopped."""
    cmd = [str(llama_bin / "llama-server"), *argv, "--host", "127.0.0.1", "--port", "0", "-t", "2", "-v"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace"))
            if "model loaded" in lines[-1] or "exiting due to model loading error" in lines[-1]:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return "".join(lines)


def test_a_printed_command_loads_with_the_buffers_it_promised(
    cli: CliRun, llama_bin: Path, quant_folder: Path, tmp_path: Path
) -> None:
    """No GPU here, so the CPU build loads them: each model's printed command line, run as it is by
    llama-server, allocates on the host what the row promised (``host_bytes``: weights, KV cache,
    compute and output buffers, each llama.cpp prints to the 0.01 MiB), and ``mem --check`` on that
    log agrees buffer for buffer."""
    from ggufx.analysis.memory.llamalog import parse_log

    stem = "SmolLM2-135M-Instruct"
    files = [str(quant_folder / f"{stem}.{t}.gguf") for t in ("Q8_0", "Q2_K")]
    res = pick_json(cli, *files, "--gpus", "none", "-c", "4096", "--mmproj", "none")
    assert len(res["models"]) == 2
    default_host = {row["path"]: row["host_bytes"] for row in res["models"]}
    for row in res["models"]:
        log = _serve_until_loaded(llama_bin, row["command"][1:], tmp_path)
        assert "model loaded" in log, log[-3000:]
        (tmp_path / "server.log").write_text(log)
        buffers = parse_log(log).buffers
        theirs = sum(v for kind in buffers.values() for v in kind.values())
        assert buffers["model"] and buffers["kv"] and buffers["compute"] and buffers["output"]
        assert abs(row["host_bytes"] / 2**20 - theirs) <= 0.005 * sum(len(k) for k in buffers.values()), (
            row["name"],
            buffers,
        )
        r = cli("mem", "--llama-args", row["command_line"], "--gpus", "none", "--check", str(tmp_path / "server.log"))
        assert r.exit_code == 0 and "every buffer agrees" in r.stdout, r.stdout + r.stderr
    # the user's other options (two slots in one unified cache, a 256-token micro-batch) size what it promises
    res = pick_json(
        cli, files[0], "--gpus", "none", "-c", "4096", "--mmproj", "none", "--llama-args", "-np 2 -kvu -ub 256"
    )
    (row,) = res["models"]
    assert row["command"][-7:] == ["-np", "2", "-kvu", "-ub", "256", "-ngl", "0"], row["command"]
    log = _serve_until_loaded(llama_bin, row["command"][1:], tmp_path)
    assert "model loaded" in log, log[-3000:]
    assert re.search(r"n_seq_max += 2\n", log) and re.search(r"n_ubatch += 256\n", log)
    buffers = parse_log(log).buffers
    theirs = sum(v for kind in buffers.values() for v in kind.values())
    assert abs(row["host_bytes"] / 2**20 - theirs) <= 0.005 * sum(len(k) for k in buffers.values()), buffers
    assert row["host_bytes"] != default_host[row["path"]]  # not the default's figure
