"""The command line's cache of the methods ``@dataclass`` compiles (ggufx/cli/_codecache.py, issue 21)."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# every dataclass of the modules `mem` imports, each generated method's code marshalled (run in a fresh
# process, with the cache installed or not: argv[1])
_METHODS = """
import dataclasses, marshal, sys
if sys.argv[1] == "cached":
    from ggufx.cli._codecache import _state, install
    assert install()
import ggufx.cli.analyze, ggufx.results.memory, ggufx.analysis.memory.buffers, ggufx.analysis.memory.fit
import ggufx.render.text
out = {}
for name, mod in sorted(sys.modules.items()):
    if not name.startswith("ggufx"):
        continue
    for cls in vars(mod).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == name:
            for meth in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__"):
                f = cls.__dict__.get(meth)
                if f is not None and hasattr(f, "__code__"):
                    out[f"{name}.{cls.__qualname__}.{meth}"] = f.__code__
if sys.argv[1] == "cached":
    out["_compiled_now"] = len(_state["new"])
    out["_from_cache"] = len(_state["used"])
sys.stdout.buffer.write(marshal.dumps(out))
"""


def _env(cache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GGUFX_NO_CACHE", "GGUFX_CACHE_DIR")}
    if cache is None:
        env["GGUFX_NO_CACHE"] = "1"
    else:
        env["GGUFX_CACHE_DIR"] = str(cache)
    return env


def _methods(mode: str, cache: Path | None) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _METHODS, mode], capture_output=True, check=True, env=_env(cache), cwd=ROOT
    )
    out = marshal.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


def test_the_cached_methods_are_the_ones_dataclasses_compiles(tmp_path: Path) -> None:
    """Every generated method of every dataclass `mem` imports: the code from the cache equals the code
    ``dataclasses`` compiles itself, in the first process (which compiles and writes the cache) and in
    the next (which compiles nothing)."""
    plain = _methods("plain", None)
    assert len(plain) > 150  # the memory path's 40-odd classes, up to six methods each
    first = _methods("cached", tmp_path)
    compiled = first.pop("_compiled_now")  # one text per method (two classes of the same fields share some)
    assert isinstance(compiled, int) and len(plain) // 2 < compiled <= len(plain) and first.pop("_from_cache") == 0
    # the first process wrote its texts only at exit: the cache file is there now
    files = list((tmp_path / "code").glob("dataclass-methods-*.marshal"))
    assert [f.name for f in files] == [f"dataclass-methods-{sys.implementation.cache_tag}-{sys.hexversion:x}.marshal"]
    second = _methods("cached", tmp_path)
    assert second.pop("_compiled_now") == 0 and second.pop("_from_cache") == compiled
    assert first == plain and second == plain


def _save_at_exit_script() -> str:
    return "from ggufx.cli._codecache import install\nassert install()\nimport ggufx.results.memory\n"


def test_the_cache_file_is_written_at_exit_and_read_back(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _save_at_exit_script()], check=True, env=_env(tmp_path), cwd=ROOT)
    from ggufx.cli import _codecache

    [path] = (tmp_path / "code").iterdir()
    entries = _codecache.load(str(path))
    assert entries and all(text.startswith("def __create_fn__(") for text in entries)
    request = next(t for t in entries if "def __init__(self,ctx" in t)  # MemoryRequest's __init__
    assert entries[request] == compile(request, "<string>", "exec", dont_inherit=True)


def test_a_foreign_or_broken_cache_file_is_ignored(tmp_path: Path) -> None:
    """A truncated file, one of another shape, or a text whose code is not code: compiled as without a
    cache, and the file rewritten with good entries."""
    from ggufx.cli import _codecache

    folder = tmp_path / "code"
    folder.mkdir()
    name = f"dataclass-methods-{sys.implementation.cache_tag}-{sys.hexversion:x}.marshal"
    for bad in (b"", b"\x00garbage", marshal.dumps([1, 2]), marshal.dumps({"def f(): pass": 3}), marshal.dumps({1: 2})):
        (folder / name).write_bytes(bad)
        assert _codecache.load(str(folder / name)) == {}
        plain = _methods("plain", None)
        got = _methods("cached", tmp_path)
        assert got.pop("_compiled_now") > len(plain) // 2 and got.pop("_from_cache") == 0
        assert got == plain
        assert len(_codecache.load(str(folder / name))) >= len(plain) // 2  # rewritten (texts shared by methods)


def test_no_cache_file_when_caching_is_off(tmp_path: Path) -> None:
    """GGUFX_NO_CACHE: every text compiled as without the cache, no file read or written."""
    env = _env(None) | {"GGUFX_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _save_at_exit_script()], check=True, env=env, cwd=ROOT)
    assert not any(tmp_path.iterdir())
    plain = _methods("plain", None)
    got = _methods("cached", None)
    assert got.pop("_from_cache") == 0 and got.pop("_compiled_now") > len(plain) // 2 and got == plain


def test_a_command_that_makes_no_class_reads_no_cache_file(tmp_path: Path) -> None:
    """`ggufx --help` makes no dataclass: the cache file is not read (its start-up stays as it was)."""
    code = (
        "import sys\n"
        "from ggufx.cli import _codecache, main\n"
        "def refuse(path):\n"
        "    raise AssertionError('read ' + path)\n"
        "_codecache.load = refuse\n"
        "sys.argv = ['ggufx', '--help']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path), cwd=ROOT)
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


def test_the_command_answers_the_same_with_the_cache(gemma_path: Path, tmp_path: Path) -> None:
    """`ggufx mem --json` as a process (the only caller that installs the cache), without a cache, with
    a cold one and with a warm one: byte-identical."""
    launch = "import sys; sys.argv[0] = 'ggufx'; from ggufx.cli import run; run()"
    args = [sys.executable, "-c", launch, "mem", str(gemma_path), "-c", "4096", "--json"]
    outs = [
        subprocess.run(args, capture_output=True, env=env, cwd=ROOT)
        for env in (_env(None), _env(tmp_path), _env(tmp_path))
    ]
    assert [p.returncode for p in outs] == [outs[0].returncode] * 3
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    assert list((tmp_path / "code").iterdir())  # the first cached run wrote it


def test_a_cache_file_others_may_write_is_not_read(tmp_path: Path) -> None:
    """Its code would run as ggufx's: a file writable by the group or others is ignored (and replaced)."""
    from ggufx.cli import _codecache

    subprocess.run([sys.executable, "-c", _save_at_exit_script()], check=True, env=_env(tmp_path), cwd=ROOT)
    [path] = (tmp_path / "code").iterdir()
    assert path.stat().st_mode & 0o777 == 0o600 and _codecache.load(str(path))
    path.chmod(0o666)
    assert _codecache.load(str(path)) == {}
    got = _methods("cached", tmp_path)
    assert got["_from_cache"] == 0 and isinstance(got["_compiled_now"], int) and got["_compiled_now"] > 100


