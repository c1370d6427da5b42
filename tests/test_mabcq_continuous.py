"""mabcq_continuous.py: BCQ's target, policy and perturbation bound by hand, lambda_vd on BCQ's own value, lambda_tn,
the agents' independence, and every row of Table 5 on a tiny hopper-3x1 dataset built from tiny behaviour actors."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import conftest
import envs
import mabcq_continuous as M
from envs import dataset, mamujoco
from envs.behavior.sac import Actor, save_actor

N, OBS, ACT, HIDDEN, LATENT = 2, 3, 2, 8, 4


def networks(phi=0.05, seed=0):
    generators = dataset.agent_generators(seed, list(range(N)), "cpu")
    return (M.Critics(OBS, ACT, (HIDDEN,), generators), M.Perturbation(OBS, ACT, (HIDDEN,), phi, generators),
            M.ConditionalVAE(OBS, ACT, LATENT, (HIDDEN,), generators))


@torch.no_grad()
def by_hand(mlp, member, x):
    """One ensemble member of an MLP, layer by layer with plain matmuls: x [in] -> [out]."""
    layers = mlp.layers
    for k, layer in enumerate(layers):
        x = x @ layer.weight[member] + layer.bias[member, 0]
        if k < len(layers) - 1:
            x = torch.relu(x)
    return x


def q_by_hand(critic, agent, twin, s, a):
    return by_hand(critic.net, twin * N + agent, torch.cat([s, a]))[0]


def perturbed_by_hand(g1, xi, agent, s, z, phi=0.05):
    a = torch.tanh(by_hand(g1.decoder, agent, torch.cat([s, z.clamp(-0.5, 0.5)])))
    return (a + phi * torch.tanh(by_hand(xi.net, agent, torch.cat([s, a])))).clamp(-1, 1)


def bcq_args(gamma, lmbda, epsilon, no_vd=False, vd_terminal="one"):
    return SimpleNamespace(gamma=gamma, lmbda=lmbda, epsilon=epsilon, no_vd=no_vd, vd_terminal=vd_terminal)


def tiny_batch(seed, batch=5, done_at=(3,)):
    g = torch.Generator().manual_seed(seed)
    dones = torch.zeros(N, batch, dtype=torch.bool)
    dones[:, list(done_at)] = True
    return dict(obs=torch.randn(N, batch, OBS, generator=g), actions=torch.rand(N, batch, ACT, generator=g) * 2 - 1,
                rewards=torch.randn(N, batch, generator=g), next_obs=torch.randn(N, batch, OBS, generator=g),
                dones=dones, lambda_tn=torch.rand(N, batch, generator=g) + 0.5)


# --- the algorithm, by hand ---

def test_value_deviation_by_hand():
    next_value = torch.tensor([3.0, 1.0, 2.0, 10.0, -2.5, 5.0])
    q_sa = torch.tensor([2.98, 1.99, 0.99, 1.99, -2.99, 5.0])
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 5.0])
    dones = torch.tensor([False, False, False, False, False, True])
    e4 = -2.99 / 0.99  # E = (Q - r) / gamma = [2, 1, 0, 1, -3.0202, 0]
    expected = [1.5, 1.0, 1.5, 1.5, 1 + (-2.5 - e4) / abs(e4), 1.0]  # in the clip, V' = E, E = 0 and far above: 1 + eps, negative E, terminal
    got = M.value_deviation(next_value, q_sa, rewards, dones, gamma=0.99, epsilon=0.5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    low = M.value_deviation(torch.tensor([0.0]), torch.tensor([2.98]), torch.tensor([1.0]), torch.tensor([False]), 0.99, 0.3)
    assert low.item() == pytest.approx(0.7)  # V' far below E: 1 - eps


def test_transition_normalization_is_a_ratio_of_standard_normal_densities():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    density = lambda mu: (2 * np.pi) ** (-mu.shape[-1] / 2) * torch.exp(-(mu.double() ** 2).sum(-1) / 2)  # noqa: E731
    np.testing.assert_allclose(M.transition_normalization(mu1, mu2).double(), density(mu1) / density(mu2), rtol=1e-5)
    assert M.transition_normalization(mu1, mu1).eq(1).all()  # as likely under both: weight 1


def test_bcq_target_by_hand_soft_clipped_double_q_max_over_samples_and_done_masking():
    critic, xi, g1 = networks()
    batch, n, gamma, lmbda = tiny_batch(1), 4, 0.9, 0.75
    noise = torch.randn(N, 5 * n, LATENT, generator=torch.Generator().manual_seed(2))
    loss, q, weight, lambda_vd = M.bcq_critic_loss(critic, critic, xi, g1, batch, noise, bcq_args(gamma, lmbda, 0.8, no_vd=True))
    next_value = M.bcq_next_value(batch["next_obs"], g1, xi, critic, noise, lmbda)
    assert lambda_vd is None and torch.equal(weight, batch["lambda_tn"])
    for i in range(N):
        losses = torch.zeros(2)
        for b in range(5):
            s = batch["next_obs"][i, b]
            values = []
            for j in range(n):  # sample j of state b: the n samples of a state sit side by side
                a = perturbed_by_hand(g1, xi, i, s, noise[i, b * n + j])
                q1, q2 = q_by_hand(critic, i, 0, s, a), q_by_hand(critic, i, 1, s, a)
                values.append(lmbda * torch.min(q1, q2) + (1 - lmbda) * torch.max(q1, q2))
            v = torch.stack(values).max()
            torch.testing.assert_close(next_value[i, b], v, rtol=1e-5, atol=1e-5)
            y = batch["rewards"][i, b] + (0 if batch["dones"][i, b] else gamma * v)  # a terminal s' has no value
            for k in range(2):
                q_sa = q_by_hand(critic, i, k, batch["obs"][i, b], batch["actions"][i, b])
                torch.testing.assert_close(q[k, i, b], q_sa, rtol=1e-5, atol=1e-5)
                losses[k] += batch["lambda_tn"][i, b] * (q_sa - y) ** 2 / 5
        torch.testing.assert_close(loss[i], losses.sum(), rtol=1e-5, atol=1e-5)


def test_the_target_value_a_chunk_of_states_at_a_time_is_the_whole_batchs():
    """bcq_next_value takes `chunk` states (and their n samples) at a time for speed: each state keeps its own samples,
    also where the chunk does not divide the batch. A product of fewer rows may take another kernel (one row: a
    matrix-vector product), so at these tiny sizes the last bits may differ; at the paper's sizes they did not
    (`python -m benchmark.same_numbers --only "batch 1024"` against the commit before the chunks: docs, Throughput)."""
    critic, xi, g1 = networks()
    next_obs, n = torch.randn(N, 7, OBS, generator=torch.Generator().manual_seed(6)), 4
    noise = torch.randn(N, 7 * n, LATENT, generator=torch.Generator().manual_seed(7))
    whole = M.bcq_next_value(next_obs, g1, xi, critic, noise, 0.75)
    for chunk in (1, 3, 6):
        torch.testing.assert_close(M.bcq_next_value(next_obs, g1, xi, critic, noise, 0.75, chunk=chunk), whole,
                                   rtol=1e-6, atol=1e-7)
    shifted = M.bcq_next_value(next_obs, g1, xi, critic, noise.roll(n, 1), 0.75, chunk=3)  # other samples per state
    assert (shifted - whole).abs().max() > 1e-4


def test_lambda_vd_by_hand_on_bcqs_own_next_value():
    critic, xi, g1 = networks()
    target_critic, target_xi, _ = networks(seed=5)  # target networks other than the online ones
    batch, n, gamma, lmbda, eps = tiny_batch(3, batch=6, done_at=(5,)), 3, 0.9, 0.75, 0.5
    batch["rewards"] *= 0.02  # rewards the size of the untrained values: some lambda_vd inside the clip, some at its bounds
    noise = torch.randn(N, 6 * n, LATENT, generator=torch.Generator().manual_seed(4))
    _, _, weight, lambda_vd = M.bcq_critic_loss(critic, target_critic, target_xi, g1, batch, noise, bcq_args(gamma, lmbda, eps))
    for i in range(N):
        for b in range(6):
            s, s_next = batch["obs"][i, b], batch["next_obs"][i, b]
            values = []
            for j in range(n):
                a = perturbed_by_hand(g1, target_xi, i, s_next, noise[i, b * n + j])
                q1, q2 = q_by_hand(target_critic, i, 0, s_next, a), q_by_hand(target_critic, i, 1, s_next, a)
                values.append(lmbda * min(q1, q2) + (1 - lmbda) * max(q1, q2))
            v_next = max(values)  # V'(s'): BCQ's target value
            q1, q2 = (q_by_hand(target_critic, i, k, s, batch["actions"][i, b]) for k in (0, 1))
            expected = (lmbda * min(q1, q2) + (1 - lmbda) * max(q1, q2) - batch["rewards"][i, b]) / gamma  # E, target critics
            deviation = 1 + (v_next.item() - expected.item()) / (abs(expected.item()) + 1e-6)
            want = 1.0 if batch["dones"][i, b] else min(max(deviation, 1 - eps), 1 + eps)
            assert lambda_vd[i, b].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(weight, batch["lambda_tn"] * lambda_vd)
    inside = (lambda_vd - 1).abs() < eps - 1e-3
    assert inside[:, :5].any() and (~inside[:, :5]).any()


def test_the_perturbation_never_leaves_plus_minus_phi():
    _, xi, _ = networks(phi=0.05)
    with torch.no_grad():
        for p in xi.parameters():
            p.mul_(100)  # saturate the tanh
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(N, 4000, OBS, generator=g) * 10, torch.rand(N, 4000, ACT, generator=g) * 2 - 1
    act[:, :100] = torch.sign(act[:, :100])  # on the bounds of the action range too
    out = xi(obs, act)
    assert (out - act).abs().max() <= 0.05 + 1e-6 and out.abs().max() <= 1
    assert (out - act).abs().max() > 0.049  # and it does use its range


def test_bcq_policy_acts_with_the_sample_of_highest_q1():
    critic, xi, g1 = networks()
    obs, n = torch.randn(N, 4, OBS, generator=torch.Generator().manual_seed(6)), 5
    noise = torch.randn(N, 4 * n, LATENT, generator=torch.Generator().manual_seed(7))
    got = M.bcq_policy(obs, g1, xi, critic, noise)
    for i in range(N):
        for b in range(4):
            samples = [perturbed_by_hand(g1, xi, i, obs[i, b], noise[i, b * n + j]) for j in range(n)]
            best = max(samples, key=lambda a: q_by_hand(critic, i, 0, obs[i, b], a).item())
            torch.testing.assert_close(got[i, b], best, rtol=1e-5, atol=1e-6)


def test_behavior_acts_with_the_decoder_at_z_zero_and_bcq_clips_z():
    _, _, g1 = networks()
    obs = torch.randn(N, 3, OBS)
    torch.testing.assert_close(g1.decode(obs), g1.decode(obs, torch.zeros(N, 3, LATENT)))
    big = torch.full((N, 3, LATENT), 7.0)
    torch.testing.assert_close(g1.decode(obs, big), g1.decode(obs, torch.full((N, 3, LATENT), 0.5)))


@pytest.mark.parametrize("kl_weight", [0.5, 0.05])
def test_vae_loss_by_hand_mean_squared_error_over_action_dims_plus_kl_weight_times_mean_kl_over_latent_dims(kl_weight):
    g = M.ConditionalVAE(OBS, ACT, LATENT, (HIDDEN,), dataset.agent_generators(3, list(range(N)), "cpu"), kl_weight=kl_weight)
    draw = torch.Generator().manual_seed(4)
    obs, act, noise = torch.randn(N, 5, OBS, generator=draw), torch.rand(N, 5, ACT, generator=draw) * 2 - 1, torch.randn(N, 5, LATENT, generator=draw)
    for i in range(N):
        out = by_hand(g.encoder, i, torch.cat([obs[i], act[i]], -1))
        mean, log_std = out[:, :LATENT], out[:, LATENT:].clamp(-4, 15)
        z = mean + log_std.exp() * noise[i]
        mse = ((torch.tanh(by_hand(g.decoder, i, torch.cat([obs[i], z], -1))) - act[i]) ** 2).mean()
        kl = (0.5 * (mean**2 + (2 * log_std).exp() - 1) - log_std).mean()  # KL(N(mean, std^2) || N(0, 1)) per latent dim
        torch.testing.assert_close(g.loss(obs, act, noise)[i], mse + kl_weight * kl)
    assert M.Args().vae_kl_weight == 0.5  # BCQ's


def agent_0_gradients(batch, ddpg=False):
    """Agent 0's share of every gradient of one update of every network (critics, xi, G1, G2, the DDPG actor)."""
    critic, xi, g1 = networks()
    g2 = M.ConditionalVAE(2 * OBS, ACT, LATENT, (HIDDEN,), dataset.agent_generators(9, list(range(N)), "cpu"))
    noise = torch.randn(N, 5 * 3 + 5, LATENT, generator=torch.Generator().manual_seed(8))
    noise[1] += 1  # agent 1's own noise differs from agent 0's
    if ddpg:
        generators = dataset.agent_generators(0, list(range(N)), "cpu")
        actor, critic = M.DeterministicActor(OBS, ACT, (HIDDEN,), generators), M.Critics(OBS, ACT, (HIDDEN,), generators, twins=1)
        nets = dict(actor=actor, critic=critic)
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in (("critic", critic), ("policy", actor))}
        before = [p.detach().clone() for m in (actor, critic) for p in m.parameters()]
        M.ddpg_update(batch, nets, {k: copy.deepcopy(m) for k, m in nets.items()}, optimizers, None, None, bcq_args(0.99, 0.75, 0.8))
        return [b[0] - p.detach()[0] for b, p in zip(before, (p for m in (actor, critic) for p in m.parameters()))]
    loss, _, weight, _ = M.bcq_critic_loss(critic, critic, xi, g1, batch, noise[:, :15], bcq_args(0.99, 0.75, 0.8))
    loss.sum().backward()
    M.bcq_perturbation_loss(xi, critic, g1, batch["obs"], noise[:, 15:], weight).sum().backward()
    g1.loss(batch["obs"], batch["actions"], noise[:, :5]).sum().backward()  # --train-generator and the G1 fit
    g2.loss(torch.cat([batch["obs"], batch["next_obs"]], -1), batch["actions"], noise[:, 5:10]).sum().backward()
    # member 0 is agent 0 (the critics' member 2 is its second twin)
    return [p.grad[0::N].clone() for m in (critic, xi, g1, g2) for p in m.parameters()]


