"""matd3bc.py: the weights, the per-agent independence of the batched ensemble, and smoke runs."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import conftest
import matd3bc
from envs import dataset
from envs import run as contract

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--n-transitions", "2000", "--total-steps", "300", "--eval-freq", "150", "--vae-steps", "50",
        "--eval-episodes", "5", "--hidden-dim", "32", "--batch-size", "32", "--analysis-states", "200"]


def run_script(tmp_path, *flags, check=True):
    return conftest.run_script("matd3bc.py", tmp_path, *flags, check=check)


results = conftest.find_run


def test_value_deviation_by_hand():
    next_value = torch.tensor([3.0, 1.0, 2.0, 10.0, -2.5, 5.0])
    q_sa = torch.tensor([2.98, 1.99, 0.99, 1.99, -2.99, 5.0])
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 5.0])
    dones = torch.tensor([False, False, False, False, False, True])
    # E = (Q - r) / 0.99 = [2, 1, 0, 1, -3.0202, 0]
    got = matd3bc.value_deviation(next_value, q_sa, rewards, dones, gamma=0.99, epsilon=0.5)
    e4 = -2.99 / 0.99
    expected = [
        1 + (3 - 2) / 2,  # 1.5, inside the clip
        1.0,  # V' = E
        1.5,  # E = 0: (2 - 0) / 1e-6 is clipped to 1 + eps
        1.5,  # far above E: clipped high
        1 + (-2.5 - e4) / abs(e4),  # 1.17, negative E: |E| in the denominator keeps the sign of V' - E
        1.0,  # terminal: no next state to be optimistic about
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    low = matd3bc.value_deviation(torch.tensor([0.0]), torch.tensor([2.98]), torch.tensor([1.0]), torch.tensor([False]), 0.99, 0.3)
    assert low.item() == pytest.approx(0.7)  # V' far below E: clipped to 1 - eps


def test_transition_normalization_is_a_ratio_of_standard_normal_densities():
    mu1, mu2 = torch.tensor([[0.3, -0.4]]), torch.tensor([[1.0, 2.0]])
    density = lambda mu: torch.exp(-(mu**2).sum(-1) / 2)  # noqa: E731
    np.testing.assert_allclose(matd3bc.transition_normalization(mu1, mu2), density(mu1) / density(mu2), rtol=1e-6)


def vae_args(**kw):
    return SimpleNamespace(**{**dict(vae_latent_dim=4, hidden_dim=64, vae_learning_rate=1e-3, vae_steps=1500,
                                     vae_batch_size=256, **kw)})


def test_vae_lambda_tn_gives_the_rarer_next_state_the_larger_weight():
    """One state, a binary action, and a next state that follows the action 80% of the time:
    P(s' = A | a = -0.5) = P(s' = B | a = 0.5) = 0.8. The two rare transitions must weigh more.

    (G2 only reconstructs a, so the ratio of latent densities estimates p(a|s) / p(a|s, s')
    = p(s'|s) / p(s'|s, a): 1 / P_B(s'|s, a) up to p(s'|s), which is uniform here.)"""
    rng = np.random.default_rng(0)
    n = 4000
    actions = rng.choice([-0.5, 0.5], size=n)
    follows = rng.random(n) < 0.8
    next_obs = np.where(follows, np.sign(actions), -np.sign(actions))
    data = {
        "obs": torch.zeros(1, n, 1),
        "actions": torch.as_tensor(actions, dtype=torch.float32).view(1, n, 1),
        "next_obs": torch.as_tensor(next_obs, dtype=torch.float32).view(1, n, 1),
        "size": [n],
    }
    gens = dataset.agent_generators(0, [0], "cpu")
    lambda_tn, _ = matd3bc.fit_lambda_tn(data, vae_args(), gens, "cpu")
    rare = torch.as_tensor(~follows)
    assert lambda_tn[0, rare].mean() > 1.5 * lambda_tn[0, ~rare].mean()


def make_agents(n_agents, obs_dim=3, act_dim=2, hidden=16, seed=0):
    gens = dataset.agent_generators(seed, list(range(n_agents)), "cpu")
    return [cls(obs_dim, act_dim, hidden, gens) for cls in (matd3bc.Actor, matd3bc.TwinCritic)], gens


def batch_for(n_agents, seeds, batch=8, obs_dim=3, act_dim=2):
    parts = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        parts.append({
            "obs": torch.randn(batch, obs_dim, generator=g), "actions": torch.rand(batch, act_dim, generator=g) * 2 - 1,
            "rewards": torch.randn(batch, generator=g), "next_obs": torch.randn(batch, obs_dim, generator=g),
            "dones": torch.rand(batch, generator=g) < 0.2, "lambda_tn": torch.rand(batch, generator=g) + 0.5,
            "noise": torch.randn(batch, act_dim, generator=g),
        })
    return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}


ARGS = SimpleNamespace(policy_noise=0.2, noise_clip=0.5, gamma=0.99, no_vd=False, epsilon=0.9, alpha=2.5)


@torch.no_grad()
def by_hand(mlp, member, x):
    """One ensemble member of an MLP, layer by layer with plain matmuls: x [in] -> [out]."""
    for k, layer in enumerate(mlp.layers):
        x = x @ layer.weight[member] + layer.bias[member, 0]
        if k < len(mlp.layers) - 1:
            x = torch.relu(x)
    return x


def test_td3bc_critic_loss_by_hand_noise_clip_min_of_twins_done_mask_and_weights_from_the_targets():
    """y = r + gamma (1 - done) min_k Q^_k(s', clip(pi^(s') + clip(0.2 noise, +-0.5), +-1)); lambda_vd from the target
    critics' min at (s', a') and (s, a); loss = sum over twins of mean(lambda_tn * lambda_vd * (Q_k(s, a) - y)^2)."""
    (actor, critic), _ = make_agents(2)
    (actor_target, critic_target), _ = make_agents(2, seed=7)  # targets other than the online networks
    batch = batch_for(2, [1, 2])
    batch["noise"][0, 0] = 10.0  # a draw the clip at noise_clip must cut
    batch["dones"][:, 1] = True
    loss, q, weight, lambda_vd = matd3bc.td3bc_critic_loss(critic, critic_target, actor_target, batch, ARGS)
    for i in range(2):
        losses = torch.zeros(2)
        for b in range(8):
            s, a, s2 = batch["obs"][i, b], batch["actions"][i, b], batch["next_obs"][i, b]
            smoothing = (batch["noise"][i, b] * 0.2).clamp(-0.5, 0.5)
            a2 = (torch.tanh(by_hand(actor_target.net, i, s2)) + smoothing).clamp(-1, 1)
            v_next = min(by_hand(critic_target.net, k * 2 + i, torch.cat([s2, a2]))[0] for k in range(2))
            q_target = min(by_hand(critic_target.net, k * 2 + i, torch.cat([s, a]))[0] for k in range(2))
            r, done = batch["rewards"][i, b], batch["dones"][i, b]
            y = r + (0 if done else 0.99 * v_next)
            expected = (q_target - r) / 0.99
            vd = 1.0 if done else float(min(max(1 + (v_next - expected) / (abs(expected) + 1e-6), 0.1), 1.9))
            assert lambda_vd[i, b].item() == pytest.approx(vd, rel=1e-4, abs=1e-5)
            w = batch["lambda_tn"][i, b] * vd
            for k in range(2):
                q_sa = by_hand(critic.net, k * 2 + i, torch.cat([s, a]))[0]
                torch.testing.assert_close(q[k, i, b], q_sa, rtol=1e-5, atol=1e-5)
                losses[k] += w * (q_sa - y) ** 2 / 8
        torch.testing.assert_close(loss[i], losses.sum(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight, batch["lambda_tn"] * lambda_vd)
    _, _, weight_off, vd_off = matd3bc.td3bc_critic_loss(critic, critic_target, actor_target, batch,
                                                         SimpleNamespace(**{**vars(ARGS), "no_vd": True}))
    assert vd_off is None and torch.equal(weight_off, batch["lambda_tn"])


def test_td3bc_actor_loss_by_hand_alpha_over_mean_abs_q_and_the_bc_term():
    """Per agent: mean over the batch of w * (-alpha / mean|Q1(s, pi(s))| * Q1(s, pi(s)) + mean_d (pi(s) - a)^2)."""
    (actor, critic), _ = make_agents(2)
    batch, weight = batch_for(2, [3, 4]), torch.rand(2, 8, generator=torch.Generator().manual_seed(5)) + 0.5
    loss = matd3bc.td3bc_actor_loss(actor, critic, batch, weight, ARGS)
    for i in range(2):
        pis = [torch.tanh(by_hand(actor.net, i, batch["obs"][i, b])) for b in range(8)]
        qs = torch.stack([by_hand(critic.net, i, torch.cat([batch["obs"][i, b], pis[b]]))[0] for b in range(8)])
        scale = 2.5 / qs.abs().mean()
        want = sum(weight[i, b] * (-scale * qs[b] + ((pis[b] - batch["actions"][i, b]) ** 2).mean()) for b in range(8)) / 8
        torch.testing.assert_close(loss[i], want, rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    assert all(p.grad is None for p in critic.parameters())  # the actor loss trains the actor only


def test_vae_loss_by_hand_mean_squared_error_plus_half_the_mean_kl():
    gens = dataset.agent_generators(3, [0, 1], "cpu")
    vae = matd3bc.ConditionalVAE(3, 2, 4, 16, gens)
    cond, act = torch.randn(2, 5, 3), torch.rand(2, 5, 2) * 2 - 1
    noise = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    loss = vae.loss(cond, act, noise)
    for i in range(2):
        out = by_hand(vae.encoder, i, torch.cat([cond[i], act[i]], -1))
        mean, log_std = out[:, :4], out[:, 4:].clamp(-4, 15)
        z = mean + log_std.exp() * noise[i]
        recon = torch.tanh(by_hand(vae.decoder, i, torch.cat([cond[i], z], -1)))
        kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).mean()
        torch.testing.assert_close(loss[i], ((recon - act[i]) ** 2).mean() + 0.5 * kl, rtol=1e-5, atol=1e-6)


def agent_gradients(batch, args):
    torch.manual_seed(0)
    (actor, critic), _ = make_agents(2)
    (actor_target, critic_target), _ = make_agents(2, seed=7)  # targets other than the online networks
    critic_loss, _, weight, _ = matd3bc.td3bc_critic_loss(critic, critic_target, actor_target, batch, args)
    critic_loss.sum().backward()
    actor_loss = matd3bc.td3bc_actor_loss(actor, critic, batch, weight, args)
    actor_loss.sum().backward()
    # agent 0's slice of every gradient (critic members 0 and 2 are agent 0's twins)
    return [p.grad[0::2].clone() for net in (actor, critic) for p in net.parameters()]


def test_other_agents_data_never_reaches_agent_0s_gradients():
    first = agent_gradients(batch_for(2, [1, 2]), ARGS)
    second = agent_gradients(batch_for(2, [1, 99]), ARGS)  # agent 1's data replaced
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    third = agent_gradients(batch_for(2, [3, 2]), ARGS)  # agent 0's own data does matter
    assert not all(torch.equal(a, b) for a, b in zip(first, third))


def test_agent_state_round_trip():
    (actor, critic), _ = make_agents(3)
    (actor2, critic2), _ = make_agents(3)
    for net, net2 in ((actor, actor2), (critic, critic2)):
        state = contract.agent_state(net, 1, 3)
        contract.load_agent_state(net2, 1, 3, state)
        for (k, v), v2 in zip(net.state_dict().items(), net2.state_dict().values()):
            assert torch.equal(v[1::3], v2[1::3]), k


def test_presets_fill_only_the_flags_left_unset():
    for env_id, batch in (("dg", 100), ("cn", 100), ("minari:mujoco/hopper/medium-v0", 256), ("minari:odmarl/walker2d/random-v0", 256)):
        args = matd3bc.Args(env_id=env_id)
        matd3bc.apply_presets(args)
        assert args.batch_size == batch  # the paper's MPE batch (Appendix B); TD3+BC's D4RL batch on Minari data
    args = matd3bc.Args(env_id="minari:mujoco/hopper/medium-v0", batch_size=64)
    matd3bc.apply_presets(args)
    assert args.batch_size == 64


def test_smoke_run_writes_results_logs_and_checkpoints(tmp_path):
    proc = run_script(tmp_path, *TINY, "--save-model", "--exp-name", "smoke")
    res, run_dir = results(tmp_path, "smoke")
    assert [e["step"] for e in res["evaluations"]] == [150, 300]
    final = res["final"]
    for key in ("team_return", "team_return_std", "extrapolation_error", "value_difference",
                "lambda_vd_mean", "lambda_tn_min", "lambda_tn_max", "updates_per_second", "td_loss", "policy_loss"):
        assert np.isfinite(final[key]), key
    assert 1 - 0.9 <= final["lambda_vd_min"] <= final["lambda_vd_max"] <= 1 + 0.9
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "agent_0.pt").exists() and (run_dir / "agent_1.pt").exists()
    assert "step 300 | team return" in proc.stdout


