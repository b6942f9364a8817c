"""Interoperability with llama.cpp's own tools (marker ``llamacpp``).

These run when the tools built by ``../shared/tools/build-llama-cpp.sh`` are present
(``LLAMA_CPP_BIN``, else the script's default cache folder) and are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.summary import summarize
from ggufx.edit.engine import Set, edit
from tests.support import CliRun

from .editing import data_hash

pytestmark = pytest.mark.llamacpp


def _loader_report(bin_dir: Path, model: Path) -> str:
    proc = subprocess.run(
        [
            str(bin_dir / "llama-completion"),
            "-m",
            str(model),
            "-n",
            "4",
            "-p",
            "Hello",
            "-no-cnv",
            "--no-warmup",
            "-t",
            "2",
            "-c",
            "256",
            "--temp",
            "0",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_bpw_and_parameters_equal_llama_cpp_loader(llama_bin: Path, real_models, which: str) -> None:
    model = real_models[which]
    log = _loader_report(llama_bin, model)
    size = re.search(r"print_info: file size\s+=\s+([\d.]+) MiB \(([\d.]+) BPW\)", log)
    params = re.search(r"print_info: model params\s+=\s+([\d.]+) M", log)
    ftype = re.search(r"print_info: file type\s+=\s+(\S+)", log)
    assert size and params and ftype, log[-3000:]
    s = ggufx.info(model)
    assert f"{s.tensor_bytes / 1024 / 1024:.2f}" == size.group(1)
    assert f"{s.bpw:.2f}" == size.group(2)
    assert f"{s.parameters * 1e-6:.2f}" == params.group(1)
    assert ftype.group(1).startswith(s.file_type_label.split("_")[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _llama_server(bin_dir: Path, model: Path, *extra: str) -> Iterator[str]:
    """A llama-server serving ``model``; yields its base URL once /health answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(bin_dir / "llama-server"),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            "256",
            "-t",
            "2",
            "--jinja",
            "--no-warmup",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"llama-server exited: {proc.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _server_props(bin_dir: Path, model: Path) -> dict:
    with _llama_server(bin_dir, model) as url, urllib.request.urlopen(f"{url}/props", timeout=10) as r:
        return json.loads(r.read())


def test_server_option_reads_the_model_llama_server_runs(cli: CliRun, llama_bin: Path, smollm2_path: Path) -> None:
    plain = json.loads(cli("info", "--json", str(smollm2_path)).stdout)
    with _llama_server(llama_bin, smollm2_path) as url:
        r = cli("info", "--json", "--server", url)
        assert r.exit_code == 0, r.stderr
        d = json.loads(r.stdout)
        server = d.pop("server")
        assert d == plain
        assert server["model_path"] == str(smollm2_path) and server["n_ctx"] == 256
        assert server["template_matches_file"] is True and server["note"] is None
        assert server["model_ids"] and server["build_info"]
    # started with another template: the server says so through /props, and ggufx tells
    with _llama_server(llama_bin, smollm2_path, "--chat-template", "llama3") as url:
        r = cli("info", "--json", "--server", url)
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["server"]["template_matches_file"] is False
        assert "ggufx: note: the server uses a different chat template" in r.stderr


NEW_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    "{#- replaced by ggufx #}"
)


@pytest.mark.parametrize("strategy", ["in-place", "insert-range", "rewrite"])
def test_llama_server_loads_patched_template(
    llama_bin: Path, smollm2_path: Path, tmp_path: Path, strategy: str
) -> None:
    p = tmp_path / "smollm2.gguf"
    shutil.copy(smollm2_path, p)
    if strategy == "in-place":
        edit(p, [Set("general.name", "SmolLM2 reserved")], reserve=65536, strategy="rewrite")
    h0 = data_hash(p)
    r = edit(p, [Set("tokenizer.chat_template", NEW_TEMPLATE)], strategy=strategy)
    assert r.strategy == strategy and data_hash(p) == h0
    props = _server_props(llama_bin, p)
    assert props["chat_template"] == NEW_TEMPLATE
    # and it still generates from the same weights
    log = _loader_report(llama_bin, p)
    assert "file size   = 92.10 MiB (5.74 BPW)" in log


def test_template_set_cli_then_llama_server_props(
    cli: CliRun, llama_bin: Path, smollm2_path: Path, tmp_path: Path
) -> None:
    p = tmp_path / "smollm2.gguf"
    shutil.copy(smollm2_path, p)
    src = Path(__file__).parent / "fixtures" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    r = cli("template", "set", str(p), "--from", str(src))
    assert r.exit_code == 0, r.output
    text = src.read_text(encoding="utf-8")
    assert ggufx.open(p).metadata["tokenizer.chat_template"] == text  # stored byte for byte
    # llama.cpp's jinja lexer applies trim_blocks to the source it keeps: the newline after the
    # final "%}" is gone from what /props reports (the rendering is the same)
    served = _server_props(llama_bin, p)["chat_template"]
    assert served == (text[:-1] if text.endswith("%}\n") else text)


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.type.name for t in ggufx.open(path).tensors}


