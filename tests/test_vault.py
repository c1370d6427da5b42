"""OG-MARL vaults split per agent (envs/vault.py): tiny vaults written by the test, with envs/vault.py's writer (the
shipped SAC actors) and directly with flashbax (hand-made arrays whose split is checked by hand)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import conftest
import envs
from envs import InputError, dataset, vault


def write_raw(root, source: str, scenario: str, uid: str, experience: dict) -> None:
    """A vault in OG-MARL's layout written with flashbax itself: [B, T, ...] arrays, infos.state under `infos`."""
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    folder = root / source / "gymnasium_mamujoco"
    v = Vault(vault_name=f"{scenario}.vlt", vault_uid=uid, rel_dir=str(folder), experience_structure=experience)
    size = experience["rewards"].shape[1]
    v.write(TrajectoryBufferState(experience=experience, current_index=np.array(size), is_full=np.array(False)),
            source_interval=(0, size))


def read_raw(root, source: str, scenario: str, uid: str) -> dict:
    """A vault read as OG-MARL reads it (og_marl/replay_buffers.py populate_from_vault), as numpy."""
    from flashbax.vault import Vault

    state = Vault(vault_name=f"{source}/gymnasium_mamujoco/{scenario}.vlt", vault_uid=uid, rel_dir=str(root)).read()
    return {k: ({"state": np.asarray(v["state"])} if k == "infos" else np.asarray(v)) for k, v in state.experience.items()}


