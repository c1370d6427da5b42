"""Prose cites, it does not copy: every "a ± b" and every IQM in README.md and docs/*.md must be a number of a
generated page (docs/results/*.md, written by `python -m benchmark.report`), or name the command that printed it.

    python -m benchmark.prose_check                      # README.md and docs/*.md against docs/results/*.md
    python -m benchmark.prose_check docs/matd3bc.md      # one file
    python -m benchmark.prose_check --verbose            # also the numbers cited by a command, not checked
    python -m benchmark.prose_check --all                # also every other number with two or more decimals

What is read in the prose: "a ± b" (both numbers), "x [l, h]" (an IQM and its interval, in a paragraph that says IQM or
bootstrap, or just after one), and the decimal numbers of a
clause that starts with "IQM" (up to ; . | or a line's end); with --all, every other number with two or more decimals
too. What counts on the pages: every "A ± B" and "X [L, H]" printed there, the IQM's point alone too, and (for --all)
every number printed there.

A prose number matches a page's if it has the same digits, or fewer digits and is the page's number rounded
(30.5 for 30.47). A page number whose dropped digits are exactly 5 (0.35 to one decimal) is ambiguous: the true
value, 0.347 or 0.353, rounds either way, so the prose rounded twice; it is reported (quote the page's digits).
A number that matches no page is reported with its file:line and the page numbers nearest to it, unless its
paragraph, or the paragraph or ``` fence just before it (a table's lead-in), names the command that printed it
(`python -m benchmark.<x>` other than grid and report, `python -m envs.<x>`, `benchmark/<x>.py`, or an algorithm
script `python <script>.py`): those are listed with --verbose, not checked. Text inside ``` fences is a command
and its output: not read for numbers.

Exit status 1 when something is reported (tests/test_prose_check.py).
"""

import argparse
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NUM = r"[-−]?\d+(?:\.\d+)?"
PAIR = re.compile(rf"(?<![\w.])({NUM})\s*±\s*({NUM})(?![\w.]*\d)")
TRIPLE = re.compile(rf"(?<![\w.])({NUM})\s*\[\s*({NUM}),\s*({NUM})\s*\]")
IQM_CLAUSE = re.compile(r"\bIQMs?\b([^;|\n]*?)(?:;|\||\.\s|\.$|$)", re.M)
TWO_DECIMALS = re.compile(r"(?<![\w.\[/])[-−]?\d+\.\d{2,}(?![\w.]*\d)(?!\s*(?:s|ms|min|h|GB|MB|%)\b)")
DECIMAL = re.compile(r"(?<![\w.\[])[-−]?\d+\.\d+(?![\w.]*\d)")
# a command that prints numbers: a benchmark script other than grid and report (which write pages), or an algorithm script
COMMAND = re.compile(r"python -m (?:benchmark\.(?!grid\b|report\b)|envs\.)[\w.]+"
                     r"|benchmark/\w+\.py|python (?:matd3bc|macql|mabcq_\w+)\.py")


def number(text: str) -> Decimal:
    return Decimal(text.replace("−", "-"))


def places(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def matches(prose: str, page: str) -> str | None:
    """'same' or 'rounded' when the prose number is the page's, 'twice' when it rounds a page number whose dropped
    digits are exactly 5 (ambiguous), None otherwise."""
    a, A, d, D = number(prose), number(page), places(prose), places(page)
    if d >= D:
        return "same" if a == A else None
    unit, half_page = Decimal(1).scaleb(-d), Decimal(5).scaleb(-D - 1)
    low, high = A - half_page, A + half_page  # where the page's unrounded number lies
    if a - unit / 2 <= low and high <= a + unit / 2:  # wholly inside the prose number's rounding interval
        edge = a + unit / 2 if A > a else a - unit / 2
        return "twice" if A == edge else "rounded"
    if low <= a + unit / 2 <= high or low <= a - unit / 2 <= high:  # straddles a rounding edge
        return "twice" if abs(A - a) == unit / 2 else None
    return None


@dataclass
class Pages:
    pairs: dict[tuple[str, str], set[str]]  # (A, B) -> pages
    triples: dict[tuple[str, str, str], set[str]]
    points: dict[str, set[str]]  # IQM points
    numbers: dict[str, set[str]] = None  # every number printed

    @classmethod
    def read(cls, paths: list[Path]) -> "Pages":
        pages = cls({}, {}, {}, {})
        for path in paths:
            text = path.read_text()
            for m in DECIMAL.finditer(text.replace("[", " ")):
                pages.numbers.setdefault(m[0].replace("−", "-"), set()).add(path.name)
            for m in PAIR.finditer(text):
                pages.pairs.setdefault((m[1], m[2]), set()).add(path.name)
            for m in TRIPLE.finditer(text):
                pages.triples.setdefault((m[1], m[2], m[3]), set()).add(path.name)
                pages.points.setdefault(m[1], set()).add(path.name)
        return pages


@dataclass
class Finding:
    path: Path
    line: int
    quoted: str
    why: str  # "not on any page", "rounded twice", "by command"
    nearest: str = ""

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}: `{self.quoted}` {self.why}" + (f" (nearest on the pages: {self.nearest})" if self.nearest else "")