@pytest.mark.parametrize("ddpg", [False, True])
def test_other_agents_data_never_reaches_agent_0s_gradients(ddpg):
    first = tiny_batch(1)
    other = {k: torch.stack([v[0], tiny_batch(99)[k][1]]) for k, v in first.items()}  # agent 1's data replaced
    for a, b in zip(agent_0_gradients(first, ddpg), agent_0_gradients(other, ddpg)):
        assert torch.equal(a, b)
    own = {k: torch.stack([tiny_batch(42)[k][0], v[1]]) for k, v in first.items()}  # agent 0's own data does matter
    assert not all(torch.equal(a, b) for a, b in zip(agent_0_gradients(first, ddpg), agent_0_gradients(own, ddpg)))


def test_ddpgs_actor_learns_from_the_critic_this_step_updated():
    """BCQ's reference DDPG steps the critic, then builds the actor loss on the updated critic. The actor's gradient must
    be the one of -Q(s, pi(s)) under the new critic weights, not the old ones (the order before 2026-12-03 mixed both)."""
    generators = dataset.agent_generators(0, list(range(N)), "cpu")
    actor, critic = M.DeterministicActor(OBS, ACT, (HIDDEN,), generators), M.Critics(OBS, ACT, (HIDDEN,), generators, twins=1)
    batch, nets = tiny_batch(1), dict(actor=actor, critic=critic)
    targets = {k: copy.deepcopy(m) for k, m in nets.items()}
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=0.05, fused=True)  # the script's: no version bump, no error
    actor_optimizer = torch.optim.SGD(actor.parameters(), lr=1.0)
    actor_before = copy.deepcopy(actor)
    M.ddpg_update(batch, nets, targets, dict(critic=critic_optimizer, policy=actor_optimizer), None, None, bcq_args(0.99, 0.75, 0.8))
    # by hand: the actor's gradient under the critic as updated (the critic's weights now), from the actor's old weights
    reference = copy.deepcopy(actor_before)
    (-critic.q1(batch["obs"], reference(batch["obs"])).mean(-1)).sum().backward()
    for p_new, p_old, p_ref in zip(actor.parameters(), actor_before.parameters(), reference.parameters()):
        torch.testing.assert_close(p_old.detach() - p_ref.grad, p_new.detach(), rtol=1e-5, atol=1e-6)
    stale = copy.deepcopy(actor_before)  # and it is not the gradient under the critic before its step
    (-targets["critic"].q1(batch["obs"], stale(batch["obs"])).mean(-1)).sum().backward()
    assert not all(torch.allclose(p_old.detach() - p_s.grad, p_new.detach(), atol=1e-6)
                   for p_new, p_old, p_s in zip(actor.parameters(), actor_before.parameters(), stale.parameters()))