def hand_made(env, ends: list[dict], T: int, seed: int, flag_dtype=bool) -> dict:
    """B streams of T rows of a scenario: random states, every agent's local observation mapped from its state and
    zero-padded (OG-MARL's), random actions, a team reward copied per agent; `ends` per stream: {row: (terminal, truncated)}."""
    rng = np.random.default_rng(seed)
    B, N = len(ends), env.n_agents
    states = rng.uniform(-2, 2, (B, T, env.state_dim)).astype(np.float32)
    obs = np.zeros((B, T, N, env.padded_dim), np.float32)
    for i, index in enumerate(env.obs_index):
        obs[:, :, i, : len(index)] = states[:, :, index]
    rewards = np.repeat(rng.normal(size=(B, T, 1)).astype(np.float32), N, 2)
    terminals, truncations = np.zeros((B, T, N), flag_dtype), np.zeros((B, T, N), flag_dtype)
    for b, stream in enumerate(ends):
        for row, (terminal, truncated) in stream.items():
            terminals[b, row], truncations[b, row] = terminal, truncated
    return dict(observations=obs, actions=rng.uniform(-1, 1, (B, T, N, max(env.act_dims))).astype(np.float32),
                rewards=rewards, terminals=terminals, truncations=truncations, infos={"state": states})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A vault root holding: writer-made 2halfcheetah (expert) and 3hopper (mixture) vaults, and a hand-made 3hopper one."""
    path = tmp_path_factory.mktemp("vaults")
    vault.build("2halfcheetah", "expert", n_episodes=2, episode_len=30, out_dir=str(path))
    with pytest.MonkeyPatch.context() as mp:  # two batches of episodes, written in chunks of 47 rows
        mp.setattr(vault, "PARALLEL_EPISODES", 4)
        mp.setattr(vault, "WRITE_CHUNK", 47)
        vault.build("3hopper", "mixture", n_episodes=6, episode_len=60, seed=1, out_dir=str(path))
    hopper = envs.make("vault:test/gymnasium_mamujoco/3hopper/Hand")
    # stream 0: terminal at 3, truncated at 7, rows 8-9 an unfinished episode; stream 1: terminal and truncated at 2,
    # truncated at 6, rows 7-9 unfinished. Converted vaults store the flags as float32.
    write_raw(path, "test", "3hopper", "Hand", hand_made(hopper, [{3: (1, 0), 7: (0, 1)}, {2: (1, 1), 6: (0, 1)}], 10, 0, np.float32))
    return path


@pytest.fixture
def vaults(root, monkeypatch):
    monkeypatch.setenv("ODMARL_VAULT_DIR", str(root))
    return root


def test_written_vault_is_in_og_marl_layout_with_og_marl_local_observations(vaults):
    folder = vaults / "odmarl" / "gymnasium_mamujoco" / "3hopper.vlt" / "Mixture"
    assert (folder / "metadata.json").is_file() and not list(folder.parent.glob("*.tmp-*"))
    exp = read_raw(vaults, "odmarl", "3hopper", "Mixture")
    env = envs.make("vault:odmarl/gymnasium_mamujoco/3hopper/Mixture")
    B, T, N, D = exp["observations"].shape
    assert (B, N, D) == (1, 3, 9) and env.local_dims == [8, 9, 8] and exp["actions"].shape == (1, T, 3, 1)
    assert exp["infos"]["state"].shape == (1, T, 11) and exp["terminals"].dtype == np.bool_
    state = exp["infos"]["state"][0]
    for i, index in enumerate(env.obs_index):  # mamujoco's agent_obsk=1 observation of the recorded state, zero-padded
        local = exp["observations"][0, :, i]
        assert not local[:, len(index):].any()
        same = np.isclose(local[:, : len(index)], state[:, index]) | (np.abs(state[:, index]) == 10)  # v5 clips qvel
        assert same.all()
    assert (exp["rewards"] == exp["rewards"][..., :1]).all()
    ends = np.flatnonzero(exp["terminals"][0, :, 0] | exp["truncations"][0, :, 0])
    assert len(ends) == 6 and ends[-1] == T - 1  # every episode whole, one stream
    lengths = np.diff(np.r_[-1, ends])
    assert ((lengths == 60) | exp["terminals"][0, ends, 0]).all() and exp["truncations"][0, ends, 0].sum() == (lengths == 60).sum()


def test_hand_made_vault_splits_by_hand(vaults, tmp_path):
    env_id = "vault:test/gymnasium_mamujoco/3hopper/Hand"
    exp = read_raw(vaults, "test", "3hopper", "Hand")
    env, data, meta = dataset.load(env_id, dataset_dir=str(tmp_path), agent_ids=[0, 1, 2])
    assert env.obs_dims == [8, 9, 8] and meta["n_transitions"] == [13, 13, 13]
    # (stream, kept rows, rows of next_obs, dones, timeouts): a terminal last step keeps next_obs = obs, a truncated
    # last step is dropped and the step before it is the timeout, the unfinished episodes are dropped
    by_hand = [(0, [0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 3, 5, 6, 7], [3], [6]), (1, [0, 1, 2, 3, 4, 5], [1, 2, 2, 4, 5, 6], [2], [5])]
    r = exp["rewards"][..., 0]
    for i, width in enumerate([8, 9, 8]):
        got, start = data[i], 0
        for b, rows, next_rows, dones, timeouts in by_hand:
            s = slice(start, start + len(rows))
            np.testing.assert_array_equal(got["obs"][s], exp["observations"][b, rows, i, :width])
            np.testing.assert_array_equal(got["next_obs"][s], exp["observations"][b, next_rows, i, :width])
            np.testing.assert_array_equal(got["actions"][s], exp["actions"][b, rows, i])
            np.testing.assert_array_equal(got["rewards"][s], r[b, rows])
            np.testing.assert_array_equal(got["states"][s], exp["infos"]["state"][b, rows])
            np.testing.assert_array_equal(np.flatnonzero(got["dones"][s]), dones)
            np.testing.assert_array_equal(np.flatnonzero(got["timeouts"][s]), timeouts)
            start += len(rows)
        assert start == len(got["rewards"])
    episode_returns = [r[0, :4].sum(), r[0, 4:8].sum(), r[1, :3].sum(), r[1, 3:7].sum()]  # the dropped steps' rewards too
    np.testing.assert_allclose(data[0]["episode_return"][[3, 6, 9, 12]], episode_returns, rtol=1e-6)
    assert meta["summary"][0]["episodes"] == 4 and meta["summary"][0]["terminated"] == 2
    padded, data_padded, _ = dataset.load(env_id, {"obs": "padded"}, dataset_dir=str(tmp_path), agent_ids=[0])
    assert padded.obs_dims == [9, 9, 9]
    np.testing.assert_array_equal(data_padded[0]["obs"][:7], exp["observations"][0, :7, 0])  # OG-MARL's padded rows


def test_central_view_is_the_state_and_the_joint_action_by_hand(vaults, tmp_path):
    """--obs central: ONE agent observing infos.state and acting with every agent's action concatenated in agent order,
    with the split's rows, team reward and flags; its dataset folder is not the split's."""
    env_id = "vault:test/gymnasium_mamujoco/3hopper/Hand"
    exp = read_raw(vaults, "test", "3hopper", "Hand")
    env, data, meta = dataset.load(env_id, {"obs": "central"}, dataset_dir=str(tmp_path))
    assert (env.n_agents, env.obs_dims, env.act_dims, meta["n_transitions"]) == (1, [11], [3], [13])
    _, split, split_meta = dataset.load(env_id, dataset_dir=str(tmp_path), agent_ids=[0])
    assert meta["path"] != split_meta["path"] and meta["env_kwargs"]["obs"] == "central"
    got, start = data[0], 0
    for b, rows, next_rows in ((0, [0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 3, 5, 6, 7]), (1, [0, 1, 2, 3, 4, 5], [1, 2, 2, 4, 5, 6])):
        s = slice(start, start + len(rows))
        np.testing.assert_array_equal(got["obs"][s], exp["infos"]["state"][b, rows])
        np.testing.assert_array_equal(got["next_obs"][s], exp["infos"]["state"][b, next_rows])
        np.testing.assert_array_equal(got["actions"][s], exp["actions"][b, rows, :, 0])  # agents 0, 1, 2: one joint each
        start += len(rows)
    for key in ("rewards", "dones", "timeouts", "states", "episode_return"):
        np.testing.assert_array_equal(got[key], split[0][key])


def test_central_env_splits_the_joint_action_back_to_the_agents():
    """2ant: agent 0 drives joints 2-5, agent 1 joints 6, 7, 0, 1. The central agent's action is theirs concatenated in
    agent order; stepping it is stepping the scenario with each agent's part. It observes the state."""
    central = envs.make("vault:og_marl/gymnasium_mamujoco/2ant/Replay", obs="central")
    local = envs.make("vault:og_marl/gymnasium_mamujoco/2ant/Replay")
    assert (central.n_agents, central.obs_dims, central.act_dims) == (1, [105], [8])
    assert np.concatenate(local.partition).tolist() != list(range(8))  # agent order is not the joint order
    rng, n = np.random.default_rng(3), 3
    (obs,), _ = central.reset(n, np.random.default_rng(7)), local.reset(n, np.random.default_rng(7))
    for _ in range(4):
        np.testing.assert_array_equal(obs, local.state.astype(np.float32))
        np.testing.assert_array_equal(central.observe(local.state)[0], obs)
        actions = [rng.uniform(-1, 1, (n, 4)).astype(np.float32) for _ in range(2)]
        (obs,), reward, terminated = central.step([np.concatenate(actions, -1)])
        _, local_reward, local_terminated = local.step(actions)
        np.testing.assert_array_equal(reward, local_reward)
        np.testing.assert_array_equal(terminated, local_terminated)


