"""macql.py: the CQL loss with masks, lambda_vd on CQL's next value, agents' independence, smoke runs on SMAX."""

import numpy as np
import pytest
import torch

import conftest
import macql


def test_cql_loss_by_hand_with_masks():
    q = torch.tensor([[[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]])  # [1 agent, 2 samples, 3 actions]
    avail = torch.tensor([[[True, True, False], [True, False, True]]])
    actions = torch.tensor([[0, 2]])
    td_target = torch.tensor([[2.0, 0.0]])
    weight = torch.tensor([[2.0, 0.5]])
    total, td, cql = macql.cql_loss(q, actions, avail, td_target, weight, alpha=0.2, weight_cql_term=False)
    # TD: mean(2 * (1 - 2)^2, 0.5 * (-1 - 0)^2) = (2 + 0.5) / 2
    assert td.item() == pytest.approx(1.25)
    # CQL: logsumexp over the legal actions only: log(e^1 + e^2) - 1 and log(e^0.5 + e^-1) - (-1)
    gap = [np.log(np.e**1 + np.e**2) - 1, np.log(np.e**0.5 + np.e**-1) + 1]
    assert cql.item() == pytest.approx(np.mean(gap), rel=1e-6)
    assert total.item() == pytest.approx(1.25 + 0.2 * np.mean(gap), rel=1e-6)
    _, _, weighted = macql.cql_loss(q, actions, avail, td_target, weight, alpha=0.2, weight_cql_term=True)
    assert weighted.item() == pytest.approx((2 * gap[0] + 0.5 * gap[1]) / 2, rel=1e-6)


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
    greedy = macql.masked(q_next, next_avail).argmax(-1)
    assert next_avail.gather(-1, greedy.unsqueeze(-1)).all()


def test_lambda_vd_on_cqls_next_value_by_hand():
    # V'(s') = 4, Q^(s, a) = 3, r = 1, gamma 0.5: E = (3 - 1) / 0.5 = 4 -> lambda_vd = 1; V' = 6 -> 1 + 2/4 = 1.5
    next_value, q_sa, r = torch.tensor([4.0, 6.0, 0.0]), torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    lambda_vd = macql.value_deviation(next_value, q_sa, r, torch.tensor([False, False, True]), 0.5, 0.99)
    torch.testing.assert_close(lambda_vd, torch.tensor([1.0, 1.5, 1.0]))  # terminal: 1


def agent_gradients(batches):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    qnet = macql.QNetwork(4, 5, 16, generators)
    obs, actions, avail, target, weight = batches
    _, _, _ = macql.cql_loss(qnet(obs), actions, avail, target, weight, 0.2, False)
    loss, _, _ = macql.cql_loss(qnet(obs), actions, avail, target, weight, 0.2, False)
    loss.sum().backward()
    return [p.grad[0].clone() for p in qnet.parameters()]


def test_other_agents_data_never_reaches_agent_0s_gradients():
    def batch(seed_other):
        g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(seed_other)
        parts = []
        for make in (lambda g: torch.randn(8, 4, generator=g), lambda g: torch.randint(0, 5, (8,), generator=g),
                     lambda g: torch.ones(8, 5, dtype=torch.bool), lambda g: torch.randn(8, generator=g),
                     lambda g: torch.rand(8, generator=g)):
            parts.append(torch.stack([make(g0), make(g1)]))
        return parts
    for a, b in zip(agent_gradients(batch(10)), agent_gradients(batch(11))):
        assert torch.equal(a, b)


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
    assert np.isfinite(conftest.find_run(tmp_path, "assembled")[0]["final"]["team_return"])


def test_smoke_runs_on_smax_report_win_rate_without_an_illegal_action(tmp_path):
    """The SMAX env refuses illegal actions (ValueError): finished evaluations prove the masks held."""
    flags = ["--env-id", "smax-3m", "--quality", "random", "--n-episodes", "20", "--total-steps", "60", "--eval-freq", "30",
             "--eval-episodes", "4", "--vae-steps", "10", "--hidden-dim", "16", "--batch-size", "16"]
    conftest.run_script("macql.py", tmp_path, *flags, "--exp-name", "macql")
    conftest.run_script("macql.py", tmp_path, *flags, "--exp-name", "cql", "--no-vd", "--no-tn")
    for name, algorithm in (("macql", "MACQL"), ("cql", "CQL")):
        res, _ = conftest.find_run(tmp_path, name)
        assert res["status"] == "complete" and res["algorithm"] == algorithm
        final = res["final"]
        assert 0 <= final["win_rate"] <= 1 and np.isfinite([final["team_return"], final["td_loss"], final["cql_loss"]]).all()
    assert "lambda_vd_mean" in conftest.find_run(tmp_path, "macql")[0]["final"]


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "smax-3m", "--quality", "great"], "unknown quality 'great'"),
    (["--env-id", "dg"], "continuous actions"),
    (["--cql-alpha", "-1"], "--cql-alpha must be >= 0"),
])
def test_bad_flags_give_one_line_errors(tmp_path, flags, message):
    assert message in conftest.one_line_error(conftest.run_script("macql.py", tmp_path, *flags, check=False))
