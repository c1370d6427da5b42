"""benchmark/grid.py and benchmark/report.py: every table expands to runs of existing flags; a grid on a
local Ray instance skips, resumes, retries, survives a killed run and a Ctrl-C, and its report shows the runs.

The grid's own logic runs against a stand-in script (FAKE) that keeps the run contract of docs/results.md
in a fraction of a second; one end-to-end test runs the real matd3bc.py on a tiny dataset."""

import ast
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark import grid, report, specs
from conftest import ROOT


@functools.cache
def script_flags(script: str) -> set[str]:
    """The flags of an algorithm script: its `Args` dataclass fields (read, not imported: no torch, no jax)."""
    fields = []
    for path, name in ((script, "Args"), ("envs/run.py", "RunArgs")):  # a script's Args extend the run contract's flags
        tree = ast.parse((ROOT / path).read_text())
        (args,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name]
        fields += [f for f in args.body if isinstance(f, ast.AnnAssign)]
    flags = {"--" + f.target.id.replace("_", "-") for f in fields}
    return flags | {"--no-" + f.target.id.replace("_", "-") for f in fields if ast.unparse(f.annotation) == "bool"}  # tyro's


@pytest.mark.parametrize("name", list(specs.TABLES))
def test_every_table_expands_to_runs_of_existing_flags(name):
    table = specs.load(name)
    for scale in ("reduced", "paper"):
        runs = grid.expand(name, table, scale)
        assert runs and len({r.name for r in runs}) == len(runs)  # names are unique: a rerun finds each run
        for run in runs:
            unknown = {f for f in run.flags if f.startswith("--")} - script_flags(run.script)
            assert not unknown, f"{run.name}: {run.script} has no {unknown}"
            assert run.flags[run.flags.index("--total-steps") + 1] == str(run.steps)
    for group in table.groups:
        assert set(group.paper) <= set(group.methods) and set(group.steps) == set(group.seeds) == {"reduced", "paper"}


def test_table_sizes_are_the_briefs():
    size = lambda name, scale="reduced": len(grid.expand(name, specs.load(name), scale))  # noqa: E731
    assert size("table2-4") == 3 * 3 and size("table9") == 2 * 2 * 5 and size("fig1c") == 5 * 3
    assert size("table5") == 6 * 4 * 3 and size("table5", "paper") == 6 * 4 * 5
    assert size("table8") == 4 * 4 * 4 * 3 and size("table10") == 3 * 3 * 3 * 3 and size("fig1d") == 2 * 3
    assert {r.steps for r in grid.expand("table5", specs.load("table5"), "paper")} == {300_000}
    assert {r.steps for r in grid.expand("table9", specs.load("table9"), "reduced")} == {30_000, 100_000}
    # the terminal ablation: Table 5's Hopper MABCQ and BCQ w/ lambda_vd runs, each with both settings, nothing else changed
    seed = lambda run: run.name.rsplit("__s", 1)[1]  # noqa: E731
    hopper = {(r.method, seed(r)): r.flags for r in grid.expand("table5", specs.load("table5"), "reduced")
              if r.group == "hopper-3x1" and r.method in ("MABCQ", "BCQ w/ lambda_vd")}
    terminal = grid.expand("table5-terminal", specs.load("table5-terminal"), "reduced")
    assert len(terminal) == 2 * 2 * 3 and {r.method.split(", ")[1] for r in terminal} == {"vd-terminal one", "vd-terminal formula"}
    for r in terminal:
        method, how = r.method.split(", vd-terminal ")
        at = r.flags.index("--vd-terminal")
        assert r.flags[at + 1] == how and r.flags[:at] + r.flags[at + 2:] == hopper[method, seed(r)]


