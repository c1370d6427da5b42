"""The paper's tables as data: which script, env, flags, seeds and steps make each cell.

A table is a list of groups; a group is one environment setting (a row block of the paper's
table) run with every method of the group over seeds. A run is named
`<table>/<group>__<method>__s<seed>` under the grid's runs root (`runs/grid/`), so a rerun
finds it. `paper` holds the paper's number for each (group, method), as printed there, for
the report. `python -m benchmark.grid <table> --dry-run` prints what a table expands to.
"""

import json
from dataclasses import dataclass, field


@dataclass
class Group:
    name: str  # the row of the paper's table, also the run-name prefix
    flags: list[str]  # env and dataset flags common to the group's methods
    methods: dict[str, tuple[str, list[str]]]  # method -> (script, its flags)
    steps: dict[str, int]  # scale ("reduced", "paper") -> --total-steps
    seeds: dict[str, list[int]]  # scale -> seeds
    metric: str = "team_return"  # what the report tabulates (an evaluation entry of results.json)
    extra_metrics: tuple[str, ...] = ()  # tabulated beside it (win_rate, Tables 6 and 7's measures)
    paper: dict[str, str] = field(default_factory=dict)  # method -> the paper's number


@dataclass
class Table:
    title: str
    groups: list[Group]
    note: str = ""
    # the groups' metric shares one scale (normalised scores, SMAX returns), so the report adds an
    # IQM over every group and seed per method, bootstrapped within groups (rliable's stratified bootstrap)
    aggregate: bool = False


SEEDS3 = {"reduced": [1, 2, 3], "paper": [1, 2, 3, 4, 5]}
SEEDS5 = {"reduced": [1, 2, 3, 4, 5], "paper": [1, 2, 3, 4, 5]}
ANALYSIS = ("value_difference", "extrapolation_error", "q_start", "mc_return")  # Tables 6 and 7 of the paper, and 7's two terms


def _table2_4() -> Table:
    methods = {"BCQ": ("mabcq_discrete.py", ["--no-vd", "--no-tn"]), "BCQ w/ lambda_vd": ("mabcq_discrete.py", ["--no-tn"]),
               "MABCQ": ("mabcq_discrete.py", [])}
    return Table("Tables 2-4: the matrix game (payoff of the learned joint action)", [Group(
        "matrix-game", ["--env-id", "matrix-game", "--tn-estimator", "count"], methods,
        steps={"reduced": 30_000, "paper": 30_000}, seeds=SEEDS3,
        paper={"BCQ": "5 (a1, a2)", "BCQ w/ lambda_vd": "1 (a2, a2)", "MABCQ": "6 (a2, a1)"})],
        note="Exact count estimator of lambda_tn (the paper's VAE estimator does not reproduce Table 4, docs/mabcq_discrete.md).")


def _table9() -> Table:
    methods = {"MATD3+BC": ("matd3bc.py", []), "TD3+BC": ("matd3bc.py", ["--no-vd", "--no-tn"])}
    common = ["--env-id", "dg", "--eval-freq", "2500"]
    return Table("Table 9: differential game (team return of a 100-step episode)", [
        Group("dg-full", [*common, "--obs", "full"], methods, {"reduced": 30_000, "paper": 30_000}, SEEDS5,
              extra_metrics=ANALYSIS, paper={"MATD3+BC": "46.5 ± 0.9", "TD3+BC": "38.9 ± 0.8"}),
        Group("dg-partial", [*common, "--obs", "partial"], methods, {"reduced": 100_000, "paper": 100_000}, SEEDS5,
              extra_metrics=ANALYSIS, paper={"MATD3+BC": "31.4 ± 0.6", "TD3+BC": "20.7 ± 0.6"}),
    ], note="Steps as in docs/matd3bc.md: 30k (full observation), 100k (partial).")


def _fig1c() -> Table:
    methods = {f"epsilon {e}": ("matd3bc.py", ["--epsilon", e]) for e in ("0.1", "0.5", "0.9", "0.99")}
    methods["TD3+BC"] = ("matd3bc.py", ["--no-vd", "--no-tn"])
    return Table("Figure 1c: MATD3+BC's optimism level epsilon on the differential game (full observation)", [
        Group("dg-full", ["--env-id", "dg", "--obs", "full", "--eval-freq", "2500"], methods,
              {"reduced": 30_000, "paper": 30_000}, SEEDS3)])


