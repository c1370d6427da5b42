"""The run contract of docs/results.md, once for every algorithm script.

A script meets it as a few calls:

    args = run_contract.parse_args(Args, SCRIPT)                 # flags, with --resume's rules
    run = run_contract.Run(args, SCRIPT, "MATD3+BC", variant, meta, agent_ids, device)
    with run:                                                     # results.json says how the block ended
        ...                                                       # run.state: the checkpoint resumed from, or None
        run.restore(modules, optimizers, sampler)                 # go on where the checkpoint left off
        for step in run.steps():                                  # progress bar, the run's share of the cores
            ...the update...
            if run.log_due(step):
                run.log(step, {"losses/td_loss": ...})            # TensorBoard; weights/ and losses/ also go to results.json
            if run.eval_due(step):
                with run.evaluation(step) as entry:               # the training clock stops meanwhile
                    entry.update(evaluate(...))
            run.checkpoint(step, lambda_tn=...)                   # at evaluations (or --checkpoint-freq) and at the end

What it keeps: the run folder `runs/{run_name}/` and its results.json (status running, complete, interrupted, failed),
TensorBoard (and W&B with --track), the training-state checkpoint and the per-agent checkpoints of --save-model,
core sharing (--threads 0), the timing of each evaluation, and the run's identity (commit, versions, CPU).
Everything is written to a temporary name and renamed. It imports nothing of an algorithm.
"""

import atexit
import ctypes
import contextlib
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from pathlib import Path

import torch
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from envs import InputError
from envs.dataset import default_dataset_dir

SCHEMA_VERSION = 1
CHECKPOINT_FORMAT = "odmarl-train-state-2"  # 2: the sampler's state under one key (envs.dataset.Sampler)
AGENT_FORMAT = "odmarl-agent-1"
LOG_FREQ = 1000  # training scalars to TensorBoard every this many steps (and at every evaluation)
# what a --resume may change: none of these changes what is learned
RESUMABLE_CHANGES = ("resume", "total_steps", "eval_freq", "eval_episodes", "checkpoint_freq", "threads", "cuda",
                     "track", "wandb_project_name", "wandb_entity", "save_model")
# evaluation entries that are not TensorBoard scalars under eval/ (timing, and the training scalars logged already)
NOT_EVAL_SCALARS = ("step", "seconds", "train_seconds")
TRAINING_PREFIXES = ("lambda_", "td_", "policy_", "q_", "vae_")


