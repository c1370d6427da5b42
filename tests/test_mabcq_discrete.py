"""mabcq_discrete.py: the weights, the masks, the count estimator, and the matrix game's Tables 2-4."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import conftest  # noqa: E402
import envs  # noqa: E402
import envs.dataset  # noqa: E402
import envs.matrix_game  # noqa: E402
import mabcq_discrete as M  # noqa: E402

# the paper's Tables 2-4: per agent, own action -> ([P^ over the other's actions], expected return)
PAPER = {
    "bcq": [{0: ([0.4, 0.6], 3.4), 1: ([0.4, 0.6], 3.0)}, {0: ([0.8, 0.2], 2.0), 1: ([0.8, 0.2], 4.2)}],
    "vd": [{0: ([0.12, 0.88], 4.52), 1: ([0.8, 0.2], 5.0)}, {0: ([0.4, 0.6], 4.0), 1: ([0.95, 0.05], 4.8)}],
    "vd_tn": [{0: ([0.17, 0.83], 4.33), 1: ([0.86, 0.14], 5.29)}, {0: ([0.14, 0.86], 5.29), 1: ([0.83, 0.17], 4.33)}],
}
FLAGS = {"bcq": ["--no-vd", "--no-tn"], "vd": ["--no-tn"], "vd_tn": []}
OUTCOME = {"bcq": ([0, 1], 5.0), "vd": ([1, 1], 1.0), "vd_tn": ([1, 0], 6.0)}  # (a1, a2), (a2, a2), (a2, a1)


def run(tmp_path, *flags, check=True):
    """The script as a user runs it, one torch thread (the machine is shared), runs/ under tmp_path."""
    return conftest.run_script("mabcq_discrete.py", tmp_path, *flags, check=check)


results = conftest.find_run


def test_value_deviation_by_hand():
    gamma, eps = 0.99, 0.99
    vd = lambda v, q, r=0.0, done=False, g=gamma, e=eps: M.value_deviation(  # noqa: E731
        torch.tensor([v]), torch.tensor([q]), torch.tensor([r]), torch.tensor([done]), g, e).item()
    assert vd(6.0, 0.99 * 4) == pytest.approx(1.5, abs=1e-5)  # E = 4: 1 + (6 - 4) / 4
    assert vd(1.0, 0.99 * 4) == pytest.approx(0.25, abs=1e-5)  # 1 + (1 - 4) / 4
    assert vd(20.0, 0.99 * 4) == pytest.approx(1.99, abs=1e-6)  # 5 clipped to 1 + eps
    assert vd(20.0, 0.99 * 4, e=0.5) == pytest.approx(1.5, abs=1e-6)
    assert vd(-10.0, 0.99 * 4) == pytest.approx(0.01, abs=1e-6)  # -2.5 clipped to 1 - eps
    assert vd(-1.0, -0.99 * 2) == pytest.approx(1.5, abs=1e-5)  # negative E = -2: 1 + (-1 + 2) / |-2|
    assert vd(-3.0, -0.99 * 2) == pytest.approx(0.5, abs=1e-5)  # 1 + (-3 + 2) / 2
    assert vd(5.0, 3.0, r=1.0, g=0.5) == pytest.approx(1.25, abs=1e-5)  # E = (3 - 1) / 0.5 = 4
    assert vd(100.0, 0.5, r=7.0, done=True) == 1.0  # terminal: nothing to be optimistic about
    assert vd(-100.0, 0.5, r=7.0, done=True) == 1.0


def test_count_estimator_is_exact():
    A, B, X, Y = [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]
    rows = [(A, 0, X)] * 3 + [(A, 0, Y)] + [(A, 1, X)] * 2 + [(B, 0, Y)] * 5 + [(B, 1, X), (B, 1, Y), (B, 1, A)]
    order = np.random.default_rng(0).permutation(len(rows))  # order must not matter
    obs, actions, next_obs = (np.array([rows[k][j] for k in order]) for j in range(3))
    lam = M.count_lambda_tn(obs.astype(np.float32), actions.astype(np.int64), next_obs.astype(np.float32))
    expected = {(0, 0, 2.0): 4 / 3, (0, 0, 0.0): 4.0, (0, 1, 2.0): 1.0, (1, 0, 0.0): 1.0}
    for k, o, a, n in zip(range(len(rows)), obs, actions, next_obs):
        if o[0] == 0 and a == 1:
            assert lam[k] == pytest.approx(3.0)  # three different s' once each
        else:
            assert lam[k] == pytest.approx(expected[(int(o[1]), int(a), n[0])])


def test_closed_form_reproduces_tables_2_to_4():
    env = envs.make("matrix-game")
    for name, use_vd, use_tn in (("bcq", False, False), ("vd", True, False), ("vd_tn", True, True)):
        for i in range(2):
            payoff = env.payoff if i == 0 else env.payoff.T
            p_data = np.tile(env.behavior[1 - i], (2, 1))
            p_hat, expected = envs.matrix_game.closed_form(p_data, payoff, 1 / p_data if use_tn else np.ones_like(p_data), use_vd, 0.99)
            for a, (p_paper, e_paper) in PAPER[name][i].items():
                np.testing.assert_allclose(p_hat[a], p_paper, atol=0.02)
                assert expected[a] == pytest.approx(e_paper, abs=0.02)


def test_masks_are_respected():
    q = torch.tensor([[[5.0, 1.0, 9.0], [5.0, 1.0, 9.0]]])  # action 2 has the highest Q
    avail = torch.tensor([[[True, True, False], [True, True, True]]])
    uniform = torch.zeros_like(q)
    allowed = M.allowed_actions(uniform, avail, 0.6)
    assert allowed.tolist() == [[[True, True, False], [True, True, True]]]
    assert M.greedy_action(q, allowed).tolist() == [[0, 2]]
    # a masked action with the highest classifier probability does not set the max of the ratio
    logits = torch.tensor([[[0.0, np.log(0.5), 10.0]]])
    assert M.allowed_actions(logits, avail[:, :1], 0.6).tolist() == [[[True, False, False]]]
    assert M.allowed_actions(logits, avail[:, :1], 0.4).tolist() == [[[True, True, False]]]
    # no legal action at all (after a terminal): every action passes, never NaN
    assert M.allowed_actions(uniform[:, :1], torch.zeros_like(avail[:, :1]), 0.6).all()

    # the TD target and lambda_vd's V'(s') never use a masked next action, nor does evaluation
    gens = envs.dataset.agent_generators(0, [0], "cpu")
    qnet = M.QNetwork(3, 3, 8, gens)
    with torch.no_grad():
        last = qnet.net.layers[-1]
        last.weight.zero_()
        last.bias[0] = torch.tensor([[1.0, 2.0, 9.0]])  # Q head of agent 0
        last.bias[1] = 0.0  # uniform behaviour classifier
    obs = torch.zeros(1, 4, 3)
    actions = torch.zeros(1, 4, dtype=torch.long)
    next_avail = torch.tensor([[[True, True, False], [True, True, True], [True, False, False], [False, True, False]]])
    next_value, q_sa = M.targets(qnet, qnet, obs, actions, obs, next_avail, 0.6)
    assert next_value.tolist() == [[2.0, 9.0, 1.0, 2.0]] and q_sa.tolist() == [[1.0] * 4]

    class MaskedGame:  # one step; action 2 is illegal and raises if taken
        n_agents, discrete, eval_episode_len = 1, True, 1

        def reset(self, n, rng):
            self.n = n
            return [np.zeros((n, 3), np.float32)]

        def avail_actions(self):
            return [np.tile([True, True, False], (self.n, 1))]

        def step(self, actions):
            assert (actions[0] != 2).all(), "an unavailable action was taken"
            return [np.zeros((self.n, 3), np.float32)], actions[0].astype(np.float32), np.ones(self.n, bool)

    metrics = M.evaluate(MaskedGame(), qnet, 0.6, 4, 0.99, 0, "cpu")
    assert metrics["team_return"] == 1.0 and metrics["start_actions"] == [1]


def linear_qnet(q_values, logits):
    """A QNetwork whose outputs on one-hot observations are set by hand: agent e's Q(state k, .) = q_values[e][k] and
    classifier logits(state k, .) = logits[e][k]. Hidden width = observation size, identity hidden layers (ReLU passes
    non-negative inputs), zero biases, the last layer's weight holds the tables."""
    q_values, logits = torch.tensor(q_values), torch.tensor(logits)  # [n_agents, n_states, n_actions]
    n_agents, n_states, n_actions = q_values.shape
    qnet = M.QNetwork(n_states, n_actions, n_states, envs.dataset.agent_generators(0, list(range(n_agents)), "cpu"))
    with torch.no_grad():
        for layer in qnet.net.layers:
            layer.bias.zero_()
        for layer in qnet.net.layers[:2]:
            layer.weight.copy_(torch.eye(n_states).expand_as(layer.weight))
        qnet.net.layers[2].weight.copy_(torch.cat([q_values, logits]))  # members: every Q head, then every classifier
    return qnet