def _table5() -> Table:
    rows = {"MABCQ": [], "BCQ w/ lambda_vd": ["--no-tn"], "BCQ w/ lambda_tn": ["--no-vd"], "BCQ": ["--no-vd", "--no-tn"],
            "DDPG": ["--ddpg"], "Behavior": ["--behavior"]}
    paper = {  # Table 5, normalised scores
        "halfcheetah-2x3": ["17.6 ± 3.3", "13.3 ± 4.8", "13.4 ± 6.5", "13.4 ± 5.2", "-3.1 ± 3.6", "11.3 ± 2.8"],
        "walker2d-2x3": ["54.4 ± 5.6", "50.1 ± 11.0", "41.2 ± 17.8", "28.8 ± 14.4", "1.7 ± 0.9", "10.0 ± 0.8"],
        "hopper-3x1": ["43.1 ± 14.2", "34.1 ± 8.2", "19.8 ± 8.7", "18.0 ± 3.4", "9.0 ± 15.3", "10.7 ± 2.3"],
        "ant-2x4": ["60.5 ± 3.6", "59.7 ± 4.9", "62.9 ± 2.1", "51.5 ± 12.7", "-48.4 ± 1.3", "19.3 ± 4.5"],
    }
    groups = []
    for env_id in ("halfcheetah-2x3", "hopper-3x1", "walker2d-2x3", "ant-2x4"):
        groups.append(Group(env_id, ["--env-id", env_id, "--eval-freq", "5000", "--eval-episodes", "10"],
                            {m: ("mabcq_continuous.py", flags) for m, flags in rows.items()},
                            {"reduced": 50_000, "paper": 300_000}, SEEDS3, metric="normalized_score",
                            extra_metrics=ANALYSIS, paper=dict(zip(rows, paper[env_id]))))
    return Table("Table 5: multi-agent MuJoCo (D4RL-normalised score)", groups, aggregate=True,
                 note="The paper does not state its number of gradient steps; the 'paper' scale here (3e5) is our choice.")


def _table5_terminal() -> Table:
    """lambda_vd of terminal transitions: 1 (Table 5's runs) against the paper's expression with V(s') = 0, which
    down-weights falls where E[V(s')] > 0 (`--vd-terminal formula`), on Hopper, whose episodes end in falls. Both
    settings run here, so the four cells share one dataset (Table 5's Hopper rows were made from another build)."""
    table5 = {g.name: g for g in _table5().groups}["hopper-3x1"]
    methods = {f"{m}, vd-terminal {how}": (script, [*flags, "--vd-terminal", how])
               for m, (script, flags) in table5.methods.items() if m in ("MABCQ", "BCQ w/ lambda_vd")
               for how in ("one", "formula")}
    return Table("Table 5's Hopper: lambda_vd of terminal transitions, 1 against the paper's expression (D4RL-normalised score)", [
        Group(table5.name, list(table5.flags), methods, dict(table5.steps), dict(table5.seeds), metric=table5.metric,
              extra_metrics=table5.extra_metrics)],
        note="Not in the paper: lambda_vd is 1 on terminal transitions in the paper's tables here (`one`, the default; "
             "docs/mabcq_continuous.md); `formula` puts V(s') = 0 into the paper's expression.")


def _table5_kl() -> Table:
    """Whether G1's latent, which BCQ's loss (MSE + 0.5 KL, both means) leaves almost unused on this data, changes Table 5:
    MABCQ and BCQ with the KL weight at 0.05, beside Table 5's runs at 0.5 (docs/mabcq_continuous.md)."""
    methods = {f"{m}, KL weight 0.05": ("mabcq_continuous.py", [*flags, "--vae-kl-weight", "0.05"])
               for m, flags in (("MABCQ", []), ("BCQ", ["--no-vd", "--no-tn"]))}
    return Table("Table 5's G1 latent: BCQ's KL weight 0.5 against 0.05 (D4RL-normalised score)", [
        Group(env_id, ["--env-id", env_id, "--eval-freq", "5000", "--eval-episodes", "10"], methods,
              {"reduced": 50_000, "paper": 300_000}, SEEDS3, metric="normalized_score", extra_metrics=ANALYSIS)
        for env_id in ("halfcheetah-2x3", "walker2d-2x3", "ant-2x4", "hopper-3x1")],
        note="Not in the paper: Table 5's own runs are the KL weight 0.5 (BCQ's) rows.")