def test_dry_run_prints_the_commands_with_their_flags(capsys, tmp_path):
    assert grid.main(["table9", "--dry-run", "--only", "dg-partial__TD3+BC__s2"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("[") and "python matd3bc.py --env-id dg --eval-freq 2500 --obs partial --no-vd --no-tn --seed 2" in line
    assert line.endswith("--total-steps 100000 --run-name grid/table9/dg-partial__TD3+BC__s2 --threads 1")

    assert grid.main(["table5", "--dry-run", "--scale", "paper", "--seeds", "7", "--only", "hopper", "--threads-per-run", "2",
                      "--runs-root", str(tmp_path), "--dataset-dir", "/data"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all("--seed 7 --total-steps 300000" in x and x.endswith("--dataset-dir /data --threads 2") for x in lines)
    assert f"--run-name {tmp_path}/table5/hopper-3x1__DDPG__s7" in "\n".join(lines)  # outside runs/: an absolute name
    assert sum("--no-vd --no-tn --seed" in x for x in lines) == 1 and sum("--behavior" in x for x in lines) == 1


def test_the_eta_comes_from_the_rate_runs_finish_at_not_from_their_time_in_the_queue():
    # 6 runs finished in the first hour, 12 left: two more hours, however long each waited to start
    line = grid.progress(time.time() - 3600, dict(done=6, running=2, queued=10, failed=0, skipped=4))
    assert "done 6, running 2, queued 10, failed 0, skipped 4" in line and line.endswith("ETA 120.0 min")
    assert "ETA" not in grid.progress(time.time() - 60, dict(done=0, running=2, queued=10, failed=0, skipped=0))


def write_results(run_dir: Path, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"host": os.uname().nodename, **fields}))


def test_a_run_is_complete_only_with_the_steps_asked_and_running_only_while_its_process_lives(tmp_path, capsys):
    run_dir = tmp_path / "t" / "g__m__s1"
    assert grid.state(run_dir, 100) == "new"
    write_results(run_dir, status="complete", args={"total_steps": 100})
    assert grid.state(run_dir, 100) == "complete" and grid.state(run_dir, 50) == "complete"
    assert grid.state(run_dir, 300) == "resumable"  # the paper scale trains a reduced run longer
    write_results(run_dir, status="running", pid=os.getpid(), args={"total_steps": 100})
    assert grid.state(run_dir, 100) == "running"
    write_results(run_dir, status="running", pid=2**22 + 1, args={"total_steps": 100})  # above pid_max: gone
    assert grid.state(run_dir, 100) == "resumable"
    run = grid.Run("t/g__m__s1", "matd3bc.py", ["--seed", "1", "--total-steps", "300"], 300, "g", "m")
    assert grid.command(run, run_dir, 1, None)[2:] == ["--resume", str(run_dir), "--total-steps", "300", "--threads", "1"]


# A stand-in for an algorithm script: the interface of docs/results.md (results.json, checkpoint.pt at every
# evaluation, --resume, SIGTERM -> interrupted), no learning. --crash-at kills it once (SIGKILL, the way a
# machine loses a run), --fail fails every time, --step-seconds paces it, --git-commit is what it records as
# results.json `git_commit` (a clean commit by default; `none` for null).
FAKE = r'''
import argparse, json, os, platform, signal, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
for flag, kind in [("--env-id", str), ("--seed", int), ("--total-steps", int), ("--eval-freq", int), ("--run-name", str),
                   ("--threads", int), ("--resume", str), ("--dataset-dir", str), ("--step-seconds", float), ("--crash-at", int),
                   ("--git-commit", str)]:
    parser.add_argument(flag, type=kind)
parser.add_argument("--fail", action="store_true")
given = parser.parse_args()

def write(name, obj):
    (run_dir / (name + ".tmp")).write_text(json.dumps(obj))
    os.replace(run_dir / (name + ".tmp"), run_dir / name)

if given.resume:
    run_dir = Path(given.resume)
    results = json.loads((run_dir / "results.json").read_text())
    args = argparse.Namespace(**{**results["args"], "total_steps": given.total_steps or results["args"]["total_steps"]})
    checkpoint = json.loads((run_dir / "checkpoint.pt").read_text()) if (run_dir / "checkpoint.pt").exists() else {"step": 0, "evaluations": []}
    step = checkpoint["step"]
    results.update(status="running", pid=os.getpid(), args=vars(args), evaluations=checkpoint["evaluations"],
                   resumed_at_steps=results["resumed_at_steps"] + [step])
else:
    args = given
    run_dir = Path("runs") / args.run_name
    if (run_dir / "results.json").exists():
        sys.exit(f"{run_dir} already holds a run")
    run_dir.mkdir(parents=True, exist_ok=True)
    commit = {None: "0123456789abcdef0123456789abcdef01234567", "none": None}.get(args.git_commit, args.git_commit)
    results = dict(status="running", error=None, args=vars(args), git_commit=commit, host=platform.node(), pid=os.getpid(), threads=args.threads,
                   versions={"python": platform.python_version()}, seconds=0.0, evaluations=[], final=None, resumed_at_steps=[])
    step = 0
write("results.json", results)

def interrupted(signum, frame):
    results["status"] = "interrupted"
    write("results.json", results)
    sys.exit(1)

signal.signal(signal.SIGTERM, interrupted)
while step < args.total_steps:
    time.sleep(args.step_seconds or 0)
    step += args.eval_freq
    if args.crash_at and step >= args.crash_at and not results["resumed_at_steps"]:
        os.kill(os.getpid(), signal.SIGKILL)
    if args.fail:
        results.update(status="failed", error="RuntimeError: told to fail")
        write("results.json", results)
        sys.exit(1)
    entry = {"step": step, "seconds": step / 1000, "team_return": args.seed * 10 + step / 100, "win_rate": 0.5}
    results["evaluations"].append(entry)
    results.update(final=entry, seconds=results["seconds"] + (args.step_seconds or 0))
    write("checkpoint.pt", {"step": step, "evaluations": results["evaluations"]})
    write("results.json", results)
results["status"] = "complete"
write("results.json", results)
'''


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of 2 CPUs for the grids run in this process (grid.main uses it as it is)."""
    import ray  # a requirement: a missing or broken Ray fails here, it is not skipped
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def fake_grid(tmp_path, methods: dict[str, list[str]], seeds=(1,), steps=400, paper_steps=600) -> list[str]:
    """A spec file of FAKE runs, and the grid flags that run it under tmp_path/runs."""
    (tmp_path / "fake.py").write_text(FAKE)
    spec = {"title": "fake", "groups": [{
        "name": "g", "flags": ["--env-id", "x", "--eval-freq", "100"], "methods": {m: [str(tmp_path / "fake.py"), f] for m, f in methods.items()},
        "steps": {"reduced": steps, "paper": paper_steps}, "seeds": {"reduced": list(seeds), "paper": list(seeds)}, "extra_metrics": ["win_rate"],
        "paper": {"ok": "12.0"}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return ["fake", "--spec-file", str(tmp_path / "spec.json"), "--runs-root", str(tmp_path / "runs")]


def attempts(run_dir: Path) -> int:
    return (run_dir / "log.txt").read_text().count("\n$ ") + 1


def test_a_grid_retries_by_resuming_reports_failures_skips_complete_runs_and_reports(local_ray, tmp_path, capsys):
    flags = fake_grid(tmp_path, {"ok": ["--crash-at", "200"], "bad": ["--fail"]}, seeds=(1, 2))
    assert grid.main(flags) == 1  # a run failed finally
    out = capsys.readouterr().out
    assert "4 runs: 0 complete (skipped), 0 running in another process (skipped), 0 to resume, 4 to start" in out
    assert "run fake/g__bad__s1 FAILED (exit 1) after 3 attempts: RuntimeError: told to fail" in out
    assert "done 2, running 0, queued 0, failed 2, skipped 0" in out
    runs = tmp_path / "runs" / "fake"
    for seed in (1, 2):  # killed at step 200, resumed by the retry from its checkpoint at step 100
        ok = json.loads((runs / f"g__ok__s{seed}" / "results.json").read_text())
        assert ok["status"] == "complete" and ok["resumed_at_steps"] == [100] and ok["final"]["step"] == 400
        assert attempts(runs / f"g__ok__s{seed}") == 2 and "--resume" in (runs / f"g__ok__s{seed}" / "log.txt").read_text()
        assert attempts(runs / f"g__bad__s{seed}") == 3

    assert grid.main([*flags, "--retries", "0"]) == 1  # a rerun: complete runs skipped, failed ones resumed once more
    assert "4 runs: 2 complete (skipped), 0 running in another process (skipped), 2 to resume, 0 to start" in capsys.readouterr().out
    assert attempts(runs / "g__ok__s1") == 2 and attempts(runs / "g__bad__s1") == 4

    assert report.main([*flags, "--out", str(tmp_path / "docs"), "--reps", "200"]) == 0
    text = (tmp_path / "docs" / "results" / "fake.md").read_text()
    assert "| ok | 19.00 ± 5.00 (2) | 19.00 [14.00, 24.00] | 0.50 ± 0.00 | 12.0 |" in text  # seeds 1, 2: 10 + 4, 20 + 4
    assert "| bad | missing |" in text and "`fake/g__bad__s1` (failed: RuntimeError: told to fail)" in text
    assert "2 of 4 runs complete" in text and "CPU-hours" in text and "python -m benchmark.grid fake --runs-root" in text
    assert (tmp_path / "docs" / "img" / "fake_g.png").stat().st_size > 1000
    assert "| step | ok |\n|---|---|\n| 100 | 16.00 ± 5.00 |\n| 200 | 17.00 ± 5.00 |" in text  # along training
    assert "| 400 | 19.00 ± 5.00 |\n| mean of every evaluation | 17.50 ± 5.00 |" in text  # (11+12+13+14)/4, (21+...)/4

    assert grid.main([*flags, "--scale", "paper", "--only", "ok"]) == 0  # the paper scale trains the complete runs longer
    assert "2 runs: 0 complete (skipped), 0 running in another process (skipped), 2 to resume" in capsys.readouterr().out
    ok = json.loads((runs / "g__ok__s1" / "results.json").read_text())
    assert ok["status"] == "complete" and ok["resumed_at_steps"] == [100, 400] and ok["final"]["step"] == 600
    assert report.main([*flags, "--out", str(tmp_path / "docs"), "--reps", "200"]) == 0  # the reduced scale: step 400 still
    assert "| ok | 19.00 ± 5.00 (2) |" in (tmp_path / "docs" / "results" / "fake.md").read_text()


def test_the_archive_keeps_complete_runs_for_a_machine_without_the_runs_root(local_ray, tmp_path, capsys):
    flags = fake_grid(tmp_path, {"ok": []}, seeds=(1, 2))
    archive = tmp_path / "archive"
    assert grid.main([*flags, "--archive", str(archive)]) == 0
    for seed in (1, 2):  # the whole results.json, as the run wrote it
        kept = json.loads((archive / "fake" / f"g__ok__s{seed}.json").read_text())
        assert kept == json.loads((tmp_path / "runs" / "fake" / f"g__ok__s{seed}" / "results.json").read_text())
    assert not list(archive.rglob("*.tmp"))

    os.rename(tmp_path / "runs", tmp_path / "lost")  # a new machine: the checkout, not the runs
    capsys.readouterr()
    assert grid.main([*flags, "--archive", str(archive), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("[archived]") == 2
    assert grid.main([*flags, "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "2 runs complete in the archive" in out and "2 runs: 2 complete (skipped)" in out
    assert not (tmp_path / "runs" / "fake").exists()  # nothing ran
    assert report.main([*flags, "--archive", str(archive), "--out", str(tmp_path / "docs"), "--reps", "200"]) == 0
    assert "| ok | 19.00 ± 5.00 (2) |" in (tmp_path / "docs" / "results" / "fake.md").read_text()
    assert report.main([*flags, "--archive", "none", "--out", str(tmp_path / "docs"), "--reps", "200"]) == 0
    assert "| ok | missing |" in (tmp_path / "docs" / "results" / "fake.md").read_text()

    # the paper scale asks for more steps than the archive's runs have: they run again (no checkpoint to resume)
    assert grid.main([*flags, "--archive", str(archive), "--scale", "paper", "--only", "s1"]) == 0
    assert "1 runs: 0 complete (skipped), 0 running in another process (skipped), 0 to resume, 1 to start" in capsys.readouterr().out
    assert json.loads((archive / "fake" / "g__ok__s1.json").read_text())["final"]["step"] == 600  # the longer run replaces it
    assert json.loads((archive / "fake" / "g__ok__s2.json").read_text())["final"]["step"] == 400
    assert grid.archive_root(None, grid.DEFAULT_RUNS_ROOT) == grid.DEFAULT_ARCHIVE  # the project's own runs are archived
    assert grid.archive_root(None, tmp_path / "runs") is None and grid.archive_root("none", grid.DEFAULT_RUNS_ROOT) is None


def test_a_run_no_commit_holds_is_not_archived_and_the_report_marks_its_group(local_ray, tmp_path, capsys):
    flags = fake_grid(tmp_path, {"ok": [], "dirty": ["--git-commit", "abcdef0123+dirty"], "nogit": ["--git-commit", "none"]})
    archive = tmp_path / "archive"
    assert grid.main([*flags, "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    assert f"run fake/g__ok__s1 archived into {archive}" in out
    assert ("run fake/g__dirty__s1 complete, NOT archived: made from a tree with uncommitted changes "
            "(git_commit abcdef0+dirty)") in out
    assert "run fake/g__nogit__s1 complete, NOT archived: made outside a git checkout (git_commit null)" in out
    assert "2 complete runs not archived (no commit holds their code): fake/g__dirty__s1, fake/g__nogit__s1" in out
    assert sorted(p.name for p in (archive / "fake").iterdir()) == ["g__ok__s1.json"]

    assert grid.main([*flags, "--archive", str(archive)]) == 0  # a rerun: all three complete, the two still refused
    out = capsys.readouterr().out
    assert "3 runs: 3 complete (skipped)" in out and "NOT archived" in out and "archived 1" not in out
    assert sorted(p.name for p in (archive / "fake").iterdir()) == ["g__ok__s1.json"]

    assert report.main([*flags, "--archive", str(archive), "--out", str(tmp_path / "docs"), "--reps", "50"]) == 0
    text = (tmp_path / "docs" / "results" / "fake.md").read_text()
    assert "3 of 3 runs complete" in text and "2 of them were made from a tree with uncommitted changes" in text
    assert ("**2 of this group's 3 runs were made from a tree with uncommitted changes**, so no commit holds the code that "
            "made them") in text
    assert "`abcdef0+dirty`: dirty s1; no `git_commit` (outside a git checkout): nogit s1." in text

    shutil.rmtree(tmp_path / "runs" / "fake" / "g__dirty__s1")  # a clean group says nothing
    shutil.rmtree(tmp_path / "runs" / "fake" / "g__nogit__s1")
    assert report.main([*flags, "--archive", str(archive), "--out", str(tmp_path / "docs"), "--reps", "50"]) == 0
    assert "uncommitted" not in (tmp_path / "docs" / "results" / "fake.md").read_text()


def test_the_report_averages_the_value_difference_along_training_as_table_6_does(tmp_path):
    spec = {"title": "vd", "groups": [{"name": "g", "flags": ["--env-id", "x"], "methods": {"m": ["matd3bc.py", []]},
                                       "steps": {"reduced": 200, "paper": 200}, "seeds": {"reduced": [1, 2], "paper": [1, 2]},
                                       "extra_metrics": ["value_difference", "extrapolation_error"]}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for seed, vds in ((1, [1.0, 3.0]), (2, [5.0, 7.0])):  # means along training 2 and 6; at the end 3 and 7
        evaluations = [{"step": 100 * (k + 1), "team_return": 0.0, "value_difference": v, "extrapolation_error": 10.0 * seed}
                       for k, v in enumerate(vds)] + [{"step": 300, "team_return": 0.0, "value_difference": 99.0}]  # past the scale
        write_results(tmp_path / "runs" / "vd" / f"g__m__s{seed}", status="complete", args={"total_steps": 300},
                      evaluations=evaluations, final=evaluations[-1])
    assert report.main(["vd", "--spec-file", str(tmp_path / "spec.json"), "--runs-root", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "docs"), "--reps", "50"]) == 0
    text = (tmp_path / "docs" / "results" / "vd.md").read_text()
    assert "| method | team_return mean ± std (n) | IQM [95% CI] | value_difference (mean along training) | extrapolation_error |" in text
    assert "| m | 0.00 ± 0.00 (2) | 0.00 [0.00, 0.00] | 4.00 ± 2.00 | 15.00 ± 5.00 |" in text


def test_the_report_names_each_groups_datasets_and_says_when_its_runs_used_more_than_one(tmp_path):
    spec = {"title": "ds", "groups": [{"name": g, "flags": ["--env-id", "x"], "methods": {"a": ["matd3bc.py", []], "b": ["matd3bc.py", []]},
                                       "steps": {"reduced": 100, "paper": 100}, "seeds": {"reduced": [1, 2, 3], "paper": [1, 2, 3]}}
                                      for g in ("one", "two")]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    same = {"agent_0.npz": "91625f60" + "0" * 56, "agent_1.npz": "c0e18ef8" + "0" * 56}
    other = {"agent_0.npz": "6439127a" + "1" * 56, "agent_1.npz": "3e3384cf" + "1" * 56}
    for group in ("one", "two"):
        for seed in (1, 2, 3):
            for method in ("a", "b"):
                fingerprint = other if (group, seed) == ("two", 1) else same  # group two: seed 1 built elsewhere
                evaluation = {"step": 100, "team_return": 1.0}
                write_results(tmp_path / "runs" / "ds" / f"{group}__{method}__s{seed}", status="complete",
                              args={"total_steps": 100, "seed": seed}, evaluations=[evaluation], final=evaluation,
                              dataset={"path": "datasets/x", "fingerprint": fingerprint})
    assert report.main(["ds", "--spec-file", str(tmp_path / "spec.json"), "--runs-root", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "docs"), "--reps", "50"]) == 0
    one, two = (tmp_path / "docs" / "results" / "ds.md").read_text().split("## two")
    assert "Dataset (SHA-256 of each agent's file, first 8 hex digits): `91625f60`/`c0e18ef8`, every run." in one
    assert "**The runs of this group learned from 2 different datasets**" in two
    assert "`91625f60`/`c0e18ef8`: seeds 2, 3 (4 runs); `6439127a`/`3e3384cf`: seed 1 (2 runs)." in two


def test_the_report_compares_datasets_within_a_partition_not_across_partitions(tmp_path):
    # Table 10: the 2x3 split and the 1x6 single agent read one Minari source as different files, by design
    spec = {"title": "part", "groups": [{"name": "g", "flags": ["--env-id", "x"], "steps": {"reduced": 100, "paper": 100},
                                         "seeds": {"reduced": [1, 2], "paper": [1, 2]},
                                         "methods": {"split": ["matd3bc.py", []], "single": ["matd3bc.py", []]}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    split = {"agent_0.npz": "ac445daf" + "0" * 56, "agent_1.npz": "f0c952c7" + "0" * 56}
    single, rebuilt = {"agent_0.npz": "0ea1741d" + "0" * 56}, {"agent_0.npz": "12345678" + "0" * 56}

    def run(single_seed_2):
        for seed in (1, 2):
            for method, partition, fingerprint in (("split", "2x3", split),
                                                   ("single", "1x6", single_seed_2 if seed == 2 else single)):
                evaluation = {"step": 100, "team_return": 1.0}
                write_results(tmp_path / "runs" / "part" / f"g__{method}__s{seed}", status="complete",
                              args={"total_steps": 100, "seed": seed}, evaluations=[evaluation], final=evaluation,
                              env_kwargs={"partition": partition}, dataset={"path": "datasets/x", "fingerprint": fingerprint})
        assert report.main(["part", "--spec-file", str(tmp_path / "spec.json"), "--runs-root", str(tmp_path / "runs"),
                            "--out", str(tmp_path / "docs"), "--reps", "50"]) == 0
        return (tmp_path / "docs" / "results" / "part.md").read_text()

    text = run(single)
    assert "different datasets" not in text
    assert ("partition 2x3: `ac445daf`/`f0c952c7`, every run (2 runs); partition 1x6: `0ea1741d`, every run (2 runs).") in text
    text = run(rebuilt)  # seed 2's single-agent file came from another build: flagged, within its partition
    assert "**The runs of this group learned from 3 different datasets**" in text
    assert ("partition 2x3: `ac445daf`/`f0c952c7`: seeds 1, 2 (2 runs); partition 1x6: `0ea1741d`: seed 1 (1 run); "
            "partition 1x6: `12345678`: seed 2 (1 run).") in text


def test_the_archive_is_tracked_by_git_and_the_runs_root_is_not():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = lambda path: subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0  # noqa: E731
    assert ignored("runs/grid/table5/x/results.json") and ignored("datasets/dg-x/agent_0.npz")
    assert not ignored(str(grid.DEFAULT_ARCHIVE.relative_to(ROOT) / "table5" / "x.json"))


def test_a_grid_stopped_by_ctrl_c_stops_its_runs_and_a_rerun_resumes_them(local_ray, tmp_path, capsys):
    flags = fake_grid(tmp_path, {"a": ["--step-seconds", "0.5"], "b": ["--step-seconds", "0.5"]}, steps=2000)
    runs = [tmp_path / "runs" / "fake" / f"g__{m}__s1" for m in ("a", "b")]

    def ctrl_c_after_the_first_checkpoints():
        deadline = time.time() + 120
        while not all((r / "checkpoint.pt").exists() for r in runs) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_after_the_first_checkpoints).start()
    assert grid.main(flags) == 130
    assert "rerun the same command to resume" in capsys.readouterr().out
    for run_dir in runs:  # SIGTERM reached the run: it said so and its process is gone
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "interrupted" and results["final"]["step"] < 2000
        with pytest.raises(ProcessLookupError):
            os.kill(results["pid"], 0)

    assert grid.main([*flags, "--retries", "0"]) == 0
    assert "0 complete (skipped), 0 running in another process (skipped), 2 to resume" in capsys.readouterr().out
    for run_dir in runs:
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "complete" and results["resumed_at_steps"][0] >= 100 and results["final"]["step"] == 2000


TINY = ["--env-id", "dg", "--n-transitions", "2000", "--eval-freq", "100", "--vae-steps", "20", "--eval-episodes", "5",
        "--hidden-dim", "32", "--batch-size", "32", "--analysis-states", "200"]


def test_a_tiny_matd3bc_grid_survives_a_killed_run_and_reports(local_ray, tmp_path, capsys):
    spec = {"title": "tiny", "groups": [{
        "name": "dg", "flags": TINY, "methods": {"MATD3+BC": ["matd3bc.py", []], "TD3+BC": ["matd3bc.py", ["--no-vd", "--no-tn"]]},
        "steps": {"reduced": 400, "paper": 400}, "seeds": {"reduced": [1], "paper": [1]}, "paper": {"MATD3+BC": "46.5 ± 0.9"}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    flags = ["tiny", "--spec-file", str(tmp_path / "spec.json"), "--runs-root", str(tmp_path / "runs")]
    victim = tmp_path / "runs" / "tiny" / "dg__MATD3+BC__s1"

    def kill_after_first_checkpoint():  # SIGKILL, the way a machine loses a run
        deadline = time.time() + 150
        while not (victim / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        results = json.loads((victim / "results.json").read_text())
        if results["status"] == "running":
            os.kill(results["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    assert grid.main([*flags, "--retries", "0", "--dataset-dir", str(tmp_path / "datasets")]) == 1
    killer.join()
    assert "run tiny/dg__MATD3+BC__s1 FAILED (exit -9)" in capsys.readouterr().out
    assert json.loads((victim / "results.json").read_text())["status"] == "running"  # killed, not finished

    assert grid.main(flags) == 0
    assert "1 complete (skipped), 0 running in another process (skipped), 1 to resume, 0 to start" in capsys.readouterr().out
    resumed = json.loads((victim / "results.json").read_text())
    assert resumed["status"] == "complete" and resumed["resumed_at_steps"][0] >= 100 and resumed["final"]["step"] == 400
    assert resumed["threads"] == 1 and "--resume" in (victim / "log.txt").read_text()

    assert report.main([*flags, "--out", str(tmp_path / "docs"), "--reps", "100"]) == 0
    text = (tmp_path / "docs" / "results" / "tiny.md").read_text()
    assert "| MATD3+BC | " in text and "| TD3+BC | " in text and "46.5 ± 0.9" in text and "2 of 2 runs complete" in text
    assert (tmp_path / "docs" / "img" / "tiny_dg.png").stat().st_size > 1000


def test_a_run_gets_its_threads_and_the_heap_settings_and_the_users_environment_wins(tmp_path, monkeypatch):
    show = "import os; print(*(os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MALLOC_MMAP_THRESHOLD_', 'XLA_FLAGS')))"
    assert grid.execute([sys.executable, "-c", show], str(tmp_path), str(tmp_path / "one.txt"), threads=1) == 0
    assert (tmp_path / "one.txt").read_text().splitlines()[-1] == f"1 {2**32} {grid.XLA_ONE_THREAD}"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "123")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert grid.execute([sys.executable, "-c", show], str(tmp_path), str(tmp_path / "two.txt"), threads=2) == 0
    assert (tmp_path / "two.txt").read_text().splitlines()[-1] == "2 123 None"


class FlakyRay:
    """Stands in for ray: init fails `failures` times as Ray's startup timeout does, then succeeds."""

    def __init__(self, failures):
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        assert kwargs["address"] == "local" and kwargs["num_cpus"] == 2
        if self.inits <= self.failures:
            raise Exception("The current node timed out during startup.")

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_ray_that_times_out_at_startup_is_tried_again_then_stopped_with_one_line(capsys):
    flaky = FlakyRay(failures=1)
    grid.start_local_ray(flaky, 2)
    assert (flaky.inits, flaky.shutdowns) == (2, 1)
    assert "did not start (attempt 1 of 3): The current node timed out" in capsys.readouterr().out
    dead = FlakyRay(failures=5)
    with pytest.raises(SystemExit, match="did not start in 3 attempts; the machine may be too busy"):
        grid.start_local_ray(dead, 2)
    assert (dead.inits, dead.shutdowns) == (3, 3)
