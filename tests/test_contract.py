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
import dataclasses

from conftest import ROOT, one_line_error, run_script

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
    """SIGKILL mid-run (asserted: the process died of it, results.json still says running), --resume, and the run ends as
    the uninterrupted one; resumed_at_steps says where it went on from (0: no checkpoint yet, the run started over)."""
    script, cwd, whole = reference
    name = f"killed-{when.split()[0]}"
    proc = popen(script, cwd, *TINY[script], *SCHEDULE, "--save-model", "--run-name", name)
    run_dir, deadline = cwd / "runs" / name, time.time() + 120
    marker = run_dir / ("checkpoint.pt" if when == "after a checkpoint" else "results.json")
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if when == "after a checkpoint":
        time.sleep(random.Random(script).uniform(0, 0.05))  # a seeded kill point a little after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "running" and (res["final"] is None or res["final"]["step"] < 1300)
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] if (run_dir / "checkpoint.pt").exists() else 0
    assert (killed_at > 0) == (when == "after a checkpoint") and killed_at < 1300
    run_script(script, cwd, "--resume", str(run_dir))
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["final"]["step"] == 1300 and res["resumed_at_steps"] == [killed_at]
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


def intel_cpu() -> bool:
    return "GenuineIntel" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


def test_results_do_not_depend_on_the_thread_count(reference):
    """Why `--threads 0` may change torch's threads mid-run: the results are the same on one thread and on two.
    At the tiny sizes of the reference torch never splits work, so this run uses 256-wide networks and batches of 512,
    where matmuls and reductions are split over the threads (two threads beside the other test worker run slowly).
    On an Intel CPU MKL splits a product's sum by the thread count (MABCQ's 2-thread run differed from its 1-thread
    run every time on an Intel Xeon VM, 2026-12-05) unless told not to: there both runs use MKL_CBWR=AUTO,STRICT,
    as docs/results.md tells Intel users."""
    script, cwd, _ = reference
    strict = {"MKL_CBWR": "AUTO,STRICT"} if intel_cpu() else {}
    big = [*TINY[script], "--hidden-dim", "256", "--batch-size", "512", "--total-steps", "60", "--eval-freq", "60",
           "--vae-steps", "10", "--save-model"]
    if script == "mabcq_continuous.py":
        big[big.index("--hidden-dim") + 1: big.index("--hidden-dim") + 2] = ["256", "256"]
    run_script(script, cwd, *big, "--run-name", "one-thread", "--threads", "1", env=strict)
    run_script(script, cwd, *big, "--run-name", "two-threads", "--threads", "2", env={"OMP_NUM_THREADS": "2", **strict})
    assert_same(learned(cwd / "runs" / "two-threads"), learned(cwd / "runs" / "one-thread"))
    one = json.loads((cwd / "runs" / "one-thread" / "results.json").read_text())
    assert one["cpu"]["mkl_cbwr"] == strict.get("MKL_CBWR", os.environ.get("MKL_CBWR"))


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


def test_lambda_tn_summary_by_hand():
    """Agent 0 holds 5 transitions (the rest of its row is padding), agent 3 holds 2; cap 10."""
    from envs.run import lambda_tn_summary

    lambda_tn = torch.tensor([[0.5, 1.0, 2.0, 4.0, 100.0, 7.0], [3.0, 30.0, 9.0, 9.0, 9.0, 9.0]])
    out = lambda_tn_summary(lambda_tn, [5, 2], [0, 3], 10.0)
    assert out.keys() == {"0", "3"}
    assert out["0"]["mean"] == pytest.approx(107.5 / 5) and out["0"]["max"] == 100 and out["0"]["min"] == 0.5
    assert out["0"]["median"] == 2.0 and out["0"]["capped"] == pytest.approx(0.2)
    assert out["0"]["p99"] == pytest.approx(4.0 + 0.96 * 96.0)  # linear interpolation at 0.99 * (5 - 1) = 3.96
    assert out["3"]["mean"] == 16.5 and out["3"]["capped"] == 0.5 and out["3"]["p1"] == pytest.approx(3.0 + 0.01 * 27.0)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_weights_copied_into_every_script_agree_with_the_hand_computation(script):
    """lambda_vd and lambda_tn are copied between the scripts (the CleanRL way): each copy against the same hand values.
    E = (Q - r) / gamma; lambda_vd = clip(1 + (V' - E) / |E|, 1 - eps, 1 + eps), 1 on terminal transitions;
    lambda_tn = exp((|mu2|^2 - |mu1|^2) / 2)."""
    module = __import__(script[:-3])
    next_value = torch.tensor([[12.0, 8.0, 30.0, -5.0]])
    q_sa = torch.tensor([[10.9, 10.9, 10.9, -3.97]])  # E = 10, 10, 10, -5 (gamma 0.99, r 1 and 1 and 1 and 0.98)
    rewards = torch.tensor([[1.0, 1.0, 1.0, 0.98]])
    dones = torch.tensor([[False, False, False, True]])
    lambda_vd = module.value_deviation(next_value, q_sa, rewards, dones, 0.99, 0.5)
    # 1 + 2/10 = 1.2; 1 - 2/10 = 0.8; 1 + 20/10 = 3 clipped to 1.5; terminal: 1
    assert torch.allclose(lambda_vd, torch.tensor([[1.2, 0.8, 1.5, 1.0]]), atol=1e-5)
    mu1, mu2 = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
    lambda_tn = module.transition_normalization(mu1, mu2)
    assert torch.allclose(lambda_tn, torch.tensor([[torch.exp(torch.tensor(-0.5)), torch.exp(torch.tensor(2.5))]]))


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


