"""Multi-agent MuJoCo (envs/mamujoco.py), its Appendix-B datasets and the SAC behaviour learner
(envs/behavior/sac.py), at tiny scale: random tiny actors stand in for trained ones."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv

import envs
from envs import InputError, dataset, mamujoco
from envs.recipes import mamujoco as mamujoco_recipe
from envs.behavior.sac import SAC, Actor, ReplayBuffer, load_actor, save_actor

ROOT = Path(__file__).resolve().parents[1]
IDS = ["halfcheetah-2x3", "walker2d-2x3", "hopper-3x1", "ant-2x4"]
# Appendix B, written out here rather than read from the module under test:
# (share of B_i, policy agent i plays, policy the other agents play)
APPENDIX_B = [(0.20, "early", "early"), (0.35, "intermediate", "expert"), (0.35, "expert", "intermediate"), (0.10, "expert", "expert")]
# the levels' actors get clearly different mean actions, so a test can tell which one acted
BIAS = {"early": 0.0, "intermediate": 0.6, "expert": -0.6}


def save_tiny_actors(folder: Path, env_id: str) -> None:
    env = envs.make(env_id)
    (folder / env_id).mkdir(parents=True, exist_ok=True)
    for seed, level in enumerate(mamujoco.LEVELS):
        torch.manual_seed(seed)
        actor = Actor(env.state_dim, env.joint_act_dim, 16)
        with torch.no_grad():
            actor.fc_mean.bias.fill_(BIAS[level])
        save_actor(actor, folder / env_id / f"{level}.pt", env_id=env_id, level=level)


@pytest.fixture(scope="module")
def behavior_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("behavior")
    for env_id in ("hopper-3x1", "ant-2x4"):
        save_tiny_actors(folder, env_id)
    return folder


def tiny_recipe(behavior_dir, **kw):
    return {"n_transitions": 2000, "behavior_dir": str(behavior_dir), **kw}


@pytest.fixture(scope="module")
def noisy_hopper(behavior_dir, tmp_path_factory):
    """hopper-3x1, 2000 transitions per agent, default noise (0.1)."""
    root = tmp_path_factory.mktemp("datasets")
    return root, dataset.load("hopper-3x1", {}, tiny_recipe(behavior_dir), str(root))


@pytest.fixture(scope="module")
def exact_hopper(behavior_dir, tmp_path_factory):
    """hopper-3x1 without action noise: the last three parts are deterministic and can be replayed."""
    return dataset.load("hopper-3x1", {}, tiny_recipe(behavior_dir, noise_std=0.0), str(tmp_path_factory.mktemp("datasets")))


def hopper_healthy(obs):
    """Hopper-v5's health test on its observation (qpos[1:], clipped qvel): z > 0.7, |angle| < 0.2, |state| < 100."""
    return (obs[:, 0] > 0.7) & (np.abs(obs[:, 1]) < 0.2) & (np.abs(obs[:, 1:]) < 100).all(1)


# --- the env adapter, on real MuJoCo ---

@pytest.mark.parametrize("env_id, n_agents, act_dims, state_dim", [
    ("halfcheetah-2x3", 2, [3, 3], 17), ("walker2d-2x3", 2, [3, 3], 17), ("hopper-3x1", 3, [1, 1, 1], 11), ("ant-2x4", 2, [4, 4], 105),
])
def test_registered_with_the_papers_partitions(env_id, n_agents, act_dims, state_dim):
    env = envs.make(env_id)
    assert (env.n_agents, env.act_dims, env.state_dim) == (n_agents, act_dims, state_dim)
    assert env.obs_dims == [state_dim] * n_agents and not env.discrete and env.eval_episode_len == 1000
    assert envs.env_module(env_id).PINNED_PACKAGES == ("mujoco",)
    obs = env.reset(4, np.random.default_rng(0))
    assert [o.shape for o in obs] == [(4, state_dim)] * n_agents and obs[0].dtype == np.float32
    obs, reward, terminated = env.step([np.zeros((4, d), np.float32) for d in act_dims])
    assert reward.shape == (4,) and terminated.shape == (4,) and terminated.dtype == bool
    np.testing.assert_array_equal(env.observe(env.state)[0], obs[0])


