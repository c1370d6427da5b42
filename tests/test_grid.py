"""benchmark/grid.py and benchmark/report.py: every table expands; a tiny grid runs end to end on local Ray."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmark import grid, specs
from conftest import ROOT


@pytest.mark.parametrize("name", list(specs.TABLES))
def test_every_table_expands_to_runs_of_existing_flags(name):
    table = specs.load(name)
    runs = grid.expand(name, table, "reduced", None, None)
    assert runs and len({r.name for r in runs}) == len(runs)  # names are unique: a rerun finds each run
    for run in runs:
        assert run.script.endswith(".py") and "--seed" in run.flags and "--total-steps" in run.flags
    for group in table.groups:
        assert set(group.paper) <= set(group.methods)


def test_table_sizes_are_the_papers():
    assert len(grid.expand("table9", specs.load("table9"), "reduced", None, None)) == 2 * 2 * 5
    assert len(grid.expand("table8", specs.load("table8"), "reduced", None, None)) == 4 * 4 * 4 * 3
    assert len(grid.expand("table5", specs.load("table5"), "reduced", None, None)) == (6 + 6 + 2 + 2) * 3
    assert len(grid.expand("table5", specs.load("table5"), "paper", None, None)) == 16 * 5


def test_dry_run_prints_the_commands(capsys):
    assert grid.main(["table9", "--dry-run", "--only", "dg-partial__TD3+BC__s2"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("[new] ") and "--obs partial" in line and "--no-vd --no-tn" in line and "--total-steps 100000" in line
    assert "--run-name grid/table9/dg-partial__TD3+BC__s2 --threads 1" in line


TINY = ["--env-id", "dg", "--n-transitions", "2000", "--vae-steps", "20", "--eval-episodes", "4", "--hidden-dim", "16",
        "--batch-size", "16", "--analysis-states", "100", "--eval-freq", "300", "--checkpoint-freq", "100"]


def test_a_tiny_grid_runs_on_ray_survives_a_killed_run_and_reports(tmp_path):
    spec = {"title": "tiny", "groups": [{
        "name": "dg", "flags": TINY, "methods": {"MATD3+BC": ["matd3bc.py", []], "TD3+BC": ["matd3bc.py", ["--no-vd", "--no-tn"]]},
        "steps": {"reduced": 1500, "paper": 1500}, "seeds": {"reduced": [1], "paper": [1]}, "paper": {"MATD3+BC": "46.5"}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "benchmark.grid", "tiny", "--spec-file", str(tmp_path / "spec.json"), "--workdir", str(tmp_path),
           "--num-cpus", "2", "--retries", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    victim = tmp_path / "runs" / "grid" / "tiny" / "dg__MATD3+BC__s1"

    def kill_after_first_checkpoint():  # SIGKILL, the way a machine loses a run
        deadline = time.time() + 240
        while not (victim / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(json.loads((victim / "results.json").read_text())["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    killer.join()
    assert first.returncode == 1 and "FAILED" in first.stdout, first.stdout + first.stderr[-3000:]
    assert json.loads((victim / "results.json").read_text())["status"] == "running"  # killed, not finished

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "1 complete" in second.stdout and "1 to run" in second.stdout  # the other run was not redone
    resumed = json.loads((victim / "results.json").read_text())
    assert resumed["status"] == "complete" and resumed["resumed_at_steps"] and resumed["final"]["step"] == 1500
    assert "--resume" in (victim / "log.txt").read_text()

    report = subprocess.run([sys.executable, "-m", "benchmark.report", "tiny", "--spec-file", str(tmp_path / "spec.json"),
                             "--workdir", str(tmp_path), "--out", str(tmp_path / "docs"), "--reps", "50"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "docs" / "results" / "tiny.md").read_text()
    assert "| MATD3+BC | " in text and "| TD3+BC | " in text and "46.5" in text and "(1)" in text
    assert (tmp_path / "docs" / "img" / "tiny_dg.png").stat().st_size > 1000