def test_lambda_vd_on_terminal_transitions_one_or_the_formula_with_v_zero():
    """--vd-terminal: `one` keeps terminal weights at 1; `formula` puts V(s') = 0 into the paper's expression:
    1 + (0 - E) / |E| = 1 - sign(E) (0 for E > 0, 2 for E < 0), then clipped; non-terminal weights are the same."""
    next_value, q_sa = torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[10.0, -8.0, 4.0]])
    rewards, dones = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[True, True, False]])
    one = M.value_deviation(next_value, q_sa, rewards, dones, 0.9, 0.8, "one")
    formula = M.value_deviation(next_value, q_sa, rewards, dones, 0.9, 0.8, "formula")
    assert one[0, :2].tolist() == [1.0, 1.0]
    torch.testing.assert_close(formula[0, :2], torch.tensor([0.2, 1.8]))  # E = 10 > 0: 0 -> 0.2; E = -10 < 0: 2 -> 1.8
    assert formula[0, 2] == one[0, 2]
    assert formula[0, 2].item() == pytest.approx(min(1.8, 1 + (5 - 10 / 3) / (10 / 3)), rel=1e-5)


def test_hidden_dim_one_number_means_two_layers_and_bcqs_code_sizes_are_expressible():
    generators = dataset.agent_generators(0, [0], "cpu")
    assert [layer.weight.shape[2] for layer in M.MLP(5, 1, (64,), generators).layers] == [64, 64, 1]
    assert [layer.weight.shape[2] for layer in M.MLP(5, 1, (400, 300), generators).layers] == [400, 300, 1]