@pytest.mark.parametrize("env_id", IDS)
def test_every_agent_observes_the_single_agent_v5_observation(env_id):
    """Same seeds and actions through our adapter, mamujoco and the plain v5 env give the same
    observation (for every agent), reward and termination."""
    env = envs.make(env_id)
    task = mamujoco.TASKS[env_id]
    mamujoco_env = MultiAgentMujocoEnv(task["scenario"], task["agent_conf"])
    single = gym.make(f"{task['scenario']}-v5")
    seed = int(np.random.default_rng(7).integers(2**32))  # the adapter seeds episode k with the k-th draw of its rng
    obs = env.reset(2, np.random.default_rng(7))
    mamujoco_env.reset(seed=seed)
    single_obs, _ = single.reset(seed=seed)
    rng = np.random.default_rng(0)
    for t in range(60):
        for o in obs:
            np.testing.assert_allclose(o[0], single_obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(o[0], mamujoco_env.state(), rtol=1e-6, atol=1e-6)
        actions = [rng.uniform(-1, 1, size=(2, d)).astype(np.float32) for d in env.act_dims]
        obs, reward, terminated = env.step(actions)
        local = {f"agent_{i}": a[0] for i, a in enumerate(actions)}
        _, m_rewards, m_terminations, _, _ = mamujoco_env.step(local)
        single_obs, single_reward, single_terminated, _, _ = single.step(mamujoco_env.map_local_actions_to_global_action(local))
        assert reward[0] == pytest.approx(single_reward, rel=1e-5, abs=1e-5) == m_rewards["agent_0"]
        assert terminated[0] == single_terminated == m_terminations["agent_0"]
        if terminated[0]:
            break
    assert not np.allclose(obs[0][0], obs[0][1])  # the second episode of the batch is another one


@pytest.mark.parametrize("env_id", IDS)
def test_split_and_merge_round_trip_and_are_mamujocos_mapping(env_id):
    env = envs.make(env_id)
    task = mamujoco.TASKS[env_id]
    mamujoco_env = MultiAgentMujocoEnv(task["scenario"], task["agent_conf"])
    joint = np.random.default_rng(0).uniform(-1, 1, size=(5, env.joint_act_dim))
    parts = env.split(joint)
    assert [p.shape for p in parts] == [(5, d) for d in env.act_dims]
    np.testing.assert_array_equal(env.merge(parts), joint)
    for mine, again in zip(parts, env.split(env.merge(parts))):
        np.testing.assert_array_equal(mine, again)
    local = mamujoco_env.map_global_action_to_local_actions(joint[0])
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(p[0], local[f"agent_{i}"])
    np.testing.assert_array_equal(env.merge([p[0] for p in parts]), mamujoco_env.map_local_actions_to_global_action(local))


def test_ant_partition_is_not_contiguous():
    """Why the split must be mamujoco's: Ant's agent 1 drives joint-action entries 6, 7, 0, 1."""
    env = envs.make("ant-2x4")
    joint = np.arange(8.0)[None]
    np.testing.assert_array_equal(env.split(joint)[1], [[6, 7, 0, 1]])


def test_a_terminated_episode_stays_frozen_and_the_others_run_on():
    env = envs.make("hopper-3x1")
    env.reset(3, np.random.default_rng(0))
    push = [np.full((3, 1), 1.0, np.float32), np.full((3, 1), -1.0, np.float32), np.full((3, 1), 1.0, np.float32)]
    push[0][2] = 0.0  # episode 2 is pushed differently
    for t in range(200):
        obs, reward, terminated = env.step(push)
        if terminated[0]:
            break
    assert terminated[0], "full torque should topple the hopper within 200 steps"
    frozen = obs[0][0].copy()
    for _ in range(5):
        obs, reward, terminated = env.step(push)
        np.testing.assert_array_equal(obs[0][0], frozen)
        assert reward[0] == 0 and terminated[0]
    assert not hopper_healthy(frozen[None])[0]  # it stopped because the v5 health test failed


def test_halfcheetah_never_terminates():
    env = envs.make("halfcheetah-2x3")
    env.reset(2, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(100):
        _, _, terminated = env.step([rng.uniform(-1, 1, (2, 3)).astype(np.float32) for _ in range(2)])
        assert not terminated.any()


def test_normalized_score_uses_d4rl_references():
    refs = {"halfcheetah-2x3": (-280.178953, 12135.0), "hopper-3x1": (-20.272305, 3234.3),
            "walker2d-2x3": (1.629008, 4592.3), "ant-2x4": (-325.6, 3879.7)}
    for env_id, (random_return, expert_return) in refs.items():
        assert mamujoco.normalized_score(env_id, random_return) == pytest.approx(0)
        assert mamujoco.normalized_score(env_id, expert_return) == pytest.approx(100)
    assert mamujoco.normalized_score("hopper-3x1", (3234.3 - 20.272305) / 2) == pytest.approx(50)


def test_no_mujoco_log_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    envs.make("halfcheetah-2x3").reset(2, np.random.default_rng(0))  # HalfCheetah's model raises a MuJoCo warning
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


# --- behaviour policies ---

def test_missing_behaviour_weights_name_the_training_command(tmp_path):
    with pytest.raises(InputError, match=r"train them with `python -m envs\.behavior\.sac --env-id hopper-3x1`"):
        dataset.load("hopper-3x1", {}, tiny_recipe(tmp_path), str(tmp_path / "datasets"))


def test_behaviour_files_load_and_foreign_files_are_refused(behavior_dir, tmp_path):
    env = envs.make("hopper-3x1")
    actors = mamujoco_recipe.load_behavior(env, str(behavior_dir))
    obs = torch.randn(5, env.state_dim)
    for level in mamujoco.LEVELS:
        saved, meta = load_actor(behavior_dir / "hopper-3x1" / f"{level}.pt")
        assert meta["env_id"] == "hopper-3x1" and meta["level"] == level
        torch.testing.assert_close(actors[level].act(obs), saved.act(obs))
    assert not torch.allclose(actors["intermediate"].act(obs), actors["expert"].act(obs))

    shutil.copytree(behavior_dir / "hopper-3x1", tmp_path / "hopper-3x1")
    shutil.copy(behavior_dir / "ant-2x4" / "expert.pt", tmp_path / "hopper-3x1" / "expert.pt")
    with pytest.raises(InputError, match=r"expert.pt holds a ant-2x4 actor \(105 -> 8\), not one for hopper-3x1 \(11 -> 3\)"):
        mamujoco_recipe.load_behavior(env, str(tmp_path))
    (tmp_path / "hopper-3x1" / "expert.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read .*expert.pt"):
        mamujoco_recipe.load_behavior(env, str(tmp_path))


def test_actor_files_are_small(tmp_path):
    """The shipped actors (hidden 256) are a few hundred KB each."""
    save_actor(Actor(17, 6, 256), tmp_path / "expert.pt", env_id="halfcheetah-2x3", level="expert")
    assert 250_000 < (tmp_path / "expert.pt").stat().st_size < 400_000


# --- the Appendix-B mixture ---

def test_mixture_proportions_and_episode_structure(noisy_hopper):
    _, (env, data, meta) = noisy_hopper
    assert meta["n_transitions"] == [2000, 2000, 2000]
    assert meta["versions"]["mujoco"] is not None
    for agent_id, d in data.items():
        part = d["mixture_part"]
        assert np.bincount(part).tolist() == [400, 700, 700, 200]  # 20 / 35 / 35 / 10 %
        assert (np.diff(part) >= 0).all()  # part after part
        ends = d["dones"] | d["timeouts"]
        assert ends[np.flatnonzero(np.diff(part))].all() and ends[-1]  # every part ends with a whole episode
        assert not (d["dones"] & d["timeouts"]).any()
        np.testing.assert_array_equal(d["obs"], d["states"])  # every agent sees the full state
        chained = ~ends[:-1]
        np.testing.assert_array_equal(d["next_obs"][:-1][chained], d["obs"][1:][chained])
        # done = a true termination (the v5 health test fails), never a time limit
        np.testing.assert_array_equal(d["dones"], ~hopper_healthy(d["next_obs"]))
        assert d["dones"].sum() > 10  # tiny random actors topple the hopper often
        assert (np.diff(np.flatnonzero(ends), prepend=-1) <= 1000).all()
    early = [d["states"][d["mixture_part"] == 0] for d in data.values()]
    assert not np.array_equal(early[0], early[1])  # each agent's own episodes, even where all play alike


def test_summary_in_meta_gives_each_parts_mean_return(noisy_hopper):
    _, (env, data, meta) = noisy_hopper
    for agent_id, d in data.items():
        summary = meta["summary"][agent_id]
        ends = np.flatnonzero(d["dones"] | d["timeouts"])
        assert summary["episodes"] == len(ends) and summary["transitions"] == 2000
        for part, name in enumerate(["early_early", "intermediate_expert", "expert_intermediate", "expert_expert"]):
            rows = np.flatnonzero(d["mixture_part"] == part)
            part_ends = ends[(ends >= rows[0]) & (ends <= rows[-1])]
            episode_returns = [d["rewards"][s : e + 1].sum() for s, e in zip(np.r_[rows[0], part_ends[:-1] + 1], part_ends)]
            assert summary[f"part{part}_{name}_episodes"] == len(part_ends)
            assert summary[f"part{part}_{name}_return_mean"] == pytest.approx(np.mean(episode_returns), rel=1e-5)


def test_own_actions_follow_the_mixture_with_small_noise(noisy_hopper, behavior_dir):
    _, (env, data, _) = noisy_hopper
    actors = mamujoco_recipe.load_behavior(env, str(behavior_dir))
    for agent_id, d in data.items():
        obs = torch.as_tensor(d["obs"])
        with torch.no_grad():
            own = {level: env.split(actors[level].act(obs).numpy())[agent_id] for level in mamujoco.LEVELS}
            mean, log_std = actors["early"](obs)
        for part, (_, own_level, _) in enumerate(APPENDIX_B):
            rows = d["mixture_part"] == part
            a = d["actions"][rows]
            if own_level == "early":  # sampled: atanh(a) = mean + std * N(0, 1)
                std = log_std.exp().numpy()[:, env.action_index[agent_id]][rows]
                z = (np.arctanh(np.clip(a, -0.999999, 0.999999)) - mean.numpy()[:, env.action_index[agent_id]][rows]) / std
                assert abs(z.mean()) < 0.2 and 0.85 < z.std() < 1.15
                continue
            residual = a - own[own_level][rows]  # deterministic action + N(0, 0.1^2), clipped to [-1, 1]
            assert abs(residual.mean()) < 0.02 and 0.08 < residual.std() < 0.12
            other = "expert" if own_level == "intermediate" else "intermediate"
            assert np.abs(a - own[other][rows]).mean() > 0.5


def test_other_agents_play_the_right_policies(exact_hopper, behavior_dir):
    """Without noise the last three parts are deterministic: replaying a transition in the
    v5 env with the joint action the mixture prescribes reproduces (r, s'); swapping the
    roles of agent i and the others does not."""
    env, data, _ = exact_hopper
    actors = mamujoco_recipe.load_behavior(env, str(behavior_dir))
    sim = gym.make("Hopper-v5").unwrapped
    sim.reset(seed=0)

    def replay_error(d, rows, levels):
        obs = d["obs"][rows]
        with torch.no_grad():
            outs = {level: env.split(actors[level].act(torch.as_tensor(obs)).numpy()) for level in set(levels)}
        joint = env.merge([outs[level][j] for j, level in enumerate(levels)])
        errors = []
        for o, a, r, next_obs in zip(obs.astype(np.float64), joint, d["rewards"][rows], d["next_obs"][rows]):
            sim.set_state(np.concatenate([[0.0], o[:5]]), o[5:])  # hopper dynamics do not depend on x
            replayed, replayed_reward, _, _, _ = sim.step(a)
            errors.append(max(np.abs(replayed - next_obs).max(), abs(replayed_reward - r)))
        return max(errors)

    for agent_id, d in data.items():
        for part, (_, own_level, others_level) in list(enumerate(APPENDIX_B))[1:]:
            rows = np.flatnonzero((d["mixture_part"] == part) & (np.abs(d["obs"][:, 5:]) < 10).all(1))[:40]  # unclipped velocities
            assert len(rows) >= 20
            levels = [own_level if j == agent_id else others_level for j in range(env.n_agents)]
            assert replay_error(d, rows, levels) < 1e-4
            np.testing.assert_allclose(d["actions"][rows], env.split(env.merge([
                env.split(actors[lv].act(torch.as_tensor(d["obs"][rows])).detach().numpy())[j] for j, lv in enumerate(levels)
            ]))[agent_id], atol=1e-6)
            if own_level != others_level:
                swapped = [others_level if j == agent_id else own_level for j in range(env.n_agents)]
                assert replay_error(d, rows, swapped) > 0.1


def test_ant_actions_are_agent_is_own_dims(behavior_dir):
    env = envs.make("ant-2x4")
    d = mamujoco_recipe.collect(env, 1, n_transitions=300, seed=0, noise_std=0.0, episode_len=1000, behavior_dir=str(behavior_dir))
    rows = d["mixture_part"] == 3  # all expert, no noise
    actors = mamujoco_recipe.load_behavior(env, str(behavior_dir))
    with torch.no_grad():
        expert = actors["expert"].act(torch.as_tensor(d["obs"][rows])).numpy()
    assert d["actions"].shape == (300, 4)
    np.testing.assert_allclose(d["actions"][rows], expert[:, [6, 7, 0, 1]], atol=1e-6)


def test_collection_is_reproducible_from_its_seed(behavior_dir):
    env = envs.make("hopper-3x1")
    first = mamujoco_recipe.collect(env, 0, n_transitions=500, seed=3, noise_std=0.1, episode_len=1000, behavior_dir=str(behavior_dir))
    second = mamujoco_recipe.collect(env, 0, n_transitions=500, seed=3, noise_std=0.1, episode_len=1000, behavior_dir=str(behavior_dir))
    other = mamujoco_recipe.collect(env, 1, n_transitions=500, seed=3, noise_std=0.1, episode_len=1000, behavior_dir=str(behavior_dir))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["states"][:100], other["states"][:100])  # the early parts: same policies, own episodes


# The shipped HalfCheetah actors, 3000 transitions per agent, float64 actors: agent_0.npz's SHA-256 as built on an Intel
# Xeon VM (2026-12-02) under MKL's AVX-512, AVX2 and SSE4.2 paths alike. Another machine must build the same bytes.
PORTABLE_HALFCHEETAH_3000 = "2f96d216122597f99b32e1d78b69081d83ff32fb77749708b62b76ee724bc564"


def test_a_dataset_has_the_same_bytes_under_every_blas_code_path(tmp_path):
    """The episodes are chaotic: one action that differs in its last bit makes another dataset. With float32 actors
    MKL's kernel choice (by CPU, or MKL_ENABLE_INSTRUCTIONS) changed the bytes; the float64 default must not."""
    hashes = {}
    for name, setting in (("default", {}), ("avx2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
                          ("sse4_2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}), ("aten_default", {"ATEN_CPU_CAPABILITY": "default"})):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "envs.collect", "--env-id", "halfcheetah-2x3", "--n-transitions", "3000",
                               "--dataset-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **setting})
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = json.loads(next(out.glob("halfcheetah-2x3-*/meta.json")).read_text())
        assert meta["recipe"]["actor_dtype"] == "float64"
        hashes[name] = meta["content_sha256"]["agent_0.npz"]
    assert len(set(hashes.values())) == 1, hashes
    assert hashes["default"] == PORTABLE_HALFCHEETAH_3000, (
        f"this machine built {hashes['default']}, the Intel VM of 2026-12-02 {PORTABLE_HALFCHEETAH_3000}: the datasets are "
        "not portable to this CPU (docs/datasets.md)")


def test_an_unknown_actor_dtype_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="hopper-3x1: --actor-dtype must be one of float64, float32, got 'float16'"):
        dataset.build("hopper-3x1", {}, {"n_transitions": 100, "actor_dtype": "float16"}, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_short_episode_limit_ends_in_timeouts(behavior_dir):
    env = envs.make("ant-2x4")
    d = mamujoco_recipe.collect(env, 0, n_transitions=200, seed=0, noise_std=0.1, episode_len=30, behavior_dir=str(behavior_dir))
    ends = np.flatnonzero(d["dones"] | d["timeouts"])
    assert (np.diff(ends, prepend=-1) <= 30).all()
    assert d["timeouts"].sum() >= 200 // 30


def test_dataset_built_under_another_mujoco_is_refused(noisy_hopper, behavior_dir, tmp_path):
    root, _ = noisy_hopper
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("hopper-3x1-"))
    meta = json.loads((path / "meta.json").read_text())
    meta["versions"]["mujoco"] = "3.1.6"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"built with mujoco 3\.1\.6, this machine has 4\."):
        dataset.load("hopper-3x1", {}, tiny_recipe(behavior_dir), str(tmp_path))


# --- the SAC behaviour learner ---

def test_learner_and_buffer_state_round_trip():
    """What a checkpoint holds restores a learner that continues exactly as the original would."""
    from envs.behavior.sac import Args

    args = Args(hidden_dim=16, batch_size=8)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    agent, buffer = SAC(11, 3, args, "cpu"), ReplayBuffer(100, 11, 3)
    for _ in range(3):
        buffer.add(obs=rng.normal(size=(8, 11)), next_obs=rng.normal(size=(8, 11)), actions=rng.uniform(-1, 1, (8, 3)),
                   rewards=rng.normal(size=8), terminations=rng.random(8) < 0.1)
    for _ in range(4):
        agent.update(buffer.sample(8, rng, "cpu"))
    saved = io.BytesIO()  # through bytes, as a checkpoint file: state dicts alias the live tensors
    torch.save((agent.state_dict(), buffer.state_dict()), saved)
    saved.seek(0)
    state, buffer_state = torch.load(saved, weights_only=True)
    torch.manual_seed(1)
    restored, restored_buffer = SAC(11, 3, args, "cpu"), ReplayBuffer(100, 11, 3)
    restored.load_state_dict(state)
    restored_buffer.load_state_dict(buffer_state)
    assert restored.n_updates == 4 and restored_buffer.size == 24 and restored_buffer.pos == 24
    batch = buffer.sample(8, np.random.default_rng(5), "cpu")
    torch.testing.assert_close(batch, restored_buffer.sample(8, np.random.default_rng(5), "cpu"))
    for learner in (agent, restored):
        torch.manual_seed(2)
        learner.update(batch)
        learner.update(batch)
    for a, b in zip(agent.state_dict()["actor"].values(), restored.state_dict()["actor"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert agent.alpha == restored.alpha != 1.0


def sac_command(tmp_path, *extra):
    return [sys.executable, "-m", "envs.behavior.sac", "--env-id", "hopper-3x1", "--num-envs", "4", "--learning-starts", "64",
            "--batch-size", "32", "--hidden-dim", "32", "--buffer-size", "100000", "--early-step", "128", "--eval-freq", "200",
            "--eval-episodes", "2", "--checkpoint-freq", "200", "--target-return", "3",
            "--weights-dir", str(tmp_path / "weights"), "--run-dir", str(tmp_path / "run"), *extra]


def test_sac_smoke_run_survives_a_kill_and_resumes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        run = subprocess.Popen(sac_command(tmp_path, "--total-timesteps", "1000000"), cwd=tmp_path, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while not checkpoint.exists():
            assert run.poll() is None, log.read_text()
            assert time.time() < deadline, "no checkpoint within a minute"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)  # an interruption that leaves no chance to clean up
        run.wait()
    killed = torch.load(checkpoint, weights_only=True)
    step = killed["global_step"]
    assert step >= 200 and step % 200 == 0

    fresh = subprocess.run(sac_command(tmp_path, "--total-timesteps", "2000"), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert fresh.returncode != 0 and "--resume" in fresh.stderr  # a fresh start would clobber the run

    total = step + 400
    resumed = subprocess.run(sac_command(tmp_path, "--total-timesteps", str(total), "--resume"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'run'} at env step {step}" in resumed.stdout
    final = torch.load(checkpoint, weights_only=True)
    assert final["global_step"] == total
    assert final["agent"]["n_updates"] == killed["agent"]["n_updates"] + 400 // 4  # 0.25 updates per env step
    # the optimiser and the buffer went on from the checkpoint, not from scratch
    assert final["agent"]["actor_optimizer"]["state"][0]["step"] == final["agent"]["n_updates"] // 2 * 2
    assert final["buffer"]["size"] == total
    torch.testing.assert_close(final["buffer"]["obs"][:step], killed["buffer"]["obs"])

    record = json.loads((tmp_path / "weights" / "hopper-3x1" / "returns.json").read_text())
    steps = [e["step"] for e in record["evaluations"]]
    assert steps == list(range(200, total + 1, 200))
    assert record["levels"]["early"]["step"] == 128  # the first env step >= --early-step
    assert record["levels"]["intermediate"]["step"] == 200  # the first evaluation >= 1/3 of the (tiny) target
    assert record["levels"]["expert"]["eval_return"] == max(e["eval_return"] for e in record["evaluations"])
    for level in mamujoco.LEVELS:
        actor, meta = load_actor(tmp_path / "weights" / "hopper-3x1" / f"{level}.pt")
        assert meta["env_id"] == "hopper-3x1" and meta["level"] == level and meta["mujoco"]
        assert actor.act(torch.zeros(1, 11)).shape == (1, 3)