def one_hot(states, n_states=2):
    return torch.nn.functional.one_hot(torch.tensor(states), n_states).float()


def test_bcq_losses_by_hand():
    """One agent, states s = (1, 0) and s' = (0, 1), two actions, gamma 0.5, three transitions from s:
    t0 (a=1, r=1), t1 (a=0, r=0.5, terminal), t2 (a=1, r=0, action 0 masked at s and at s')."""
    log3, log005 = math.log(3.0), math.log(0.05)
    # online: Q(s) = (1, 2), Q(s') = (3, 5); pi_b(s) = (0.25, 0.75), pi_b(s') = (0.95, 0.05) up to normalisation
    qnet = linear_qnet([[[1.0, 2.0], [3.0, 5.0]]], [[[0.0, log3], [0.0, log005]]])
    # target: Q(s) = (4, 6), Q(s') = (7, 9); its classifier is never used
    qnet_target = linear_qnet([[[4.0, 6.0], [7.0, 9.0]]], [[[50.0, -50.0], [50.0, -50.0]]])
    both, second = [True, True], [False, True]
    batch = dict(obs=one_hot([[0, 0, 0]]), next_obs=one_hot([[1, 1, 1]]), actions=torch.tensor([[1, 0, 1]]),
                 rewards=torch.tensor([[1.0, 0.5, 0.0]]), dones=torch.tensor([[False, True, False]]),
                 avail_actions=torch.tensor([[both, both, second]]),
                 next_avail_actions=torch.tensor([[both, both, second]]), lambda_tn=torch.tensor([[2.0, 0.5, 1.0]]))
    threshold = torch.full((1, 1, 1), 0.3)
    args = SimpleNamespace(gamma=0.5, epsilon=0.28, no_vd=False)

    td_loss, imitation_loss, q_sa, logits, lambda_vd = M.bcq_losses(qnet, qnet_target, batch, threshold, args)
    # V'(s'): the online Q's best action that passes the online filter and the mask, valued by the target network.
    # t0: action 1 (Q 5) fails the filter (0.05 / 0.95 < 0.3), so action 0: target Q(s', 0) = 7; t2: only action 1: 9
    # y = r + gamma V'(s'), no bootstrap on a terminal: (1 + 0.5 * 7, 0.5, 0 + 0.5 * 9) = (4.5, 0.5, 4.5)
    # lambda_vd from the target network: E = (Q^(s, a) - r) / gamma = ((6 - 1) / 0.5, (4 - 0.5) / 0.5, 6 / 0.5)
    # = (10, 7, 12); 1 + (V' - E) / |E| = (0.7 -> clipped to 0.72, terminal: 1, 0.75)
    assert lambda_vd[0].tolist() == pytest.approx([0.72, 1.0, 0.75], abs=1e-6)
    assert q_sa.tolist() == [[2.0, 1.0, 2.0]]
    # the TD loss: mean of lambda_tn * lambda_vd * (Q(s, a) - y)^2, Q(s, a) = (2, 1, 2)
    expected_td = (2.0 * 0.72 * 2.5**2 + 0.5 * 1.0 * 0.5**2 + 1.0 * 0.75 * 2.5**2) / 3
    assert td_loss.tolist() == pytest.approx([expected_td], rel=1e-6)
    # imitation: -log pi_b(a|s) over the available actions (t2: action 1 alone, so 0), + 1e-2 * mean logits^2
    expected_imitation = (-math.log(0.75) - math.log(0.25) + 0.0) / 3 + 1e-2 * log3**2 / 2
    assert imitation_loss.tolist() == pytest.approx([expected_imitation], rel=1e-6)
    assert logits.shape == (1, 3, 2)

    # without lambda_vd the weight is lambda_tn alone, and none is returned
    no_vd = SimpleNamespace(**{**vars(args), "no_vd": True})
    td_loss, _, _, _, lambda_vd = M.bcq_losses(qnet, qnet_target, batch, threshold, no_vd)
    assert lambda_vd is None
    assert td_loss.tolist() == pytest.approx([(2.0 * 2.5**2 + 0.5 * 0.5**2 + 1.0 * 2.5**2) / 3], rel=1e-6)
    # a lower threshold lets action 1 (Q 5) through at t0: V'(s') = target Q(s', 1) = 9, y = 5.5
    td_loss, _, _, _, lambda_vd = M.bcq_losses(qnet, qnet_target, batch, torch.full((1, 1, 1), 0.01), args)
    assert lambda_vd[0, 0].item() == pytest.approx(0.9, abs=1e-6)  # 1 + (9 - 10) / 10
    assert td_loss.item() == pytest.approx((2.0 * 0.9 * 3.5**2 + 0.5 * 0.5**2 + 0.75 * 2.5**2) / 3, rel=1e-6)
    # the losses train the online network only; the target network gets no gradient
    td_loss, imitation_loss, *_ = M.bcq_losses(qnet, qnet_target, batch, threshold, args)
    (td_loss + imitation_loss).sum().backward()
    assert all(p.grad is None for p in qnet_target.parameters())
    assert qnet.net.layers[2].weight.grad.abs().sum() > 0