# --- the script on a tiny hopper-3x1 dataset ---

BIAS = {"early": 0.0, "intermediate": 0.6, "expert": -0.6}  # as tests/test_mamujoco.py: the levels act differently


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random SAC actors (saved as tests/test_mamujoco.py does), a 2000-transition hopper-3x1 dataset built from
    them once, and the flags that make every run here a few seconds long."""
    root = tmp_path_factory.mktemp("mabcq_continuous")
    env = envs.make("hopper-3x1")
    (root / "behavior" / "hopper-3x1").mkdir(parents=True)
    for seed, level in enumerate(mamujoco.LEVELS):
        torch.manual_seed(seed)
        actor = Actor(env.state_dim, env.joint_act_dim, 16)
        with torch.no_grad():
            actor.fc_mean.bias.fill_(BIAS[level])
        save_actor(actor, root / "behavior" / "hopper-3x1" / f"{level}.pt", env_id="hopper-3x1", level=level)
    recipe = dict(n_transitions=2000, episode_len=50, behavior_dir=str(root / "behavior"))
    dataset.load("hopper-3x1", {}, recipe, str(root / "datasets"))
    flags = ["--env-id", "hopper-3x1", "--n-transitions", "2000", "--episode-len", "50", "--behavior-dir", str(root / "behavior"),
             "--eval-episode-len", "20", "--eval-episodes", "2", "--total-steps", "60", "--eval-freq", "30", "--vae-steps", "20",
             "--hidden-dim", "16", "--batch-size", "32", "--n-samples", "3", "--act-samples", "3", "--analysis-states", "50"]
    return root, flags


def run(tiny, *flags, check=True):
    root, tiny_flags = tiny
    return conftest.run_script("mabcq_continuous.py", root, *tiny_flags, *flags, check=check)


ROWS = {  # Table 5: algorithm -> flags, run-name variant
    "MABCQ": ([], ""), "BCQ w/ lambda_vd": (["--no-tn"], "-no_tn"), "BCQ w/ lambda_tn": (["--no-vd"], "-no_vd"),
    "BCQ": (["--no-vd", "--no-tn"], "-no_vd-no_tn"), "DDPG": (["--ddpg"], "-ddpg"), "Behavior": (["--behavior"], "-behavior"),
}


@pytest.fixture(scope="module")
def rows(tiny):
    """One run of every row of Table 5 (seed 1, every agent), with per-agent checkpoints."""
    out = {}
    for name, (flags, _) in ROWS.items():
        proc = run(tiny, *flags, "--save-model", "--exp-name", "row")
        out[name] = (*conftest.find_run(tiny[0], "row" + ROWS[name][1]), proc.stdout)
    return out


@pytest.mark.parametrize("algorithm", ROWS)
def test_every_row_of_table_5_runs(rows, algorithm):
    res, run_dir, stdout = rows[algorithm]
    assert res["status"] == "complete" and res["algorithm"] == algorithm and res["script"] == "mabcq_continuous"
    assert res["run_name"].startswith(f"hopper-3x1__row{ROWS[algorithm][1]}__1__")
    assert res["env_kwargs"] == {"eval_episode_len": 20} and res["agent_ids"] == [0, 1, 2]
    assert res["dataset"]["recipe"]["n_transitions"] == 2000 and Path(res["dataset"]["path"]).is_dir()
    assert [e["step"] for e in res["evaluations"]] == [30, 60]
    final = res["final"]
    for key in ("normalized_score", "normalized_score_std", "team_return", "team_return_std", "ms_per_update", "updates_per_second"):
        assert np.isfinite(final[key]), key
    assert final["normalized_score"] == pytest.approx(float(mamujoco.normalized_score("hopper-3x1", final["team_return"])))
    has_critic = algorithm != "Behavior"
    for key in ("value_difference", "extrapolation_error", "q_start", "mc_return", "td_loss", "policy_loss", "q_values"):
        assert (key in final) == has_critic, key
    if has_critic:
        assert final["value_difference"] >= 0
    weights_on = {"MABCQ": "vd tn", "BCQ w/ lambda_vd": "vd", "BCQ w/ lambda_tn": "tn"}.get(algorithm, "")
    assert ("lambda_vd_mean" in final) == ("vd" in weights_on) and ("lambda_tn_mean" in final) == ("tn" in weights_on)
    if "vd" in weights_on:
        assert 1 - 0.8 <= final["lambda_vd_min"] <= final["lambda_vd_mean"] <= final["lambda_vd_max"] <= 1 + 0.8  # hopper's preset
        assert 0 <= final["lambda_vd_clipped"] <= 1 and res["args"]["epsilon"] == 0.8
    if "tn" in weights_on:
        assert 0 < final["lambda_tn_min"] <= final["lambda_tn_mean"] <= final["lambda_tn_max"] and "vae/g2_loss" in res["vae"]
    if algorithm != "DDPG":  # how much G1's (and, with lambda_tn, G2's) encoder uses its latent
        assert res["vae"]["vae/mu1_sq_norm"] > 0 and ("vae/mu2_sq_norm" in res["vae"]) == ("tn" in weights_on)
    assert list(run_dir.glob("events.out.tfevents.*")) and "step 60 | normalized score" in stdout
    parts = {"MABCQ": {"critic", "xi", "g1"}, "DDPG": {"critic", "actor"}, "Behavior": {"g1"}}.get(algorithm, {"critic", "xi", "g1"})
    for i in range(3):
        ckpt = torch.load(run_dir / f"agent_{i}.pt", weights_only=True)
        assert parts <= ckpt.keys() and not ({"critic", "xi", "actor", "g1"} - parts) & ckpt.keys()


def test_every_row_but_ddpg_samples_the_same_fitted_g1(rows):
    """G1 is fitted first, on the same draws, in every row (G2 or not): a seed's rows differ only in what the row changes."""
    g1 = {name: torch.load(rows[name][1] / "agent_2.pt", weights_only=True)["g1"] for name in ROWS if name != "DDPG"}
    for name, state in g1.items():
        for k, v in state.items():
            assert torch.equal(v, g1["MABCQ"][k]), (name, k)
    critics = {name: torch.load(rows[name][1] / "agent_2.pt", weights_only=True)["critic"] for name in ("MABCQ", "BCQ")}
    assert not torch.equal(critics["MABCQ"]["net.layers.0.weight"], critics["BCQ"]["net.layers.0.weight"])  # the weights act