def test_writer_vault_splits_and_the_agents_share_the_episodes(vaults, tmp_path):
    env, data, meta = dataset.load("vault:odmarl/gymnasium_mamujoco/3hopper/Mixture", dataset_dir=str(tmp_path))
    exp = read_raw(vaults, "odmarl", "3hopper", "Mixture")
    ends = exp["terminals"][0, :, 0] | exp["truncations"][0, :, 0]
    dropped = ends & ~exp["terminals"][0, :, 0]
    assert meta["n_transitions"] == [int((~dropped).sum())] * 3 and meta["summary"][0]["episodes"] == 6
    for i in range(3):
        np.testing.assert_array_equal(data[i]["rewards"], data[0]["rewards"])
        np.testing.assert_array_equal(data[i]["dones"], data[0]["dones"])
        np.testing.assert_array_equal(data[i]["actions"][:, 0], exp["actions"][0, ~dropped, i, 0])
    returns = [e for e in np.split(exp["rewards"][0, :, 0], np.flatnonzero(ends)[:-1] + 1)]
    np.testing.assert_allclose(meta["summary"][0]["return_mean"], np.mean([e.astype(np.float64).sum() for e in returns]), rtol=1e-5)


def test_cache_key_changes_with_the_vaults_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ODMARL_VAULT_DIR", str(tmp_path / "v"))
    env_id = "vault:test/gymnasium_mamujoco/2halfcheetah/Replay"
    env = envs.make(env_id)
    assert envs.resolve(env_id)[1] == {"vault_sha256": ""}  # no vault yet: the env still evaluates
    write_raw(tmp_path / "v", "test", "2halfcheetah", "Replay", hand_made(env, [{4: (0, 1)}], 6, 0))
    first = envs.resolve(env_id)[1]
    assert len(first["vault_sha256"]) == 16 and envs.resolve(env_id)[1] == first
    _, data, meta = dataset.load(env_id, dataset_dir=str(tmp_path / "d"))
    import shutil

    shutil.rmtree(tmp_path / "v" / "test")
    write_raw(tmp_path / "v", "test", "2halfcheetah", "Replay", hand_made(env, [{4: (0, 1)}], 6, 1))  # same id, new content
    second = envs.resolve(env_id)[1]
    assert second != first
    _, data2, meta2 = dataset.load(env_id, dataset_dir=str(tmp_path / "d"))
    assert meta2["path"] != meta["path"] and not np.array_equal(data[0]["obs"], data2[0]["obs"])
    with pytest.raises(InputError, match="--vault-sha256 0000000000000000 is not the content of the vault"):
        dataset.load(env_id, recipe={"vault_sha256": "0" * 16}, dataset_dir=str(tmp_path / "d"))


