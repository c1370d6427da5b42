"""benchmark/report.py writes the same bytes from the same records: a committed page is exactly what its command makes
from the archived results.json (benchmark/results/runs/), so no page is edited by hand and no interval moves between
two reruns."""

import numpy as np
import pytest

from benchmark import grid, report
from conftest import ROOT

TABLE = "table5"  # archived, 42 runs, an aggregate, a run from a dirty tree: regenerates in seconds


def test_a_committed_page_is_what_the_report_makes_from_the_archived_records(tmp_path, monkeypatch):
    # the report reads the runs root before the archive: an empty one, so a user's own runs/grid changes nothing
    monkeypatch.setattr(grid, "DEFAULT_RUNS_ROOT", tmp_path / "no-runs")
    assert report.main([TABLE, "--out", str(tmp_path / "docs")]) == 0
    made = (tmp_path / "docs" / "results" / f"{TABLE}.md").read_text()
    committed = (ROOT / "docs" / "results" / f"{TABLE}.md").read_text()
    assert made == committed, (f"docs/results/{TABLE}.md is not what `python -m benchmark.report {TABLE}` makes from the "
                               "archive: regenerate it with that command, never by hand")
    assert made.startswith("# ") and f"Made by `python -m benchmark.report {TABLE}`" in made
    images = sorted((tmp_path / "docs" / "img").iterdir())
    assert images  # the curves too, byte for byte (matplotlib is pinned; the PNGs carry no version or date)
    for image in images:
        assert image.read_bytes() == (ROOT / "docs" / "img" / image.name).read_bytes(), f"docs/img/{image.name} differs"


def test_an_interval_depends_on_its_scores_alone():
    scores = np.array([[1.0, 2.0], [3.0, 5.0], [7.0, 1.0], [2.0, 2.0]])
    first = report.iqm_interval(scores, 500)
    np.random.seed(123)  # whatever drew from numpy's global generator before
    np.random.rand(7)
    state = np.random.get_state()
    assert report.iqm_interval(scores, 500) == first
    assert np.array_equal(np.random.get_state()[1], state[1])  # and the caller's generator is left as it was
    others = {report.iqm_interval(scores, 500, seed) for seed in range(5)}
    assert len(others) > 1  # the seed is the bootstrap's: another seed, another interval


def test_the_page_names_its_command_and_no_date_or_machine_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(grid, "DEFAULT_RUNS_ROOT", tmp_path / "no-runs")
    assert report.main(["fig1d", "--out", str(tmp_path / "a"), "--reps", "300", "--bootstrap-seed", "4"]) == 0
    text = (tmp_path / "a" / "results" / "fig1d.md").read_text()
    assert "Made by `python -m benchmark.report fig1d --reps 300 --bootstrap-seed 4` from the runs of " \
           "`python -m benchmark.grid fig1d`." in text
    assert "Report written" not in text and "cores." not in text and "rliable, 300 resamples, seed 4" in text
    assert "population std, ddof 0" in text

    # the archive alone, under another page name: the command says so, and the images follow the page's name
    assert report.main(["fig1d", "--runs-root", "none", "--archive", str(grid.DEFAULT_ARCHIVE), "--page", "other",
                        "--out", str(tmp_path / "b"), "--reps", "300"]) == 0
    text = (tmp_path / "b" / "results" / "other.md").read_text()
    assert (f"Made by `python -m benchmark.report fig1d --runs-root none --archive {grid.DEFAULT_ARCHIVE} --reps 300 "
            f"--page other` from the runs of `python -m benchmark.grid fig1d --archive {grid.DEFAULT_ARCHIVE}`.") in text
    assert "6 of 6 runs complete" in text and (tmp_path / "b" / "img" / "other_cn.png").exists()


@pytest.mark.parametrize("archive", ["runs-float32"])
def test_a_page_from_another_archive_says_what_its_runs_are(tmp_path, archive):
    path = ROOT / "benchmark" / "results" / archive
    assert report.main(["table5-kl", "--runs-root", "none", "--archive", str(path), "--out", str(tmp_path), "--reps", "50"]) == 0
    text = (tmp_path / "results" / "table5-kl.md").read_text()
    assert text.splitlines()[2] == f"*{report.ARCHIVES[archive]}*"


def test_the_aggregate_takes_each_method_over_the_groups_where_it_has_every_seed(tmp_path, monkeypatch):
    # a group still running (one seed of three) neither drops a method from "All groups" nor enters its IQM
    monkeypatch.setattr(grid, "DEFAULT_RUNS_ROOT", tmp_path / "no-runs")
    archive = tmp_path / "archive" / "table5"
    archive.mkdir(parents=True)
    for name in ["halfcheetah-2x3__BCQ_w_lambda_tn__s1", "halfcheetah-2x3__BCQ_w_lambda_tn__s2",
                 "halfcheetah-2x3__BCQ_w_lambda_tn__s3", "hopper-3x1__BCQ_w_lambda_tn__s1"]:
        (archive / f"{name}.json").write_bytes((grid.DEFAULT_ARCHIVE / "table5" / f"{name}.json").read_bytes())
    assert report.main(["table5", "--runs-root", "none", "--archive", str(archive.parent), "--out", str(tmp_path / "docs"),
                        "--reps", "200"]) == 0
    text = (tmp_path / "docs" / "results" / "table5.md").read_text()
    cell = lambda part: next(line for line in part.splitlines() if line.startswith("| BCQ w/ lambda_tn |"))  # noqa: E731
    halfcheetah = cell(text.split("## halfcheetah-2x3")[1].split("## hopper-3x1")[0]).split(" | ")
    aggregate = cell(text.split("## All groups")[1]).split(" | ")
    assert halfcheetah[1].endswith("(3)") and "(1)" in cell(text.split("## hopper-3x1")[1])
    assert aggregate[1] == "1"  # HalfCheetah's three seeds; Hopper's one seed is not a complete group
    assert aggregate[2].rstrip(" |") == halfcheetah[2]  # the same IQM and interval as HalfCheetah's cell


def test_the_machine_line_names_an_mkl_kernel_setting_when_a_run_had_one():
    record = {"host": "vm", "started": "2026-12-05T08:00:00", "threads": 1, "seconds": 3600.0,
              "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
              "cpu": {"model": "Intel(R) Xeon(R) Processor", "torch_capability": "AVX512", "mkl_cbwr": None}}
    strict = {**record, "cpu": {**record["cpu"], "mkl_cbwr": "AUTO,STRICT"}}
    line = report.machine({"a": (record, None), "b": (strict, None)})
    assert "`vm, Intel(R) Xeon(R) Processor, torch AVX512 kernels` (1 run)" in line
    assert "`vm, Intel(R) Xeon(R) Processor, torch AVX512 kernels, MKL_CBWR=AUTO,STRICT` (1 run)" in line
    assert "2.00 CPU-hours" in line