def test_an_agent_trained_alone_equals_the_same_agent_trained_in_the_team(tiny, rows):
    """Agent i's whole random stream comes from (seed, i) and it reads only its own file: trained alone (another
    process, another machine) it ends with the same networks as in the team."""
    run(tiny, "--save-model", "--exp-name", "alone1", "--agent-ids", "1")
    res, run_dir = conftest.find_run(tiny[0], "alone1")
    assert res["agent_ids"] == [1] and "team_return" not in res["final"] and "value_difference" not in res["final"]
    team = torch.load(rows["MABCQ"][1] / "agent_1.pt", weights_only=True)
    alone = torch.load(run_dir / "agent_1.pt", weights_only=True)
    for part in ("critic", "xi", "g1"):
        for k in team[part]:
            torch.testing.assert_close(alone[part][k], team[part][k], rtol=0, atol=1e-6)


def test_a_team_assembles_from_separately_trained_agents(tiny, rows):
    root = tiny[0]
    run(tiny, "--save-model", "--exp-name", "only02", "--agent-ids", "0,2")
    _, only02 = conftest.find_run(root, "only02")
    _, row = conftest.find_run(root, "row-no_vd-no_tn")  # agent 1 from another run (BCQ): its own flags win
    ckpts = [str(only02 / "agent_0.pt"), str(row / "agent_1.pt"), str(only02 / "agent_2.pt")]
    proc = conftest.run_script("mabcq_continuous.py", root, "--env-id", "hopper-3x1", "--checkpoints", *ckpts, "--eval-episodes", "2",
                               "--eval-episode-len", "20", "--exp-name", "assembled", "--hidden-dim", "999")
    res, _ = conftest.find_run(root, "assembled-team")
    assert "team of 3 checkpoints" in proc.stdout and res["status"] == "complete"
    assert [c["path"] for c in res["checkpoints"]] == ckpts and [c["algorithm"] for c in res["checkpoints"]] == ["MABCQ", "BCQ", "MABCQ"]
    assert np.isfinite([res["final"][k] for k in ("normalized_score", "team_return", "extrapolation_error")]).all()
    message = conftest.one_line_error(conftest.run_script("mabcq_continuous.py", root, "--env-id", "hopper-3x1", "--checkpoints",
                                                          ckpts[1], ckpts[0], ckpts[2], check=False))
    assert "holds agent 1 of hopper-3x1" in message
    mixed = [ckpts[0], str(rows["DDPG"][1] / "agent_1.pt"), ckpts[2]]
    message = conftest.one_line_error(conftest.run_script("mabcq_continuous.py", root, "--env-id", "hopper-3x1", "--checkpoints",
                                                          *mixed, check=False))
    assert "the checkpoints differ in one of ddpg" in message