def random_batch(seed, n_agents, batch_size=16, obs_dim=3, n_actions=3):
    g = torch.Generator().manual_seed(seed)
    avail = torch.rand(2, n_agents, batch_size, n_actions, generator=g) < 0.7
    avail[..., 0] = True  # at least one legal action
    actions = torch.stack([torch.multinomial(m.float(), 1, generator=g).squeeze(-1) for m in avail[0]])
    return dict(obs=torch.randn(n_agents, batch_size, obs_dim, generator=g), actions=actions,
                rewards=torch.randn(n_agents, batch_size, generator=g),
                next_obs=torch.randn(n_agents, batch_size, obs_dim, generator=g),
                dones=torch.rand(n_agents, batch_size, generator=g) < 0.2, avail_actions=avail[0],
                next_avail_actions=avail[1], lambda_tn=torch.rand(n_agents, batch_size, generator=g) * 2)


def test_an_agents_gradient_depends_on_its_own_batch_alone():
    """The batched ensemble is N learners: replacing agent 1's batch leaves agent 0's gradient bit for bit the same."""
    n_agents = 2
    gens = envs.dataset.agent_generators(0, list(range(n_agents)), "cpu")
    qnet, qnet_target = M.QNetwork(3, 3, 8, gens), M.QNetwork(3, 3, 8, gens)
    threshold = torch.tensor([0.3, 0.6]).view(2, 1, 1)
    args = SimpleNamespace(gamma=0.99, epsilon=0.5, no_vd=False)

    def gradients(batch):  # per agent: its members (Q head i and classifier n + i) of every parameter
        qnet.zero_grad(set_to_none=True)
        td_loss, imitation_loss, *_ = M.bcq_losses(qnet, qnet_target, batch, threshold, args)
        (td_loss + imitation_loss).sum().backward()
        return [[p.grad[i::n_agents].clone() for p in qnet.parameters()] for i in range(n_agents)]

    batch = random_batch(1, n_agents)
    other = random_batch(2, n_agents)
    mixed = {k: torch.stack([batch[k][0], other[k][1]]) for k in batch}  # agent 1's batch replaced
    mine = {k: torch.stack([other[k][0], batch[k][1]]) for k in batch}  # agent 0's batch replaced
    base, with_other, with_mine = gradients(batch), gradients(mixed), gradients(mine)
    assert all(torch.equal(a, b) for a, b in zip(base[0], with_other[0]))  # agent 0 saw nothing of agent 1's change
    assert not all(torch.equal(a, b) for a, b in zip(base[1], with_other[1]))  # agent 1 did
    assert not all(torch.equal(a, b) for a, b in zip(base[0], with_mine[0]))  # agent 0's own data matters
    assert all(torch.equal(a, b) for a, b in zip(base[1], with_mine[1]))


