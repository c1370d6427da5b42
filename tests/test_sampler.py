"""envs/dataset.py's per-agent sampling: unequal dataset sizes (where padding matters), own streams, resumable state."""

import numpy as np
import pytest
import torch

from envs import InputError
from envs import dataset as D

KEYS = ("obs", "actions", "rewards", "next_obs", "dones")


def agent(n, offset, obs_dim=2, act_dim=1, n_actions=None):
    """Rows whose values name their agent and row: obs[t] = [offset + t, -(offset + t)]."""
    t = np.arange(n, dtype=np.float32) + offset
    data = dict(obs=np.stack([t, -t], 1), next_obs=np.stack([t + 0.5, -t], 1), rewards=t.copy(),
                dones=np.zeros(n, dtype=bool), actions=np.full((n, act_dim), offset / 1000, dtype=np.float32))
    if n_actions is not None:
        data["actions"] = np.zeros(n, dtype=np.int64)
        data["avail_actions"] = data["next_avail_actions"] = np.ones((n, n_actions), dtype=bool)
    return data


def test_unequal_datasets_are_padded_and_each_agent_samples_only_its_own_rows():
    data = D.stack_agents([agent(3, 0), agent(7, 100)], KEYS, "cpu")
    assert data["size"] == [3, 7] and data["obs"].shape == (2, 7, 2)
    assert data["rewards"][0].tolist() == [0, 1, 2, 2, 2, 2, 2]  # padding repeats the last row, never sampled
    sampler = D.Sampler(data, KEYS, 64, D.agent_generators(0, [0, 1], "cpu"))
    drawn = torch.cat([sampler.sample(step)["rewards"] for step in range(1, 2501)], 1)  # crosses the 1000-step chunks
    assert set(drawn[1].tolist()) == {100.0 + t for t in range(7)}  # all of agent 1's 7 rows, nothing of agent 0's
    assert set(drawn[0].tolist()) == {0.0, 1.0, 2.0}
    # uniform over agent 0's own 3 rows: its last row (which the padding repeats) a third of the time, not 5/7
    assert (drawn[0] == 2.0).float().mean().item() == pytest.approx(1 / 3, abs=0.01)


def test_an_agents_draws_do_not_depend_on_its_team():
    """Agent 1 sampled alone (its stream [seed, 1]) draws the same rows as in a team with agent 0."""
    team = D.Sampler(D.stack_agents([agent(3, 0), agent(7, 100)], KEYS, "cpu"), KEYS, 16,
                     D.agent_generators(5, [0, 1], "cpu"), noise_shape=(1,))
    alone = D.Sampler(D.stack_agents([agent(7, 100)], KEYS, "cpu"), KEYS, 16, D.agent_generators(5, [1], "cpu"),
                      noise_shape=(1,))
    for step in (1, 2, 999, 1000, 1001):
        a, b = team.sample(step), alone.sample(step)
        assert torch.equal(a["obs"][1], b["obs"][0]) and torch.equal(a["noise"][1], b["noise"][0])


def test_the_sampler_state_resumes_the_same_draws():
    data = D.stack_agents([agent(3, 0), agent(7, 100)], KEYS, "cpu")
    whole = D.Sampler(data, KEYS, 8, D.agent_generators(1, [0, 1], "cpu"), noise_shape=(1,))
    for step in range(1, 1301):
        whole.sample(step) if step != 700 else (state := whole.state_dict())
    resumed = D.Sampler(data, KEYS, 8, D.agent_generators(99, [0, 1], "cpu"), noise_shape=(1,))  # other seeds: overwritten
    resumed.load_state_dict(state)
    replay = D.Sampler(data, KEYS, 8, D.agent_generators(1, [0, 1], "cpu"), noise_shape=(1,))
    for step in range(1, 700):
        replay.sample(step)
    for step in range(700, 1300):  # step 700 and on, across the chunk drawn at 1001
        a, b = resumed.sample(step), replay.sample(step)
        assert all(torch.equal(a[k], b[k]) for k in (*KEYS, "noise")), step


def test_observations_are_normalised_by_each_agents_own_statistics():
    data = D.stack_agents([agent(3, 0), agent(7, 100)], KEYS, "cpu", normalize_obs=True)
    own = agent(3, 0)["obs"]
    torch.testing.assert_close(data["obs_mean"][0, 0], torch.as_tensor(own.mean(0)))
    torch.testing.assert_close(data["obs"][0, :3], torch.as_tensor((own - own.mean(0)) / (own.std(0) + 1e-3)))
    off = D.stack_agents([agent(3, 0), agent(7, 100)], KEYS, "cpu", normalize_obs=False)
    assert torch.equal(off["obs"][0, :3], torch.as_tensor(own)) and torch.equal(off["obs_std"], torch.ones(2, 1, 2))


def test_action_masks_of_agents_with_fewer_actions_are_padded_unavailable():
    keys = (*KEYS, "avail_actions")
    data = D.stack_agents([agent(3, 0, n_actions=4), agent(5, 100, n_actions=6)], keys, "cpu", n_actions=6)
    assert data["avail_actions"].shape == (2, 5, 6)
    assert data["avail_actions"][0, :, :4].all() and not data["avail_actions"][0, :, 4:].any()
    with pytest.raises(InputError, match="equal observation"):
        D.stack_agents([agent(3, 0), agent(3, 0, obs_dim=2) | {"obs": np.zeros((3, 5), np.float32)}], KEYS, "cpu")