@dataclass
class RunArgs:
    """The flags every script takes: CleanRL's generic ones, then the run contract's (a script's `Args` adds its own)."""

    exp_name: str | None = None
    """the name of this experiment (None: the script's name)"""
    seed: int = 1
    """seed of the experiment (agent i draws everything from the stream [seed, i])"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, train on CUDA (refused when torch sees no CUDA device)"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "offline-decentralized-marl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """whether to save one checkpoint per agent into `runs/{run_name}`"""
    run_name: str | None = None
    """the run folder under runs/ (None: `{env_id}__{exp_name}{variant}__{seed}__{time}`; may contain `/`)"""
    resume: str | None = None
    """continue the run in this folder (e.g. `runs/<run_name>`) from its checkpoint, with its flags"""
    checkpoint_freq: int = 0
    """write the training state every this many steps (0: at every evaluation)"""
    threads: int = 0
    """torch threads (0: share the cores with the other runs on this machine, see docs/results.md)"""
    dataset_dir: str = default_dataset_dir()
    """root folder of the datasets (built there if absent; env var ODMARL_DATASET_DIR)"""
    agent_ids: str | None = None
    """comma-separated agents to train, e.g. `0`; only their dataset files are read (None: all)"""
    checkpoints: tuple[str, ...] = ()
    """evaluate a team assembled from these per-agent checkpoints (one per agent, in order) and exit"""


def parse_args(Args, script: str):
    """The flags; with `--resume runs/NAME` the run's saved flags are the defaults, and a change to any
    flag outside RESUMABLE_CHANGES is refused (it would make the resumed run another experiment)."""
    args = tyro.cli(Args)
    if args.resume is None:
        return replace(args, exp_name=args.exp_name or script)
    try:
        saved = json.loads((Path(args.resume) / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--resume {args.resume}: no readable results.json there ({e}); pass a run folder such as runs/<run_name>") from None
    if saved.get("script") != script:
        raise InputError(f"--resume {args.resume}: that run is of {saved.get('script')}.py, not {script}.py")
    names = {f.name for f in fields(Args)}
    defaults = replace(Args(), **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items() if k in names})
    args = tyro.cli(Args, default=replace(defaults, resume=args.resume))
    changed = [k for k in names if k not in RESUMABLE_CHANGES and getattr(args, k) != getattr(defaults, k)]
    if changed:
        flag = changed[0].replace("_", "-")
        raise InputError(f"--resume: --{flag} {getattr(args, changed[0])} differs from the run's {getattr(defaults, changed[0])}; "
                         f"drop --{flag} to resume, or start a new run")
    return args


def check_ranges(args, at_least_zero=(), positive=(), intervals: dict | None = None) -> None:
    """One-line refusal of the first flag out of its range, the run's own flags included, before anything is written.
    `intervals`: {flag: (interval, why)} with intervals written as "[0, 1]", "(0, 1]" or "[1, inf)"."""
    for name in ("total_steps", "checkpoint_freq", "threads", *at_least_zero):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("eval_freq", "eval_episodes", *positive):
        value = getattr(args, name)
        if isinstance(value, tuple) and (not value or min(value) <= 0):  # layer widths; None is a flag left unset
            raise InputError(f"--{name.replace('_', '-')} takes one or more positive widths, e.g. `64 64`, got {value}")
        if value is not None and not isinstance(value, tuple) and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    for name, (interval, why) in (intervals or {}).items():
        value, (low, high) = getattr(args, name), (float(x) for x in interval[1:-1].split(","))
        if not ((low <= value if interval[0] == "[" else low < value) and (value <= high if interval[-1] == "]" else value < high)):
            rule = f"be >= {low:g}" if high == float("inf") else f"lie in {interval}"
            raise InputError(f"--{name.replace('_', '-')} must {rule}{' (' + why + ')' if why else ''}, got {value}")


def parse_agent_ids(text: str | None, n_agents: int) -> list[int]:
    if text is None:
        return list(range(n_agents))
    try:
        agent_ids = [int(i) for i in text.split(",")]
    except ValueError:
        raise InputError(f"--agent-ids takes comma-separated integers like `0,1`, got {text!r}") from None
    if len(set(agent_ids)) != len(agent_ids) or not all(0 <= i < n_agents for i in agent_ids):
        raise InputError(f"--agent-ids must be distinct ids in 0..{n_agents - 1}, got {text!r}")
    return agent_ids


SCRIPTS_OF = {True: "mabcq_discrete.py or macql.py", False: "mabcq_continuous.py or matd3bc.py"}


def make_env(script: str, env_id: str, *, discrete: bool, checkpoints=None, needs_states=False, **env_kwargs):
    """The env a script trains on, refused in one line where the script cannot use it: the other kind of actions,
    agents that share no states when the script measures the value difference (`needs_states`), or --checkpoints (a
    team to evaluate) where nothing evaluates (data:<folder> without an evaluation env: said once, value metrics only)."""
    env = envs.make(env_id, **env_kwargs)
    if env.discrete != discrete:
        kind, wanted = ("discrete", "continuous") if env.discrete else ("continuous", "discrete")
        raise InputError(f"{env_id} has {kind} actions; {script}.py needs {wanted} ones (use {SCRIPTS_OF[env.discrete]})")
    if needs_states and not hasattr(env, "observe"):  # data:<folder> of separately logged agents
        raise InputError(f"{env_id}: its agents share no states, so {script}.py cannot measure the value difference; "
                         "give every agent file `states`, or set aligned in meta.json if its rows line up (docs/own-data.md)")
    if not getattr(env, "evaluates", True):
        if checkpoints:
            raise InputError(f"--checkpoints evaluates a team; {env_id} has no evaluation env (meta.json)")
        print(f"{env_id}: no evaluation env (meta.json names none), so the team is not evaluated; value metrics only")
    return env


def pick_device(cuda: bool) -> torch.device:
    if cuda and not torch.cuda.is_available():
        raise InputError("--cuda: torch sees no CUDA device on this machine; drop --cuda to train on the CPU")
    return torch.device("cuda" if cuda else "cpu")


def check_wandb(track: bool) -> None:
    if track:
        try:
            import wandb  # noqa: F401  (only whether it imports)
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None


def keep_freed_memory() -> None:
    """glibc (Linux): keep freed memory in the heap instead of handing it back to the kernel, so the ~10 MB activations
    of the target pass (10 x 1024 sampled next actions per agent) are not page-faulted in afresh at every step:
    19.7 instead of 26.4 ms of CPU per team update here (docs/mabcq_continuous.md). Speed only: the same numbers."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: blocks up to 32 MB come from the heap, not from mmap
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: do not return the heap's top to the kernel below 1 GB
    libc.mallopt(-2, 256 * 2**20)  # M_TOP_PAD: grow the heap in 256 MB steps