def test_a_run_says_how_it_ended(tmp_path, monkeypatch):
    from envs import run as contract

    @dataclasses.dataclass
    class Args(contract.RunArgs):
        env_id: str = "dg"
        total_steps: int = 0

    monkeypatch.chdir(tmp_path)
    args = Args(run_name="r", exp_name="x", threads=1)
    failed = contract.Run(args, "matd3bc", "MATD3+BC", "", {"env_kwargs": {}}, [0], torch.device("cpu"))
    with pytest.raises(ValueError):
        with failed:
            raise ValueError("boom")
    saved = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == "ValueError: boom"
    args.run_name = "s"
    with contract.Run(args, "matd3bc", "MATD3+BC", "", {"env_kwargs": {}}, [0], torch.device("cpu")):
        pass
    assert json.loads((tmp_path / "runs" / "s" / "results.json").read_text())["status"] == "complete"


def test_the_clocks_go_on_where_the_checkpoint_left_them(tmp_path, monkeypatch):
    """On a fake clock (1 s a step, 10 s an evaluation), a run killed after its step-4 checkpoint and resumed: every
    second of training is counted once in train_seconds and updates_per_second (the scripts before the contract
    moved counted the interval before a resume twice: docs/results.md), the lost work after the checkpoint not at all."""
    from envs import run as contract

    @dataclasses.dataclass
    class Args(contract.RunArgs):
        env_id: str = "dg"
        total_steps: int = 6
        eval_freq: int = 2

    class Sampler:  # what a checkpoint keeps of the sampler
        state_dict, load_state_dict = (lambda self: {}), (lambda self, state: None)

    now = [1000.0]
    monkeypatch.setattr(contract.time, "time", lambda: now[0])
    monkeypatch.chdir(tmp_path)

    def train(args, stop_after):
        run = contract.Run(args, "matd3bc", "MATD3+BC", "", {"env_kwargs": {}}, [0], torch.device("cpu"))
        module = torch.nn.Linear(1, 1)
        run.restore({"m": module}, {"o": torch.optim.Adam(module.parameters())}, Sampler())
        for step in run.steps():
            now[0] += 1.0  # a training step
            if run.eval_due(step):
                with run.evaluation(step):
                    now[0] += 10.0
            run.checkpoint(step)
            if step == stop_after:
                now[0] += 1.5  # work after the checkpoint that the kill loses
                return run
        return run

    train(Args(run_name="r", exp_name="x", threads=1), stop_after=4)
    run = train(Args(resume=str(tmp_path / "runs" / "r"), threads=1), stop_after=None)
    entries = run.results["evaluations"]
    assert run.results["resumed_at_steps"] == [4] and [e["step"] for e in entries] == [2, 4, 6]
    assert [e["train_seconds"] for e in entries] == pytest.approx([2.0, 4.0, 6.0])
    assert [e["updates_per_second"] for e in entries] == pytest.approx([1.0, 1.0, 1.0])
    assert [e["seconds"] for e in entries] == pytest.approx([2.0, 14.0, 26.0])  # wall time as each evaluation began


def test_core_share_gives_each_live_run_its_share(tmp_path, monkeypatch):
    from envs.run import CoreShare

    monkeypatch.setattr(CoreShare, "FOLDER", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        share = CoreShare(0)
        share.cores = 4
        assert share.update(force=True) == 4  # alone: every core
        (tmp_path / str(os.getppid())).touch()  # another live run
        (tmp_path / "999999999").touch()  # a dead one: tidied away
        assert share.update(force=True) == 2 and not (tmp_path / "999999999").exists()
        assert CoreShare(3).update() == 3  # fixed
    finally:
        torch.set_num_threads(before)


def longest_shared_run(a: list[str], b: list[str]) -> int:
    """The longest run of consecutive lines (stripped, blank lines and comments skipped) that two files share."""
    a = [x.strip() for x in a if x.strip() and not x.strip().startswith("#")]
    b = [x.strip() for x in b if x.strip() and not x.strip().startswith("#")]
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def test_the_run_contract_lives_once_and_the_scripts_share_at_most_40_lines_in_a_row():
    """docs/results.md is one contract in envs/run.py; the scripts copy algorithm code only where two need it."""
    texts = {s: (ROOT / s).read_text() for s in SCRIPTS}
    for script, text in texts.items():
        for plumbing in ("class CoreShare", "def start_run", "def write_results", "def git_commit", "def sample_indices"):
            assert plumbing not in text, (script, plumbing)
        assert max(len(line) for line in text.splitlines()) <= 120, script
    for i, a in enumerate(SCRIPTS):
        for b in SCRIPTS[i + 1:]:
            assert longest_shared_run(texts[a].splitlines(), texts[b].splitlines()) <= 40, (a, b)


def test_an_old_checkpoint_is_refused_in_one_line(reference):
    """A checkpoint written before the run contract moved to envs/run.py (format 1) is refused, naming the fix."""
    script, cwd, _ = reference
    run_dir = cwd / "runs" / "old-format"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({**json.loads((cwd / "runs" / "whole" / "results.json").read_text()),
                                                       "git_commit": "6a0e54d"}))
    torch.save({"format": "odmarl-train-state-1", "script": script[:-3], "step": 5}, run_dir / "checkpoint.pt")
    message = one_line_error(run_script(script, cwd, "--resume", str(run_dir), check=False))
    assert "written by the scripts before the run contract moved" in message and "git checkout 6a0e54d" in message
