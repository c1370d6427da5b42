"""macql.py: the CQL loss with masks, lambda_vd on CQL's next value, agents' independence, smoke runs on SMAX.

The SMAX tests share one tiny random smax-3m dataset (a module fixture) and the suite's JAX compilation cache, and
run macql.py's refusals in this process, so that jaxmarl is imported and SMAX compiled once or twice, not per test."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import conftest
import envs
import macql
from envs import dataset as datasets


def test_cql_loss_by_hand_with_masks():
    q = torch.tensor([[[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]])  # [1 agent, 2 samples, 3 actions]
    avail = torch.tensor([[[True, True, False], [True, False, True]]])
    actions = torch.tensor([[0, 2]])
    td_target = torch.tensor([[2.0, 0.0]])
    weight = torch.tensor([[2.0, 0.5]])
    # TD: mean(2 * (1 - 2)^2, 0.5 * (-1 - 0)^2) / 2
    td_by_hand = (2 + 0.5) / 2 / 2
    # CQL: logsumexp over the legal actions only: log(e^1 + e^2) - 1 and log(e^0.5 + e^-1) - (-1)
    gap = np.array([np.log(np.e**1 + np.e**2) - 1, np.log(np.e**0.5 + np.e**-1) + 1])
    total, td, cql = macql.cql_loss(q, actions, avail, td_target, weight, alpha=0.2, weight_cql_term=False)
    assert td.item() == pytest.approx(td_by_hand)
    assert cql.item() == pytest.approx(gap.mean(), rel=1e-6)
    assert total.item() == pytest.approx(td_by_hand + 0.2 * gap.mean(), rel=1e-6)
    total, td, cql = macql.cql_loss(q, actions, avail, td_target, weight, alpha=0.2, weight_cql_term=True)  # the default
    assert cql.item() == pytest.approx((2 * gap[0] + 0.5 * gap[1]) / 2, rel=1e-6)
    assert total.item() == pytest.approx(td_by_hand + 0.2 * cql.item(), rel=1e-6)
    # weighting both terms: a constant factor on the weights (lambda_tn is defined up to one) scales the whole
    # loss, which Adam ignores; weighting the TD term only turns it into another alpha
    scaled, _, _ = macql.cql_loss(q, actions, avail, td_target, 3 * weight, alpha=0.2, weight_cql_term=True)
    assert scaled.item() == pytest.approx(3 * total.item(), rel=1e-6)
    td_only, _, _ = macql.cql_loss(q, actions, avail, td_target, weight, alpha=0.2, weight_cql_term=False)
    td_only_scaled, _, _ = macql.cql_loss(q, actions, avail, td_target, 3 * weight, alpha=0.2, weight_cql_term=False)
    assert td_only_scaled.item() != pytest.approx(3 * td_only.item(), rel=1e-3)


def test_masked_logsumexp_is_the_logsumexp_over_legal_actions():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 50, 9, generator=g) * 5
    avail = torch.rand(3, 50, 9, generator=g) > 0.5
    avail[..., 4] = True  # stop is always legal
    got = torch.logsumexp(macql.masked(q, avail), -1)
    for i in range(3):
        for b in range(50):
            torch.testing.assert_close(got[i, b], torch.logsumexp(q[i, b][avail[i, b]], 0))


def test_target_max_and_greedy_action_never_pick_an_unavailable_action():
    g = torch.Generator().manual_seed(1)
    qnet = macql.QNetwork(4, 6, 16, [torch.Generator().manual_seed(s) for s in (0, 1)])
    obs, next_obs = torch.randn(2, 64, 4, generator=g), torch.randn(2, 64, 4, generator=g)
    next_avail = torch.rand(2, 64, 6, generator=g) > 0.6
    next_avail[..., 0] |= ~next_avail.any(-1)
    next_value, _ = macql.targets(qnet, obs, torch.zeros(2, 64, dtype=torch.long), next_obs, next_avail)
    q_next = qnet(next_obs)
    expected = torch.stack([torch.stack([q_next[i, b][next_avail[i, b]].max() for b in range(64)]) for i in range(2)])
    torch.testing.assert_close(next_value, expected)
    assert (next_value < q_next.max(-1).values).any()  # the masks mattered
    greedy = macql.masked(q_next, next_avail).argmax(-1)
    assert next_avail.gather(-1, greedy.unsqueeze(-1)).all()


def constant_qnet(q_values):
    """A QNetwork that outputs q_values[i] for agent i whatever it observes."""
    n_agents, n_actions = len(q_values), len(q_values[0])
    qnet = macql.QNetwork(3, n_actions, 8, [torch.Generator().manual_seed(i) for i in range(n_agents)])
    with torch.no_grad():
        qnet.net.layers[-1].weight.zero_()
        qnet.net.layers[-1].bias.copy_(torch.tensor(q_values).unsqueeze(1))
    return qnet


def test_lambda_vd_on_cqls_next_value_by_hand():
    # one agent, Q(o, .) = (2, 9, 2.4); gamma 0.5, r 0.5, data action 0: E = (Q^(s, a) - r) / gamma = 3.
    # Sample 0: action 1 unavailable at s', V'(s') = 2.4 (not 9) -> lambda_vd = 1 + (2.4 - 3) / 3 = 0.8.
    # Sample 1: every action available, V' = 9 -> 1 + 6 / 3 = 3, clipped to 1 + eps = 1.99. Sample 2: terminal -> 1.
    qnet = constant_qnet([[2.0, 9.0, 2.4]])
    batch = dict(
        obs=torch.randn(1, 3, 3), next_obs=torch.randn(1, 3, 3), actions=torch.zeros(1, 3, dtype=torch.long),
        rewards=torch.full((1, 3), 0.5), dones=torch.tensor([[False, False, True]]), lambda_tn=torch.tensor([[1.0, 2.0, 1.0]]),
        avail_actions=torch.ones(1, 3, 3, dtype=torch.bool),
        next_avail_actions=torch.tensor([[[True, False, True], [True, True, True], [True, True, True]]]),
    )
    loss, terms = macql.macql_loss(qnet, qnet, batch, gamma=0.5, epsilon=0.99, alpha=0.2, use_vd=True, weight_cql_term=True)
    torch.testing.assert_close(terms["lambda_vd"], torch.tensor([[0.8, 1.99, 1.0]]))
    weight = np.array([1.0 * 0.8, 2.0 * 1.99, 1.0])
    td_error = np.array([2.0 - (0.5 + 0.5 * 2.4), 2.0 - (0.5 + 0.5 * 9.0), 2.0 - 0.5])  # y = r + gamma (1 - done) V'
    gap = np.log(np.exp([2.0, 9.0, 2.4]).sum()) - 2.0
    assert terms["td_loss"].item() == pytest.approx((weight * td_error**2).mean() / 2, rel=1e-5)
    assert terms["cql_loss"].item() == pytest.approx((weight * gap).mean(), rel=1e-5)
    assert loss.item() == pytest.approx(terms["td_loss"].item() + 0.2 * terms["cql_loss"].item(), rel=1e-6)


def random_batch(generator, n_actions=5, size=8):
    g = generator
    avail = torch.rand(size, n_actions, generator=g) > 0.4
    avail[:, 0] = True
    actions = torch.multinomial(avail.float(), 1, generator=g).squeeze(1)
    next_avail = torch.rand(size, n_actions, generator=g) > 0.4
    next_avail[:, 0] = True
    return dict(obs=torch.randn(size, 4, generator=g), next_obs=torch.randn(size, 4, generator=g), actions=actions,
                rewards=torch.randn(size, generator=g), dones=torch.rand(size, generator=g) < 0.2,
                lambda_tn=torch.rand(size, generator=g) + 0.5, avail_actions=avail, next_avail_actions=next_avail)


def agent_0_gradients(seed_of_agent_1):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    qnet, qnet_target = macql.QNetwork(4, 5, 16, generators), macql.QNetwork(4, 5, 16, generators)
    parts = [random_batch(torch.Generator().manual_seed(5)), random_batch(torch.Generator().manual_seed(seed_of_agent_1))]
    batch = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
    loss, _ = macql.macql_loss(qnet, qnet_target, batch, 0.99, 0.99, 0.2, use_vd=True, weight_cql_term=True)
    loss.sum().backward()
    return [p.grad[0].clone() for p in qnet.parameters()]


def test_other_agents_data_never_reaches_agent_0s_gradients():
    """The whole update (target max, lambda_vd, weights, CQL term) of agent 0 is bit-identical whatever agent 1's batch."""
    for a, b in zip(agent_0_gradients(10), agent_0_gradients(11)):
        assert torch.equal(a, b)