def _table8() -> Table:
    methods = {"MABCQ": ("mabcq_discrete.py", []), "BCQ": ("mabcq_discrete.py", ["--no-vd", "--no-tn"]),
               "MACQL": ("macql.py", []), "CQL": ("macql.py", ["--no-vd", "--no-tn"])}
    paper = {  # Table 8: MABCQ, BCQ, MACQL, CQL
        ("random", "3m"): ["4.0 ± 1.1", "0 ± 0", "13.5 ± 1.5", "9.3 ± 3.0"], ("random", "8m"): ["4.5 ± 0.9", "0.8 ± 0.2", "8.2 ± 1.1", "6.6 ± 1.2"],
        ("random", "3s_vs_3z"): ["8.1 ± 0.7", "0 ± 0", "10.2 ± 0.8", "10.1 ± 0.4"], ("random", "3s_vs_4z"): ["4.1 ± 1.5", "0 ± 0", "5.7 ± 0.6", "6.7 ± 0.2"],
        ("medium", "3m"): ["8.9 ± 1.3", "7.8 ± 0.4", "15.1 ± 1.8", "13.8 ± 1.4"], ("medium", "8m"): ["7.6 ± 0.8", "4.5 ± 1.2", "14.5 ± 1.5", "12.4 ± 0.6"],
        ("medium", "3s_vs_3z"): ["8.7 ± 1.1", "3.9 ± 0.6", "9.3 ± 0.9", "8.9 ± 0.6"], ("medium", "3s_vs_4z"): ["4.3 ± 0.5", "0 ± 0", "6.1 ± 0.7", "6.8 ± 1.8"],
        ("replay", "3m"): ["13.2 ± 0.2", "12.7 ± 0.7", "13.8 ± 0.4", "13.5 ± 0.6"], ("replay", "8m"): ["15.2 ± 1.0", "14.3 ± 0.9", "17.9 ± 0.4", "16.3 ± 0.4"],
        ("replay", "3s_vs_3z"): ["19.4 ± 0.4", "19.8 ± 0.3", "20.0 ± 0.0", "20.0 ± 0.0"], ("replay", "3s_vs_4z"): ["5.3 ± 0.6", "5.3 ± 0.9", "5.9 ± 0.3", "5.2 ± 0.7"],
        ("expert", "3m"): ["18.8 ± 0.7", "18.3 ± 1.1", "18.9 ± 0.5", "19.1 ± 0.5"], ("expert", "8m"): ["17.0 ± 0.8", "17.5 ± 1.1", "18.5 ± 1.2", "18.3 ± 1.1"],
        ("expert", "3s_vs_3z"): ["19.1 ± 0.5", "19.0 ± 0.6", "19.2 ± 0.6", "19.1 ± 0.6"], ("expert", "3s_vs_4z"): ["5.6 ± 0.9", "5.4 ± 1.1", "6.8 ± 0.7", "6.5 ± 0.9"],
    }
    groups = []
    for smax_map in ("3m", "3s_vs_3z", "8m", "3s_vs_4z"):  # map by map, the 3-agent maps first: a grid stopped
        for quality in ("random", "medium", "replay", "expert"):  # part-way has whole maps (expand() keeps the order)
            groups.append(Group(f"{quality}-{smax_map}", ["--env-id", f"smax-{smax_map}", "--quality", quality, "--eval-freq", "5000"],
                                methods, {"reduced": 30_000, "paper": 100_000}, SEEDS3, extra_metrics=("win_rate",),
                                paper=dict(zip(methods, paper[(quality, smax_map)]))))
    return Table("Table 8: SMAC on SMAX (team return, a win returns 20)", groups, aggregate=True,
                 note="The paper's SMAC runs the StarCraft II engine and QMIX behaviour policies; here SMAX and MAPPO "
                      "(docs/datasets.md). The paper does not state its number of gradient steps; the 'paper' scale "
                      "here (1e5) is our choice.")


