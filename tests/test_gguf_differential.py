"""ggufx against llama.cpp's own GGUF validation, on the handcrafted files of llama.cpp's tests (marker ``llamacpp``).

``tools/gguf_oracle.py`` compiles a small driver against the pinned llama.cpp's built ``libggml``
(its ``gguf_init_from_file``, ``ggml/src/gguf.cpp``) that includes ``tests/test-gguf.cpp`` itself,
so the files are written by test-gguf's own ``get_handcrafted_file`` for every kind its
``test_handcrafted_file`` exercises. For each kind and seed:

* llama.cpp's verdict is what test-gguf itself asserts (``expect_context_not_null``) - the driver
  is checked against that first;
* ggufx's verdict is ``ggufx info`` (exit 0, or exit 2 with one ``ggufx: error: FILE: offset N: ...``
  line), and it must be llama.cpp's verdict with the tensor data read (``gguf_init_from_file`` given
  a ggml context), which is test-gguf's own verdict for every kind but two.

The two exceptions are kinds whose test reads the header only (no ggml context, so gguf.cpp never
looks for the data): ``TENSORS_SUCCESS`` and ``TENSORS_CUSTOM_ALIGN`` describe tensors and hold no
byte of their data. llama.cpp's header-only read accepts them; ggufx, which always checks that
the data section is inside the file (as llama.cpp does once it loads the tensors), refuses them,
exactly as gguf.cpp does when asked for the data. The test asserts both halves of that.

Skipped when the llama.cpp source or its built libraries are absent, like the other llamacpp tests.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ggufx.format import spec
from tests.support import FIXTURES, CliRun

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import gguf_oracle  # noqa: E402

pytestmark = pytest.mark.llamacpp

SEEDS = (1, 2, 3, 42, 12345)
# kinds whose test-gguf check reads the header only and that describe tensor data they do not hold
HEADER_ONLY_NO_DATA = {"TENSORS_SUCCESS", "TENSORS_CUSTOM_ALIGN"}
ERROR_LINE = re.compile(r"ggufx: error: (?P<path>\S+): offset \d+: \S.*")


@pytest.fixture(scope="module")
def handcrafted(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every handcrafted file of test-gguf for SEEDS, with test-gguf's expectation and llama.cpp's verdicts."""
    try:
        gguf_oracle.build()
    except gguf_oracle.Absent as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("test-gguf")
    rows = gguf_oracle.write(out, list(SEEDS))
    verdicts = gguf_oracle.check([r[0] for r in rows])
    files = []
    for path, kind, expect, reads_data in rows:
        meta, data, why = verdicts[path]
        files.append(
            {
                "path": path,
                "kind": kind,
                "expect": expect,
                "reads_data": reads_data,
                "meta": meta,
                "data": data,
                "why": why,
                "test": data if reads_data else meta,  # the verdict test-gguf itself sees
            }
        )
    return files


def test_the_oracle_is_test_gguf(handcrafted: list[dict]) -> None:
    """The driver's gguf.cpp gives, for every file, the verdict test-gguf asserts for its kind."""
    src = (gguf_oracle.source_dir() / "tests" / "test-gguf.cpp").read_text()
    kinds = [k.removeprefix("HANDCRAFTED_") for k in gguf_oracle.handcrafted_kinds(src)]
    assert len(kinds) >= 30
    seen = {f["kind"] for f in handcrafted}
    # test-gguf prints KV_SUCCESS as KV_RANDOM_KV; every other kind keeps its enum name
    assert seen == {("KV_RANDOM_KV" if k == "KV_SUCCESS" else k) for k in kinds}
    assert len(handcrafted) == len(kinds) * len(SEEDS)
    wrong = [(f["path"].name, f["test"], f["expect"], f["why"]) for f in handcrafted if f["test"] != f["expect"]]
    assert wrong == []