def test_presets_fill_only_the_flags_left_unset():
    for env_id in ("smax-3m", "smax-8m", "smax-3s_vs_3z", "smax-3s_vs_4z", "matrix-game"):
        args = macql.Args(env_id=env_id)
        macql.apply_presets(args)
        assert (args.epsilon, args.cql_alpha) == (0.99, 0.2)  # Appendix B (SMAC) and Table 12
    args = macql.Args(env_id="smax-3m", epsilon=0.5)
    macql.apply_presets(args)
    assert (args.epsilon, args.cql_alpha) == (0.5, 0.2)


TINY = ["--env-id", "matrix-game", "--n-episodes", "500", "--total-steps", "600", "--eval-freq", "300", "--vae-steps", "30",
        "--hidden-dim", "16", "--batch-size", "16", "--eval-episodes", "4", "--save-model"]


def test_an_agent_trained_alone_equals_the_same_agent_in_the_team(tmp_path):
    conftest.run_script("macql.py", tmp_path, *TINY, "--exp-name", "team")
    conftest.run_script("macql.py", tmp_path, *TINY, "--exp-name", "alone", "--agent-ids", "1")
    team = torch.load(conftest.find_run(tmp_path, "team")[1] / "agent_1.pt", weights_only=True)["qnet"]
    alone = torch.load(conftest.find_run(tmp_path, "alone")[1] / "agent_1.pt", weights_only=True)["qnet"]
    for k in team:
        assert torch.equal(team[k], alone[k]), k
    ckpts = [str(conftest.find_run(tmp_path, "team")[1] / f"agent_{i}.pt") for i in (0, 1)]
    conftest.run_script("macql.py", tmp_path, "--env-id", "matrix-game", "--checkpoints", *ckpts, "--exp-name", "assembled")
    assembled, team_res = conftest.find_run(tmp_path, "assembled")[0], conftest.find_run(tmp_path, "team")[0]
    assert assembled["final"]["team_return"] == team_res["final"]["team_return"]
    assert assembled["final"]["start_actions"] == team_res["final"]["start_actions"]


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "dg"], "continuous actions"),
    (["--env-id", "matrix-game", "--quality", "random"], "matrix-game has no dataset option ['quality']"),
    (["--env-id", "matrix-game", "--epsilon", "1.5"], "--epsilon must lie in [0, 1]"),
    (["--env-id", "matrix-game", "--tau", "0"], "--tau must lie in (0, 1]"),
    (["--env-id", "matrix-game", "--agent-ids", "2"], "--agent-ids must be distinct ids in 0..1"),
    (["--env-id", "smax-3m", "--payoff", "1,5;6,1"], "smax-3m has no env option ['payoff']"),
])
def test_bad_flags_give_one_line_errors_and_write_nothing(tmp_path, monkeypatch, flags, message):
    assert message in refusal(monkeypatch, tmp_path, *flags)