@pytest.mark.parametrize("name", ["bcq", "vd", "vd_tn"])
def test_matrix_game_tables_and_joint_action(tmp_path, name):
    """Table 2 (no weights), 3 (lambda_vd) and 4 (lambda_vd * lambda_tn, count) on a small budget:
    a smaller network and a larger learning rate than the paper so that 2000 steps suffice."""
    run(tmp_path, "--exp-name", name, "--tn-estimator", "count", "--n-episodes", "20000", "--total-steps", "2000",
        "--eval-freq", "1000", "--hidden-dim", "64", "--learning-rate", "1e-3", *FLAGS[name])
    res, _ = results(tmp_path, name)
    final = res["final"]
    joint, payoff = OUTCOME[name]
    assert final["start_actions"] == joint and final["team_return"] == payoff
    for i, table in enumerate(final["tables"]):
        p_data = np.array(table["p_dataset"])
        lam_tn = np.array(table["lambda_tn"])
        if name == "vd_tn":
            np.testing.assert_allclose(lam_tn, 1 / p_data, rtol=1e-5)  # the count estimator is exact
        else:
            assert (lam_tn == 1).all()
        # an independent closed form on the run's own data: P^ ~ P lambda_tn V (or P without lambda_vd)
        payoff = np.array(table["payoff"])
        w = p_data * lam_tn * (payoff if name != "bcq" else 1)
        p_fixed = w / w.sum(1, keepdims=True)
        np.testing.assert_allclose(table["p_modified"], p_fixed, atol=0.01)
        np.testing.assert_allclose(table["p_closed_form"], p_fixed, atol=1e-4)
        np.testing.assert_allclose(table["expected_return"], (p_fixed * payoff).sum(1), atol=0.05)
        np.testing.assert_allclose(table["q_over_gamma"], (p_fixed * payoff).sum(1), atol=0.25)
        np.testing.assert_allclose(table["next_value"], payoff, atol=0.05)
        for a, (p_paper, e_paper) in PAPER[name][i].items():
            np.testing.assert_allclose(table["p_modified"][a], p_paper, atol=0.02)
            assert table["expected_return"][a] == pytest.approx(e_paper, abs=0.05)