def _table8_weights() -> Table:
    """Which weight does what on SMAX: each of lambda_vd and lambda_tn alone, and MACQL's weights on the TD term only,
    beside Table 8's runs of both and neither."""
    methods = {"BCQ w/ lambda_vd": ("mabcq_discrete.py", ["--no-tn"]), "BCQ w/ lambda_tn": ("mabcq_discrete.py", ["--no-vd"]),
               "CQL w/ lambda_vd": ("macql.py", ["--no-tn"]), "CQL w/ lambda_tn": ("macql.py", ["--no-vd"]),
               "MACQL, weights on the TD term only": ("macql.py", ["--no-weight-cql-term"])}
    return Table("Table 8's ablation: one weight at a time on SMAX (team return, a win returns 20)", [
        Group(f"{quality}-{smax_map}", ["--env-id", f"smax-{smax_map}", "--quality", quality, "--eval-freq", "5000"], methods,
              {"reduced": 30_000, "paper": 100_000}, SEEDS3, extra_metrics=("win_rate",))
        for quality, smax_map in (("random", "3m"), ("medium", "3m"), ("medium", "8m"))],  # medium-8m: MACQL diverges there
        note="Not in the paper: run to see which weight moves Table 8's numbers (docs/macql.md).")


def _table10() -> Table:
    joints = {"halfcheetah": 6, "hopper": 3, "walker2d": 6}
    paper = {  # Table 10: MATD3+BC, TD3+BC, TD3+BC (single)
        ("random", "halfcheetah"): ["14.3 ± 2.9", "12.9 ± 2.6", "10.2 ± 1.3"], ("random", "hopper"): ["10.3 ± 0.6", "10.4 ± 0.8", "11.0 ± 0.1"],
        ("random", "walker2d"): ["4.5 ± 3.4", "3.7 ± 3.0", "1.4 ± 1.6"],
        ("medium", "halfcheetah"): ["41.5 ± 2.4", "40.4 ± 2.4", "42.8 ± 0.3"], ("medium", "hopper"): ["97.1 ± 1.7", "98.7 ± 1.2", "99.5 ± 1.0"],
        ("medium", "walker2d"): ["82.0 ± 5.1", "72.3 ± 4.1", "79.7 ± 1.8"],
        ("medium-expert", "halfcheetah"): ["96.2 ± 5.5", "95.3 ± 6.5", "97.9 ± 4.4"], ("medium-expert", "hopper"): ["112.0 ± 0.8", "112.3 ± 0.9", "112.2 ± 0.2"],
        ("medium-expert", "walker2d"): ["88.9 ± 17.4", "82.0 ± 10.8", "105.7 ± 2.7"],
    }
    groups = []
    for quality in ("random", "medium", "medium-expert"):  # the paper's rows we have data for ('expert' has no paper number)
        for robot, n in joints.items():
            methods = {"MATD3+BC": ("matd3bc.py", []), "TD3+BC": ("matd3bc.py", ["--no-vd", "--no-tn"]),
                       "TD3+BC (single)": ("matd3bc.py", ["--no-vd", "--no-tn", "--partition", f"1x{n}"])}
            groups.append(Group(f"{quality}-{robot}", ["--env-id", f"minari:odmarl/{robot}/{quality}-v0", "--eval-freq", "10000",
                                                       "--eval-episodes", "10", "--batch-size", "256"],
                                methods, {"reduced": 50_000, "paper": 1_000_000}, SEEDS3, metric="normalized_score",
                                paper=dict(zip(methods, paper.get((quality, robot), ["-"] * 3)))))
    return Table("Table 10: D4RL-like Minari datasets split per agent (D4RL-normalised score)", groups, aggregate=True,
                 note="Datasets built here from the shipped SAC actors (envs/minari_split.py; D4RL itself is not reachable). "
                      "The paper's 'replay' rows need a replay buffer we do not have; the 'expert' datasets have no paper number and "
                      "no row here (`--env-id minari:odmarl/<robot>/expert-v0` runs them). The paper trains 1e6 steps; the "
                      "reduced scale stops at 5e4 (on the 2-core AMD VM the three methods did 26-38 updates/s beside two other runs, "
                      "docs/scaling.md: 1e5 steps for the 81 runs would be an estimated 30 h of wall time).")



def _table10_long() -> Table:
    """Whether hopper-medium climbs with longer training: Table 10's runs end at a third of the paper's score
    and stay flat from 1e4 to 5e4 steps; TD3+BC (single), the cheapest of the three, trained 6x longer."""
    hopper = next(g for g in _table10().groups if g.name == "medium-hopper")
    methods = {m: hopper.methods[m] for m in ("TD3+BC (single)",)}
    flags = list(hopper.flags)
    flags[flags.index("--eval-freq") + 1] = "25000"
    return Table("Table 10, hopper-medium trained longer (D4RL-normalised score)", [
        Group(hopper.name, flags, methods, {"reduced": 300_000, "paper": 1_000_000}, {"reduced": [1], "paper": [1, 2, 3]},
              metric=hopper.metric, paper={m: hopper.paper[m] for m in methods})],
        note="Not one of the paper's tables: a probe of Table 10's hopper-medium gap (docs/matd3bc.md).")