@pytest.mark.parametrize("env_id, message", [
    ("vault:og_marl/smac_v1/3m/Good", "only gymnasium_mamujoco vaults of scenarios 2ant, 2halfcheetah, 2walker, 3hopper, "
                                      "4ant, 6halfcheetah .* are supported, not 'smac_v1'"),
    ("vault:og_marl/mamujoco/2halfcheetah/Good", "not 'mamujoco' \\(the old mamujoco vaults are mujoco-py"),
    ("vault:omar/mamujoco/2halfcheetah/Expert", "are supported, not 'mamujoco'"),
    ("vault:og_marl/gymnasium_mamujoco/2humanoid/Replay", "are supported, not scenario '2humanoid'"),
    ("vault:og_marl/gymnasium_mamujoco/2halfcheetah", "is not a vault id: use vault:<source>/<env>/<scenario>/<uid>"),
    ("vault:og_marl/gymnasium_mamujoco/../Replay", "is not a vault id"),
])
def test_other_vaults_are_refused_in_one_line(env_id, message):
    with pytest.raises(InputError, match=message) as e:
        envs.env_module(env_id)
    assert "\n" not in str(e.value)


def test_a_missing_vault_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("ODMARL_VAULT_DIR", str(tmp_path / "vaults"))
    with pytest.raises(InputError, match="no vault at .*og_marl/gymnasium_mamujoco/2halfcheetah.vlt/Replay: download OG-MARL's"):
        dataset.load("vault:og_marl/gymnasium_mamujoco/2halfcheetah/Replay", dataset_dir=str(tmp_path / "d"))
    with pytest.raises(InputError, match="python -m envs.vault --scenario 3hopper --quality expert --source mine --uid X"):
        dataset.load("vault:mine/gymnasium_mamujoco/3hopper/X", dataset_dir=str(tmp_path / "d"))
    out = capfd.readouterr().out
    assert not (tmp_path / "d").exists() and "Vault does not exist" not in out and "Loading vault" not in out
    env = {**os.environ, "ODMARL_VAULT_DIR": str(tmp_path / "vaults"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "envs.collect", "--env-id", "vault:og_marl/gymnasium_mamujoco/2ant/Replay",
                           "--dataset-dir", str(tmp_path / "d")], cwd=conftest.ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert conftest.one_line_error(proc).startswith("error: no vault at ")


def test_vaults_that_do_not_fit_their_scenario_are_refused(vaults, tmp_path, monkeypatch):
    cheetah, hopper = envs.make("vault:x/gymnasium_mamujoco/2halfcheetah/A"), envs.make("vault:x/gymnasium_mamujoco/3hopper/A")
    root = tmp_path / "v"
    monkeypatch.setenv("ODMARL_VAULT_DIR", str(root))
    write_raw(root, "x", "2halfcheetah", "Hopper", hand_made(hopper, [{4: (1, 0)}], 6, 0))  # 3 agents under 2halfcheetah
    old = hand_made(cheetah, [{4: (0, 1)}], 6, 0)
    old["infos"]["state"] = np.repeat(old["infos"]["state"][:, :, None], 2, 2)  # the old mamujoco: a state per agent
    write_raw(root, "x", "2halfcheetah", "PerAgentState", old)
    shuffled = hand_made(cheetah, [{4: (0, 1)}], 6, 0)
    shuffled["observations"][..., :12] = shuffled["observations"][..., ::-1][..., :12].copy()  # another observation
    write_raw(root, "x", "2halfcheetah", "Shuffled", shuffled)
    unpadded = hand_made(hopper, [{4: (1, 0)}], 6, 0)
    unpadded["observations"][:, :, 0, 8] = 1.0  # agent 0 observes 8 numbers: the 9th must be OG-MARL's zero
    write_raw(root, "x", "3hopper", "Padding", unpadded)
    rewards = hand_made(cheetah, [{4: (0, 1)}], 6, 0)
    rewards["rewards"][:, :, 1] += 1
    write_raw(root, "x", "2halfcheetah", "Rewards", rewards)
    for uid, message in (("Hopper", "does not fit 2halfcheetah \\(HalfCheetah 2x3: 2 agents.*observations are \\[B, T, 3, 9\\]"),
                         ("PerAgentState", "its infos.state are \\[B, T, 2, 17\\], expected \\[B, T, 17\\]"),
                         ("Shuffled", "agent 0's observation at the episode start of stream 0, step 0 is not MaMuJoCo's local"),
                         ("Rewards", "the agents' rewards differ")):
        with pytest.raises(InputError, match=message) as e:
            dataset.load(f"vault:x/gymnasium_mamujoco/2halfcheetah/{uid}", dataset_dir=str(tmp_path / "d"))
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="agent 0's observations are not zero beyond its 8 local numbers"):
        dataset.load("vault:x/gymnasium_mamujoco/3hopper/Padding", dataset_dir=str(tmp_path / "d"))
    assert not any(p.name.endswith(".npz") for p in (tmp_path / "d").rglob("*"))
    with pytest.raises(InputError, match="--obs must be one of local, padded, central, got 'full'"):
        envs.make("vault:x/gymnasium_mamujoco/2halfcheetah/Hopper", obs="full")


