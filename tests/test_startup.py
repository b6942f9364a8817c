"""What the commands import and the light stand-ins that keep heavy modules out of them (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.sax import saxutils

from hypothesis import given
from hypothesis import strategies as st

from ggufx.render import chart


@given(st.text(alphabet=st.sampled_from(list("ab&<>\"'\n\r\t é;#x"))))
def test_chart_escapes_as_saxutils_does(text: str) -> None:
    """The chart's escape and quoteattr write exactly what xml.sax.saxutils writes (which the chart
    no longer imports: it costs urllib.request, http.client, ssl and email)."""
    assert chart.escape(text) == saxutils.escape(text)
    assert chart.quoteattr(text) == saxutils.quoteattr(text)


def test_report_with_its_chart_imports_no_network_module(gemma_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = (
        "import sys\n"
        "from ggufx.cli import main\n"
        "try:\n"
        f"    main(['report', {str(gemma_path)!r}, '--gpus', '24GiB', '-o', {str(out)!r}], prog_name='ggufx')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(','.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = set(proc.stderr.strip().splitlines()[-1].split(","))
    assert "ggufx.render.chart" in mods and "<svg" in out.read_text()
    assert not mods & {"http.client", "ssl", "urllib.request", "email", "xml.sax"}