def _quantize(bin_dir: Path, args: list[str], src: Path, dst: Path, ftype: str) -> None:
    proc = subprocess.run(
        [str(bin_dir / "llama-quantize"), *args, str(src), str(dst), ftype, "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "first",
    [
        ["--allow-requantize"],  # llama-quantize's own Q4_K_M mixture
        [
            "--allow-requantize",
            "--pure",
            "--tensor-type",
            r"blk\.(1[0-4])\.ffn_up=q5_1",
            "--tensor-type",
            "attn_v=q8_0",
            "--tensor-type",
            r"ffn_down=q6_k",
            "--output-tensor-type",
            "q8_0",
            "--token-embedding-type",
            "q4_1",
        ],
    ],
    ids=["q4_k_m-mixture", "custom-recipe"],
)
def test_recipe_is_reproduced_by_llama_quantize(
    llama_bin: Path, smollm2_path: Path, tmp_path: Path, first: list[str]
) -> None:
    from ggufx.analysis.recipe import recipe

    ftype = "Q4_K_M" if "--pure" not in first else "Q4_0"
    out1, out2 = tmp_path / "one.gguf", tmp_path / "two.gguf"
    _quantize(llama_bin, first, smollm2_path, out1, ftype)
    rec = recipe(ggufx.open(out1))
    _quantize(llama_bin, rec.args(), smollm2_path, out2, rec.ftype)
    t1, t2 = _types(out1), _types(out2)
    assert t1 == t2, {k: (t1[k], t2.get(k)) for k in t1 if t1[k] != t2.get(k)}
    # the same through --tensor-type-file
    types_file = tmp_path / "types.txt"
    types_file.write_text(rec.tensor_type_file())
    args = [a for a in rec.args() if a != "--tensor-type"]
    args = [a for a in args if not any(a == f"{r.pattern}={r.type.lower()}" for r in rec.rules)]
    out3 = tmp_path / "three.gguf"
    _quantize(llama_bin, [*args, "--tensor-type-file", str(types_file)], smollm2_path, out3, rec.ftype)
    assert _types(out3) == t1


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
@pytest.mark.parametrize("cache", ["f16", "q8_0", "q4_0"])
def test_kv_cache_equals_llama_cpp(llama_bin: Path, real_models, which: str, cache: str) -> None:
    from ggufx.analysis.memory.estimate import estimate

    model = real_models[which]
    proc = subprocess.run(
        [
            str(llama_bin / "llama-completion"),
            "-m",
            str(model),
            "-n",
            "1",
            "-p",
            "hi",
            "-no-cnv",
            "--no-warmup",
            "-t",
            "2",
            "-c",
            "4096",
            "-ctk",
            cache,
            "-ctv",
            cache,
            "-fa",
            "on",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = [
        (float(a), int(b), int(c))
        for a, b, c in re.findall(
            r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers", proc.stderr + proc.stdout
        )
    ]
    e = estimate(ggufx.open(model), 4096, cache_type_k=cache, cache_type_v=cache)
    ours = [(round(e.kv / 2**20, 2), e.kv_cells, e.kv_layers)]
    if e.kv_swa_layers:
        ours.append((round(e.kv_swa / 2**20, 2), e.kv_swa_cells, e.kv_swa_layers))
    # llama.cpp may build its context more than once (fitting, then for real): the same caches
    assert list(dict.fromkeys(sizes)) == ours


def test_fingerprint_survives_llama_gguf_split_and_merge(llama_bin: Path, smollm2_path: Path, tmp_path: Path) -> None:
    from ggufx.analysis.hashing import hash_model

    whole = hash_model(ggufx.open(smollm2_path))
    prefix = tmp_path / "smol"
    proc = subprocess.run(
        [str(llama_bin / "llama-gguf-split"), "--split", "--split-max-tensors", "100", str(smollm2_path), str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(tmp_path.glob("smol-*-of-*.gguf"))
    assert len(shards) == 3
    split = ggufx.open(shards[1])  # any shard opens the whole model
    assert len(split.shards) == 3 and summarize(split).bpw == ggufx.info(smollm2_path).bpw
    h = hash_model(split)
    assert h.fingerprint == whole.fingerprint and h.metadata_hash == whole.metadata_hash
    merged = tmp_path / "merged.gguf"
    proc = subprocess.run(
        [str(llama_bin / "llama-gguf-split"), "--merge", str(shards[0]), str(merged)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hash_model(ggufx.open(merged)).fingerprint == whole.fingerprint
    # a template edit through the first shard keeps the fingerprint too
    from ggufx.edit.engine import Set, edit

    edit(shards[2], [Set("tokenizer.chat_template", "{{ messages }}")])
    assert hash_model(ggufx.open(shards[0])).fingerprint == whole.fingerprint
