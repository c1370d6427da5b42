"""The run contract of docs/results.md, in every algorithm script: resume, cores, results.json, faults."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import conftest
from conftest import ROOT, find_run, one_line_error, run_script

SCRIPTS = [s for s in ("matd3bc.py", "mabcq_discrete.py", "mabcq_continuous.py", "macql.py") if (ROOT / s).exists()]
# a short run of each script that crosses the 1000-step boundary of the sampling chunks, with checkpoints
# (170) that fall between evaluations (400)
TINY = {
    "matd3bc.py": ["--n-transitions", "2000", "--vae-steps", "30", "--eval-episodes", "4", "--hidden-dim", "16",
                   "--batch-size", "16", "--analysis-states", "100"],
    "mabcq_discrete.py": ["--n-episodes", "500", "--vae-steps", "30", "--eval-episodes", "4", "--hidden-dim", "16",
                          "--batch-size", "16"],
    "mabcq_continuous.py": ["--env-id", "hopper-3x1", "--n-transitions", "300", "--vae-steps", "20", "--eval-episodes", "1",
                            "--hidden-dim", "8", "--batch-size", "16", "--n-samples", "2", "--analysis-states", "50"],
    "macql.py": ["--env-id", "matrix-game", "--n-episodes", "500", "--vae-steps", "30", "--eval-episodes", "4",
                 "--hidden-dim", "16", "--batch-size", "16"],
}
SCHEDULE = ["--total-steps", "1300", "--eval-freq", "400", "--checkpoint-freq", "170"]
TIMING = ("seconds", "train_seconds", "updates_per_second", "ms_per_update")


def popen(script, cwd, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(ROOT / script), "--dataset-dir", str(cwd / "datasets"), *flags]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def learned(run_dir: Path) -> tuple[list, dict]:
    """What a run learned: its evaluations without wall-clock times, and its agents' saved tensors."""
    res = json.loads((run_dir / "results.json").read_text())
    evaluations = [{k: v for k, v in e.items() if k not in TIMING} for e in res["evaluations"]]
    agents = {p.name: torch.load(p, weights_only=True) for p in sorted(run_dir.glob("agent_*.pt"))}
    return evaluations, agents


def assert_same(a: tuple[list, dict], b: tuple[list, dict]) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        for part, tensors in a[1][name].items():
            if torch.is_tensor(tensors):
                assert torch.equal(tensors, b[1][name][part]), (name, part)
            elif isinstance(tensors, dict):  # network weights (the flags differ by --run-name, --resume, --threads)
                for k in [k for k in tensors if torch.is_tensor(tensors[k])]:
                    assert torch.equal(tensors[k], b[1][name][part][k]), (name, part, k)


@pytest.fixture(scope="module", params=[s for s in SCRIPTS if s in TINY])
def reference(request, tmp_path_factory):
    """One uninterrupted run per script, and the folder its dataset lives in."""
    script, cwd = request.param, tmp_path_factory.mktemp("contract")
    run_script(script, cwd, *TINY[script], *SCHEDULE, "--save-model", "--run-name", "whole")
    return script, cwd, learned(cwd / "runs" / "whole")


@pytest.mark.parametrize("when", ["after a checkpoint", "before any checkpoint"])
def test_a_run_killed_and_resumed_ends_bit_identical(reference, when):
    script, cwd, whole = reference
    name = f"killed-{when.split()[0]}"
    proc = popen(script, cwd, *TINY[script], *SCHEDULE, "--save-model", "--run-name", name)
    run_dir, deadline = cwd / "runs" / name, time.time() + 120
    marker = run_dir / ("checkpoint.pt" if when == "after a checkpoint" else "results.json")
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.3) if when == "after a checkpoint" else 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "running" or proc.returncode == 0  # a SIGKILL leaves "running" (unless it had finished)
    run_script(script, cwd, "--resume", str(run_dir))
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["final"]["step"] == 1300
    assert_same(learned(run_dir), whole)


def test_resuming_with_a_flag_that_changes_the_result_is_refused(reference):
    script, cwd, _ = reference
    message = one_line_error(run_script(script, cwd, "--resume", str(cwd / "runs" / "whole"), "--batch-size", "8", check=False))
    assert message.startswith("error: --resume: --batch-size 8 differs from the run's 16")