def test_a_stream_may_start_mid_episode_where_the_state_clips_a_velocity(tmp_path, monkeypatch):
    """Walker2d-v5's state clips joint velocities to +-10, mamujoco's local observations do not: a vault whose stream
    starts mid-episode at such a velocity still fits; the same difference in any other number does not."""
    monkeypatch.setenv("ODMARL_VAULT_DIR", str(tmp_path / "v"))
    walker = envs.make("vault:x/gymnasium_mamujoco/2walker/A")
    for uid, state_value, local_value in (("Clipped", 10.0, 12.5), ("Other", 9.0, 12.5)):
        exp = hand_made(walker, [{4: (0, 1)}], 6, 0)
        exp["infos"]["state"][0, 0, 10] = state_value  # a joint velocity (v5: qpos[1:] is 8 numbers, then qvel)
        for i, index in enumerate(walker.obs_index):
            exp["observations"][0, 0, i, : len(index)][index == 10] = local_value
        write_raw(tmp_path / "v", "x", "2walker", uid, exp)
    _, data, _ = dataset.load("vault:x/gymnasium_mamujoco/2walker/Clipped", dataset_dir=str(tmp_path / "d"))
    assert 12.5 in np.concatenate([data[0]["obs"][0], data[1]["obs"][0]]) and data[0]["states"][0, 10] == 10
    with pytest.raises(InputError, match="observation at the episode start of stream 0, step 0 is not MaMuJoCo's"):
        dataset.load("vault:x/gymnasium_mamujoco/2walker/Other", dataset_dir=str(tmp_path / "d"))


