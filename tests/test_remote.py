"""Remote sources (#9): https:// URLs and hf:// references read with range requests.

A local range-capable server (tests/httpserver.py) serves the fixtures and the two real files;
its switches make it fail the way real servers do. Every remote result must equal the local
result on the same file, byte for byte, once the location string is substituted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import pytest

import ggufx
import ggufx.io.remote as remote
from tests.support import FIXTURES, CliRun

from .httpserver import RangeServer

TOKEN = "hf_secret_token_123"


@pytest.fixture(scope="module")
def files(smollm2_path: Path, gemma_path: Path) -> dict[str, Path]:
    out = {p.name: p for p in FIXTURES.glob("*.gguf")}
    out[smollm2_path.name] = smollm2_path
    out[gemma_path.name] = gemma_path
    return out


@pytest.fixture(scope="module")
def servers(files: dict[str, Path]):
    hub = RangeServer(files).start()
    cdn = RangeServer(files, host="localhost").start()  # another origin, as the Hub's CDN is
    yield hub, cdn
    hub.stop()
    cdn.stop()


@pytest.fixture
def srv(servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RangeServer:
    hub, cdn = servers
    hub.state.reset()
    cdn.state.reset()
    cfg = remote.RemoteConfig(cache_dir=str(tmp_path / "cache"), retries=3, backoff=0.01, timeout=5)
    monkeypatch.setattr(remote, "BASE", cfg)
    monkeypatch.setattr(remote, "CONFIG", dataclasses.replace(cfg))  # a fresh config: its own client
    remote.STATS.reset()
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    return hub


@pytest.fixture
def cdn(servers) -> RangeServer:
    return servers[1]


def gets(s: RangeServer) -> list[dict]:
    return [e for e in s.state.log if e["method"] == "GET"]


# -- results equal the local ones ------------------------------------------------------------

COMMANDS = [
    ["info", "--json"],
    ["tensors", "--json"],
    ["meta", "--json"],
    ["roles", "--json"],
    ["layers", "--json"],
    ["recipe", "--json"],
    ["mem", "--json", "--ctx", "8192"],
    ["mem", "--json", "--fit", "2GiB"],
    ["report", "--format", "md"],
    ["template", "show"],
    ["template", "info", "--json"],
    ["template", "lint", "--json"],
    ["template", "render", "--json"],
]


@pytest.mark.parametrize(
    "name",
    [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "all-types-v3.gguf",
        "big-endian.gguf",
        "all-types-v2.gguf",
        "unknown-type.gguf",
        "split-00002-of-00003.gguf",
    ],
)
def test_every_read_command_equals_local(cli: CliRun, srv: RangeServer, files: dict[str, Path], name: str) -> None:
    if name not in files:
        pytest.fail(f"fixture {name} is missing; run tests/fixtures/make_fixtures.py")
    local = files[name]
    url = srv.url(name)
    for cmd in COMMANDS:
        code_l, out_l, err_l = cli(*cmd, str(local))
        code_r, out_r, err_r = cli(*cmd, url)
        assert code_r == code_l, (cmd, err_r, err_l)
        # the only difference allowed: where the file is (and where its siblings are)
        assert out_r.replace(srv.base, str(local.parent)) == out_l, cmd
        assert err_r.replace(srv.base, str(local.parent)) == err_l, cmd


def test_diff_and_check_remote(cli: CliRun, srv: RangeServer, files: dict[str, Path], tmp_path: Path) -> None:
    a, b = "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"
    code_l, out_l, _ = cli("diff", "--json", str(files[a]), str(files[b]))
    code_r, out_r, _ = cli("diff", "--json", srv.url(a), str(files[b]))
    assert (code_r, out_r.replace(srv.base, str(files[a].parent))) == (code_l, out_l)
    code_l, out_l, _ = cli("template", "diff", "--json", str(files[a]), str(files[b]))
    code_r, out_r, _ = cli("template", "diff", "--json", srv.url(a), srv.url(b))
    assert (code_r, out_r.replace(srv.base, str(files[a].parent))) == (code_l, out_l)
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[model]\nbpw = { min = 5.0, max = 6.0 }\n[metadata]\nrequired = ["tokenizer.chat_template"]\n'
        '[memory]\nctx = 8192\nbudget = "1GiB"\n'
    )
    code_l, out_l, _ = cli("check", "--json", "--policy", str(policy), str(files[a]))
    code_r, out_r, _ = cli("check", "--json", "--policy", str(policy), srv.url(a))
    assert code_l == 0 and (code_r, out_r.replace(srv.base, str(files[a].parent))) == (code_l, out_l)
    code_r, out_r, _ = cli("check", "--json", "--policy", str(policy), srv.url(b))
    assert code_r == 1  # gemma has no template and another BPW: the policy fails remotely too


# -- requests and bytes ----------------------------------------------------------------------


def test_gemma_info_request_budget(cli: CliRun, srv: RangeServer, files: dict[str, Path]) -> None:
    name = "gemma-3-270m-q4_k_m.gguf"
    header_end = ggufx.open(files[name]).header.data_offset  # 6,525,120
    code, out, err = cli("--debug", "info", "--no-cache", srv.url(name))
    assert code == 0, err
    assert remote.STATS.requests == len(srv.state.log) <= 4
    assert remote.STATS.bytes < 8_000_000
    assert header_end < remote.STATS.bytes < header_end + (1 << 20)  # the header and a little, no tensor data
    lines = [x for x in err.splitlines() if x.startswith("ggufx: debug: GET")]
    assert len(lines) == remote.STATS.requests
    assert f"{remote.STATS.requests} HTTP request(s), {remote.STATS.bytes:,} bytes received" in err


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_every_command_reads_the_header_once(cli: CliRun, srv: RangeServer, cmd: list[str]) -> None:
    url = srv.url("gemma-3-270m-q4_k_m.gguf")
    code, out, err = cli(*cmd, "--no-cache", url)
    if cmd[0] == "template":  # Gemma ships no chat template: every template command says so
        assert (code, out, err) == (2, "", f"ggufx: error: {url}: no chat template\n"), cmd
    else:
        assert (code, err) == (0, "") and out, (cmd, err)
    assert 1 <= remote.STATS.requests == len(srv.state.log) <= 4, (cmd, remote.STATS.to_dict())
    assert remote.STATS.bytes < 8_000_000
    # once: ranged GETs one after the other from the first byte, none of it asked for twice
    assert [e["method"] for e in srv.state.log] == ["GET"] * remote.STATS.requests
    spans = [tuple(int(x) for x in e["range"].removeprefix("bytes=").split("-")) for e in srv.state.log]
    assert spans[0][0] == 0 and all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:])), spans
    assert remote.STATS.bytes == spans[-1][1] + 1


def test_small_headers_take_one_or_two_requests(srv: RangeServer, files: dict[str, Path]) -> None:
    remote.CONFIG.cache_dir = None  # the library API uses CONFIG as it is
    ggufx.open(srv.url("all-types-v3.gguf"))
    assert remote.STATS.requests == 1
    remote.STATS.reset()
    ggufx.open(srv.url("SmolLM2-135M-Instruct.Q4_1.gguf"))  # 1.79 MB header
    assert remote.STATS.requests <= 2 and remote.STATS.bytes < 2_100_000


def test_split_siblings_are_read_in_parallel(srv: RangeServer, files: dict[str, Path]) -> None:
    srv.state.behaviour.latency = 0.3  # long enough for the two sibling requests to overlap
    m = ggufx.open(srv.url("split-00003-of-00003.gguf"))
    assert len(m.shards) == 3 and [s.path for s in m.shards] == [
        srv.url(f"split-0000{i}-of-00003.gguf") for i in (1, 2, 3)
    ]
    assert m.tensors == ggufx.open(files["split-00003-of-00003.gguf"]).tensors
    assert remote.STATS.requests == 3
    assert srv.state.max_in_flight == 2  # both siblings were being answered at the same time


def test_missing_remote_shard(cli: CliRun, srv: RangeServer, files: dict[str, Path]) -> None:
    del srv.state.files["split-00002-of-00003.gguf"]
    try:
        code, _, err = cli("info", srv.url("split-00001-of-00003.gguf"))
    finally:
        srv.state.files["split-00002-of-00003.gguf"] = files["split-00002-of-00003.gguf"]
    assert code == 2
    assert err.strip() == (
        f"ggufx: error: {srv.url('split-00002-of-00003.gguf')}: shard 2 of 3 is missing or unreadable "
        "(HTTP 404 Not Found: no such file on the server)"
    )


# -- failures --------------------------------------------------------------------------------


def test_no_range_support_is_refused(cli: CliRun, srv: RangeServer, files: dict[str, Path]) -> None:
    srv.state.behaviour.no_range = True
    name = "gemma-3-270m-q4_k_m.gguf"
    code, out, err = cli("info", srv.url(name))
    assert code == 2 and out == ""
    assert "does not support range requests (HTTP 200 instead of 206)" in err and "--allow-full-download" in err
    assert "253,113,024 bytes" in err
    assert remote.STATS.bytes == 0
    code, out, err = cli("info", "--json", "--allow-full-download", "--no-cache", srv.url(name))
    assert code == 0, err
    assert out.replace(srv.base, str(files[name].parent)) == cli("info", "--json", str(files[name]))[1]
    assert remote.STATS.bytes < 8_000_000  # streamed, then closed after the header


def test_429_then_success(srv: RangeServer, files: dict[str, Path]) -> None:
    b = srv.state.behaviour
    b.fail_status, b.fail_count, b.retry_after = 429, 2, "0"
    s = ggufx.info(srv.url("all-types-v3.gguf"))
    assert s.to_dict()["types"] == ggufx.info(files["all-types-v3.gguf"]).to_dict()["types"]
    assert [e["path"] for e in srv.state.log].count("/all-types-v3.gguf") == 3


def test_persistent_5xx_gives_up(cli: CliRun, srv: RangeServer) -> None:
    srv.state.behaviour.fail_status, srv.state.behaviour.fail_count = 503, 100
    code, _, err = cli("info", srv.url("all-types-v3.gguf"))
    assert code == 2
    assert (
        err.strip()
        == f"ggufx: error: {srv.url('all-types-v3.gguf')}: HTTP 503 Service Unavailable; gave up after 4 attempts"
    )
    assert len(srv.state.log) == 4


def test_dropped_connection_mid_body(srv: RangeServer, files: dict[str, Path]) -> None:
    b = srv.state.behaviour
    b.drop_after, b.drop_count = 100_000, 2
    name = "gemma-3-270m-q4_k_m.gguf"
    s = ggufx.info(srv.url(name)).to_dict()
    local = ggufx.info(files[name]).to_dict()
    assert {k: v for k, v in s.items() if k not in ("path", "shards")} == {
        k: v for k, v in local.items() if k not in ("path", "shards")
    }
    # the first range twice dropped mid-body and asked for again, then the rest of the header
    ranges = [e["range"] for e in gets(srv)]
    assert ranges[:3] == ["bytes=0-1048575"] * 3 and len(ranges) == 5
    assert [e["status"] for e in remote.STATS.log] == ["dropped", "dropped", 206, 206, 206]


def test_file_changed_once_restarts(srv: RangeServer, files: dict[str, Path]) -> None:
    srv.state.behaviour.change_etag_after = 1  # re-uploaded right after our first request
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    m = ggufx.open(srv.url(name))
    assert m.tensors == ggufx.open(files[name]).tensors
    log = gets(srv)
    assert len(log) == 4 and remote.STATS.requests == 4
    # each parse: the first MiB, then the rest of the header only if the file is still the one seen
    assert [e["range"] for e in log] == [log[0]["range"], log[1]["range"]] * 2 and log[0]["range"] == "bytes=0-1048575"
    assert log[0]["if_range"] is None and log[2]["if_range"] is None
    first, second = log[1]["if_range"], log[3]["if_range"]
    # the ETag of the first MiB, then the re-upload's: the parse started again on the new file
    assert first.endswith('-0"') and second.endswith('-1"') and first[:-3] == second[:-3]


def test_file_changing_all_the_time_is_an_error(cli: CliRun, srv: RangeServer) -> None:
    b = srv.state.behaviour
    b.change_etag_after, b.change_every = 0, True
    code, _, err = cli("info", srv.url("SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert code == 2
    assert "the file changed on the server while its header was read, twice" in err
    assert len(err.strip().splitlines()) == 1


def test_401_gated_repository_says_set_hf_token(cli: CliRun, srv: RangeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    srv.state.behaviour.hf_required_token = TOKEN
    ref = "hf://org/gated-GGUF/all-types-v3.gguf"
    code, _, err = cli("info", ref)
    assert code == 2
    assert err.strip() == (
        f"ggufx: error: {ref}: HTTP 401 Unauthorized: the repository is gated or private; "
        "set HF_TOKEN to a token with access (huggingface.co/settings/tokens)"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")  # read again: each invocation has its own config and client
    code, _, err = cli("info", ref)
    assert code == 2 and "your HF_TOKEN has no access" in err and "hf_wrong" not in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = cli("--debug", "info", "--json", ref)
    assert code == 0, err
    assert TOKEN not in err and TOKEN not in out


def test_token_file_is_read(srv: RangeServer, tmp_path: Path) -> None:
    srv.state.behaviour.hf_required_token = TOKEN
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(TOKEN + "\n")
    assert ggufx.open("hf://org/gated-GGUF/all-types-v3.gguf").tensors


def test_404_names_revision_and_file(cli: CliRun, srv: RangeServer) -> None:
    code, _, err = cli("info", "hf://org/repo-GGUF@nope/all-types-v3.gguf")
    assert code == 2
    assert "HTTP 404 Not Found: no file 'all-types-v3.gguf' at revision 'nope' of org/repo-GGUF" in err
    code, _, err = cli("info", srv.url("missing.gguf"))
    assert code == 2
    assert err.strip() == f"ggufx: error: {srv.url('missing.gguf')}: HTTP 404 Not Found: no such file on the server"


def test_slow_server_times_out(cli: CliRun, srv: RangeServer) -> None:
    srv.state.behaviour.delay = 3
    code, _, err = cli("info", "--timeout", "0.3", srv.url("all-types-v3.gguf"))
    assert code == 2
    assert "no response within 0.3 s (timeout); gave up after 4 attempts" in err
    assert len(srv.state.log) == 4 and all(e["status"] == "timeout" for e in remote.STATS.log)


def test_token_does_not_follow_redirect_to_another_host(
    cli: CliRun, srv: RangeServer, cdn: RangeServer, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    srv.state.behaviour.hf_redirect = cdn.base
    srv.state.behaviour.hf_required_token = TOKEN
    ref = "hf://org/repo-GGUF@v1/gemma-3-270m-q4_k_m.gguf"
    code, out, err = cli("--debug", "info", "--json", ref)
    assert code == 0, err
    assert all(e["authorization"] == f"Bearer {TOKEN}" for e in srv.state.log)
    assert cdn.state.log and all(e["authorization"] is None for e in cdn.state.log)
    # after the redirect, ranges go straight to the CDN: one resolve request only
    assert len(srv.state.log) == 1 and len(cdn.state.log) == remote.STATS.requests - 1
    assert TOKEN not in err and "X-Amz-Signature" not in err and "secret" not in err
    assert '"path": "hf://org/repo-GGUF@v1/gemma-3-270m-q4_k_m.gguf"' in out


def test_browser_blob_link_is_read_as_resolve(srv: RangeServer) -> None:
    m = ggufx.open(f"{srv.base}/org/repo-GGUF/blob/main/all-types-v3.gguf")
    assert m.tensors and gets(srv)[0]["path"] == "/org/repo-GGUF/resolve/main/all-types-v3.gguf"


# -- caches ----------------------------------------------------------------------------------


def test_header_cache_head_then_offline(cli: CliRun, srv: RangeServer, files: dict[str, Path]) -> None:
    name = "gemma-3-270m-q4_k_m.gguf"
    first = cli("info", "--json", srv.url(name))
    assert first[0] == 0 and len(srv.state.log) == 3
    srv.state.log.clear()
    second = cli("info", "--json", srv.url(name))
    assert second == first
    assert [e["method"] for e in srv.state.log] == ["HEAD"]
    srv.state.log.clear()
    third = cli("info", "--json", "--offline", srv.url(name))
    assert third == first and srv.state.log == []
    # a re-upload (new ETag) is noticed by the HEAD and fetched again
    srv.state.behaviour.change_etag_after = 0
    srv.state.log.clear()
    fourth = cli("info", "--json", srv.url(name))
    assert fourth == first and [e["method"] for e in srv.state.log] == ["HEAD", "GET", "GET", "GET"]


def test_hub_cache_validation_is_one_head_without_following(cli: CliRun, srv: RangeServer, cdn: RangeServer) -> None:
    srv.state.behaviour.hf_redirect = cdn.base
    ref = "hf://org/repo-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cli("info", ref)[0] == 0
    srv.state.log.clear()
    cdn.state.log.clear()
    assert cli("info", ref)[0] == 0
    assert [e["method"] for e in srv.state.log] == ["HEAD"] and cdn.state.log == []


def test_offline_without_cache_is_an_error(cli: CliRun, srv: RangeServer) -> None:
    code, _, err = cli("info", "--offline", srv.url("all-types-v3.gguf"))
    assert code == 2 and "not in the header cache, and --offline forbids the network" in err
    assert srv.state.log == []


def test_corrupt_cache_entry_is_ignored(srv: RangeServer, tmp_path: Path) -> None:
    url = srv.url("all-types-v3.gguf")
    ggufx.open(url)
    for f in (tmp_path / "cache").glob("*.bin"):
        f.write_bytes(b"GGUF garbage")
    srv.state.log.clear()
    assert ggufx.open(url).tensors
    assert [e["method"] for e in srv.state.log] == ["GET"]


def test_hf_reference_in_local_hf_cache_needs_no_network(
    srv: RangeServer, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    commit = "a" * 40
    repo = hub / "models--org--repo-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit / "sub"
    snap.mkdir(parents=True)
    os.symlink(files["all-types-v3.gguf"], snap / "model.gguf")
    m = ggufx.open("hf://org/repo-GGUF/sub/model.gguf")
    assert m.path == str(snap / "model.gguf") and m.tensors
    m2 = ggufx.open(f"hf://org/repo-GGUF@{commit}/sub/model.gguf")
    assert m2.path == m.path
    assert srv.state.log == []  # not one request


def test_bad_hf_reference(cli: CliRun, srv: RangeServer) -> None:
    code, _, err = cli("info", "hf://just-a-repo")
    assert code == 2 and "expected hf://ORG/REPO/FILE or hf://ORG/REPO@REVISION/FILE" in err


def test_remote_files_are_never_edited_or_hashed(cli: CliRun, srv: RangeServer) -> None:
    url = srv.url("all-types-v3.gguf")
    code, _, err = cli("set", url, "general.name", "x")
    assert code == 2 and "a remote file cannot be edited" in err
    code, _, err = cli("hash", url)
    assert code == 2 and "hashing reads every tensor's data" in err


def test_help_does_not_import_http(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from ggufx.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('http.client', 'ssl', 'ggufx.io.remote', 'urllib.request') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_redact_strips_credentials_and_query() -> None:
    from ggufx.io.http import _user_agent, redact

    assert redact("https://user:pw@cdn.example/x/y.gguf?X-Amz-Signature=abc") == "https://cdn.example/x/y.gguf?…"
    assert re.fullmatch(r"ggufx/\S+", _user_agent())


def test_http_proxy_from_the_environment(
    srv: RangeServer, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", srv.base)  # our server doubles as a forward proxy
    url = "http://models.example.invalid/all-types-v3.gguf"
    m = ggufx.open(url)
    assert m.tensors == ggufx.open(files["all-types-v3.gguf"]).tensors
    assert srv.state.log[0]["proxied"] == url
    srv.state.log.clear()
    monkeypatch.setenv("no_proxy", "models.example.invalid")
    # new options, new client: none of the pooled connections to the proxy is reused
    monkeypatch.setattr(remote, "CONFIG", dataclasses.replace(remote.CONFIG, cache_dir=None))
    with pytest.raises(ggufx.SourceError, match="connection failed"):  # bypassed: the .invalid host does not resolve
        ggufx.open(url)
    assert srv.state.log == []


def test_loopback_never_goes_through_a_proxy(srv: RangeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    assert ggufx.open(srv.url("all-types-v3.gguf")).tensors


def test_hostile_header_size_is_bounded(srv: RangeServer, files: dict[str, Path]) -> None:
    remote.CONFIG.max_header_bytes = 2 << 20
    remote.CONFIG.cache_dir = None
    with pytest.raises(ggufx.SourceError, match="refusing to download that much metadata"):
        ggufx.open(srv.url("gemma-3-270m-q4_k_m.gguf"))  # a 6.5 MB header against a 2 MiB bound
    assert remote.STATS.bytes <= 2 << 20


def test_empty_remote_file(cli: CliRun, srv: RangeServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    srv.state.files["empty.gguf"] = empty
    try:
        code, _, err = cli("info", srv.url("empty.gguf"))
    finally:
        del srv.state.files["empty.gguf"]
    assert (
        code == 2
        and err.strip()
        == f"ggufx: error: {srv.url('empty.gguf')}: HTTP 416 Requested Range Not Satisfiable: the server has an empty file"
    )


def test_stale_keep_alive_connection_is_replaced_without_a_retry(srv: RangeServer, files: dict[str, Path]) -> None:
    srv.state.behaviour.silent_close = True
    remote.CONFIG.retries = 0  # a stale pooled connection must not need (or use up) a retry
    remote.CONFIG.cache_dir = None
    m = ggufx.open(srv.url("gemma-3-270m-q4_k_m.gguf"))
    assert m.tensors == ggufx.open(files["gemma-3-270m-q4_k_m.gguf"]).tensors
    assert remote.STATS.requests == 3 and all(e["status"] == 206 for e in remote.STATS.log)


def test_scan_a_hub_repository(cli: CliRun, srv: RangeServer, files: dict[str, Path], tmp_path: Path) -> None:
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for name, f in files.items():
        os.symlink(f, local_dir / name)
    code_l, out_l, _ = cli("scan", "--json", str(local_dir))
    code, out, err = cli("scan", "--json", "hf://org/repo-GGUF")
    assert code == code_l, err
    remote_rows = {r["path"].rpartition("/")[2]: r for r in json.loads(out)["models"]}
    local_rows = {r["path"].rpartition("/")[2]: r for r in json.loads(out_l)["models"]}
    # one row a model: the three shards of the split fixture are one
    assert set(remote_rows) == set(local_rows) and len(remote_rows) == len(files) - 2
    for name, r in remote_rows.items():
        assert r["path"] == f"hf://org/repo-GGUF/gguf/{name}" and r["source"] == "hf"
        assert r["name"].startswith("org/repo-GGUF/gguf/")
        loc = local_rows[name]
        keys = ("shards", "architecture", "parameters", "file_type", "bpw", "file_bytes", "dialect")
        assert {k: r[k] for k in keys} == {k: loc[k] for k in keys}, name
        assert [p.replace("hf://org/repo-GGUF/gguf/", "") for p in r["problems"]] == [
            p.replace(f"{local_dir}/", "") for p in loc["problems"]
        ], name
    listing = [e for e in srv.state.log if e["path"].startswith("/api/models/")]
    # the listing is paged (4 entries a page: the files, a README and the gguf/ folder) and every page was read once
    assert len(listing) == -(-(len(files) + 2) // 4) >= 3


def test_scan_unknown_repository_or_file_reference(cli: CliRun, srv: RangeServer) -> None:
    code, _, err = cli("scan", "hf://org/repo-GGUF@nope")
    assert code == 2 and "no repository org/repo-GGUF with a revision 'nope'" in err
    code, _, err = cli("info", "hf://org/repo-GGUF")
    assert code == 2 and "name a file: hf://ORG/REPO[@REVISION]/FILE (`ggufx scan hf://org/repo-GGUF` lists" in err


def test_header_cache_is_bounded_least_recently_used_first(
    srv: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    names = ["all-types-v3.gguf", "all-types-v2.gguf", "big-endian.gguf"]
    sizes = {}
    for n in names:
        ggufx.open(srv.url(n))
        sizes[n] = ggufx.open(srv.url(n)).header.header_end
        time.sleep(0.01)
    assert len(list(cache.glob("*.bin"))) == 3
    ggufx.open(srv.url(names[0]))  # a hit: the first becomes the most recently used
    # room for two entries: the least recently used one (the second file) goes
    monkeypatch.setattr(remote, "CACHE_MAX_BYTES", sizes[names[0]] + sizes[names[2]] + 1)
    remote._cache_prune(str(cache), remote.CACHE_MAX_BYTES)
    kept = {p.stem for p in cache.glob("*.bin")}
    assert len(kept) == 2 and len(list(cache.glob("*.json"))) == 2
    srv.state.log.clear()
    ggufx.open(srv.url(names[1]))
    assert [e["method"] for e in srv.state.log] == ["GET"]  # evicted: fetched again


def test_fingerprint_rule_fails_on_a_remote_file_and_other_rules_still_run(
    cli: CliRun, srv: RangeServer, tmp_path: Path
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[fingerprint]\nequals = "abc"\n[model]\narchitecture = "llama"\n')
    code, out, err = cli("check", "--policy", str(policy), srv.url("all-types-v3.gguf"))
    assert code == 1, err
    assert "PASS" in out and "model.architecture" in out
    assert "FAIL" in out and "fingerprint.equals: cannot be checked on a remote file" in out


def test_several_remote_files_are_read_at_once(cli: CliRun, srv: RangeServer, files: dict[str, Path]) -> None:
    names = ["all-types-v3.gguf", "all-types-v2.gguf", "big-endian.gguf", "missing.gguf"]
    srv.state.behaviour.latency = 0.3  # long enough for the four requests to overlap
    code, out, err = cli("info", "--json", "--no-cache", *[srv.url(n) for n in names])
    assert code == 2 and "missing.gguf: HTTP 404" in err  # the bad one is reported, the others printed
    got = [d["path"] for d in json.loads(out)]
    assert got == [srv.url(n) for n in names[:3]]  # in the order given
    assert srv.state.max_in_flight == 4  # all four asked at once


def test_server_without_head_still_uses_and_refreshes_the_cache(cli: CliRun, srv: RangeServer) -> None:
    url = srv.url("all-types-v3.gguf")
    first = cli("info", "--json", url)
    srv.state.behaviour.no_head = True
    srv.state.log.clear()
    assert cli("info", "--json", url) == first
    assert [e["method"] for e in srv.state.log] == ["HEAD", "GET"]  # 405, then the header fetched again


# -- options passed explicitly (#15) ---------------------------------------------------------


def test_cli_options_never_touch_the_library_default(cli: CliRun, srv: RangeServer, tmp_path: Path) -> None:
    before = dataclasses.replace(remote.CONFIG)
    url = srv.url("all-types-v3.gguf")
    code, _, err = cli("--debug", "info", "--no-cache", "--timeout", "7", "--allow-full-download", url)
    assert code == 0 and f"ggufx: debug: GET {url}" in err
    code, _, err = cli("info", "--offline", "--cache", str(tmp_path / "empty-cache"), url)
    assert code == 2 and "not in the header cache, and --offline forbids the network" in err
    assert remote.CONFIG == before  # each invocation built its own RemoteConfig from its options


def test_open_takes_a_config(srv: RangeServer, files: dict[str, Path]) -> None:
    name = "all-types-v3.gguf"
    remote.CONFIG.offline = True  # the library default now refuses the network; a config passed is used instead
    cfg = remote.new_config(cache_dir=None)
    assert ggufx.open(srv.url(name), remote=cfg).tensors == ggufx.open(files[name]).tensors
    assert ggufx.info(srv.url(name), remote=cfg).parameters == ggufx.info(files[name]).parameters
    assert remote.stats_of(cfg).requests == 2 == remote.STATS.requests  # a config's counters add up in STATS
    with pytest.raises(ggufx.SourceError, match="not in the header cache, and --offline forbids the network"):
        ggufx.open(srv.url(name))
    assert remote.stats_of(remote.CONFIG).requests == 0


def test_debug_summary_counts_this_invocation_only(cli: CliRun, srv: RangeServer) -> None:
    url = srv.url("all-types-v3.gguf")
    for _ in range(2):  # STATS counts for the process; the summary for the invocation
        code, _, err = cli("--debug", "info", "--no-cache", url)
        assert code == 0 and err.count("ggufx: debug: GET") == 1
        assert re.search(r"^ggufx: debug: 1 HTTP request\(s\), [\d,]+ bytes received$", err, re.M)
    assert remote.STATS.requests == 2


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_every_command_honours_its_remote_options(
    cli: CliRun, srv: RangeServer, tmp_path: Path, cmd: list[str]
) -> None:
    url = srv.url("all-types-v3.gguf")
    code, out, err = cli(*cmd, "--offline", "--cache", str(tmp_path / "empty"), url)
    assert (code, out) == (2, "") and "not in the header cache, and --offline forbids the network" in err, cmd
    assert srv.state.log == []


def test_mcp_access_reads_urls_with_its_own_config(srv: RangeServer, tmp_path: Path) -> None:
    from ggufx.mcp.access import Access

    remote.CONFIG.offline = True  # the library default would refuse: the server's own config is used
    access = Access([str(tmp_path)], allow_remote=True)
    assert access.remote is not None and access.remote is not remote.CONFIG
    assert access.open_model(srv.url("all-types-v3.gguf")).tensors
    assert remote.stats_of(access.remote).requests == 1
    assert Access([str(tmp_path)], allow_remote=False).remote is None