def test_a_refusal_is_one_line_on_stderr_and_exit_code_1(tmp_path):
    """The same refusals as a user sees them: the process prints one line, no traceback."""
    error = conftest.one_line_error(conftest.run_script("macql.py", tmp_path, "--env-id", "matrix-game", "--cql-alpha", "-1", check=False))
    assert error == "error: --cql-alpha must be >= 0, got -1.0" and not (tmp_path / "runs").exists()


def refusal(monkeypatch, cwd, *flags) -> str:
    """macql.py's main in this process (jaxmarl is imported once): the one line it exits with; it wrote no run."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["macql.py", "--dataset-dir", str(cwd / "datasets"), *flags])
    runs_before = sorted(os.listdir(cwd / "runs")) if (cwd / "runs").exists() else []
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(conftest.ROOT / "macql.py"), run_name="__main__")
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert (sorted(os.listdir(cwd / "runs")) if (cwd / "runs").exists() else []) == runs_before
    return message


# ---- SMAX: one tiny random smax-3m dataset (20 episodes per agent) for every test below ----
TINY_SMAX = ["--n-episodes", "20", "--total-steps", "60", "--eval-freq", "30", "--eval-episodes", "4", "--vae-steps", "10",
             "--hidden-dim", "16", "--batch-size", "16"]
SMAX = ["--env-id", "smax-3m", "--quality", "random", *TINY_SMAX]


def dataset_folder(cwd, env_id, quality):
    return datasets.dataset_path(str(cwd / "datasets"), env_id, *envs.resolve(env_id, {}, {"quality": quality, "n_episodes": 20}))


@pytest.fixture(scope="module")
def smax_runs(tmp_path_factory):
    """MACQL (the defaults) and CQL (--no-vd --no-tn) on the tiny dataset; every SMAX process of the suite shares
    the persistent XLA compilation cache that tests/conftest.py sets up (about 60 s saved a process)."""
    cwd = tmp_path_factory.mktemp("smax")
    conftest.run_script("macql.py", cwd, *SMAX, "--exp-name", "macql", "--save-model")
    conftest.run_script("macql.py", cwd, *SMAX, "--exp-name", "cql", "--no-vd", "--no-tn")
    return cwd


def test_smoke_runs_on_smax_report_the_contracts_metrics_without_an_illegal_action(smax_runs):
    """The SMAX env refuses illegal actions (ValueError): finished evaluations prove the masks held."""
    cwd = smax_runs
    for name, algorithm in (("macql", "MACQL"), ("cql", "CQL")):
        res, run_dir = conftest.find_run(cwd, name)
        assert res["status"] == "complete" and res["algorithm"] == algorithm and res["script"] == "macql"
        assert res["dataset"]["recipe"]["quality"] == "random" and res["env_id"] == "smax-3m"
        assert (res["args"]["epsilon"], res["args"]["cql_alpha"], res["args"]["weight_cql_term"]) == (0.99, 0.2, True)
        assert [e["step"] for e in res["evaluations"]] == [30, 60]
        final = res["final"]
        assert 0 <= final["win_rate"] <= 1 and 0 <= final["team_return"] <= 20
        for key in ("team_return_std", "extrapolation_error", "q_start", "mc_return", "value_difference_eval", "td_loss",
                    "cql_loss", "q_values", "updates_per_second"):
            assert np.isfinite(final[key]), key
        assert final["value_difference_eval"] >= 0 and "value_difference" not in final  # SMAX cannot show one agent's states to another
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoint.pt").exists()
    macql_final = conftest.find_run(cwd, "macql")[0]["final"]
    assert all(f"lambda_{w}_{f}" in macql_final for w in ("vd", "tn") for f in ("mean", "min", "max"))
    assert not any(k.startswith("lambda_") for k in conftest.find_run(cwd, "cql")[0]["final"])
    assert sorted(p.name for p in conftest.find_run(cwd, "macql")[1].glob("agent_*.pt")) == ["agent_0.pt", "agent_1.pt", "agent_2.pt"]


def learned(run_dir):
    """What a run learned: its evaluations without wall-clock times, and its agents' saved Q-networks."""
    res = json.loads((run_dir / "results.json").read_text())
    timing = ("seconds", "train_seconds", "updates_per_second", "ms_per_update")
    return ([{k: v for k, v in e.items() if k not in timing} for e in res["evaluations"]],
            {p.name: torch.load(p, weights_only=True)["qnet"] for p in sorted(run_dir.glob("agent_*.pt"))})