def test_training_longer_with_resume_equals_a_longer_run(reference, tmp_path):
    script, cwd, whole = reference
    run_script(script, cwd, *TINY[script], *SCHEDULE[:4], "--total-steps", "700", "--run-name", "short", "--save-model",
               dataset_dir=cwd / "datasets")
    run_script(script, cwd, "--resume", str(cwd / "runs" / "short"), "--total-steps", "1300", "--checkpoint-freq", "170")
    short = learned(cwd / "runs" / "short")
    assert_same(([e for e in short[0] if e["step"] != 700], short[1]), whole)  # 700 was evaluated as the old end


def test_results_do_not_depend_on_the_thread_count(reference):
    """Why `--threads 0` may change torch's threads mid-run: every op here is below the size that torch splits.
    400 steps, not the reference's 1300: two threads beside the other test worker run 3-8x slower (oversubscribed)."""
    script, cwd, whole = reference
    short = [*TINY[script], *SCHEDULE[:4], "--total-steps", "400", "--save-model"]
    run_script(script, cwd, *short, "--run-name", "one-thread", "--threads", "1")
    run_script(script, cwd, *short, "--run-name", "two-threads", "--threads", "2")
    two = learned(cwd / "runs" / "two-threads")
    assert_same(two, learned(cwd / "runs" / "one-thread"))
    assert two[0] == [e for e in whole[0] if e["step"] == 400]  # and the same as the reference's first 400 steps


def test_results_schema(reference):
    script, cwd, _ = reference
    res = json.loads((cwd / "runs" / "whole" / "results.json").read_text())
    for key in ("schema_version", "status", "run_name", "script", "algorithm", "env_id", "env_kwargs", "dataset", "seed",
                "agent_ids", "args", "git_commit", "versions", "device", "threads", "cpu", "evaluations", "final", "seconds"):
        assert key in res, key
    assert res["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert res["status"] == "complete" and res["script"] == script[:-3] and res["device"] == "cpu"
    assert [e["step"] for e in res["evaluations"]] == [400, 800, 1200, 1300]
    for key in ("step", "seconds", "updates_per_second", "team_return", "team_return_std", "extrapolation_error",
                "lambda_vd_mean", "lambda_vd_min", "lambda_vd_max", "lambda_vd_clipped", "lambda_tn_mean", "td_loss", "q_values"):
        assert key in res["final"], key
    assert res["dataset"]["path"] and Path(res["dataset"]["path"]).is_dir()
    for stats in res["lambda_tn"].values():  # per agent, before the cap
        assert stats["min"] <= stats["p1"] <= stats["median"] <= stats["p99"] <= stats["max"] and 0 <= stats["capped"] <= 1
    assert sorted(res["lambda_tn"]) == sorted(str(a) for a in res["agent_ids"])


def test_lambda_tn_is_capped_at_tn_max(reference):
    """--tn-max 1: every weight in training is at most 1, and results.json says what share was cut."""
    script, cwd, _ = reference
    run_script(script, cwd, *TINY[script], *SCHEDULE[:4], "--total-steps", "400", "--tn-max", "1", "--run-name", "capped")
    res = json.loads((cwd / "runs" / "capped" / "results.json").read_text())
    assert res["final"]["lambda_tn_max"] <= 1
    for stats in res["lambda_tn"].values():
        assert (stats["capped"] > 0) == (stats["max"] > 1) and (stats["capped"] < 1) == (stats["min"] <= 1)
    message = one_line_error(run_script(script, cwd, *TINY[script], "--tn-max", "0.5", "--run-name", "low", check=False))
    assert message.startswith("error: --tn-max must be >= 1") and not (cwd / "runs" / "low").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_lambda_tn_summary_by_hand(script):
    """Agent 0 holds 5 transitions (the rest of its row is padding), agent 3 holds 2; cap 10."""
    module = __import__(script[:-3])
    lambda_tn = torch.tensor([[0.5, 1.0, 2.0, 4.0, 100.0, 7.0], [3.0, 30.0, 9.0, 9.0, 9.0, 9.0]])
    out = module.lambda_tn_summary(lambda_tn, [5, 2], [0, 3], 10.0)
    assert out.keys() == {"0", "3"}
    assert out["0"]["mean"] == pytest.approx(107.5 / 5) and out["0"]["max"] == 100 and out["0"]["min"] == 0.5
    assert out["0"]["median"] == 2.0 and out["0"]["capped"] == pytest.approx(0.2)
    assert out["0"]["p99"] == pytest.approx(4.0 + 0.96 * 96.0)  # linear interpolation at 0.99 * (5 - 1) = 3.96
    assert out["3"]["mean"] == 16.5 and out["3"]["capped"] == 0.5 and out["3"]["p1"] == pytest.approx(3.0 + 0.01 * 27.0)


def test_a_fresh_run_into_a_used_folder_is_refused(reference):
    script, cwd, _ = reference
    message = one_line_error(run_script(script, cwd, *TINY[script], "--run-name", "whole", check=False))
    assert "already holds a run; continue it with --resume" in message


def test_sigterm_marks_the_run_interrupted_and_it_resumes(reference):
    script, cwd, whole = reference
    proc = popen(script, cwd, *TINY[script], *SCHEDULE, "--save-model", "--run-name", "terminated")
    run_dir, deadline = cwd / "runs" / "terminated", time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] in ("interrupted", "complete")
    run_script(script, cwd, "--resume", str(run_dir))
    assert_same(learned(run_dir), whole)


