"""Every measured number in the READMEs points at a committed report that contains it.

The citation convention (also described in ``measurements/README.md``):

* A measured figure is a markdown link whose text is the figure as printed and whose target is a committed
  ``declab bench`` report plus a JSON Pointer (RFC 6901) to the value: ``[0.964](measurements/overhead.json#/throughput_ratio)``.
  Keys with spaces or other characters are percent-encoded (``%20``), ``/`` inside a key is ``~1``. The text is a
  number, optionally followed by a unit (``x``, ``%``, ``tok/s``, ``ms``, ``s``, ...); a ``%`` figure matches a share
  in the report (0.948 printed as ``94.8 %``). The printed figure must equal the report's value to its printed
  precision. A count printed as ``379/400`` points at the numerator.
* Plugin benches keep their reports in ``plugins/<name>/measurements/``; generic benches (``declab bench
  overhead``, ``spec``, ``verify-cost``) in ``measurements/``. ``measurements/rerun.sh`` regenerates every report.
* A section whose heading contains "Measured" holds measurements only: every figure in it (a decimal number, a
  percentage, a speed factor such as ``1.2x``) is a citation link, except in the first cell of a table row (the
  row's label), inside backticks (parameters, commands) or inside a ``<!-- not-measured: REASON -->`` ...
  ``<!-- /not-measured -->`` block, which says why its numbers are not measurements of this repository (a paper's
  figure, a default, a projection's input). Outside such sections, speed factors, tokens/s and percentages follow
  the same rule.
* Each cited report carries its provenance (command line, date, machine, vLLM version); the command line appears in
  the README that cites it and in ``measurements/rerun.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.parse
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("declab_citations", ROOT / "measurements" / "citations.py")
citations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(citations)
Readme, READMES, RERUN, _rel = citations.Readme, citations.READMES, citations.RERUN, citations._rel
matches, resolve_pointer, format_like = citations.matches, citations.resolve_pointer, citations.format_like


@pytest.fixture(scope="module")
def readmes() -> list[Readme]:
    return [Readme(path) for path in READMES]


def _load(path: Path, cache: dict) -> dict:
    if path not in cache:
        cache[path] = json.loads(path.read_text())
    return cache[path]


def test_every_citation_resolves_to_the_figure(readmes):
    cache: dict[Path, dict] = {}
    problems, count = [], 0
    for readme in readmes:
        for number, match in readme.citations():
            count += 1
            where = f"{_rel(readme.path)}:{number}: [{match.group('text')}]"
            report = (readme.path.parent / urllib.parse.unquote(match.group("target"))).resolve()
            if not report.is_file():
                problems.append(f"{where}: no report {match.group('target')}")
                continue
            try:
                value = resolve_pointer(_load(report, cache), match.group("pointer"))
            except (KeyError, IndexError, ValueError) as e:
                problems.append(f"{where}: {e}")
                continue
            if not matches(match.group("text"), value):
                problems.append(f"{where}: the report holds {value!r}")
    assert count > 0, "no README cites a report"
    assert not problems, "\n".join(problems)


def test_every_measured_figure_is_cited(readmes):
    problems = [p for readme in readmes for p in readme.uncited_figures()]
    assert not problems, "figures without a report (cite them or mark the block not-measured):\n" + "\n".join(problems)


def test_not_measured_blocks_say_why(readmes):
    for readme in readmes:
        for number, reason in readme.exclusions:
            assert len(reason.split()) >= 2, f"{_rel(readme.path)}:{number}: say why the numbers are not measurements"


def test_cited_reports_carry_provenance_and_their_command_is_shown(readmes):
    rerun = RERUN.read_text()
    problems = []
    for readme in readmes:
        text = readme.path.read_text()
        for report_path in sorted({(readme.path.parent / urllib.parse.unquote(m.group("target"))).resolve()
                                   for _, m in readme.citations()}):
            if not report_path.is_file():
                continue  # reported by test_every_citation_resolves_to_the_figure
            prov = json.loads(report_path.read_text()).get("provenance") or {}
            where = f"{_rel(readme.path)} cites {_rel(report_path)}"
            missing = [k for k in ("command", "date", "machine", "vllm") if k not in prov]
            if missing:
                problems.append(f"{where}: provenance lacks {missing}")
                continue
            if prov["command"] not in text:
                problems.append(f"{where}: its command {prov['command']!r} is not shown in the README")
            if prov["command"] not in rerun:
                problems.append(f"{where}: its command {prov['command']!r} is not in measurements/rerun.sh")
    assert not problems, "\n".join(problems)


def test_every_committed_report_is_regenerated_by_rerun_sh():
    rerun = RERUN.read_text()
    reports = sorted(ROOT.glob("measurements/**/*.json")) + sorted(ROOT.glob("plugins/*/measurements/**/*.json"))
    assert reports
    for path in reports:
        command = (json.loads(path.read_text()).get("provenance") or {}).get("command")
        assert command, f"{_rel(path)} has no provenance.command"
        assert command in rerun, f"{_rel(path)}: {command!r} is not in measurements/rerun.sh"


# The checker itself: it must be able to fail.

def test_checker_flags_a_wrong_figure_and_an_uncited_one(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"a b": {"ratio": 0.9641, "share": 0.948}, "n": 379}))
    assert matches("0.964", 0.9641) and not matches("0.97", 0.9641)
    assert matches("94.8 %", 0.948) and not matches("94.8", 0.948) and matches("379/400", 379)
    assert resolve_pointer(json.loads((tmp_path / "r.json").read_text()), "/a%20b/ratio") == 0.9641
    readme = tmp_path / "README.md"
    readme.write_text("## Measured\n\n| what | result |\n|---|---|\n| alpha 0.5 | [0.964](r.json#/a%20b/ratio) 1.5x |\n"
                      "`alpha 0.5` is a parameter\n<!-- not-measured: the paper's figure -->\n+30 %\n"
                      "<!-- /not-measured -->\n")
    assert Readme(readme).uncited_figures() == [
        f"{readme}:5: '1.5x' in '| alpha 0.5 | [0.964](r.json#/a%20b/ratio) 1.5x |'"]


def test_refresh_rewrites_a_figure_from_its_report_keeping_its_format(tmp_path):
    assert format_like("94.8 %", 0.9512) == "95.1 %" and format_like("0.56x", 0.6049) == "0.60x"
    assert format_like("1,234 tok/s", 1500.4) == "1,500 tok/s"
    (tmp_path / "r.json").write_text(json.dumps({"ratio": 0.9641}))
    readme = tmp_path / "README.md"
    readme.write_text("## Measured\n\nratio [0.50](r.json#/ratio)\n")
    assert citations.refresh(readme) == 1
    assert readme.read_text() == "## Measured\n\nratio [0.96](r.json#/ratio)\n"
