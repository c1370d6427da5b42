"""Cooperative navigation (`cn`): the numpy simulation against mpe2's simple_spread_v3, the reward, the action
mapping and the per-agent datasets."""

import numpy as np
import pytest

import envs
from conftest import ROOT
from envs import InputError, cn, dataset

TINY = {"n_transitions": 500}


@pytest.fixture
def registered(monkeypatch):
    """`cn` in the registry for this test only (the registry line itself belongs to envs/__init__.py)."""
    monkeypatch.setitem(envs.REGISTRY, "cn", cn)


def _state(pos, vel, landmarks):
    return cn.join_state(*(np.asarray(x, dtype=np.float64)[None] for x in (pos, vel, landmarks)))


def test_cn_shapes_and_registry_make(registered):
    env = envs.make("cn")
    assert envs.resolve("cn") == ({"eval_episode_len": 25}, {"n_transitions": 1_000_000, "episode_len": 25, "seed": 0})
    assert (env.n_agents, env.obs_dims, env.act_dims, env.discrete, env.eval_episode_len, env.state_dim) == (
        4, [24] * 4, [2] * 4, False, 25, 24)
    assert envs.make("cn", eval_episode_len=50).eval_episode_len == 50
    obs = env.reset(3, np.random.default_rng(0))
    assert [o.shape for o in obs] == [(3, 24)] * 4 and all(o.dtype == np.float32 for o in obs)
    assert np.abs(env.pos).max() <= 1 and np.abs(env.landmarks).max() <= 1 and not env.vel.any()
    obs, r, terminated = env.step([np.zeros((3, 2))] * 4)
    assert [o.shape for o in obs] == [(3, 24)] * 4 and r.shape == (3,) and r.dtype == np.float32
    assert terminated.shape == (3,) and not terminated.any()
    for _ in range(30):  # no time limit inside the env: the scripts roll on past it
        obs, r, terminated = env.step([np.ones((3, 2))] * 4)
    assert not terminated.any()
    assert env.state.shape == (3, 24)
    for o, o_state in zip(obs, env.observe(env.state)):  # observe(states) is the agents' view of global states
        np.testing.assert_array_equal(o, o_state)
    # the layout of one observation: own vel, own pos, landmarks - own pos, others - own pos, silent comm
    o1 = env.observe(env.state)[1][0]
    np.testing.assert_allclose(o1[:2], env.vel[0, 1], rtol=1e-6)
    np.testing.assert_allclose(o1[2:4], env.pos[0, 1], rtol=1e-6)
    np.testing.assert_allclose(o1[4:12], (env.landmarks[0] - env.pos[0, 1]).ravel(), rtol=1e-6)
    np.testing.assert_allclose(o1[12:18], (env.pos[0, [0, 2, 3]] - env.pos[0, 1]).ravel(), rtol=1e-6)
    assert not o1[18:].any()


def test_cn_reward_is_minus_the_closest_distances_with_no_collision_term():
    # agents 0, 1, 2 overlap (0.1 apart, contact distance 0.3); landmark 3's closest agent is agent 1, not agent 3
    pos = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [3.0, 4.0]]
    landmarks = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]
    hand = -(0.0 + 0.9 + 0.9 + 2.9)
    state = _state(pos, np.zeros((4, 2)), landmarks)
    assert cn.reward(*cn.split_state(state)[::2]) == pytest.approx([hand], abs=1e-12)
    # a step from rest does not move anyone yet (p += v dt with the old v), so the reward is the hand value
    env = cn.make()
    env.reset(1, np.random.default_rng(0))
    env.state = state
    _, r, _ = env.step([np.zeros((1, 2))] * 4)
    assert r[0] == pytest.approx(hand, abs=1e-6)
    assert np.abs(env.vel[0, :3]).max() > 1  # the contact forces did act (on velocities)
    # mpe2 with local_ratio=0 gives every agent exactly this reward, overlapping or not ...
    ref = cn.mpe2_reference_env()
    ref.reset(seed=0)
    cn.set_mpe2_state(ref, state[0])
    _, rewards, _, _, _ = ref.step({name: np.zeros(5, dtype=np.float32) for name in ref.agents})
    assert list(rewards.values()) == [pytest.approx(hand, abs=1e-12)] * 4
    # ... while its default local_ratio (0.5) would charge the three overlapping agents -1 per contact
    from mpe2 import simple_spread_v3

    default = simple_spread_v3.parallel_env(N=4, max_cycles=25, continuous_actions=True)
    default.reset(seed=0)
    cn.set_mpe2_state(default, state[0])
    _, rewards, _, _, _ = default.step({name: np.zeros(5, dtype=np.float32) for name in default.agents})
    assert list(rewards.values()) == pytest.approx([0.5 * hand - 0.5 * 2] * 3 + [0.5 * hand])