def test_a_smax_run_killed_after_a_checkpoint_and_resumed_ends_bit_identical(smax_runs):
    """tests/test_contract.py kills and resumes every script on its small env; this is the same on SMAX (masks,
    the evaluation episodes of seed + step, lambda_tn from the VAEs kept in the training state). The kill comes as
    soon as the first checkpoint (step 20 of 60) is on disk: the SMAX evaluations at 30 and 60 are still ahead."""
    cwd = smax_runs
    run_dir = cwd / "runs" / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(conftest.ROOT / "macql.py"), "--dataset-dir", str(cwd / "datasets"), *SMAX, "--save-model",
           "--run-name", "killed", "--checkpoint-freq", "20"]
    with open(cwd / "killed.stderr", "w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 300
        while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, (cwd / "killed.stderr").read_text()[-2000:])
    killed = json.loads((run_dir / "results.json").read_text())
    assert killed["status"] == "running" and killed["resumed_at_steps"] == [], killed["status"]
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]  # written whole or not at all
    assert killed_at in (20, 40), killed_at  # a checkpoint of --checkpoint-freq 20 before the last step
    conftest.run_script("macql.py", cwd, "--resume", str(run_dir))
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["final"]["step"] == 60 and res["resumed_at_steps"] == [killed_at]
    (whole_evaluations, whole_agents), (evaluations, agents) = learned(conftest.find_run(cwd, "macql")[1]), learned(run_dir)
    assert evaluations == whole_evaluations and agents.keys() == whole_agents.keys()
    for name in agents:
        for k in agents[name]:
            assert torch.equal(agents[name][k], whole_agents[name][k]), (name, k)