def test_evaluation_env_observes_as_og_marl_at_reset_and_after_steps():
    """3hopper (agents of 8, 9 and 8 numbers): the env's observations are OG-MARL's, i.e. mamujoco_v1.parallel_env's
    local observations (agent_obsk=1) cast to float32 and zero-padded to the largest (og_marl's Dtype and PadObsandActs)."""
    from gymnasium_robotics import mamujoco_v1

    env = envs.make("vault:og_marl/gymnasium_mamujoco/3hopper/Replay", obs="padded")
    local = envs.make("vault:og_marl/gymnasium_mamujoco/3hopper/Replay")
    n, rng = 3, np.random.default_rng(5)
    seeds = [int(s) for s in np.random.default_rng(7).integers(2**32, size=n)]  # what reset draws, slot by slot
    obs, obs_local = env.reset(n, np.random.default_rng(7)), local.reset(n, np.random.default_rng(7))
    assert [o.shape for o in obs] == [(n, 9)] * 3 and [o.shape for o in obs_local] == [(n, 8), (n, 9), (n, 8)]
    refs = [mamujoco_v1.parallel_env("Hopper", "3x1", agent_obsk=1) for _ in range(n)]
    ref_obs = [ref.reset(seed=s)[0] for ref, s in zip(refs, seeds)]

    def og_marl(observations):  # float32, zero-padded to the largest agent
        return [np.stack([np.pad(o[a].astype(np.float32), (0, 9 - len(o[a]))) for o in observations]) for a in refs[0].possible_agents]

    for step in range(6):
        for mine, mine_local, theirs in zip(obs, obs_local, og_marl(ref_obs)):
            np.testing.assert_array_equal(mine, theirs)
            np.testing.assert_array_equal(mine_local, theirs[:, : mine_local.shape[1]])
        if step == 0:  # at reset the state maps onto the local observations (the datasets' analysis states)
            for mapped, mine in zip(local.observe(env.state), obs_local):
                np.testing.assert_allclose(mapped, mine, atol=1e-6)
        actions = [rng.uniform(-1, 1, (n, 1)).astype(np.float32) for _ in range(3)]
        obs, reward, _ = env.step(actions)
        obs_local, _, _ = local.step(actions)
        stepped = [ref.step({a: actions[i][k] for i, a in enumerate(ref.possible_agents)}) for k, ref in enumerate(refs)]
        ref_obs = [s[0] for s in stepped]
        np.testing.assert_allclose(reward, [s[1]["agent_0"] for s in stepped], rtol=1e-6)
    assert env.normalized_score(np.array([3234.3])) == pytest.approx(100)  # hopper's D4RL expert reference


