"""benchmark/prose_check.py: a number of the prose that no generated page prints is reported with its file:line,
a page's number rounded is not, a page's number rounded twice is."""

from benchmark import prose_check

PAGE = """# A table

| method | score mean ± std (n) | IQM [95% CI] | paper |
|---|---|---|---|
| MABCQ | 30.47 ± 15.94 (3) | 34.80 [8.31, 73.41] | 43.1 ± 14.2 |
| BCQ | 0.35 ± 0.10 (3) | 0.35 [0.20, 0.50] | 0 ± 0 |
"""

PROSE = """# Notes

MABCQ scores 30.47 ± 15.94 on the page, 30.5 ± 15.9 rounded; the paper's 43.1 ± 14.2 and 0 ± 0.
Its IQM is 34.80 [8.31, 73.41], IQM 34.8 rounded.

A drift: 30.5 ± 16.0.
Rounded twice: 0.4 ± 0.1 (the page's 0.35 may be 0.347).
IQM 35.1 is no page's.

```
$ python -m benchmark.something
99.0 ± 1.0
```

Printed by `python benchmark/cn_probe.py runs/x`: 12.3 ± 4.5.

```bash
python benchmark/bcq_probe.py runs/y
```

| run | score |
|---|---|
| A | 15.3 ± 11.4 |
"""


def run(tmp_path, prose: str, *flags) -> tuple[int, str]:
    (tmp_path / "pages").mkdir(exist_ok=True)
    (tmp_path / "pages" / "t.md").write_text(PAGE)
    (tmp_path / "prose.md").write_text(prose)
    return prose_check.main([str(tmp_path / "prose.md"), "--pages", str(tmp_path / "pages"), *flags]), str(tmp_path / "prose.md")


def test_numbers_no_page_prints_are_reported_with_their_line(tmp_path, capsys):
    code, path = run(tmp_path, PROSE)
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    reported = [line for line in out if line.startswith(path)]
    assert [line.split(": ")[0] for line in reported] == [f"{path}:6", f"{path}:7", f"{path}:8"]
    assert "`30.5 ± 16.0` not on any page (nearest on the pages: 30.47 ± 15.94 in t.md" in reported[0]
    assert "`0.4 ± 0.1` rounded twice: quote the page's digits (nearest on the pages: 0.35 ± 0.10 in t.md" in reported[1]
    assert "`IQM … 35.1` not on any page" in reported[2]
    assert out[-1] == "3 numbers in 1 files match no page of " + str(tmp_path / "pages") + \
        "; 2 more are cited by a command (--verbose lists them)"

    code, _ = run(tmp_path, PROSE, "--verbose")
    out = capsys.readouterr().out
    assert f"{path}:15: `12.3 ± 4.5` by command" in out  # its paragraph names the command
    assert f"{path}:23: `15.3 ± 11.4` by command" in out  # the command is in the fence before the table


def test_prose_that_cites_the_pages_passes(tmp_path, capsys):
    code, _ = run(tmp_path, PROSE.split("A drift")[0])
    assert code == 0 and capsys.readouterr().out.startswith("0 numbers in 1 files")


def test_rounding():
    assert prose_check.matches("30.5", "30.47") == "rounded" and prose_check.matches("30.47", "30.47") == "same"
    assert prose_check.matches("16.0", "15.94") is None and prose_check.matches("30.470", "30.47") == "same"
    assert prose_check.matches("0.4", "0.35") == "twice" and prose_check.matches("0.3", "0.35") == "twice"
    assert prose_check.matches("2", "1.88") == "rounded" and prose_check.matches("−1.2", "-1.23") == "rounded"
    assert prose_check.matches("30.4", "30.47") is None


# the prose the check covers (python -m benchmark.prose_check lists what no page prints)
CHECKED = ["README.md", "docs/matd3bc.md", "docs/mabcq_continuous.md", "docs/macql.md", "docs/mabcq_discrete.md",
           "docs/datasets.md", "docs/scaling.md", "docs/results.md", "docs/vaults.md", "docs/own-data.md"]


def test_the_docs_quote_the_generated_pages(capsys):
    from conftest import ROOT

    code = prose_check.main([str(ROOT / f) for f in CHECKED])
    assert code == 0, "numbers no page prints (regenerate the page, or fix the prose):\n" + capsys.readouterr().out
