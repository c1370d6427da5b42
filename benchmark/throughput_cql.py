"""Team updates per second of macql.py: its batched ensemble vs a per-agent loop.

    OMP_NUM_THREADS=1 python benchmark/throughput_cql.py          # 3 and 8 agents, sizes of smax-3m and smax-8m
    python benchmark/throughput_cql.py --agents 3 --seconds 2 --repeats 1

Both sides do the same math: discrete CQL with masks (logsumexp over the available actions, target max over the
available next actions), lambda_vd from the target network, lambda_tn * lambda_vd on both terms, Adam lr 1e-4,
Polyak target update every step; (256, 256) MLPs, batch 100 per agent. A team update is one gradient step of
every agent. Batched: macql.py's own functions (`macql_loss`, one VectorizedLinear ensemble, fused Adam,
per-agent index streams drawn RNG_CHUNK steps at a time). Per-agent loop: one plain nn.Module Q-network per
agent (nn.Sequential of nn.Linear) with its own target copy and default Adam, numpy random indices into its own
tensors, soft updates through `param.data.copy_` (CORL style), the agents updated one after the other.
`cql_throughput` is the whole measurement.
Prints one line per setting: batched and per-agent team updates/s and ratio=<batched/per-agent>.
"""

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import macql  # noqa: E402
from benchmark.throughput import timed  # noqa: E402

SMAX_SIZES = {3: (75, 8), 8: (205, 13)}  # agents -> (obs_dim, n_actions) of smax-3m and smax-8m (envs.make(id).obs_dim, .n_actions)


def cql_throughput(n_agents, obs_dim, n_actions, hidden=256, batch_size=100, seconds=5.0, repeats=3, data_size=20_000):
    """Best of `repeats` alternating measurements of each side: dict(batched=, per_agent=, ratio=) in team updates/s."""
    gamma, epsilon, alpha, tau = 0.99, 0.99, 0.2, 0.005

    def random_dataset(seed):  # one agent's data: random observations, random masks (action 0 always legal)
        g = torch.Generator().manual_seed(seed)
        avail = torch.rand(data_size, n_actions, generator=g) > 0.5
        next_avail = torch.rand(data_size, n_actions, generator=g) > 0.5
        avail[:, 0] = next_avail[:, 0] = True
        return dict(obs=torch.randn(data_size, obs_dim, generator=g), next_obs=torch.randn(data_size, obs_dim, generator=g),
                    actions=torch.multinomial(avail.float(), 1, generator=g).squeeze(1), rewards=torch.randn(data_size, generator=g),
                    dones=torch.rand(data_size, generator=g) < 0.01, avail_actions=avail, next_avail_actions=next_avail,
                    lambda_tn=torch.rand(data_size, generator=g) + 0.5)

    def per_agent():
        agents = []
        for i in range(n_agents):
            q = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))
            agents.append(dict(data=random_dataset(i), q=q, target=copy.deepcopy(q), optimizer=torch.optim.Adam(q.parameters(), lr=1e-4)))

        def train(agent):
            idx = np.random.randint(0, data_size, size=batch_size)
            b = {k: v[idx] for k, v in agent["data"].items()}
            with torch.no_grad():
                target_next, target_obs = agent["target"](torch.cat([b["next_obs"], b["obs"]])).split(batch_size)
                next_value = target_next.masked_fill(~b["next_avail_actions"], -torch.inf).max(1).values
                q_sa_target = target_obs.gather(1, b["actions"][:, None]).squeeze(1)
                y = b["rewards"] + gamma * (~b["dones"]) * next_value
                weight = b["lambda_tn"] * macql.value_deviation(next_value, q_sa_target, b["rewards"], b["dones"], gamma, epsilon)
            q = agent["q"](b["obs"])
            q_sa = q.gather(1, b["actions"][:, None]).squeeze(1)
            gap = torch.logsumexp(q.masked_fill(~b["avail_actions"], -torch.inf), 1) - q_sa
            loss = (weight * (q_sa - y) ** 2).mean() / 2 + alpha * (weight * gap).mean()
            agent["optimizer"].zero_grad()
            loss.backward()
            agent["optimizer"].step()
            for target_param, param in zip(agent["target"].parameters(), agent["q"].parameters()):
                target_param.data.copy_((1 - tau) * target_param.data + tau * param.data)

        def step():
            for agent in agents:
                train(agent)

        return timed(step, seconds)

    def batched():
        generators = macql.agent_generators(0, list(range(n_agents)), "cpu")
        parts = [random_dataset(i) for i in range(n_agents)]
        data = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}  # [n_agents, data_size, ...]
        del parts
        qnet = macql.QNetwork(obs_dim, n_actions, hidden, generators)
        qnet_target = copy.deepcopy(qnet)
        optimizer = torch.optim.Adam(qnet.parameters(), lr=1e-4, fused=True)
        state = {"step": 0}

        def step():
            k = state["step"] % macql.RNG_CHUNK
            if k == 0:
                state["idx"] = macql.sample_indices([data_size] * n_agents, (macql.RNG_CHUNK, batch_size), generators)
            state["step"] += 1
            idx = state["idx"][:, k]
            batch = {key: macql.gather(value, idx) for key, value in data.items()}
            loss, _ = macql.macql_loss(qnet, qnet_target, batch, gamma, epsilon, alpha, use_vd=True, weight_cql_term=True)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            macql.soft_update(qnet_target, qnet, tau)

        return timed(step, seconds)

    torch.set_flush_denormal(True)  # as macql.py does; applies to both sides
    best_batched, best_per_agent = 0.0, 0.0
    for _ in range(repeats):
        best_batched = max(best_batched, batched())
        best_per_agent = max(best_per_agent, per_agent())
    return dict(batched=best_batched, per_agent=best_per_agent, ratio=best_batched / best_per_agent)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--obs-dim", type=int, default=None, help="default: smax-3m's for 3 agents, smax-8m's for 8")
    parser.add_argument("--n-actions", type=int, default=None, help="default: smax-3m's for 3 agents, smax-8m's for 8")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements; the best of each is reported")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for n_agents in args.agents:
        obs_dim, n_actions = SMAX_SIZES.get(n_agents, SMAX_SIZES[3])
        obs_dim, n_actions = args.obs_dim or obs_dim, args.n_actions or n_actions
        out = cql_throughput(n_agents, obs_dim, n_actions, args.hidden, args.batch_size, args.seconds, args.repeats)
        print(f"agents={n_agents} obs={obs_dim} actions={n_actions} hidden=({args.hidden},{args.hidden}) batch={args.batch_size} "
              f"batched={out['batched']:.1f}/s per-agent={out['per_agent']:.1f}/s ratio={out['ratio']:.2f}", flush=True)