def test_total_steps_zero_evaluates_the_untrained_team(reference):
    script, cwd, _ = reference
    run_script(script, cwd, *TINY[script], "--total-steps", "0", "--run-name", "zero")
    res = json.loads((cwd / "runs" / "zero" / "results.json").read_text())
    assert res["status"] == "complete" and res["final"]["step"] == 0 and "team_return" in res["final"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_foreign_files_and_missing_devices_are_refused(script, tmp_path):
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    torch.save({"actor": {}}, tmp_path / "other.pt")
    for path, what in (("foreign.pt", "cannot load checkpoint"), ("other.pt", "is not an agent checkpoint")):
        n_agents = 2 if script != "mabcq_continuous.py" else 3
        flags = ["--checkpoints", *[str(tmp_path / path)] * n_agents]
        if script == "mabcq_continuous.py":
            flags += ["--env-id", "hopper-3x1"]
        if script == "macql.py":
            flags += ["--env-id", "matrix-game"]
        assert what in one_line_error(run_script(script, tmp_path, *flags, check=False))
    assert "no readable results.json" in one_line_error(run_script(script, tmp_path, "--resume", str(tmp_path), check=False))
    if not torch.cuda.is_available():
        assert "--cuda: torch sees no CUDA device" in one_line_error(run_script(script, tmp_path, "--cuda", check=False))
    assert not (tmp_path / "runs").exists()  # nothing written before the input was checked


def test_matd3bc_refuses_discrete_envs(tmp_path):
    message = one_line_error(run_script("matd3bc.py", tmp_path, "--env-id", "matrix-game", check=False))
    assert "matrix-game has discrete actions" in message


def test_recorded_writes_how_the_block_ended(tmp_path):
    import matd3bc

    results = {"status": "running"}
    with pytest.raises(ValueError):
        with matd3bc.recorded(tmp_path, results):
            raise ValueError("boom")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == "ValueError: boom"
    with matd3bc.recorded(tmp_path, results):
        pass
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


def test_core_share_gives_each_live_run_its_share(tmp_path, monkeypatch):
    import matd3bc

    monkeypatch.setattr(matd3bc.CoreShare, "FOLDER", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        share = matd3bc.CoreShare(0)
        share.cores = 4
        assert share.update(force=True) == 4  # alone: every core
        (tmp_path / str(os.getppid())).touch()  # another live run
        (tmp_path / "999999999").touch()  # a dead one: tidied away
        assert share.update(force=True) == 2 and not (tmp_path / "999999999").exists()
        assert matd3bc.CoreShare(3).update() == 3  # fixed
    finally:
        torch.set_num_threads(before)


def test_the_run_contract_section_is_the_same_in_every_script():
    """docs/results.md is one contract: its code is copied word for word (the CleanRL way), and kept so."""
    start, end = "# TRY NOT TO MODIFY: the run contract", '\nif __name__ == "__main__":'
    sections = {s: (ROOT / s).read_text() for s in SCRIPTS}
    sections = {s: text[text.index(start): text.index(end)] for s, text in sections.items()}
    first = sections[SCRIPTS[0]]
    for script, section in sections.items():
        assert section == first, f"{script}'s run-contract section differs from {SCRIPTS[0]}'s"