def test_agents_train_alone_and_assemble_from_checkpoints(tmp_path):
    common = ["--n-episodes", "500", "--total-steps", "300", "--eval-freq", "300", "--hidden-dim", "32", "--save-model",
              "--tn-estimator", "count"]
    run(tmp_path, "--exp-name", "both", *common)
    for i in (0, 1):
        run(tmp_path, "--exp-name", f"alone{i}", "--agent-ids", str(i), *common)
    both, both_dir = results(tmp_path, "both")
    ckpts = []
    for i in (0, 1):
        alone, alone_dir = results(tmp_path, f"alone{i}")
        assert alone["agent_ids"] == [i] and "team_return" not in alone["final"]
        # nothing of agent 1 - i reached agent i (up to float rounding: a 1-member batched matmul rounds differently)
        for key in ("p_modified", "lambda_vd", "expected_return", "q_over_gamma"):
            np.testing.assert_allclose(alone["final"]["tables"][0][key], both["final"]["tables"][i][key], atol=1e-4)
        a, b = (torch.load(d / f"agent_{i}.pt")["qnet"] for d in (alone_dir, both_dir))
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
        ckpts.append(str(alone_dir / f"agent_{i}.pt"))
    out = run(tmp_path, "--exp-name", "team", "--hidden-dim", "32", "--checkpoints", *ckpts)
    team, _ = results(tmp_path, "team")
    assert team["final"]["team_return"] == both["final"]["team_return"]
    assert team["final"]["start_actions"] == both["final"]["start_actions"]
    assert "team of 2 checkpoints" in out.stdout
    wrong = run(tmp_path, "--payoff", "2,5;6,1", "--hidden-dim", "32", "--checkpoints", *ckpts, check=False)
    assert wrong.returncode != 0 and "expected agent 0 of matrix-game" in wrong.stderr


