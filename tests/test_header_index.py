"""The header index (``ggufx.io.header_index``): a second open of a file skips the walk over its
large string arrays and parses the same header; a file changed in any way is walked (and refused)
again; an index entry that is not ours, or lies, changes nothing; no cache folder, no entry."""

from __future__ import annotations

import os

import pytest

from ggufx.errors import GGUFError
from ggufx.format import reader
from ggufx.io import header_index
from ggufx.model.open import open_model

from .fixtures.make_fixtures import ARR, STR, U32, Raw

N = header_index.MIN_STRINGS + 100


def _file(path, n: int = N, long_at: int | None = None) -> None:
    """A GGUF whose ``tokenizer.ggml.tokens`` holds ``n`` strings, a key and a tensor after it;
    ``long_at`` makes that string claim more bytes than llama.cpp allows for one string."""
    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    body = b"".join(r.s(f"tok{i}".encode(), (1 << 40) if i == long_at else None) for i in range(n))
    r.kv("tokenizer.ggml.tokens", ARR, r.p("iQ", STR, n) + body)
    r.kv("after", U32, r.p("I", 7))
    r.tensor("a.weight", (8,), 0, 0)
    r.data = bytes(32)
    path.write_bytes(r.build())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GGUFX_CACHE_DIR", str(folder))
    monkeypatch.delenv("GGUFX_NO_CACHE", raising=False)
    return folder / "local"


@pytest.fixture
def walks(monkeypatch):
    """How many string arrays the reader walked."""
    counted = []
    walk = reader._Parser._skip_strings

    def counting(self, pos, count, key):
        counted.append(key)
        return walk(self, pos, count, key)

    monkeypatch.setattr(reader._Parser, "_skip_strings", counting)
    return counted