def test_same_seed_same_results_on_cpu(tmp_path):
    run_script(tmp_path, *TINY, "--exp-name", "a")
    run_script(tmp_path, *TINY, "--exp-name", "b")
    strip = lambda r: [{k: v for k, v in e.items() if k not in ("seconds", "train_seconds", "updates_per_second", "ms_per_update")}
                       for e in r["evaluations"]]  # noqa: E731
    assert strip(results(tmp_path, "a")[0]) == strip(results(tmp_path, "b")[0])


def test_an_agent_trained_alone_equals_the_same_agent_trained_in_the_team(tmp_path):
    """Agent i's whole random stream comes from (seed, i): training it alone on its own file
    (another process, another machine) gives the same weights as training it with the team."""
    flags = [*TINY, "--save-model", "--eval-freq", "300"]
    run_script(tmp_path, *flags, "--exp-name", "team")
    run_script(tmp_path, *flags, "--exp-name", "alone1", "--agent-ids", "1")
    team = torch.load(results(tmp_path, "team")[1] / "agent_1.pt")
    alone = torch.load(results(tmp_path, "alone1")[1] / "agent_1.pt")
    for part in ("actor", "critic"):
        for k in team[part]:
            torch.testing.assert_close(team[part][k], alone[part][k], rtol=0, atol=1e-6)