def test_each_command_has_its_own_file(tmp_path: Path) -> None:
    """``install(command)``: the command's own file, written at exit, read back by that command only (``mem``
    does not load the texts of every other command's classes)."""
    from ggufx.cli import _codecache

    own = "from ggufx.cli._codecache import _state, install\nassert install({!r})\nimport ggufx.results.memory\n"
    own += "print(len(_state['used']), len(_state['new']))\n"

    def run(command: str) -> list[int]:
        proc = subprocess.run(
            [sys.executable, "-c", own.format(command)],
            capture_output=True,
            text=True,
            check=True,
            env=_env(tmp_path),
            cwd=ROOT,
        )
        return [int(n) for n in proc.stdout.split()]

    used, new = run("mem")
    tag = f"{sys.implementation.cache_tag}-{sys.hexversion:x}"
    assert [p.name for p in (tmp_path / "code").iterdir()] == [f"dataclass-methods-{tag}-mem.marshal"]
    assert (
        used == 0
        and new > 20
        and len(_codecache.load(str(tmp_path / "code" / f"dataclass-methods-{tag}-mem.marshal"))) == new
    )
    assert run("mem") == [new, 0]  # read back
    assert run("report") == [0, new]  # another command: its own file, compiled anew
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == [
        f"dataclass-methods-{tag}-mem.marshal",
        f"dataclass-methods-{tag}-report.marshal",
    ]
