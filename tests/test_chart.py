"""The report's memory chart (#24): an inline SVG of memory per GPU against the context.

The drawing is read back: the axes' ticks give the scales (log2 of the context on x, bytes on y),
every line's points are turned back into (context, bytes) and compared with ``ggufx mem`` at those
contexts, as are the budget line and llama.cpp's --fit point (``ggufx mem --fit``). The page is
opened in Debian's chromium headless, as the report test does.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.curve import chart_contexts, memory_curve
from ggufx.analysis.memory.placement import Device
from ggufx.render.chart import memory_chart_svg
from tests.support import CliRun

NS = "{http://www.w3.org/2000/svg}"
GiB = 1 << 30


def _scales(panel: ET.Element) -> tuple[float, float, float, float]:
    """(a, b, c, d) with x = a + b * log2(n_ctx) and y = c + d * bytes, from the ticks (checked: every
    tick lies on them)."""
    xt = [
        (int(g.get("data-n-ctx")), float(g.get("data-x"))) for g in panel.iter(f"{NS}g") if g.get("class") == "x-tick"
    ]
    yt = [
        (int(g.get("data-bytes")), float(g.get("data-y"))) for g in panel.iter(f"{NS}g") if g.get("class") == "y-tick"
    ]
    assert len(xt) >= 2 and len(yt) >= 3
    (n0, x0), (n1, x1) = xt[0], xt[-1]
    b = (x1 - x0) / (math.log2(n1) - math.log2(n0))
    a = x0 - b * math.log2(n0)
    (v0, y0), (v1, y1) = yt[0], yt[-1]
    d = (y1 - y0) / (v1 - v0)
    c = y0 - d * v0
    for n, x in xt:  # the tick's own line is drawn where its value says
        assert abs(a + b * math.log2(n) - x) < 0.02
        line = next(e for e in panel.iter(f"{NS}line") if e.get("x1") == f"{x:.2f}")
        assert line.get("x2") == line.get("x1")
    for v, y in yt:
        assert abs(c + d * v - y) < 0.02
    assert b > 0 and d < 0  # context grows to the right, memory upwards
    return a, b, c, d


def _mem_gpu(cli: CliRun, path: Path, gpus: str, ctx: int, ct: str) -> dict[str, int]:
    r = cli("mem", str(path), "--json", "-c", str(ctx), "-ctk", ct, "-ctv", ct, "--gpus", gpus)
    assert r.exit_code == 0, r.stderr
    return {d["name"]: d["self"] for d in json.loads(r.stdout)["devices"] if d["name"].startswith("CUDA")}


@pytest.mark.parametrize(
    ("which", "gpus", "sample"),
    [("smollm2", "2GiB", None), ("gemma", "1.5GiB,1.25GiB", 4)],
)
def test_chart_points_read_back_equal_mem(
    cli: CliRun, real_models: dict[str, Path], which: str, gpus: str, sample: int | None
) -> None:
    path = real_models[which]
    model = ggufx.open(path)
    devices = [Device(f"CUDA{i}", int(float(s.removesuffix("GiB")) * GiB)) for i, s in enumerate(gpus.split(","))]
    curve = memory_curve(model, devices)
    n_train = curve.n_ctx_train
    assert curve.contexts == chart_contexts(n_train) and curve.contexts[0] == 4096 and curve.contexts[-1] == n_train
    svg = memory_chart_svg(curve.to_json(), f"{which} memory")
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg" and "<script" not in svg and not re.search(r"\son[a-z]+=", svg)
    panels = [g for g in root.iter(f"{NS}g") if g.get("class") == "panel"]
    assert [p.get("data-gpu") for p in panels] == [d.name for d in devices]
    fit = json.loads(cli("mem", str(path), "--json", "--fit", gpus).stdout)["llama_cpp"]
    checked = 0
    for dev, panel in zip(devices, panels, strict=True):
        a, b, c, d = _scales(panel)
        px = abs(1 / d)  # bytes per pixel: what the drawing can say
        series = [g for g in panel.iter(f"{NS}g") if g.get("class") == "series"]
        assert [s.get("data-cache-type") for s in series] == ["f16", "q8_0", "q4_0"]
        # told apart without colour: each its own dash pattern and marker shape, and named in text
        line_styles = {s.find(f"{NS}polyline").get("stroke-dasharray") for s in series}
        assert len(line_styles) == 3
        assert len({s.find(f"{NS}*[@class='point']").tag for s in series}) == 3
        for s in series:
            ct = s.get("data-cache-type")
            assert [t.text for t in s.iter(f"{NS}text")] == [ct]
            points = [tuple(map(float, p.split(","))) for p in s.find(f"{NS}polyline").get("points").split()]
            assert len(points) == len(curve.contexts)
            idx = range(len(points)) if sample is None else sorted({0, len(points) - 1, len(points) // 2, 1})
            for i in idx:
                x, y = points[i]
                n_ctx = 2 ** ((x - a) / b)
                drawn = (y - c) / d
                mem = _mem_gpu(cli, path, gpus, curve.contexts[i], ct)[dev.name]
                assert abs(n_ctx - curve.contexts[i]) / curve.contexts[i] < 0.002, (ct, i)
                assert abs(drawn - mem) <= px, (ct, curve.contexts[i], drawn, mem)
                marker = s.findall(f"{NS}*[@class='point']")[i]
                assert (int(marker.get("data-n-ctx")), int(marker.get("data-bytes"))) == (curve.contexts[i], mem)
                checked += 1
        # the budget line at the GPU's size; llama.cpp's --fit point where `mem --fit` says
        budget = next(g for g in panel.iter(f"{NS}g") if g.get("class") == "budget")
        y = float(budget.find(f"{NS}line").get("y1"))
        assert int(budget.get("data-bytes")) == dev.free and abs((y - c) / d - dev.free) <= px
        point = next(g for g in panel.iter(f"{NS}g") if g.get("class") == "fit-point")
        assert int(point.get("data-n-ctx")) == fit["n_ctx"] and int(point.get("data-bytes")) == fit["use"][dev.name]
        assert f"--fit -c {fit['n_ctx']:,}" in "".join(point.itertext())
    assert checked >= 15


def test_chart_without_sizes_has_no_budget(smollm2_path: Path) -> None:
    curve = memory_curve(ggufx.open(smollm2_path))
    root = ET.fromstring(memory_chart_svg(curve.to_json()))
    classes = {g.get("class") for g in root.iter(f"{NS}g")}
    assert "series" in classes and "budget" not in classes and "fit-point" not in classes
    assert curve.to_json()["fit"] is None


def test_chart_contexts() -> None:
    assert chart_contexts(8192) == [4096, 4864, 5632, 6656, 8192]
    c = chart_contexts(131072)
    assert c[0] == 4096 and c[-1] == 131072 and all(x % 256 == 0 for x in c) and c == sorted(set(c))
    assert {4096, 8192, 16384, 32768, 65536} <= set(c)
    assert chart_contexts(2048) == [2048]  # a training context below 4K: that one point


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return chromium


def _headless(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_page_with_the_chart_opens_in_headless_chromium(gemma_path: Path, tmp_path: Path) -> None:
    """The report template with the chart (as pages.py will feed it), in a real browser: the SVG is
    in the DOM with every line and point, nothing refused by the page's Content-Security-Policy, no
    console message; and it renders to pixels (a screenshot that is not blank)."""
    import jinja2

    from ggufx import results
    from ggufx.render import pages

    chromium = _chromium()
    model = ggufx.open(gemma_path)
    curve = memory_curve(model, [Device("CUDA0", int(1.5 * GiB))]).to_json()
    svg = memory_chart_svg(curve, "gemma-3-270m memory")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(pages.templates_dir()), autoescape=True, undefined=jinja2.StrictUndefined
    )
    ctx = {**pages.context(results.report(model)), "memory_chart": svg, "memory_curve": curve}
    html = env.get_template("report.html.j2").render(**ctx)
    assert html.count("<svg") == 2 and 'id="memory-chart"' in html
    out = tmp_path / "report.html"
    out.write_text(html)
    proc = _headless(chromium, out, tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    n_points = len(curve["contexts"]) * 3
    chart = dom[dom.index('<figure id="memory-chart">') :]
    assert chart.count("<polyline") == 3 and chart.count('class="point"') == n_points
    assert 'class="fit-point"' in chart and 'class="budget"' in chart
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Refused to" in ln]
    assert console == []
    # pixels: the chart alone, screenshotted
    alone = tmp_path / "chart.html"
    alone.write_text(f'<!DOCTYPE html><html><body style="margin:0;background:#fff">{svg}</body></html>')
    shot = tmp_path / "chart.png"
    proc = _headless(chromium, alone, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=700,360")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert _distinct_colours(shot.read_bytes()) >= 4  # white, black axes and labels, the three lines


def _distinct_colours(png: bytes) -> int:
    """How many distinct RGB colours a PNG has (zlib and the filters undone; 8-bit RGB or RGBA)."""
    import struct
    import zlib

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    channels = 3
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, _h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * channels
    prev = bytearray(stride)
    colours = set()
    i = 0
    while i < len(raw):
        f, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for k in range(stride):
            left = line[k - channels] if k >= channels else 0
            up = prev[k]
            ul = prev[k - channels] if k >= channels else 0
            if f == 1:
                line[k] = (line[k] + left) & 255
            elif f == 2:
                line[k] = (line[k] + up) & 255
            elif f == 3:
                line[k] = (line[k] + (left + up) // 2) & 255
            elif f == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[k] = (line[k] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 255
        for k in range(0, stride, channels * 7):
            colours.add(bytes(line[k : k + 3]))
        prev = line
    return len(colours)


def test_report_carries_the_chart(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """``report --gpus``: the page holds the chart of the curve ``report --json`` gives (budget and
    llama.cpp's --fit point included); without --gpus the chart has neither."""
    import json

    m = str(smollm2_path)
    data = json.loads(cli("report", m, "--gpus", "1GiB", "--json").stdout)
    curve = data["memory_curve"]
    assert [g["free"] for g in curve["gpus"]] == [1 << 30] and curve["fit"]
    assert curve["contexts"][0] == 4096 and curve["contexts"][-1] == 8192  # SmolLM2's training context
    page = tmp_path / "r.html"
    assert cli("report", m, "--gpus", "1GiB", "-o", str(page)).exit_code == 0
    html = page.read_text()
    assert '<figure id="memory-chart"><svg' in html
    for s in curve["series"]:
        for p in s["points"]:
            assert f'data-bytes="{p["use"]["CUDA0"]}"' in html
    plain = json.loads(cli("report", m, "--json").stdout)["memory_curve"]
    assert plain["gpus"][0]["free"] == 0 and not plain.get("fit")
    md = tmp_path / "r.md"
    assert cli("report", m, "--gpus", "1GiB", "-o", str(md)).exit_code == 0
    assert "| context |" in md.read_text()
    bad = cli("report", m, "--gpus", "lots", "-o", str(tmp_path / "bad.html"))
    assert bad.exit_code == 2 and not (tmp_path / "bad.html").exists()


def _quants(tmp_path: Path, smollm2_path: Path, gemma_path: Path) -> Path:
    """A folder of the two real models, linked (copied where links cannot be made)."""
    import os
    import shutil

    folder = tmp_path / "quants"
    folder.mkdir()
    for src, name in ((smollm2_path, "smol-Q4_1.gguf"), (gemma_path, "gemma-Q4_K_M.gguf")):
        try:
            os.link(src, folder / name)
        except OSError:
            shutil.copy(src, folder / name)
    return folder


def test_report_on_a_folder_is_pick_s_page(cli: CliRun, smollm2_path: Path, gemma_path: Path, tmp_path: Path) -> None:
    """``report FOLDER --gpus``: the folder's page ranks its quants as ``pick`` does (the same JSON)."""
    import json

    folder = _quants(tmp_path, smollm2_path, gemma_path)
    picked = json.loads(cli("pick", str(folder), "--gpus", "2GiB", "--json").stdout)
    reported = json.loads(cli("report", str(folder), "--gpus", "2GiB", "--json").stdout)
    assert reported == picked and len(picked["models"]) == 2
    page = tmp_path / "quants.html"
    assert cli("report", str(folder), "--gpus", "2GiB", "-o", str(page)).exit_code == 0
    html = page.read_text()
    assert "smol-Q4_1.gguf" in html and "gemma-Q4_K_M.gguf" in html and picked["summary"].split(":")[0] in html
    no_gpus = cli("report", str(folder), "-o", str(tmp_path / "x.html"))
    assert no_gpus.exit_code == 2 and "give --gpus" in no_gpus.stderr and not (tmp_path / "x.html").exists()


def test_report_on_a_folder_takes_pick_s_sizing_options(
    cli: CliRun, smollm2_path: Path, gemma_path: Path, tmp_path: Path
) -> None:
    """``report FOLDER`` with pick's -c, -ctk/-ctv, -fitt and --llama-args: the JSON is what ``pick`` computes
    with the same options, the page states them and its command lines carry the llama-server options; with
    a model file they are a usage error naming the option; pick's own checks give pick's own messages."""
    import json

    folder = _quants(tmp_path, smollm2_path, gemma_path)
    sized = ("--gpus", "2GiB", "-c", "6144", "-ctk", "q8_0", "-ctv", "q8_0", "-fitt", "512")
    sizing = (*sized, "--llama-args", "-np 1 -ub 1024 -fa on")
    picked = json.loads(cli("pick", str(folder), *sizing, "--json").stdout)
    reported = json.loads(cli("report", str(folder), *sizing, "--json").stdout)
    assert reported == picked
    assert (picked["n_ctx"], picked["cache_type_k"], picked["cache_type_v"]) == (6144, "q8_0", "q8_0")
    assert picked["margin"] == 512 << 20 and picked["llama_args"] == ["-np", "1", "-ub", "1024", "-fa", "on"]
    rows = [m for m in picked["models"] if m["command"]]
    assert len(rows) == 2 and all(m["n_ctx"] == 6144 for m in rows)
    # a 1024-token micro-batch: each row's compute buffer is larger than at llama-server's default 512
    without = json.loads(cli("report", str(folder), *sized, "--json").stdout)
    assert without == json.loads(cli("pick", str(folder), *sized, "--json").stdout) and without["llama_args"] == []
    before = {m["name"]: m for m in without["models"]}
    assert all(m["gpus"][0]["compute"] > before[m["name"]]["gpus"][0]["compute"] for m in rows)
    for fmt, ext in (("html", "html"), ("md", "md")):
        page = tmp_path / f"quants.{ext}"
        assert cli("report", str(folder), *sizing, "-o", str(page)).exit_code == 0
        text = page.read_text()
        assert "context: 6,144" in text and "KV cache q8_0/q8_0" in text and "512 MiB" in text, fmt
        assert "llama-server options given: " + ("<code>" if fmt == "html" else "`") + "-np 1 -ub 1024 -fa on" in text
        for m in rows:
            assert "-c 6144 -ctk q8_0 -ctv q8_0 -np 1 -ub 1024 -fa on" in m["command_line"]
            assert m["command_line"] in text, (fmt, m["command_line"])
    # a model file's report shows every context, three cache types, the model alone: the options that set these
    # are a one-line usage error that names it (-fitt, --tool and --llama-args it takes: the next test)
    for args, named in (
        (("-c", "6144"), "-c/--ctx-size"),
        (("--fit",), "--fit"),
        (("-ctv", "f16"), "-ctv/--cache-type-v"),
        (("--mmproj", "none"), "--mmproj"),
    ):
        out = tmp_path / "one.html"
        r = cli("report", str(folder / "smol-Q4_1.gguf"), "--gpus", "2GiB", *args, "-o", str(out))
        assert r.exit_code == 2 and not r.stdout and not out.exists(), args
        assert r.stderr == (
            f"ggufx: error: {named}: sizes a folder's ranking (ggufx pick's); a model file's report does not take it\n"
        )
    # pick's checks, pick's messages (one line, exit 2), and no page written
    for args in (("-c", "4096", "--fit"), ("--llama-args", "-c 4096"), ("--llama-args", "-ngl 5"), ("-c", "0")):
        want = cli("pick", str(folder), "--gpus", "2GiB", *args)
        got = cli("report", str(folder), "--gpus", "2GiB", *args, "-o", str(tmp_path / "bad.html"))
        assert (got.exit_code, got.stderr) == (want.exit_code, want.stderr) and want.exit_code == 2, args
        assert got.stderr.startswith("ggufx: error: ") and got.stderr.count("\n") == 1
        assert not (tmp_path / "bad.html").exists()


def test_a_model_s_report_is_sized_with_the_options_given(cli: CliRun, gemma_path: Path, tmp_path: Path) -> None:
    """``report FILE --llama-args '-np 2 -ub 1024 -fa on'`` (and ``--tool``, ``-fitt``): every row of the memory table
    is what ``mem`` gives for that command line at that context (each buffer), the chart's points and --fit point
    move with them, the page says what it was sized for; the options the report sets itself are refused, naming
    why; without any, the report is what it has always been (llama.cpp's defaults, one sequence)."""
    import json

    g = str(gemma_path)
    plain = json.loads(cli("report", g, "--json").stdout)
    assert (plain["llama_args"], plain["tool"]) == ([], "llama-cli")
    assert {m["parallel"] for m in plain["memory"]} == {1}
    for tool, words in (("llama-cli", "-np 2 -ub 1024 -fa on"), ("llama-server", "-np 1 -ub 256")):
        args = ("--llama-args", words) + (("--tool", tool) if tool != "llama-cli" else ())
        sized = json.loads(cli("report", g, *args, "--json").stdout)
        assert (sized["llama_args"], sized["tool"]) == (words.split(), tool)
        assert sized["memory"] != plain["memory"], tool
        for row in sized["memory"]:
            line = (
                f"{tool} -m {g} -ngl 99 -c {row['n_ctx']} -ctk {row['cache_type_k']} -ctv {row['cache_type_v']} {words}"
            )
            mem = json.loads(cli("mem", "--llama-args", line, "--json").stdout)
            cuda = next(d for d in mem["devices"] if d["name"] == "CUDA0")
            assert (row["compute_estimate"], row["kv_cache"]["bytes"], row["gpu_total"]) == (
                mem["compute_estimate"],
                mem["kv_cache"]["bytes"],
                cuda["self"],
            ), (tool, row["n_ctx"], row["cache_type_k"])
    # the chart: -fitt is the margin of its --fit point; -ub 1024 raises every point
    chart = json.loads(cli("report", g, "--gpus", "2GiB", "--json").stdout)["memory_curve"]
    bigger = json.loads(
        cli("report", g, "--gpus", "2GiB", "-fitt", "256", "--llama-args", "-ub 1024", "--json").stdout
    )["memory_curve"]
    assert (chart["margin"], bigger["margin"]) == (1024 << 20, 256 << 20)
    for a, b in zip(chart["series"][0]["points"], bigger["series"][0]["points"]):
        assert b["use"]["CUDA0"] > a["use"]["CUDA0"]
    # the page says what it was sized for
    md = cli("report", g, "--format", "md", "--tool", "llama-server", "--llama-args", "-np 1 -ub 256").stdout
    assert "sized for `llama-server -np 1 -ub 256`" in md and "1 sequence" not in md
    assert "-fa auto, 1 sequence" in cli("report", g, "--format", "md").stdout
    # what the report varies or sets itself, inside --llama-args: refused, saying why (one line, exit 2)
    for words, why in (
        ("-c 4096", "-c: the report shows every context up to the training context"),
        ("-ctk q8_0", "-ctk: the report shows f16, q8_0 and q4_0 caches"),
        ("-ngl 5", "-ngl: the report offloads every layer to the GPUs given (ggufx mem sizes other placements)"),
        ("-fitt 512", "-fitt: the margin is the report's -fitt"),
    ):
        r = cli("report", g, "--llama-args", words, "-o", str(tmp_path / "x.html"))
        assert r.exit_code == 2 and r.stderr == f"ggufx: error: Invalid value for --llama-args: {why}\n", words
        assert not (tmp_path / "x.html").exists()