def best(found: list[str | None]) -> str | None:
    """The worst of several numbers' matches: all must match; 'twice' if any was rounded twice."""
    if any(f is None for f in found):
        return None
    return "twice" if "twice" in found else "ok"


def nearest(values: tuple[str, ...], candidates, pages_of, k: int = 3) -> str:
    """The k page entries nearest to the prose numbers (first number, then the rest), for the report."""
    ranked = sorted(candidates, key=lambda c: [abs(number(v) - number(c[i])) for i, v in enumerate(values)])
    shown = []
    for c in ranked[:k]:
        text = f"{c[0]} ± {c[1]}" if len(c) == 2 else (f"{c[0]} [{c[1]}, {c[2]}]" if len(c) == 3 else c[0])
        shown.append(f"{text} in {', '.join(sorted(pages_of(c)))}")
    return "; ".join(shown)


def paragraphs(text: str):
    """(first line number, lines, fenced) of each paragraph, and of each ``` fence's content (fenced: not read for
    numbers, but a command there cites the table after it)."""
    block, start, fenced = [], 1, False
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            if block:
                yield start, block, fenced
            block, start, fenced = [], i + 1, not fenced
            continue
        if fenced:
            block.append(line)
            continue
        if not line.strip():
            if block:
                yield start, block, fenced
            block = []
            continue
        if not block:
            start = i
        block.append(line)
    if block:
        yield start, block, fenced


def check_file(path: Path, pages: Pages, every: bool = False) -> list[Finding]:
    findings, before = [], ""
    for start, block, fenced in paragraphs(path.read_text()):
        cited = bool(COMMAND.search(" ".join(block)) or COMMAND.search(before))
        intervals = bool(re.search(r"IQM|bootstrap", " ".join(block) + before))
        before = " ".join(block)
        if fenced:
            continue
        for offset, line in enumerate(block):
            lineno = start + offset
            spans = []  # what the pairs and triples took, so an IQM clause does not read them again

            def report(quoted, result, values, candidates, pages_of, results):
                if result == "ok":
                    return
                if cited:  # the paragraph names the command that printed it: a page number it resembles is chance
                    findings.append(Finding(path, lineno, quoted, "by command"))
                elif result == "twice":
                    twice = [c for c, r in zip(candidates, results) if r == "twice"]
                    findings.append(Finding(path, lineno, quoted, "rounded twice: quote the page's digits",
                                            nearest(values, twice, pages_of, 2)))
                else:
                    findings.append(Finding(path, lineno, quoted, "not on any page", nearest(values, candidates, pages_of)))

            for m in TRIPLE.finditer(line) if intervals else ():
                spans.append(m.span())
                values = (m[1], m[2], m[3])
                results = [best([matches(v, c) for v, c in zip(values, t)]) for t in pages.triples]
                result = "ok" if "ok" in results else ("twice" if "twice" in results else None)
                report(m[0], result, values, list(pages.triples), pages.triples.get, results)
            for m in PAIR.finditer(line):
                spans.append(m.span())
                values = (m[1], m[2])
                results = [best([matches(v, c) for v, c in zip(values, p)]) for p in pages.pairs]
                result = "ok" if "ok" in results else ("twice" if "twice" in results else None)
                report(m[0], result, values, list(pages.pairs), pages.pairs.get, results)
            for clause in IQM_CLAUSE.finditer(line):
                for m in DECIMAL.finditer(line, clause.start(1), clause.end(1)):
                    if any(a <= m.start() < b for a, b in spans):
                        continue
                    results = [best([matches(m[0], p)]) for p in pages.points]
                    result = "ok" if "ok" in results else ("twice" if "twice" in results else None)
                    report(f"IQM … {m[0]}", result, (m[0],), [(p,) for p in pages.points], lambda c: pages.points[c[0]], results)
                    spans.append(m.span())
            if every:
                for m in TWO_DECIMALS.finditer(line):
                    if any(a <= m.start() < b for a, b in spans):
                        continue
                    results = [best([matches(m[0], p)]) for p in pages.numbers if places(p) >= places(m[0])]
                    result = "ok" if "ok" in results else ("twice" if "twice" in results else None)
                    candidates = [(p,) for p in pages.numbers if places(p) >= places(m[0])]
                    report(m[0], result, (m[0],), candidates, lambda c: pages.numbers[c[0]], results)
    return findings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="the prose to check (default: README.md and docs/*.md)")
    parser.add_argument("--pages", default=str(ROOT / "docs" / "results"), help="the generated pages (default: docs/results)")
    parser.add_argument("--verbose", action="store_true", help="also list the numbers cited by a command (not checked)")
    parser.add_argument("--all", action="store_true", help="also check every other number with two or more decimals")
    args = parser.parse_args(argv)
    files = [Path(f).resolve() for f in args.files] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages = Pages.read(sorted(Path(args.pages).glob("*.md")))
    findings = [f for path in files for f in check_file(path, pages, args.all)]
    wrong = [f for f in findings if f.why != "by command"]
    for finding in findings:
        if finding.why != "by command" or args.verbose:
            print(finding)
    by_command = len(findings) - len(wrong)
    print(f"{len(wrong)} numbers in {len(files)} files match no page of {args.pages}"
          + (f"; {by_command} more are cited by a command (--verbose lists them)" if by_command else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