def test_team_assembled_from_separate_runs(tmp_path):
    flags = [*TINY, "--save-model", "--eval-freq", "300"]
    run_script(tmp_path, *flags, "--exp-name", "only0", "--agent-ids", "0")
    run_script(tmp_path, *flags, "--exp-name", "only1", "--agent-ids", "1")
    ckpts = [str(results(tmp_path, "only0")[1] / "agent_0.pt"), str(results(tmp_path, "only1")[1] / "agent_1.pt")]
    proc = run_script(tmp_path, "--checkpoints", *ckpts, "--exp-name", "assembled", "--eval-episodes", "5")
    res, _ = results(tmp_path, "assembled")
    assert np.isfinite(res["final"]["team_return"]) and [c["path"] for c in res["checkpoints"]] == ckpts
    assert "team of 2 checkpoints" in proc.stdout
    bad = run_script(tmp_path, "--checkpoints", ckpts[1], ckpts[0], check=False)
    assert bad.returncode == 1 and "holds agent 1" in bad.stderr


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "nope"], "error: unknown env id 'nope'; known ids:"),
    (["--epsilon", "1.5"], "error: --epsilon must lie in [0, 1]"),
    (["--agent-ids", "0,7"], "error: --agent-ids must be distinct ids in 0..1"),
    (["--batch-size", "0"], "error: --batch-size must be > 0"),
])
def test_bad_input_gives_one_line_error(tmp_path, flags, message):
    proc = run_script(tmp_path, *TINY, *flags, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cn_probe_reproduces_the_runs_own_evaluation_and_refuses_other_folders(tmp_path):
    """benchmark/cn_probe.py on a tiny cn run: on the run's last evaluation's episodes the trained team is that
    evaluation, bit for bit; the stand-still team is a = 0 rolled out by hand; a folder with no cn run is refused."""
    run_script(tmp_path, *TINY, "--env-id", "cn", "--exp-name", "cnprobe")
    res, run_dir = results(tmp_path, "cnprobe")
    out = tmp_path / "probe.json"
    script = str(ROOT / "benchmark" / "cn_probe.py")
    proc = subprocess.run([sys.executable, script, str(run_dir), "--states", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (p,) = json.loads(out.read_text())
    assert p["episodes"] == 5 and p["step"] == 300 and p["env_seed"] == 1 + 300
    assert p["teams"]["trained"]["team_return"] == res["final"]["team_return"]
    import envs

    env = envs.make("cn")
    env.reset(5, np.random.default_rng(p["env_seed"]))
    still = sum(env.step([np.zeros((5, 2), np.float32)] * 4)[1].astype(np.float64) for _ in range(25))
    assert p["teams"]["stand still"]["team_return"] == pytest.approx(still.mean(), rel=1e-12)
    assert 0 <= p["mean_abs_action"] <= 1 and p["data_mean_abs_action"] == pytest.approx(0.5, abs=0.05)
    assert all(-1 <= c <= 1 for c in p["nearest_landmark_cosine"]) and len(p["nearest_landmark_cosine"]) == 4
    assert "| " + run_dir.name + " | " in proc.stdout
    refused = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert "no checkpoint.pt" in conftest.one_line_error(refused)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    refused = subprocess.run([sys.executable, script, str(tmp_path / "corrupt")], capture_output=True, text=True, timeout=300)
    assert "cannot load checkpoint" in conftest.one_line_error(refused)


def test_cn_probe_nearest_landmark_cosine_by_hand():
    from benchmark import cn_probe

    obs = np.zeros((3, 24))
    obs[:, 4:12] = [[3, 0, 0, 1, 5, 5, -4, 0]] * 3  # landmarks relative to the agent; the nearest is (0, 1)
    act = np.array([[0.0, 0.5], [1.0, 0.0], [0.0, 0.0]])  # straight to it (1), across (0), standing still (0)
    assert cn_probe.nearest_landmark_cosine(obs, act) == pytest.approx(1 / 3)
