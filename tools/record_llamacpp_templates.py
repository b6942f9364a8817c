#!/usr/bin/env python3
"""Record what llama-server says about every chat template shipped with the pinned llama.cpp.

usage: record_llamacpp_templates.py [--bin DIR] [--src DIR] [--model GGUF] [--output PATH | --check]

For each ``models/templates/*.jinja`` of the llama.cpp source (default ``$LLAMA_CPP_SRC``, else
``~/.cache/llama.cpp-VER/src/llama.cpp``) it starts ``llama-server -m MODEL --jinja
--chat-template-file T.jinja`` (MODEL: SmolLM2-135M-Instruct, any small GGUF will do: the template
is what is asked about, and the capabilities are computed without the model's tokens) and records

* ``GET /props`` -> ``chat_template_caps``: the nine capability flags llama.cpp's
  ``common/jinja/caps.cpp`` computes for the template (or the error that kept the server from
  starting: a template llama.cpp's parser rejects);
* ``POST /apply-template`` for each of ggufx's built-in conversations (``ggufx.chat.samples``, with
  the generation prompt): the sha256 and length of the prompt llama-server renders, or its error.

The result is ``tests/fixtures/templates/llamacpp/llama-server.json``; the templates themselves are
copied next to it (those not already in ``tests/fixtures/templates/``), so that the test suite checks
ggufx's llama.cpp engine against llama-server's answers without llama.cpp. ``--check`` regenerates
and compares instead of writing (exit 1 on a difference); ``tests/test_chat_llamacpp.py`` does the
same under the ``llamacpp`` marker.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_VERSION = "11434.0.0"
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "templates"
OUTPUT = FIXTURES / "llamacpp" / "llama-server.json"
CAPS = (
    "supports_tools",
    "supports_tool_calls",
    "supports_system_role",
    "supports_parallel_tool_calls",
    "supports_object_arguments",
    "supports_string_content",
    "supports_typed_content",
    "supports_preserve_reasoning",
    "supports_reasoning_effort",
)


def default_source(version: str = DEFAULT_VERSION) -> Path | None:
    env = os.environ.get("LLAMA_CPP_SRC")
    cands = [Path(env)] if env else []
    cands.append(Path.home() / ".cache" / f"llama.cpp-{version}" / "src" / "llama.cpp")
    for c in cands:
        if (c / "models" / "templates").is_dir():
            return c
    return None


def default_model() -> Path:
    cache = Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))
    return cache / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {}


@contextlib.contextmanager
def llama_server(bin_dir: Path, model: Path, template: Path) -> Iterator[tuple[str | None, str]]:
    """Yields (base URL, "") once /health answers, or (None, the server's last error lines)."""
    port = _free_port()
    cmd = [
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
        "--chat-template-file",
        str(template),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                lines = [ln for ln in err.splitlines() if "error" in ln.lower() or "Error" in ln]
                yield None, "\n".join(lines[-6:])
                return
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        yield url, ""
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def conversations() -> dict[str, dict]:
    sys.path.insert(0, str(ROOT))
    from ggufx.chat.samples import NAMES, sample

    return {n: sample(n) for n in NAMES}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def record_one(bin_dir: Path, model: Path, path: Path, convs: dict[str, dict]) -> dict:
    text = path.read_text(encoding="utf-8")
    entry: dict = {"sha256": sha256(text)}
    with llama_server(bin_dir, model, path) as (url, error):
        if url is None:
            entry["loaded"] = False
            entry["error"] = error
            return entry
        status, props = _request(f"{url}/props")
        assert status == 200, (path, status, props)
        entry["loaded"] = True
        entry["caps"] = {k: bool(props["chat_template_caps"][k]) for k in CAPS}
        applied = {}
        for name, conv in convs.items():
            body = {"messages": conv["messages"], "add_generation_prompt": True}
            if conv.get("tools"):
                body["tools"] = conv["tools"]
            status, res = _request(f"{url}/apply-template", body)
            if status == 200 and isinstance(res.get("prompt"), str):
                applied[name] = {"sha256": sha256(res["prompt"]), "length": len(res["prompt"])}
            else:
                err = res.get("error", {})
                msg = err.get("message") if isinstance(err, dict) else str(err)
                applied[name] = {"error": (msg or f"HTTP {status}").strip().splitlines()[-1][:300]}
        entry["apply_template"] = applied
        entry["server"] = {k: props.get(k) for k in ("build_info", "bos_token", "eos_token")}
    return entry


def record(bin_dir: Path, src: Path, model: Path, only: list[str] | None = None, jobs: int = 2) -> dict:
    convs = conversations()
    templates = sorted((src / "models" / "templates").glob("*.jinja"))
    out: dict = {
        # prompts with the date in them (strftime_now, llama-server's date_string) were rendered then
        "recorded_at": int(time.time()),
        "utc_offset": time.strftime("%z"),
        "llama_cpp_version": DEFAULT_VERSION,
        "model": model.name,
        "conversations": sorted(convs),
        "conversations_sha256": sha256(json.dumps(convs, sort_keys=True)),
        "templates": {},
    }
    from concurrent.futures import ThreadPoolExecutor

    server: dict = {}
    chosen = [p for p in templates if not only or p.stem in only]
    with ThreadPoolExecutor(jobs) as pool:  # a few servers at a time: most of a start is waiting
        entries = list(pool.map(lambda p: record_one(bin_dir, model, p, convs), chosen))
    for p, entry in zip(chosen, entries):
        server = entry.pop("server", None) or server
        out["templates"][p.stem] = entry
    # what the prompts depend on besides the template: the model's special tokens and whether its
    # tokenizer adds them (llama-server then cuts the template's own BOS/EOS off the prompt)
    out.update(server)
    out.update(add_special_tokens(model))
    return out


def add_special_tokens(model: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import ggufx

    md = ggufx.open(model).metadata
    return {
        "add_bos": bool(md["tokenizer.ggml.add_bos_token"]) if "tokenizer.ggml.add_bos_token" in md else False,
        "add_eos": bool(md["tokenizer.ggml.add_eos_token"]) if "tokenizer.ggml.add_eos_token" in md else False,
    }


def stable(data: dict) -> dict:
    """What does not depend on the day it was recorded: each template's sha256, whether the server
    started, its capability flags (prompts with the date in them differ from day to day)."""
    keep = ("sha256", "loaded", "error", "caps")
    return {
        "conversations_sha256": data["conversations_sha256"],
        "templates": {k: {f: v[f] for f in keep if f in v} for k, v in data["templates"].items()},
    }


def copy_templates(src: Path) -> None:
    """The templates not already among tests/fixtures/templates/*.jinja (byte for byte)."""
    dest = OUTPUT.parent
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((src / "models" / "templates").glob("*.jinja")):
        mine = FIXTURES / p.name
        if mine.is_file() and mine.read_bytes() == p.read_bytes():
            continue
        (dest / p.name).write_bytes(p.read_bytes())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=None)
    ap.add_argument("--bin", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    src = a.src or default_source()
    if src is None:
        print("llama.cpp source not found (set LLAMA_CPP_SRC or --src)", file=sys.stderr)
        return 2
    bin_dir = a.bin or Path(os.environ.get("LLAMA_CPP_BIN", src / "build" / "bin"))
    model = a.model or default_model()
    data = record(bin_dir, src, model, a.only)
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if a.check:
        old = json.loads(a.output.read_text(encoding="utf-8"))
        return 0 if stable(old) == stable(data) else 1
    copy_templates(src)
    a.output.write_text(text, encoding="utf-8")
    print(f"wrote {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