def test_cn_action_mapping_onto_mpe2():
    a = np.array([[1.0, 0.0], [-0.5, 0.25], [0.0, -1.0], [2.0, -3.0], [0.0, 0.0]])
    expected = [[0, 0, 1, 0, 0], [0, 0.5, 0, 0, 0.25], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    mapped = cn.to_mpe2_action(a)
    np.testing.assert_array_equal(mapped, expected)  # out-of-range actions are clipped to [-1, 1] first
    assert mapped.min() >= 0 and mapped.max() <= 1 and not np.signbit(mapped).any()
    # mpe2 turns the mapped action into u = 5 a exactly: from rest, apart, v' = 0.1 * u
    ref = cn.mpe2_reference_env()
    ref.reset(seed=0)
    pos = [[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]]
    cn.set_mpe2_state(ref, _state(pos, np.zeros((4, 2)), np.zeros((4, 2)))[0])
    act = np.array([[1.0, 0.0], [-0.5, 0.25], [0.3, -1.0], [-0.7, 0.9]], dtype=np.float32)
    ref.step({f"agent_{i}": cn.to_mpe2_action(act[i]) for i in range(4)})
    world = ref.unwrapped.world
    np.testing.assert_array_equal([agent.action.u for agent in world.agents], 5.0 * act.astype(np.float64))
    np.testing.assert_allclose([agent.state.p_vel for agent in world.agents], 0.5 * act, rtol=1e-12, atol=1e-15)


def _mpe2_episode(start_state, actions):
    """Obs [T, 4, 24] and rewards [T, 4] of mpe2 from `start_state` under actions [T, 4, 2]; also its flags."""
    ref = cn.mpe2_reference_env(max_cycles=len(actions))
    ref.reset(seed=0)
    cn.set_mpe2_state(ref, start_state)
    obs, rewards, ended = [], [], []
    for a in actions:
        o, r, term, trunc, _ = ref.step({f"agent_{i}": cn.to_mpe2_action(a[i]) for i in range(4)})
        obs.append([o[f"agent_{i}"] for i in range(4)])
        rewards.append([r[f"agent_{i}"] for i in range(4)])
        ended.append((any(term.values()), all(trunc.values())))
    return np.array(obs), np.array(rewards), ended


def test_cn_matches_mpe2_step_for_step_with_collisions():
    n_seeded, n_clustered, horizon = 3, 4, 25
    rng = np.random.default_rng(7)
    env = cn.make()
    # seeded starts: this env's reset with default_rng(s) starts where mpe2's reset(seed=s) does
    starts = []
    for s in range(n_seeded):
        obs0 = env.reset(1, np.random.default_rng(s))
        ref = cn.mpe2_reference_env()
        ref_obs, _ = ref.reset(seed=s)
        for i in range(4):
            np.testing.assert_array_equal(obs0[i][0], ref_obs[f"agent_{i}"])
        starts.append(env.state[0])
    # clustered starts: all four agents within 0.2 of a point, so they push each other from the first step
    for _ in range(n_clustered):
        centre = rng.uniform(-0.5, 0.5, 2)
        pos = centre + rng.uniform(-0.1, 0.1, (4, 2))
        starts.append(_state(pos, rng.uniform(-0.5, 0.5, (4, 2)), rng.uniform(-1, 1, (4, 2)))[0])
    starts = np.array(starts)
    n = len(starts)
    actions = rng.uniform(-1, 1, (n, horizon, 4, 2)).astype(np.float32)
    actions[n_seeded:, :8] = 0.3 * actions[n_seeded:, :8]  # clustered agents stay in contact a while
    # this env: all episodes in one batch
    env.reset(n, rng)
    env.state = starts
    obs, rewards, min_gap = [], [], np.inf
    for t in range(horizon):
        o, r, terminated = env.step([actions[:, t, i] for i in range(4)])
        assert not terminated.any()
        obs.append(np.stack(o, 1))
        rewards.append(r)
        min_gap = min(min_gap, min(np.linalg.norm(env.pos[:, i] - env.pos[:, j], axis=-1).min() for i, j in cn.PAIRS))
    obs, rewards = np.stack(obs, 1), np.stack(rewards, 1)  # [n, T, 4, 24], [n, T]
    for e in range(n):
        ref_obs, ref_rewards, ended = _mpe2_episode(starts[e], actions[e])
        np.testing.assert_allclose(obs[e], ref_obs, rtol=0, atol=1e-6, err_msg=f"episode {e}")
        np.testing.assert_allclose(rewards[e][:, None].repeat(4, 1), ref_rewards, rtol=0, atol=1e-6, err_msg=f"episode {e}")
        assert ended == [(False, False)] * (horizon - 1) + [(False, True)]  # max_cycles: a time limit, not a terminal
    assert min_gap < 0.2  # agents overlapped well inside the 0.3 contact distance
    # and the float64 rewards agree far below float32 rounding
    env.reset(n, rng)
    env.state = starts
    for t in range(3):
        env.step([actions[:, t, i] for i in range(4)])
    for e in range(n):
        ref = cn.mpe2_reference_env()
        ref.reset(seed=0)
        cn.set_mpe2_state(ref, starts[e])
        for t in range(3):
            _, r, _, _, _ = ref.step({f"agent_{i}": cn.to_mpe2_action(actions[e, t, i]) for i in range(4)})
        world = ref.unwrapped.world
        np.testing.assert_allclose([a.state.p_pos for a in world.agents], env.pos[e], rtol=0, atol=1e-12)
        np.testing.assert_allclose([a.state.p_vel for a in world.agents], env.vel[e], rtol=0, atol=1e-12)
        assert r["agent_0"] == pytest.approx(float(cn.reward(env.pos[e:e + 1], env.landmarks[e:e + 1])[0]), abs=1e-12)


def test_cn_tiny_dataset_is_valid_per_agent_uniform_episodes_with_timeouts(tmp_path, registered):
    path = dataset.build("cn", {}, TINY, str(tmp_path))
    env, data, meta = dataset.load("cn", {}, TINY, str(tmp_path))  # validates every agent's file
    assert path.name.startswith("cn-") and meta["n_transitions"] == [500] * 4 and sorted(data) == [0, 1, 2, 3]
    assert meta["summary"][0]["episodes"] == 20
    for i, d in data.items():
        dataset.validate(d, env, i, f"agent {i}")
        assert d["obs"].shape == (500, 24) and d["actions"].shape == (500, 2) and d["states"].shape == (500, 24)
        assert not d["dones"].any()
        np.testing.assert_array_equal(np.flatnonzero(d["timeouts"]), np.arange(24, 500, 25))
        # the agent's view of the stored states; transitions chain within an episode and restart after a timeout
        np.testing.assert_allclose(d["obs"], env.observe(d["states"])[i], atol=1e-5)
        np.testing.assert_allclose(d["next_obs"][:24], d["obs"][1:25])
        assert not np.allclose(d["next_obs"][24], d["obs"][25])
        starts = d["states"][::25]
        assert not starts[:, 8:16].any() and np.abs(starts).max() <= 1  # at rest, uniform in [-1, 1]
        # reward of the state after the move: -sum_j min_i |p_i - l_j| of the next positions
        next_pos = d["states"][1:25, :8].reshape(-1, 4, 2).astype(np.float64)
        landmarks = d["states"][1:25, 16:].reshape(-1, 4, 2).astype(np.float64)
        np.testing.assert_allclose(d["rewards"][:24], cn.reward(next_pos, landmarks), atol=1e-5)
        assert np.abs(d["actions"]).max() <= 1 and d["actions"].std() > 0.5  # uniform in [-1, 1]^2
    # each agent's file comes from its own episodes (stream [seed, agent_id])
    firsts = [data[i]["states"][0] for i in range(4)]
    assert len({f.tobytes() for f in firsts}) == 4
    # rebuilt identically from the seed
    again = cn.collect(cn.make(), 2, seed=0, **{k: v for k, v in envs.resolve("cn", {}, TINY)[1].items() if k != "seed"})
    for key in again:
        np.testing.assert_array_equal(again[key], data[2][key])


def test_cn_bad_options_name_the_option(tmp_path, registered):
    for bad in (0, -3, 2.5, True, "25"):
        with pytest.raises(ValueError, match="cn: --eval-episode-len must be a positive integer"):
            cn.make(eval_episode_len=bad)
    env = cn.make()
    recipe = dict(n_transitions=100, episode_len=25, seed=0)
    for key, bad, words in (("n_transitions", 0, "--n-transitions must be a positive integer"),
                            ("n_transitions", 1.5, "--n-transitions must be a positive integer"),
                            ("episode_len", -1, "--episode-len must be a positive integer"),
                            ("episode_len", 2.5, "--episode-len must be a positive integer"),
                            ("seed", -1, "--seed must be an integer >= 0"),
                            ("seed", 0.5, "--seed must be an integer >= 0")):
        with pytest.raises(ValueError, match=words):
            cn.collect(env, 0, **{**recipe, key: bad})
    # through the registry: one-line errors
    with pytest.raises(InputError, match="--eval-episode-len must be"):
        envs.make("cn", eval_episode_len=2.5)
    with pytest.raises(InputError, match="--eval-episode-len must be > 0"):
        envs.make("cn", eval_episode_len=0)
    with pytest.raises(InputError, match="no env option"):
        envs.make("cn", N=3)
    with pytest.raises(InputError, match="--episode-len must be a positive integer"):
        dataset.build("cn", {}, {"n_transitions": 100, "episode_len": 2.5}, str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


def test_reference_teams_print_and_covering_the_landmarks_beats_uniform_play():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "benchmark/cn_references.py", "--episodes", "50"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): float(line.split("|")[2].split("±")[0]) for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {"uniform", "stand still", "nearest landmark", "landmark i"}
    assert rows["landmark i"] > rows["stand still"] > rows["uniform"]