def _fig1d() -> Table:
    methods = {"MATD3+BC": ("matd3bc.py", []), "TD3+BC": ("matd3bc.py", ["--no-vd", "--no-tn"])}
    return Table("Figure 1d: cooperative navigation (learning curves)", [
        Group("cn", ["--env-id", "cn", "--eval-freq", "5000"], methods, {"reduced": 100_000, "paper": 1_000_000}, SEEDS3)],
        note="The paper's Figure 1d plots 1e6 steps; the reduced scale stops at 1e5.")


def _fig1d_alpha() -> Table:
    methods = {"MATD3+BC, alpha 25": ("matd3bc.py", ["--alpha", "25"]), "TD3+BC, alpha 25": ("matd3bc.py", ["--no-vd", "--no-tn", "--alpha", "25"])}
    return Table("Figure 1d with TD3+BC's alpha at 25 (the paper's 2.5): cooperative navigation", [
        Group("cn", ["--env-id", "cn", "--eval-freq", "5000"], methods, {"reduced": 50_000, "paper": 100_000}, SEEDS3)],
        note="Not in the paper: on cn the behaviour-cloning term holds both teams near a = 0 (benchmark/cn_probe.py); "
             "ten times the Q term's weight asks whether the weights make a difference once the actors move (docs/matd3bc.md).")


def _fig1ab() -> Table:
    """Figure 1a/b, our version: decentralized learners on a jointly collected (CTDE) dataset split per agent, against one
    centralized learner on the same data (the global state and the joint action). The paper compares MACQL with MAICQ on
    SMAC; here the data are OG-MARL vaults of MaMuJoCo written from the shipped SAC actors (docs/datasets.md)."""
    methods = {"MATD3+BC": ("matd3bc.py", []), "TD3+BC": ("matd3bc.py", ["--no-vd", "--no-tn"]),
               "TD3+BC centralized": ("matd3bc.py", ["--obs", "central", "--no-vd", "--no-tn"])}
    return Table("Figure 1a/b, our version: jointly collected MaMuJoCo vaults split per agent (D4RL-normalised score)", [
        Group(f"{scenario}-mixture", ["--env-id", f"vault:odmarl/gymnasium_mamujoco/{scenario}/Mixture", "--eval-freq", "5000",
                                      "--eval-episodes", "10"], methods, {"reduced": 50_000, "paper": 50_000}, SEEDS3,
              metric="normalized_score") for scenario in ("2halfcheetah", "2ant")],
        note="Not the paper's data or methods: its Figure 1a/b is MACQL against MAICQ on SMAC. The vaults: "
             "`python -m envs.vault --scenario <2halfcheetah|2ant> --quality mixture` (docs/vaults.md).")


TABLES = {"table2-4": _table2_4, "table9": _table9, "fig1c": _fig1c, "table5": _table5, "table5-kl": _table5_kl,
          "table5-terminal": _table5_terminal, "table8": _table8, "table8-weights": _table8_weights,
          "table10": _table10, "table10-long": _table10_long, "fig1d": _fig1d, "fig1d-alpha": _fig1d_alpha,
          "fig1ab": _fig1ab}


def load(name: str, spec_file: str | None = None) -> Table:
    """A table by name, or one from a JSON file with the fields above (tests, quick experiments:
    `{"title": ..., "groups": [{"name": ..., "flags": [...], "methods": {"M": ["script.py", [...]]}, ...}]}`)."""
    if spec_file is not None:
        raw = json.loads(open(spec_file).read())
        groups = [Group(**{**g, "methods": {m: tuple(v) for m, v in g["methods"].items()},
                           "extra_metrics": tuple(g.get("extra_metrics", ()))}) for g in raw["groups"]]
        return Table(raw.get("title", name), groups, raw.get("note", ""), raw.get("aggregate", False))
    if name not in TABLES:
        raise SystemExit(f"error: unknown table {name!r}; known: {', '.join(TABLES)} (or give --spec-file)")
    return TABLES[name]()