def _name(path) -> str:
    """The index entry of ``path`` as it is now."""
    st = os.stat(path)
    return "-".join(f"{v:x}" for v in (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def _view(m):
    h = m.header
    return (
        {k: (kv.type, kv.offset, kv.end, list(kv.value) if kv.type == 9 else kv.value) for k, kv in h.kvs.items()},
        h.tensors,
        h.data_offset,
    )


def test_a_second_open_skips_the_walk_and_reads_the_same_header(tmp_path, cache, walks) -> None:
    path = tmp_path / "m.gguf"
    _file(path)
    first = _view(open_model(path))
    assert walks == ["tokenizer.ggml.tokens"]
    assert os.listdir(cache) == [_name(path)]
    second = _view(open_model(path))
    assert walks == ["tokenizer.ggml.tokens"]  # not walked again
    assert second == first
    assert second[0]["tokenizer.ggml.tokens"][3][N - 1] == f"tok{N - 1}"


def test_a_file_changed_in_place_is_walked_and_refused_again(tmp_path, cache, walks) -> None:
    path = tmp_path / "m.gguf"
    _file(path)
    open_model(path)
    good = path.read_bytes()
    _file(tmp_path / "bad.gguf", long_at=N // 2)
    bad = (tmp_path / "bad.gguf").read_bytes()
    assert len(bad) == len(good)
    with open(path, "r+b") as f:  # same size, same inode: only the times tell
        f.write(bad)
    with pytest.raises(GGUFError, match=f"string {N // 2} of array .tokenizer.ggml.tokens. claims"):
        open_model(path)
    assert walks == ["tokenizer.ggml.tokens"] * 2


@pytest.mark.parametrize(
    "entry",
    [
        b"not ours\n",
        b"\xff\xfe binary",
        header_index.FORMAT.encode() + b"\n12 x 99\n",
        b"x" * (header_index.MAX_ENTRY_BYTES + 10),
    ],
)
def test_an_entry_that_is_not_ours_is_ignored(tmp_path, cache, walks, entry: bytes) -> None:
    path = tmp_path / "m.gguf"
    _file(path)
    first = _view(open_model(path))
    (name,) = os.listdir(cache)
    (cache / name).write_bytes(entry)
    assert _view(open_model(path)) == first
    assert len(walks) == 2


def test_an_entry_that_lies_is_ignored(tmp_path, cache, walks) -> None:
    """A count other than the file's, or an end before the strings' length prefixes or past the file:
    the array is walked, the header is the file's."""
    path = tmp_path / "m.gguf"
    _file(path)
    first = _view(open_model(path))
    (name,) = os.listdir(cache)
    offset, count, end = map(int, (cache / name).read_text().split("\n")[1].split())
    size = path.stat().st_size
    for lie in [(offset, count + 1, end), (offset, count, offset + 8 * count - 1), (offset, count, size + 1)]:
        (cache / name).write_text(header_index.FORMAT + "\n%d %d %d\n" % lie)
        assert _view(open_model(path)) == first
    assert len(walks) == 4


def test_no_cache_no_entry(tmp_path, cache, walks, monkeypatch) -> None:
    monkeypatch.setenv("GGUFX_NO_CACHE", "1")
    path = tmp_path / "m.gguf"
    _file(path)
    open_model(path)
    open_model(path)
    assert not cache.exists()
    assert len(walks) == 2


def test_small_arrays_get_no_entry(tmp_path, cache) -> None:
    path = tmp_path / "m.gguf"
    _file(path, n=header_index.MIN_STRINGS - 1)
    open_model(path)
    assert not cache.exists()


def test_a_folder_that_cannot_be_written_only_costs_the_walk(tmp_path, monkeypatch, walks) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("GGUFX_CACHE_DIR", str(blocker))
    path = tmp_path / "m.gguf"
    _file(path)
    first = _view(open_model(path))
    assert _view(open_model(path)) == first
    assert len(walks) == 2
    assert not [n for _, _, names in os.walk(tmp_path) for n in names if n.endswith(".tmp")]


def test_the_oldest_entries_go_past_the_limit(tmp_path, cache, monkeypatch) -> None:
    monkeypatch.setattr(header_index, "MAX_ENTRIES", 4)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"m{i}.gguf")
        _file(paths[-1])
        open_model(paths[-1])
        if i < 4:  # written at distinct times, in order, long ago
            os.utime(cache / _name(paths[-1]), ns=(10**9 * (1 + i), 10**9 * (1 + i)))
    # the fifth entry made five, more than 4: the oldest went, down to 4 // 2
    assert sorted(os.listdir(cache)) == sorted([_name(paths[3]), _name(paths[4])])


def test_the_real_vocabulary_reads_the_same_from_the_index(gemma_path, tmp_path, cache, walks) -> None:
    """Gemma 3's 262,144 tokens: the second open is not walked and equals the first, token for token."""
    first = _view(open_model(gemma_path))
    second = _view(open_model(gemma_path))
    assert walks.count("tokenizer.ggml.tokens") == 1
    assert "general.tags" in walks[1:]  # a small array is walked each time: no entry for it
    assert second == first
    assert len(second[0]["tokenizer.ggml.tokens"][3]) == 262144


def test_a_known_header_is_read_once_into_its_buffer(gemma_path, cache, monkeypatch) -> None:
    """Gemma 3's 6.5 MB header, its end known from the entry: one read of exactly the header, whose bytes
    are the buffer the header keeps (not copied into a growing one), the same header as the walk read.
    An end the entry gives past where its arrays allow is not believed (the header is read as without
    it)."""
    from ggufx.io.sources import FileSource

    reads: list[bytes] = []
    read = FileSource.read
    monkeypatch.setattr(FileSource, "read", lambda s, o, n: (reads.append(read(s, o, n)), reads[-1])[1])
    first = _view(open_model(gemma_path))  # walked: the buffer grows read by read
    assert len(reads) > 1
    reads.clear()
    model = open_model(gemma_path)
    assert _view(model) == first
    assert [len(r) for r in reads] == [model.header.header_end] and model.header.buf is reads[0]
    (name,) = os.listdir(cache)
    rows = (cache / name).read_text().splitlines()
    assert rows[-1] == f"0 0 {model.header.header_end}"
    (cache / name).write_text("\n".join([*rows[:-1], f"0 0 {gemma_path.stat().st_size}", ""]))
    reads.clear()
    assert _view(open_model(gemma_path)) == first
    assert len(reads) > 1 and len(reads[0]) == reader.FIRST_READ
