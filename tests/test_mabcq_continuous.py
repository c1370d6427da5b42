"""mabcq_continuous.py: BCQ's target and perturbation bound, lambda_vd on BCQ's value, independence, every Table-5 row."""

import numpy as np
import pytest
import torch

import conftest
import mabcq_continuous as M


def agents(n=2, obs_dim=3, act_dim=2, hidden=8, latent=4, phi=0.05):
    generators = [torch.Generator().manual_seed(s) for s in range(n)]
    return (M.TwinCritic(obs_dim, act_dim, hidden, generators), M.Perturbation(obs_dim, act_dim, hidden, phi, generators),
            M.ConditionalVAE(obs_dim, act_dim, latent, hidden, generators))


def test_bcq_target_by_hand_soft_clipped_double_q_max_over_samples():
    critic, xi, g1 = agents()
    g = torch.Generator().manual_seed(0)
    next_obs, n, lmbda = torch.randn(2, 5, 3, generator=g), 4, 0.75
    noise = torch.randn(2, 5 * n, 4, generator=g)
    got = M.bcq_next_value(next_obs, g1, xi, critic, noise, lmbda)
    for i in range(2):
        for b in range(5):
            values = []
            for j in range(n):
                z = noise[i, b * n + j].clamp(-0.5, 0.5)  # sample j of state b: states are repeated side by side
                s = next_obs[i, b]
                a = torch.tanh(g1.decoder(torch.cat([s, z])[None, None].expand(2, 1, -1))[i, 0])
                a = (a + 0.05 * torch.tanh(xi.net(torch.cat([s, a])[None, None].expand(2, 1, -1))[i, 0])).clamp(-1, 1)
                q = critic(torch.stack([s, s])[:, None], torch.stack([a, a])[:, None])[:, i, 0]  # both twins of agent i
                values.append(lmbda * q.min() + (1 - lmbda) * q.max())
            torch.testing.assert_close(got[i, b], torch.stack(values).max(), rtol=1e-5, atol=1e-5)


def test_the_perturbation_never_leaves_plus_minus_phi():
    critic, xi, _ = agents(phi=0.05)
    with torch.no_grad():
        for p in xi.parameters():
            p.mul_(100)  # saturate the tanh
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(2, 1000, 3, generator=g) * 10, torch.rand(2, 1000, 2, generator=g) * 2 - 1
    out = xi(obs, act)
    assert (out - act).abs().max() <= 0.05 + 1e-6 and out.abs().max() <= 1


def test_lambda_vd_is_computed_on_bcqs_own_next_value():
    critic, xi, g1 = agents()
    g = torch.Generator().manual_seed(2)
    batch = dict(obs=torch.randn(2, 6, 3, generator=g), actions=torch.rand(2, 6, 2, generator=g) * 2 - 1,
                 rewards=torch.randn(2, 6, generator=g), next_obs=torch.randn(2, 6, 3, generator=g),
                 dones=torch.tensor([[False] * 5 + [True]] * 2), lambda_tn=torch.ones(2, 6))
    noise = torch.randn(2, 6 * 3, 4, generator=g)
    _, _, weight, lambda_vd = M.bcq_critic_loss(critic, critic, xi, g1, batch, noise, 0.9, 0.75, 0.5, True)
    next_value = M.bcq_next_value(batch["next_obs"], g1, xi, critic, noise, 0.75)
    expected_v = (M.soft_clipped(critic(batch["obs"], batch["actions"]), 0.75) - batch["rewards"]) / 0.9
    by_hand = (1 + (next_value - expected_v) / (expected_v.abs() + 1e-6)).clamp(0.5, 1.5)
    by_hand[:, -1] = 1  # terminal
    torch.testing.assert_close(lambda_vd, by_hand)
    torch.testing.assert_close(weight, lambda_vd)