def test_bcq_probe_reproduces_the_runs_own_evaluation_and_behaviors_and_refuses_other_rows(tiny, rows):
    """benchmark/bcq_probe.py on the BCQ row: on the run's last evaluation's episodes its trained rule is that evaluation,
    bit for bit, and G1's mode is the Behavior row's evaluation (one G1 per seed); xi's shift stays within Phi."""
    root = tiny[0]
    (res, bcq_dir, _), (behavior, _, _) = rows["BCQ"], rows["Behavior"]
    out = root / "probe.json"
    proc = subprocess.run([sys.executable, str(conftest.ROOT / "benchmark" / "bcq_probe.py"), str(bcq_dir), "--out", str(out),
                           "--shift-states", "100"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (p,) = json.loads(out.read_text())
    assert p["episodes"] == 2 and p["env_seed"] == 1 + 60 and p["step"] == 60
    assert p["variants"]["trained rule"]["team_return"] == res["final"]["team_return"]
    assert p["variants"]["G1 mode"]["team_return"] == behavior["final"]["team_return"]
    assert 0 <= p["xi_shift"]["mean_abs"] <= 1 and 0 <= p["xi_shift"]["share_at_bound"] <= 1
    assert "| " + bcq_dir.name + " | " in proc.stdout and len(p["variants"]) == 5
    assert 0 <= p["g1"]["spread"] <= 1 and p["g1"]["mu_sq_median"] >= 0 and "spread of n G1 samples" in proc.stdout
    refused = subprocess.run([sys.executable, str(conftest.ROOT / "benchmark" / "bcq_probe.py"), str(rows["DDPG"][1])],
                             capture_output=True, text=True, timeout=300)
    assert "DDPG run has no BCQ acting rule" in conftest.one_line_error(refused)


def test_weights_by_part_covers_every_transition_and_refuses_other_rows(tiny, rows):
    """benchmark/weights_by_part.py on the MABCQ row with every transition of every part: the parts' lambda_tn means,
    weighted by the parts' sizes, give the run's own whole-dataset mean (results.json, another code path); lambda_vd
    stays in [1 - eps, 1 + eps]; a BCQ row has lambda_tn 1; DDPG is refused in one line."""
    root = tiny[0]
    script = str(conftest.ROOT / "benchmark" / "weights_by_part.py")
    (res, mabcq_dir, _), (_, bcq_dir, _) = rows["MABCQ"], rows["BCQ"]
    out = root / "weights.json"
    proc = subprocess.run([sys.executable, script, str(mabcq_dir), str(bcq_dir), "--per-part", "5000", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mabcq, bcq = json.loads(out.read_text())
    eps = res["args"]["epsilon"]
    for agent, parts in mabcq["agents"].items():
        assert list(parts) == ["all early", "own intermediate + others expert", "own expert + others intermediate", "all expert"]
        sizes = np.array([v["n"] for v in parts.values()])
        assert sizes.sum() == 2000  # every transition once
        whole = res["lambda_tn"][agent]
        assert whole["capped"] == 0  # so the checkpoint's capped lambda_tn is the summary's uncapped one
        mean_tn = (sizes * np.array([v["lambda_tn_mean"] for v in parts.values()])).sum() / sizes.sum()
        assert mean_tn == pytest.approx(whole["mean"], rel=1e-5)
        for v in parts.values():
            assert 1 - eps - 1e-6 <= v["lambda_vd_mean"] <= 1 + eps + 1e-6 and 0 <= v["lambda_vd_clipped"] <= 1
            assert 0 <= v["lambda_vd_in_paper_range"] <= 1 and 0 <= v["lambda_tn_in_paper_range"] <= 1
    assert all(v["lambda_tn_mean"] == 1 for parts in bcq["agents"].values() for v in parts.values())
    assert f"| {mabcq_dir.name} | 0 | all expert | " in proc.stdout
    refused = subprocess.run([sys.executable, script, str(rows["DDPG"][1])], capture_output=True, text=True, timeout=300, cwd=root)
    assert "DDPG run has no BCQ acting rule" in conftest.one_line_error(refused)


def test_bcq_probe_g1_stats_by_hand():
    """The spread of G1's samples is the population std over the n samples (decode clips z to [-0.5, 0.5] as
    BCQ does), averaged over states and agents; mu_sq_median the median over states of ||mu1||^2, averaged over agents."""
    from benchmark import bcq_probe

    class G1:  # decodes to the clipped latent's first coordinate; encodes to the action's two numbers
        def decode(self, obs, z):
            return z.clamp(-0.5, 0.5)[..., :1]

        def encode(self, obs, act):
            return act, torch.zeros_like(act)

    obs = torch.zeros(2, 3, 1)  # 2 agents, 3 states
    act = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]])  # ||a||^2: 25, 1, 2 | 0, 0, 4
    noise = torch.zeros(2, 2, 3, 1)
    noise[0], noise[1] = 0.2, -0.2  # every state: samples 0.2 and -0.2, std 0.2
    noise[0, 1, 2], noise[1, 1, 2] = 0.9, 0.1  # agent 1, state 2: clipped to 0.5 and 0.1, std 0.2
    stats = bcq_probe.g1_stats(G1(), obs, act, noise)
    assert stats["spread"] == pytest.approx(0.2)
    assert stats["mu_sq_median"] == pytest.approx((2 + 0) / 2)  # medians 2 (of 25, 1, 2) and 0 (of 0, 0, 4)
    noise[0, 1, 2] = 0.5  # same after clipping: 0.9 was cut to 0.5
    assert bcq_probe.g1_stats(G1(), obs, act, noise)["spread"] == pytest.approx(0.2)


def test_normalize_obs_uses_each_agents_own_statistics_and_they_travel_with_its_checkpoint(tiny, rows):
    """--normalize-obs (off by default: neither the paper nor BCQ normalises): agent i's mean and std are its own
    data's, saved in agent_i.pt, and a team assembled from the checkpoints acts exactly as the run's last evaluation."""
    run(tiny, "--normalize-obs", "--save-model", "--exp-name", "norm")
    res, run_dir = conftest.find_run(tiny[0], "norm")
    for i in range(3):
        ckpt = torch.load(run_dir / f"agent_{i}.pt", weights_only=True)
        obs = np.load(Path(res["dataset"]["path"]) / f"agent_{i}.npz")["obs"]
        np.testing.assert_allclose(ckpt["obs_mean"].numpy().ravel(), obs.mean(0), rtol=1e-5)
        np.testing.assert_allclose(ckpt["obs_std"].numpy().ravel(), obs.std(0) + 1e-3, rtol=1e-5)
        plain = torch.load(rows["MABCQ"][1] / f"agent_{i}.pt", weights_only=True)  # the default: identity statistics
        assert not plain["obs_mean"].any() and (plain["obs_std"] == 1).all()
    ckpts = [str(run_dir / f"agent_{i}.pt") for i in range(3)]
    step = res["final"]["step"]  # the run evaluated with seed + step
    conftest.run_script("mabcq_continuous.py", tiny[0], "--env-id", "hopper-3x1", "--checkpoints", *ckpts, "--eval-episodes", "2",
                        "--eval-episode-len", "20", "--seed", str(1 + step), "--exp-name", "normteam")
    team, _ = conftest.find_run(tiny[0], "normteam-team")
    assert team["final"]["team_return"] == res["final"]["team_return"]


def test_a_run_killed_and_resumed_ends_bit_identical(tiny):
    """The run contract (docs/results.md): SIGKILL after a checkpoint, --resume, and the run ends as an uninterrupted one.
    The schedule crosses the 1000-step sampling chunk and has checkpoints between evaluations."""
    root = tiny[0]
    schedule = ["--total-steps", "1100", "--eval-freq", "400", "--checkpoint-freq", "170", "--hidden-dim", "8", "--batch-size", "16",
                "--n-samples", "2", "--save-model"]
    run(tiny, *schedule, "--run-name", "whole")
    _, tiny_flags = tiny
    cmd = [sys.executable, str(conftest.ROOT / "mabcq_continuous.py"), "--dataset-dir", str(root / "datasets"), *tiny_flags, *schedule,
           "--run-name", "killed"]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir, deadline = root / "runs" / "killed", time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    conftest.run_script("mabcq_continuous.py", root, "--resume", str(run_dir))
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["final"]["step"] == 1100 and res["resumed_at_steps"] == [killed_at]
    timing = ("seconds", "train_seconds", "updates_per_second", "ms_per_update")
    whole = json.loads((root / "runs" / "whole" / "results.json").read_text())
    strip = lambda r: [{k: v for k, v in e.items() if k not in timing} for e in r["evaluations"]]  # noqa: E731
    assert strip(res) == strip(whole)
    for i in range(3):
        a = torch.load(run_dir / f"agent_{i}.pt", weights_only=True)
        b = torch.load(root / "runs" / "whole" / f"agent_{i}.pt", weights_only=True)
        for part in ("critic", "xi", "g1"):
            for k in a[part]:
                assert torch.equal(a[part][k], b[part][k]), (i, part, k)


def test_a_dataset_that_cannot_be_built_or_is_another_envs_is_refused_in_one_line(tiny, tmp_path):
    root, _ = tiny
    # no behaviour actors to build the dataset from
    message = conftest.one_line_error(run(tiny, "--behavior-dir", str(tmp_path / "empty"), "--exp-name", "refused", check=False))
    assert message.startswith("error: no early/intermediate/expert behaviour policies for hopper-3x1")
    # another env's dataset where this one should be
    recipe = dict(n_transitions=2000, episode_len=50, behavior_dir=str(root / "behavior"))
    hopper = dataset.dataset_path(str(root / "datasets"), "hopper-3x1", envs.resolve("hopper-3x1")[0], envs.resolve("hopper-3x1", {}, recipe)[1])
    walker = dataset.dataset_path(str(tmp_path), "walker2d-2x3", envs.resolve("walker2d-2x3")[0], envs.resolve("walker2d-2x3", {}, recipe)[1])
    shutil.copytree(hopper, walker)
    message = conftest.one_line_error(run(tiny, "--env-id", "walker2d-2x3", "--dataset-dir", str(tmp_path), "--exp-name", "refused",
                                          check=False))
    assert "was built for env_id=hopper-3x1, not the requested walker2d-2x3; rebuild it with `python -m envs.collect" in message
    # a dataset that lost an agent's file
    shutil.copytree(hopper, tmp_path / "datasets" / hopper.name)
    (tmp_path / "datasets" / hopper.name / "agent_2.npz").unlink()
    message = conftest.one_line_error(run(tiny, "--dataset-dir", str(tmp_path / "datasets"), "--exp-name", "refused", check=False))
    assert "agent_2.npz" in message and "rebuild it with" in message
    assert not list((root / "runs").glob("*refused*"))  # nothing was written


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "dg"], "error: dg: no preset --epsilon (tuned per robot"),
    (["--ddpg", "--behavior"], "error: --ddpg is a row without G1: it takes neither --behavior nor --train-generator"),
    (["--ddpg", "--train-generator"], "error: --ddpg is a row without G1: it takes neither --behavior nor --train-generator"),
    (["--phi", "0"], "error: --phi must lie in (0, 1]"),
    (["--vae-kl-weight", "0"], "error: --vae-kl-weight must be > 0"),
    (["--hidden-dim", "64", "0"], "error: --hidden-dim takes one or more positive widths"),
    (["--eval-episode-len", "0"], "error: hopper-3x1: --eval-episode-len must be > 0"),
    (["--n-transitions", "0"], "error: hopper-3x1: --n-transitions must be > 0"),
])
def test_bad_input_gives_one_line_errors_before_anything_is_written(tmp_path, flags, message):
    proc = conftest.run_script("mabcq_continuous.py", tmp_path, "--env-id", "hopper-3x1", *flags, check=False)
    assert conftest.one_line_error(proc).startswith(message)
    assert not (tmp_path / "runs").exists()