class CoreShare:
    """`--threads 0` shares the cores with this project's other runs on the machine: each run keeps a pid
    file in one folder and, at every `update()` (once a second at most), uses max(1, cores // live runs) threads. Two runs that
    each use both of two cores slow each other down ~6x (docs/contention.md). OMP_NUM_THREADS, when set,
    caps the cores. `--threads N` fixes N. The results do not depend on the thread count (tested; on an
    Intel CPU only under MKL_CBWR=AUTO,STRICT, docs/results.md)."""

    FOLDER = Path(tempfile.gettempdir()) / "odmarl-runs"

    def __init__(self, threads: int):
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        self.threads, self.cores = threads, min(len(affinity), int(os.environ.get("OMP_NUM_THREADS") or 1 << 16))
        self.checked = -1.0
        if threads == 0:
            self.FOLDER.mkdir(exist_ok=True)
            pid_file = self.FOLDER / str(os.getpid())
            pid_file.touch()
            atexit.register(pid_file.unlink, missing_ok=True)
        self.update()

    def update(self, force: bool = False) -> int:
        """Cheap enough to call at every step: it looks at the other runs at most once a second."""
        if not force and time.monotonic() - self.checked < 1.0:
            return torch.get_num_threads()
        self.checked = time.monotonic()
        n = self.threads or max(1, self.cores // max(1, self.live_runs()))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n

    def live_runs(self) -> int:
        live = 0
        for pid_file in self.FOLDER.iterdir():
            try:
                os.kill(int(pid_file.name), 0)
                live += 1
            except (ValueError, ProcessLookupError):  # not a pid, or a run that died: tidy it away
                pid_file.unlink(missing_ok=True)
            except PermissionError:  # another user's live run
                live += 1
        return live


def write_json(path, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_torch(path, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, truncated or foreign file: torch raises many kinds
        raise InputError(f"cannot load {what} {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return obj if isinstance(obj, dict) else {}


# what a run's numbers depend on: code, the pins, the shipped behaviour weights (not docs, records or pages)
RUN_INPUTS = (":(glob)**/*.py", "requirements.txt", "envs/behavior/weights")


def git_commit() -> str | None:
    """HEAD of the repository the scripts live in, `+dirty` when a tracked file a run depends on (RUN_INPUTS) differs."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *RUN_INPUTS], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def package_versions(env_id: str) -> dict:
    out = {"python": platform.python_version()}
    for package in ("torch", "numpy", *getattr(envs.env_module(env_id), "PINNED_PACKAGES", ())):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def cpu_info() -> dict:
    """The CPU and the kernel set torch picked on it: a run is bit-identical only on the same set (docs/results.md)."""
    model = platform.processor() or None
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR")}  # MKL's kernel choice; AUTO,STRICT: the same on any thread count


# the per-agent checkpoints of --save-model: agent i's members of every ensemble module (members i, i + n, ...)
def agent_state(module, index, n_agents):
    """Agent `index`'s members of an ensemble module as a plain state dict."""
    return {k: v[index::n_agents].clone().cpu() for k, v in module.state_dict().items()}


def load_agent_state(module, index, n_agents, state):
    with torch.no_grad():
        for k, v in module.state_dict().items():
            v[index::n_agents] = state[k]


def evaluate_checkpoints(args, script: str, env_kwargs: dict, checkpoints: list[dict], algorithm, evaluate, device) -> dict:
    """--checkpoints: evaluate a team assembled from separately trained agents once, as a run of its own whose
    results.json names each agent's file and algorithm (`algorithm(args)` with that agent's ablation flags)."""
    n_agents = len(checkpoints)
    run = Run(args, script, "team of checkpoints", "-team", {"env_kwargs": env_kwargs}, list(range(n_agents)), device)
    flags = [k for k in ("no_vd", "no_tn") if hasattr(args, k)]
    run.results["checkpoints"] = [dict(path=str(p), algorithm=algorithm(replace(args, **{k: c["args"][k] for k in flags}))[0],
                                       args=c["args"]) for p, c in zip(args.checkpoints, checkpoints)]
    with run:
        run.results["final"] = final = evaluate()
    print(f"team of {n_agents} checkpoints: return {final['team_return']:.2f} ± {final['team_return_std']:.2f}"
          + "".join(f", {k} {final[k]:.1f}" for k in ("normalized_score", "win_rate") if k in final))
    return final


def load_team(checkpoints: list[dict], modules: dict, *per_agent: str, device=None) -> list:
    """Each agent's members of every ensemble module from its own checkpoint; returns the `per_agent` tensors (e.g.
    observation statistics) stacked along a leading agent dimension."""
    for i, ckpt in enumerate(checkpoints):
        for k, m in modules.items():
            load_agent_state(m, i, len(checkpoints), ckpt[k])
    return [torch.stack([c[k] for c in checkpoints]).to(device) for k in per_agent]


def load_agent_checkpoints(args, script: str, env_kwargs: dict, n_agents: int, shared: tuple = ()) -> tuple:
    """--checkpoints: one file per agent, in agent order, each saved by this script for this env and agent. The flags in
    `shared` (network sizes, the policy's kind) must agree among them and are taken from them. Returns (checkpoints, args)."""
    paths, env_id = args.checkpoints, args.env_id
    if len(paths) != n_agents:
        raise InputError(f"--checkpoints needs one file per agent ({n_agents} for {env_id}), got {len(paths)}")
    checkpoints = []
    for i, path in enumerate(paths):
        ckpt = load_torch(path, "checkpoint")
        if (ckpt.get("format"), ckpt.get("script")) != (AGENT_FORMAT, script):
            raise InputError(f"{path} is not an agent checkpoint of {script}.py (save one with --save-model)")
        if (ckpt.get("env_id"), ckpt.get("env_kwargs"), ckpt.get("agent_id")) != (env_id, env_kwargs, i):
            raise InputError(f"{path} holds agent {ckpt.get('agent_id')} of {ckpt.get('env_id')} {ckpt.get('env_kwargs')}, "
                             f"expected agent {i} of {env_id} {env_kwargs}")
        checkpoints.append(ckpt)
    settings = {tuple(tuple(v) if isinstance(v, list) else v for v in (c["args"][k] for k in shared)) for c in checkpoints}
    if len(settings) > 1:
        raise InputError(f"the checkpoints differ in one of {', '.join(shared)}; a team needs one kind of network")
    return checkpoints, replace(args, **{k: checkpoints[0]["args"][k] for k in shared})


# what every script logs of the paper's two weights
def lambda_tn_summary(lambda_tn, sizes, agent_ids, tn_max) -> dict:
    """Per agent, before the cap at --tn-max: mean, min, 1st/50th/99th percentile, max, and the fraction capped
    (results.json `lambda_tn`: what to set against the paper's [0.2, 1.4]), also printed."""
    out = {}
    for e, i in enumerate(agent_ids):
        lt = lambda_tn[e, : sizes[e]].float()
        p1, p50, p99 = torch.quantile(lt, torch.tensor([0.01, 0.5, 0.99], device=lt.device)).tolist()
        out[str(i)] = dict(mean=lt.mean().item(), min=lt.min().item(), p1=p1, median=p50, p99=p99, max=lt.max().item(),
                           capped=(lt > tn_max).float().mean().item())
        print(f"agent {i}: lambda_tn " + ", ".join(f"{k} {v:.3g}" for k, v in out[str(i)].items()))
    return out


def weight_logs(batch: dict, lambda_vd, args) -> dict:
    """The batch's lambda_tn and lambda_vd, those switched on (mean, min, max; the share of lambda_vd at its clip)."""
    logs = {} if args.no_tn else {f"weights/lambda_tn_{f}": getattr(batch["lambda_tn"], f)().item() for f in ("mean", "min", "max")}
    if lambda_vd is not None:
        dones = batch["dones"]
        live = lambda_vd[~dones] if (~dones).any() else lambda_vd  # terminal ones are 1
        logs.update({f"weights/lambda_vd_{f}": getattr(live, f)().item() for f in ("mean", "min", "max")})
        logs["weights/lambda_vd_clipped"] = ((live - 1).abs() >= args.epsilon - 1e-6).float().mean().item()
    return logs


class Run:
    """One run: its folder and results.json, TensorBoard, the cores, the clock, the checkpoints.

    `meta` is the dataset's metadata (env_kwargs, recipe, content_sha256, path); `algorithm` the paper's name of
    what the flags make, `variant` the run-name suffix of the ablation flags. With --resume, `state` is the
    training state to go on from (None before the first checkpoint: the run starts over with the same flags).
    Nothing is written before this object is made: scripts check every input first."""

    def __init__(self, args, script: str, algorithm: str, variant: str, meta: dict, agent_ids: list[int], device):
        self.args, self.script, self.agent_ids = args, script, agent_ids
        self.state = None
        if args.resume is not None:
            self.dir = Path(args.resume)
            results = json.loads((self.dir / "results.json").read_text())
            state = load_torch(self.dir / "checkpoint.pt", "checkpoint") if (self.dir / "checkpoint.pt").exists() else None
            if state is not None and state.get("format") == "odmarl-train-state-1":
                raise InputError(f"{self.dir / 'checkpoint.pt'} was written by the scripts before the run contract moved to "
                                 f"envs/run.py; finish it with that code (git checkout {str(results.get('git_commit'))[:12]}) "
                                 "or start a new run")
            if state is not None and (state.get("format"), state.get("script")) != (CHECKPOINT_FORMAT, script):
                raise InputError(f"{self.dir / 'checkpoint.pt'} is not a {script}.py training state; start a new run")
            if state is not None and state["step"] > args.total_steps:
                raise InputError(f"--total-steps {args.total_steps} is below the {state['step']} steps the run has done")
            step = state["step"] if state else 0
            results.update(status="running", error=None, pid=os.getpid(), host=platform.node(), args=asdict(args),
                           evaluations=state["results"]["evaluations"] if state else [],
                           seconds=state["results"]["seconds"] if state else 0.0,
                           final=state["results"]["final"] if state else None,
                           resumed_at_steps=results.get("resumed_at_steps", []) + [step])
            self.state = state
        else:
            env_name = args.env_id.replace(":", "-").replace("/", "-")  # minari:mujoco/hopper/medium-v0 is one folder
            run_name = args.run_name or f"{env_name}__{args.exp_name}{variant}__{args.seed}__{int(time.time())}"
            self.dir = Path("runs") / run_name
            if (self.dir / "results.json").exists():
                raise InputError(f"{self.dir} already holds a run; continue it with --resume {self.dir}, or pick another --run-name")
            self.dir.mkdir(parents=True, exist_ok=True)
            results = dict(
                schema_version=SCHEMA_VERSION, status="running", error=None, run_name=run_name, script=script,
                algorithm=algorithm, env_id=args.env_id, env_kwargs=meta["env_kwargs"],
                dataset=dict(path=meta.get("path"), recipe=meta.get("recipe"), fingerprint=meta.get("content_sha256")),
                seed=args.seed, agent_ids=agent_ids, args=asdict(args), git_commit=git_commit(),
                versions=package_versions(args.env_id), device=str(device), threads=args.threads or "auto",
                host=platform.node(), cpu=cpu_info(), pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                resumed_at_steps=[], evaluations=[], final=None, seconds=0.0,
            )
        self.results = results
        self.write()
        print(f"results: {self.dir / 'results.json'}")
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=results["run_name"], save_code=True, resume="allow")
        self.writer = SummaryWriter(str(self.dir))
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        self.cores = CoreShare(args.threads)
        self.logs, self.start_step = {}, 0
        self.modules, self.optimizers, self.sampler = {}, {}, None
        # two clocks: wall seconds of this session, and training seconds since the last evaluation (evaluations excluded)
        self.session_start = self.clock = time.time()
        self.trained = self.state["train_seconds"] if self.state else 0.0

    # results.json, and how the block ended
    def write(self) -> None:
        self.results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.dir / "results.json", self.results)

    def seconds(self) -> float:
        """Wall seconds of the whole run so far, every session."""
        return self.results["seconds"] + time.time() - self.session_start

    def __enter__(self):
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        self._previous_handler = signal.signal(signal.SIGTERM, interrupt)
        return self

    def __exit__(self, kind, error, traceback):
        """complete, interrupted (Ctrl-C, SIGTERM) or failed (with the error). A SIGKILL leaves "running" with a dead
        pid; --resume continues from the last checkpoint."""
        signal.signal(signal.SIGTERM, self._previous_handler)
        self.writer.close()
        if kind is None:
            self.results["status"] = "complete"
        elif issubclass(kind, KeyboardInterrupt):
            self.results["status"] = "interrupted"
        else:
            self.results.update(status="failed", error=f"{kind.__name__}: {error}")
        self.results["seconds"] = self.seconds()
        self.session_start = time.time()
        self.write()
        if kind is None:
            print(f"results: {self.dir / 'results.json'}")
        return False

    # the training loop
    def restore(self, modules: dict, optimizers: dict, sampler) -> int:
        """Keep these for the checkpoints and, with a state to resume from, load it into them. Returns the step."""
        self.modules, self.optimizers, self.sampler = modules, optimizers, sampler
        if self.state is not None:  # go on exactly where the checkpoint left off
            for k, m in modules.items():
                m.load_state_dict(self.state["modules"][k])
            for k, o in optimizers.items():
                o.load_state_dict(self.state["optimizers"][k])
            sampler.load_state_dict(self.state["sampler"])
            self.start_step, self.logs = self.state["step"], self.state["logs"]
            print(f"resumed at step {self.start_step}")
        return self.start_step

    def steps(self):
        """The steps still to train, start_step + 1 .. --total-steps, with a progress bar; each gets the run's share of the cores."""
        self.session_start = self.clock = time.time()
        for step in tqdm(range(self.start_step + 1, self.args.total_steps + 1), desc="training", unit=" steps",
                         initial=self.start_step, total=self.args.total_steps):
            self.cores.update()
            yield step

    def fit_steps(self, n: int):
        """The steps of a fit before training (the generative models of lambda_tn), with a progress bar and the run's
        share of the cores: a script's fit takes `steps=run.fit_steps` (plain `range` without a run)."""
        for step in tqdm(range(n), desc="fitting the generative models", unit=" steps"):
            self.cores.update()
            yield step

    def log_due(self, step: int) -> bool:
        return step % LOG_FREQ == 0 or self.eval_due(step)

    def eval_due(self, step: int) -> bool:
        return step % self.args.eval_freq == 0 or step == self.args.total_steps

    def scalars(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def log(self, step: int, logs: dict) -> None:
        """Training scalars to TensorBoard; the `weights/` and `losses/` ones also go into the next evaluation's entry."""
        self.logs = logs
        self.scalars(step, logs)
        self.writer.add_scalar("charts/updates_per_second", (step - self.start_step) / (time.time() - self.session_start), step)

    @contextlib.contextmanager
    def evaluation(self, step: int):
        """An evaluation entry of results.json to fill in: the training clock stops for the block; then the entry gets
        the training scalars last logged, goes to TensorBoard (eval/), results.json and the console."""
        self.trained += time.time() - self.clock
        previous = self.results["evaluations"][-1] if self.results["evaluations"] else dict(step=0, train_seconds=0.0)
        rate = (step - previous["step"]) / max(self.trained, 1e-9)
        entry = dict(step=step, seconds=round(self.seconds(), 1), train_seconds=previous["train_seconds"] + self.trained,
                     updates_per_second=rate, ms_per_update=1000 / max(rate, 1e-9))  # Table 11: one update of the team
        yield entry
        entry.update({k.split("/")[1]: v for k, v in self.logs.items() if k.startswith(("weights/", "losses/"))})
        for k, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_EVAL_SCALARS \
                    and not k.startswith(TRAINING_PREFIXES):
                self.writer.add_scalar(f"eval/{k}", v, step)
        self.results["evaluations"].append(entry)
        self.results["final"] = entry
        tqdm.write(console_line(entry))
        self.trained, self.clock = 0.0, time.time()

    def checkpoint(self, step: int, force: bool = False, **extra) -> None:
        """At every evaluation (or every --checkpoint-freq steps) and at the end: results.json, and the training state
        (modules, optimisers, the sampler's streams, `extra` such as lambda_tn) that --resume goes on from."""
        freq = self.args.checkpoint_freq
        due = force or (self.eval_due(step) if freq == 0 else step % freq == 0)
        if not (due or self.eval_due(step)):
            return
        self.results["seconds"] = self.seconds()
        self.session_start = time.time()
        if due or step == self.args.total_steps:
            save_torch(self.dir / "checkpoint.pt", dict(
                format=CHECKPOINT_FORMAT, script=self.script, step=step, args=asdict(self.args),
                modules={k: m.state_dict() for k, m in self.modules.items()},
                optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                sampler=self.sampler.state_dict() if self.sampler is not None else None, logs=self.logs,
                train_seconds=self.trained + time.time() - self.clock,
                results={k: self.results[k] for k in ("evaluations", "final", "seconds")}, **extra,
            ))
        self.write()

    def save_agents(self, env_kwargs: dict, modules: dict, **per_agent) -> None:
        """--save-model: one file per agent, loadable alone (`--checkpoints`): the agent's members of each ensemble
        module and its row of each `per_agent` tensor ([n_agents, ...], e.g. its observation statistics)."""
        n = len(self.agent_ids)
        for e, agent_id in enumerate(self.agent_ids):
            path = self.dir / f"agent_{agent_id}.pt"
            tensors = {**{k: agent_state(m, e, n) for k, m in modules.items()}, **{k: v[e].cpu() for k, v in per_agent.items()}}
            save_torch(path, dict(format=AGENT_FORMAT, script=self.script, agent_id=agent_id, env_id=self.args.env_id,
                                  env_kwargs=env_kwargs, args=asdict(self.args), **tensors))
            print(f"saved {path}")


def console_line(entry: dict) -> str:
    """One line per evaluation: what a user watches."""
    line = f"step {entry['step']}"
    if "normalized_score" in entry:
        line += f" | normalized score {entry['normalized_score']:.1f} ± {entry['normalized_score_std']:.1f}"
    if "team_return" in entry:
        line += f" | team return {entry['team_return']:.2f} ± {entry['team_return_std']:.2f}"
    if "win_rate" in entry:
        line += f" | win rate {entry['win_rate']:.2f}"
    for key, name, digits in (("extrapolation_error", "extrapolation error", 2), ("value_difference", "value difference", 3),
                              ("lambda_vd_mean", "lambda_vd", 3)):
        if key in entry:
            line += f" | {name} {entry[key]:.{digits}f}"
    return line