def test_smoke_vae_on_a_3x2_game(tmp_path):
    """The paper's VAE estimator, unequal action counts (padded actions are masked), logs and results."""
    out = run(tmp_path, "--exp-name", "smoke", "--payoff", "1,2;3,4;5,6", "--behavior", "0.2,0.3,0.5;0.5,0.5",
              "--n-episodes", "300", "--total-steps", "1000", "--eval-freq", "500", "--vae-steps", "30", "--hidden-dim", "32")
    res, run_dir = results(tmp_path, "smoke")
    assert [e["step"] for e in res["evaluations"]] == [500, 1000]
    final = res["final"]
    assert 0 <= final["start_actions"][0] < 3 and 0 <= final["start_actions"][1] < 2
    assert np.isfinite([final["team_return"], final["extrapolation_error"], final["lambda_vd_mean"],
                        final["lambda_tn_mean"], final["td_loss"]]).all()
    assert [len(t["p_dataset"]) for t in final["tables"]] == [3, 2]
    assert np.isfinite(final["tables"][0]["p_modified"]).all() and "vae/g1_loss" in res["vae"]
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert "agent 0 (the paper's agent 1), lambda_vd * lambda_tn (vae)" in out.stdout and "greedy joint action" in out.stdout


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "1"], "error: --threshold must lie in [0, 1)"),
    (["--epsilon", "1.5"], "error: --epsilon"),
    (["--env-id", "dg"], "continuous actions"),
    (["--payoff", "1,5;6"], "error: matrix-game: --payoff rows differ"),
    (["--agent-ids", "2"], "--agent-ids must be distinct ids in 0..1"),
])
def test_bad_flags_give_one_line_errors(tmp_path, flags, message):
    out = run(tmp_path, *flags, check=False)
    assert out.returncode != 0 and message in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr


def test_smoke_run_on_smax_reports_win_rate_and_never_sends_an_illegal_action(tmp_path):
    """SMAX refuses illegal actions (ValueError), so a finished evaluation proves the masks held."""
    run(tmp_path, "--env-id", "smax-3m", "--quality", "random", "--n-episodes", "20", "--total-steps", "60",
        "--eval-freq", "30", "--eval-episodes", "4", "--vae-steps", "10", "--hidden-dim", "16", "--batch-size", "16",
        "--exp-name", "smax")
    res, _ = results(tmp_path, "smax")
    assert res["status"] == "complete" and res["dataset"]["recipe"]["quality"] == "random"
    assert 0 <= res["final"]["win_rate"] <= 1 and np.isfinite(res["final"]["team_return"])
    assert [e["step"] for e in res["evaluations"]] == [30, 60]
    bad = run(tmp_path, "--env-id", "matrix-game", "--quality", "random", check=False)
    assert "matrix-game has no dataset option ['quality']" in conftest.one_line_error(bad)