def _ggufx_verdict(cli: CliRun, path: Path) -> tuple[str, str]:
    code, out, err = cli("info", "--json", str(path))
    if code == 0:
        return "accept", ""
    assert code == 2, (path.name, code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and ERROR_LINE.fullmatch(lines[0]), (path.name, err)
    assert ERROR_LINE.fullmatch(lines[0])["path"] == str(path)
    return "reject", lines[0]


def test_same_verdict_as_llama_cpp(cli: CliRun, handcrafted: list[dict]) -> None:
    disagree = []
    for f in handcrafted:
        verdict, line = _ggufx_verdict(cli, f["path"])
        # with the data read, gguf.cpp and ggufx agree on every file of every kind
        if verdict != f["data"]:
            disagree.append((f["path"].name, "ggufx " + verdict, "gguf.cpp " + f["data"], line or f["why"]))
        if f["kind"] in HEADER_ONLY_NO_DATA:
            # test-gguf reads only the header of these: gguf.cpp accepts tensor infos without their data
            assert (f["test"], f["data"], verdict) == ("accept", "reject", "reject"), f["path"].name
            assert "runs past the end of the file" in line
        elif verdict != f["test"]:
            disagree.append((f["path"].name, "ggufx " + verdict, "test-gguf " + f["test"], line or f["why"]))
    assert disagree == []


def test_every_read_command_on_the_files_llama_cpp_accepts(cli: CliRun, handcrafted: list[dict]) -> None:
    """What opens goes through every read-only command (``--json``, the form scripts and the MCP tools
    use): exit 0, or one line naming the file. Text tables are the fuzz program's business."""
    commands = [["tensors"], ["meta"], ["roles"], ["layers"], ["recipe"], ["mem"], ["mem", "--fit", "8GiB"]]
    commands += [["report"], ["template", "info"]]
    commands = [[*c, "--json"] for c in commands]
    for f in handcrafted:
        if f["data"] != "accept":
            continue
        for cmd in commands:
            code, out, err = cli(*cmd, str(f["path"]))
            assert code == 0 or (code == 2 and len(err.splitlines()) == 1 and "internal error" not in err), (
                f["path"].name,
                cmd,
                err,
            )


def test_committed_handcrafted_files_are_test_gguf_output(handcrafted: list[dict]) -> None:
    """tests/fixtures/test-gguf/ holds a few of these files (the fuzz seeds); they are test-gguf's bytes."""
    fresh = {f["path"].name: f["path"] for f in handcrafted}
    committed = sorted((FIXTURES / "test-gguf").glob("*.gguf"))
    assert committed
    for p in committed:
        assert p.name in fresh, p.name
        assert p.read_bytes() == fresh[p.name].read_bytes(), p.name


def test_spec_limits_are_llama_cpps() -> None:
    """ggufx.format.spec against the pinned source: gguf.cpp's limits, ggml.h's and gguf.h's constants."""
    src = gguf_oracle.source_dir()
    if not (src / "ggml" / "src" / "gguf.cpp").is_file():
        pytest.skip(f"llama.cpp source not found at {src}")
    gguf_cpp = (src / "ggml" / "src" / "gguf.cpp").read_text()
    ggml_h = (src / "ggml" / "include" / "ggml.h").read_text()
    gguf_h = (src / "ggml" / "include" / "gguf.h").read_text()

    def define(text: str, name: str) -> int:
        m = re.search(rf"#\s*define\s+{name}\s+\(?([0-9*\s]+)\)?\s*$", text, re.M)
        assert m, name
        return eval(m.group(1))  # noqa: S307 - a product of integer literals from the pinned source

    assert define(gguf_cpp, "GGUF_MAX_STRING_LENGTH") == spec.GGUF_MAX_STRING_LENGTH
    assert define(gguf_cpp, "GGUF_MAX_ARRAY_ELEMENTS") == spec.GGUF_MAX_ARRAY_ELEMENTS
    assert define(ggml_h, "GGML_MAX_DIMS") == spec.GGML_MAX_DIMS
    assert define(ggml_h, "GGML_MAX_NAME") == spec.GGML_MAX_NAME
    assert define(gguf_h, "GGUF_VERSION") == spec.GGUF_VERSION
    assert define(gguf_h, "GGUF_DEFAULT_ALIGNMENT") == spec.GGUF_DEFAULT_ALIGNMENT
    assert int(re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", ggml_h).group(1)) == spec.GGML_TYPE_COUNT
    # the checks the reader cites are where spec.py says they are
    lines = gguf_cpp.splitlines()
    for lineno, needle in (
        (280, "n > GGUF_MAX_ARRAY_ELEMENTS"),
        (348, "size > GGUF_MAX_STRING_LENGTH"),
        (571, "key.empty()"),
        (657, "name.length() >= GGML_MAX_NAME"),
        (679, "n_dims > GGML_MAX_DIMS"),
        (692, "info.t.ne[j] < 0"),
        (730, "info.t.type >= GGML_TYPE_COUNT"),
        (740, "blck_size == 0"),
        (749, "SIZE_MAX/ggml_type_size"),
        (805, "SIZE_MAX - (ctx->alignment - 1)"),
        (885, "gr.read(data->data, ctx->size)"),
    ):
        assert needle in lines[lineno - 1], (lineno, lines[lineno - 1])