def test_other_agents_data_never_reaches_agent_0s_gradients():
    def grads(seed_other):
        critic, xi, g1 = agents()
        g0, g1_ = torch.Generator().manual_seed(7), torch.Generator().manual_seed(seed_other)
        pair = lambda f: torch.stack([f(g0), f(g1_)])  # noqa: E731
        batch = dict(obs=pair(lambda g: torch.randn(6, 3, generator=g)), actions=pair(lambda g: torch.rand(6, 2, generator=g)),
                     rewards=pair(lambda g: torch.randn(6, generator=g)), next_obs=pair(lambda g: torch.randn(6, 3, generator=g)),
                     dones=torch.zeros(2, 6, dtype=torch.bool), lambda_tn=pair(lambda g: torch.rand(6, generator=g)))
        noise = pair(lambda g: torch.randn(12, 4, generator=g))
        loss, _, weight, _ = M.bcq_critic_loss(critic, critic, xi, g1, batch, noise, 0.99, 0.75, 0.8, True)
        (loss.sum() + M.bcq_perturbation_loss(xi, critic, g1, batch, noise[:, :6], weight).sum()).backward()
        return [p.grad[0].clone() for m in (critic, xi) for p in m.parameters()]  # member 0: agent 0 (twin 0)
    for a, b in zip(grads(10), grads(11)):
        assert torch.equal(a, b)


TINY = ["--env-id", "hopper-3x1", "--n-transitions", "300", "--total-steps", "60", "--eval-freq", "30", "--eval-episodes", "2",
        "--vae-steps", "20", "--hidden-dim", "16", "--batch-size", "32", "--n-samples", "3", "--analysis-states", "50"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mabcq_continuous")


@pytest.mark.parametrize("flags, algorithm", [
    ([], "MABCQ"), (["--no-tn"], "BCQ w/ lambda_vd"), (["--no-vd"], "BCQ w/ lambda_tn"), (["--no-vd", "--no-tn"], "BCQ"),
    (["--ddpg"], "DDPG"), (["--behavior"], "Behavior"),
])
def test_every_row_of_table_5_runs(workdir, flags, algorithm):
    name = "row_" + "".join(f.strip("-").replace("-", "_") for f in flags)
    conftest.run_script("mabcq_continuous.py", workdir, *TINY, *flags, "--exp-name", name, "--save-model")
    res, run_dir = conftest.find_run(workdir, name)
    assert res["status"] == "complete" and res["algorithm"] == algorithm
    final = res["final"]
    assert np.isfinite([final["normalized_score"], final["team_return"], final["ms_per_update"]]).all()
    if algorithm != "Behavior":
        assert np.isfinite([final["extrapolation_error"], final["value_difference"]]).all()
    if algorithm in ("MABCQ", "BCQ w/ lambda_vd"):
        assert 1 - 0.8 <= final["lambda_vd_min"] <= final["lambda_vd_max"] <= 1 + 0.8  # hopper's preset epsilon
    if algorithm in ("MABCQ", "BCQ w/ lambda_tn"):
        assert final["lambda_tn_min"] > 0
    assert len(list(run_dir.glob("agent_*.pt"))) == 3


def test_a_team_assembles_from_checkpoints(workdir):
    _, run_dir = conftest.find_run(workdir, "row_")
    ckpts = [str(run_dir / f"agent_{i}.pt") for i in range(3)]
    proc = conftest.run_script("mabcq_continuous.py", workdir, "--env-id", "hopper-3x1", "--checkpoints", *ckpts,
                               "--eval-episodes", "2", "--exp-name", "team")
    assert "team of 3 checkpoints" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "dg"], "runs on multi-agent MuJoCo"),
    (["--ddpg", "--behavior"], "pick one"),
    (["--phi", "0"], "--phi must lie in"),
    (["--n-transitions", "0"], "--n-transitions must be > 0"),
])
def test_bad_input_gives_one_line_errors(tmp_path, flags, message):
    assert message in conftest.one_line_error(conftest.run_script("mabcq_continuous.py", tmp_path, *flags, check=False))
    assert not (tmp_path / "runs").exists()