@pytest.mark.usefixtures("smax_runs")  # its runs compiled SMAX into the suite's cache (tests/conftest.py), read here
def test_evaluation_is_smax_evaluate_team():
    """macql.evaluate plays the same episodes as envs.smax.evaluate_team with the same greedy policies."""
    from envs import smax

    env = envs.make("smax-3m")
    qnet = macql.QNetwork(env.obs_dim, env.n_actions, 16, [torch.Generator().manual_seed(i) for i in range(3)])

    def greedy(obs, avail):
        with torch.no_grad():
            return list(macql.masked(qnet(torch.as_tensor(np.stack(obs))), torch.as_tensor(np.stack(avail))).argmax(-1).numpy())

    ours = macql.evaluate(env, qnet, 4, 0.99, seed=7, device="cpu")
    theirs = smax.evaluate_team(env, greedy, 4, seed=7)
    assert (ours["win_rate"], ours["team_return"], ours["team_return_std"]) == (
        theirs["win_rate"], pytest.approx(theirs["return_mean"]), pytest.approx(theirs["return_std"]))


def test_a_dataset_of_another_map_or_quality_is_refused(smax_runs, monkeypatch):
    cwd = smax_runs
    built = dataset_folder(cwd, "smax-3m", "random")
    assert (built / "meta.json").exists()
    for env_id, quality in (("smax-3m", "medium"), ("smax-8m", "random")):  # the random 3m files where these belong
        shutil.copytree(built, dataset_folder(cwd, env_id, quality))
        message = refusal(monkeypatch, cwd, "--env-id", env_id, "--quality", quality, *TINY_SMAX)
        assert f"was built for {'recipe' if env_id == 'smax-3m' else 'env_id'}=" in message and "rebuild it with" in message
    assert json.loads((built / "meta.json").read_text())["recipe"]["quality"] == "random"


def test_a_missing_replay_names_the_command_that_records_it(smax_runs, monkeypatch):
    cwd = smax_runs  # runs/smax-3m__mappo__1/replay is looked up from the working directory: absent there
    message = refusal(monkeypatch, cwd, "--env-id", "smax-3m", "--quality", "replay", *TINY_SMAX)
    assert "no recorded training transitions" in message and "python -m envs.behavior.mappo --env-id smax-3m --weights-dir" in message
    assert "about 4 min" in message  # how long the command takes


def test_an_unknown_quality_is_refused(smax_runs, monkeypatch):
    cwd = smax_runs
    message = refusal(monkeypatch, cwd, "--env-id", "smax-3m", "--quality", "great")
    assert "'great'" in message and "random, medium, replay, expert" in message
