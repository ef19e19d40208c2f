"""The READMEs' citation convention (measurements/README.md): parse a README, find its citations and its uncited
figures, resolve a citation in its report; ``python measurements/citations.py --refresh`` rewrites every cited figure
from its report (same precision and unit) after ``measurements/rerun.sh``. ``tests/test_measurements.py`` checks
the READMEs with it. Standard library only."""

from __future__ import annotations

import argparse
import json
import math
import re
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted((ROOT / "plugins").glob("*/README.md")),
           *sorted((ROOT / "integrations" / "default_model").glob("*/README.md"))]  # model cards
RERUN = ROOT / "measurements" / "rerun.sh"

CITATION = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+\.json)#(?P<pointer>/[^)\s]*)\)")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
# What counts as a figure: anywhere, speed factors, throughputs and percentages; inside "Measured" sections also any
# decimal number and ms.
# A speed factor is written without a space (0.56x; "16 x 64" is a size); a version number has three parts
# (vLLM 0.32.0) and is no figure.
FIGURE_ANYWHERE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:x\b|\s?%|\s?tok/s)")
FIGURE_MEASURED = re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?(?:x\b|\s?%|\s?tok/s|\s?ms\b)|\d+\.\d+(?![\d.]))")
NOT_MEASURED_OPEN = re.compile(r"<!--\s*not-measured:\s*(?P<reason>[^-].*?)\s*-->")
NOT_MEASURED_CLOSE = re.compile(r"<!--\s*/not-measured\s*-->")
HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<title>.*)$")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def resolve_pointer(document, pointer: str):
    """RFC 6901 JSON Pointer, the fragment percent-decoded first (RFC 6901 section 6)."""
    node = document
    for raw in pointer.split("/")[1:]:
        key = urllib.parse.unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise KeyError(f"no key {key!r} (pointer {pointer})")
    return node


def printed_value(text: str) -> tuple[float, float, bool]:
    """(value, tolerance, is_percent) of a figure as printed: tolerance is half a unit of its last printed digit."""
    match = NUMBER.search(text)
    if match is None:
        raise ValueError(f"citation text {text!r} holds no number")
    digits = match.group(0).replace(",", "")
    mantissa, _, exponent = digits.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    unit = 0.5 * 10 ** (int(exponent or 0) - decimals)
    return float(digits), unit + 1e-12, "%" in text[match.end():]


def matches(text: str, value) -> bool:
    shown, tol, percent = printed_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    candidates = [float(value)] + ([100.0 * float(value)] if percent else [])
    return any(math.isfinite(c) and abs(c - shown) <= tol for c in candidates)


class Readme:
    """A README split into lines, each with the heading it sits under and whether a not-measured block holds it."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[tuple[int, str, bool, bool]] = []  # (line number, text, in measured section, excluded)
        self.exclusions: list[tuple[int, str]] = []
        stack: list[tuple[int, bool]] = []  # (heading level, measured)
        fenced = excluded = indented_code = False
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # An indented code block: 4 spaces after a blank line (list continuations here indent by 2).
            indented_code = line.startswith("    ") and (indented_code or not previous.strip())
            previous = line
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced or indented_code:
                continue
            if (opened := NOT_MEASURED_OPEN.search(line)) is not None:
                excluded = True
                self.exclusions.append((number, opened.group("reason")))
                continue
            if NOT_MEASURED_CLOSE.search(line):
                excluded = False
                continue
            if (heading := HEADING.match(line)) is not None:
                level = len(heading.group("level"))
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, "measured" in heading.group("title").lower()))
                continue
            self.lines.append((number, line, any(m for _, m in stack), excluded))
        assert not fenced, f"{_rel(path)}: unclosed code fence"
        assert not excluded, f"{_rel(path)}: unclosed <!-- not-measured --> block"

    def citations(self):
        for number, line, _, _ in self.lines:
            for match in CITATION.finditer(line):
                yield number, match

    def uncited_figures(self) -> list[str]:
        """Figures that are neither cited, nor a row label, nor in backticks, nor in a not-measured block."""
        found = []
        for number, line, measured, excluded in self.lines:
            if excluded:
                continue
            body = line
            if body.lstrip().startswith("|"):
                cells = body.strip().strip("|").split("|")
                if all(set(c.strip()) <= set("-: ") for c in cells):
                    continue  # the separator row
                body = "|".join(cells[1:])  # the first cell is the row's label
            body = CITATION.sub(" ", body)
            body = re.sub(r"`[^`]*`", " ", body)
            body = re.sub(r"\]\([^)]*\)", "]", body)  # other links' targets
            pattern = FIGURE_MEASURED if measured else FIGURE_ANYWHERE
            for match in pattern.finditer(body):
                found.append(f"{_rel(self.path)}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
        return found


def format_like(text: str, value: float) -> str:
    """``value`` printed as the figure ``text`` was: same number of decimals, same prefix and unit."""
    match = NUMBER.search(text)
    mantissa, _, exponent = match.group(0).lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    shown = 100.0 * value if "%" in text[match.end():] else value
    kind = "e" if exponent else "f"
    number = f"{shown:,.{decimals}{kind}}" if "," in match.group(0) else f"{shown:.{decimals}{kind}}"
    return text[: match.start()] + number + text[match.end():]


def refresh(path: Path) -> int:
    """Rewrite each citation's figure in ``path`` from its report; returns how many changed."""
    text, changed, cache = path.read_text(), 0, {}

    def sub(match: re.Match) -> str:
        nonlocal changed
        report = (path.parent / urllib.parse.unquote(match.group("target"))).resolve()
        if report not in cache:
            cache[report] = json.loads(report.read_text())
        new = format_like(match.group("text"), resolve_pointer(cache[report], match.group("pointer")))
        changed += new != match.group("text")
        return f"[{new}]({match.group('target')}#{match.group('pointer')})"

    path.write_text(CITATION.sub(sub, text))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", action="store_true", help="rewrite the cited figures from their reports")
    args = parser.parse_args()
    for path in READMES:
        readme = Readme(path)
        if args.refresh:
            print(f"{_rel(path)}: {refresh(path)} figures changed")
        for line in readme.uncited_figures():
            print("uncited:", line)


if __name__ == "__main__":
    main()