def test_writer_refuses_what_it_cannot_write(vaults, tmp_path):
    with pytest.raises(ValueError, match="exists; pass --force"):
        vault.build("2halfcheetah", "expert", n_episodes=1, episode_len=5, out_dir=str(vaults))
    with pytest.raises(ValueError, match="--scenario takes 2ant, .* and --quality medium, expert, mixture"):
        vault.build("2humanoid", "expert", out_dir=str(tmp_path))
    with pytest.raises(InputError, match="no early/intermediate/expert behaviour policies for ant-2x4"):
        vault.build("4ant", "medium", n_episodes=1, episode_len=5, out_dir=str(tmp_path), behavior_dir=str(tmp_path))
    assert not (tmp_path / "odmarl").exists() or not any((tmp_path / "odmarl").rglob("metadata.json"))


@pytest.mark.parametrize("view", [[], ["--obs", "central", "--no-vd", "--no-tn"]], ids=["split", "central"])
def test_matd3bc_trains_on_a_written_vault(vaults, tmp_path, view):
    """The split (MATD3+BC, two agents), and the centralized reference on the same vault: one TD3+BC agent."""
    flags = ["--env-id", "vault:odmarl/gymnasium_mamujoco/2halfcheetah/Expert", "--total-steps", "20", "--eval-freq", "20",
             "--vae-steps", "5", "--eval-episodes", "2", "--hidden-dim", "16", "--batch-size", "16", "--analysis-states", "20",
             "--exp-name", "vault", *view]
    conftest.run_script("matd3bc.py", tmp_path, *flags, env={"ODMARL_VAULT_DIR": str(vaults)})
    res, _ = conftest.find_run(tmp_path, "vault")
    assert res["status"] == "complete" and np.isfinite(res["final"]["normalized_score"])
    assert len(res["dataset"]["recipe"]["vault_sha256"]) == 16
    if view:
        assert (res["agent_ids"], res["algorithm"], res["env_kwargs"]["obs"]) == ([0], "TD3+BC", "central")
        assert "value_difference" not in res["final"]
    else:
        assert (res["agent_ids"], res["algorithm"], res["env_kwargs"]["obs"]) == ([0, 1], "MATD3+BC", "local")


@pytest.mark.parametrize("view", [[], ["--obs", "central", "--no-vd", "--no-tn"]], ids=["split", "central"])
def test_mabcq_continuous_trains_on_a_written_vault(vaults, tmp_path, view):
    """MABCQ on the split, BCQ on the joint data; epsilon is the robot's preset (HalfCheetah's 0.8)."""
    flags = ["--env-id", "vault:odmarl/gymnasium_mamujoco/2halfcheetah/Expert", "--total-steps", "20", "--eval-freq", "20",
             "--vae-steps", "5", "--eval-episodes", "2", "--eval-episode-len", "30", "--hidden-dim", "16", "--batch-size",
             "16", "--analysis-states", "20", "--exp-name", "vault", *view]
    conftest.run_script("mabcq_continuous.py", tmp_path, *flags, env={"ODMARL_VAULT_DIR": str(vaults)})
    res, _ = conftest.find_run(tmp_path, "vault")
    assert res["status"] == "complete" and np.isfinite(res["final"]["normalized_score"]) and res["args"]["epsilon"] == 0.8
    assert res["env_kwargs"] == {"obs": "central" if view else "local", "eval_episode_len": 30}
    if view:
        assert (res["agent_ids"], res["algorithm"]) == ([0], "BCQ") and "value_difference" not in res["final"]
    else:
        assert (res["agent_ids"], res["algorithm"]) == ([0, 1], "MABCQ") and np.isfinite(res["final"]["value_difference"])
