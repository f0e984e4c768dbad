"""Runs every benchmark and writes BENCHMARKS.md.

    .bench-venv/bin/python benchmarks/run_all.py            # full run, CPU
    .bench-venv/bin/python benchmarks/run_all.py --quick    # smoke run
    python benchmarks/run_all.py --gpu --out DIR                 # GPU table (gpu_bench.sh)

Each framework runs in its own worker process (benchmarks/worker.py); the
coordinator copies the same weights into all of them, checks that their
Q-values, loss and gradient norm match ours, then times them in interleaved
rounds (ours, peer 1, peer 2, ..., ours, ...) so that load from other work on
the machine falls on all of them alike. Reported: medians over all repeats of
wall time and of process CPU time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from common import NUM_TASKS, flatten_params, make_batch  # noqa: E402

FRAMEWORKS = ["ours", "ours_xla_defaults", "spikingjelly", "snntorch", "spyx", "spyx_layerwise"]
# "ours" runs as the launchers run it, with mtspark_jax.xla_options's two
# process options: the CPU convolution option in XLA_FLAGS (convolutions on
# XLA's Eigen kernels, dots on YNNPACK) and glibc malloc keeping freed memory
# for reuse. "ours_xla_defaults" is the same code with neither: XLA's default
# fusions (every convolution a YNNPACK fusion) and glibc's default malloc.
# The peers run as their users run them: PyTorch's own thread count, OpenMP
# settings and glibc's default malloc. A peer with a changed process setting is
# an extra row named for it: "spikingjelly+omp_passive" is SpikingJelly with
# OMP_WAIT_POLICY=PASSIVE, "snntorch+reuse_malloc" snnTorch with our malloc
# option, "ours+bf16" ours with dtype=bfloat16 (see --frameworks).
LABELS = {
    "ours": "ours (mtspark_jax, as the launchers run it)",
    "ours_xla_defaults": "ours without the process options (XLA's default CPU fusions, glibc's default malloc)",
    "spikingjelly": "SpikingJelly",
    "snntorch": "snnTorch",
    "spyx": "Spyx (spyx.nn.run idiom)",
    "spyx_layerwise": "Spyx neurons, layer by layer",
}


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_info() -> dict:
    cpu = sh("lscpu | grep 'Model name' | head -1 | cut -d: -f2").strip()
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "uptime": sh("uptime"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


PEER_SETTINGS = {"omp_passive", "reuse_malloc", "bf16"}


def label(framework: str) -> str:
    """Table label: ``base+setting`` is the base framework's label with the setting named."""
    base, _, setting = framework.partition("+")
    text = LABELS.get(base, base)
    if setting == "omp_passive":
        return f"{text}, OMP_WAIT_POLICY=PASSIVE (not its default)"
    if setting == "reuse_malloc":
        return f"{text}, our malloc option (not its default)"
    if setting == "bf16":
        return f"{text}, dtype=bfloat16 (mixed precision)"
    return text


class Worker:
    def __init__(self, framework: str, env=None, peer_malloc: bool = False):
        self.framework = framework
        env = dict(env or os.environ)
        base, _, setting = framework.partition("+")
        if setting and setting not in PEER_SETTINGS:
            raise SystemExit(f"unknown peer setting {setting!r} in {framework!r}; expected one of {sorted(PEER_SETTINGS)}")
        if setting == "omp_passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        if setting == "bf16":
            if base != "ours":
                raise SystemExit(f"the bf16 setting is for ours only, not {framework!r}")
            env["BENCH_DTYPE"] = "bfloat16"  # worker.py builds the network with dtype=bfloat16
        peer_malloc = peer_malloc or setting == "reuse_malloc"
        if base == "ours":
            from mtspark_jax import xla_options

            xla_options.use_fast_cpu_convolutions(env)
        if base == "ours" or (peer_malloc and framework != "ours_xla_defaults"):
            env["BENCH_REUSE_HOST_MEMORY"] = "1"  # worker.py applies xla_options.reuse_freed_host_memory()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py"), base],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env, cwd=ROOT,
        )
        self.versions, self.alive = {}, False

    def handshake(self):
        """Waits for the worker's greeting (all workers start in parallel first)."""
        hello = self._read()
        self.versions = hello.get("versions", {}) if hello else {}
        self.alive = bool(hello and hello.get("ok"))

    def _read(self):
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def call(self, **msg):
        if not self.alive:
            return {"ok": False, "error": "worker not running (framework not installed?)"}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        if r is None:
            self.alive = False
            return {"ok": False, "error": "worker died"}
        return r

    def close(self):
        if self.alive:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        self.proc.wait(timeout=60)


def parity_params(net_name: str, workdir: str):
    """Our Flax init with every kernel scaled by the smallest gain (1, 1.5, 2, ...)
    at which every spiking layer fires on the benchmark batch; saved as .npz."""
    import jax
    import jax.numpy as jnp

    import mtspark_jax as mj

    net = mj.make_network(net_name)
    obs, tasks, _ = make_batch(8)
    params = mj.init_network(net, jax.random.PRNGKey(0), (8, 84, 84, 4))["params"]
    for gain in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
        p = jax.tree_util.tree_map_with_path(
            lambda path, x: x * gain if jax.tree_util.keystr(path).endswith("['kernel']") else x, params)
        rates = net.apply({"params": p}, jnp.asarray(obs), jnp.asarray(tasks)).spike_rates
        rates = {k: float(v.mean()) for k, v in rates.items()}
        if not rates or min(rates.values()) > 0.005:  # DQN has no spiking layer
            break
    path = os.path.join(workdir, f"{net_name}.npz")
    np.savez(path, **flatten_params(jax.tree.map(np.asarray, p)))
    return path, gain, rates


def compare(ref: dict, other: dict) -> dict:
    q0, q1 = np.asarray(ref["q"]), np.asarray(other["q"])
    d = np.abs(q0 - q1).max(axis=1)
    return {
        "q_max_abs_diff": float(d.max()),
        "samples_equal": int((d <= 1e-4 * max(np.abs(q0).max(), 1.0)).sum()),
        "samples": int(d.size),
        "q_scale": float(np.abs(q0).max()),
        "loss_rel_diff": abs(ref["loss"] - other["loss"]) / max(abs(ref["loss"]), 1e-12),
        "grad_norm_rel_diff": abs(ref["grad_norm"] - other["grad_norm"]) / max(ref["grad_norm"], 1e-12),
    }


def bench_config(workers, net_name, mode, batch, params_path, rounds, reps):
    infos, par, times = {}, {}, {w.framework: [] for w in workers}
    for w in workers:
        r = w.call(cmd="setup", net=net_name, mode=mode, batch=batch, params=params_path)
        infos[w.framework] = r
        print(f"  setup {w.framework}: {'ok' if r.get('ok') else r.get('error')}", flush=True)
    ref = infos.get("ours")
    for fw, r in infos.items():
        if fw != "ours" and r.get("ok") and ref and ref.get("ok"):
            par[fw] = compare(ref, r)
    live = [w for w in workers if infos[w.framework].get("ok")]
    # One untimed call each; a framework slower than 1 s per call gets one call per round.
    n = {}
    for w in live:
        r = w.call(cmd="time", n=1)
        n[w.framework] = 1 if r.get("ok") and r["times"][0][0] > 1.0 else reps
    for _ in range(rounds):
        for w in live:
            r = w.call(cmd="time", n=n[w.framework])
            if r.get("ok"):
                times[w.framework] += r["times"]
    return infos, par, times


def summarise(times):
    out = {}
    for fw, ts in times.items():
        if ts:
            a = np.asarray(ts, dtype=np.float64)
            out[fw] = {"wall_ms": float(np.median(a[:, 0])) * 1e3, "wall_min_ms": float(a[:, 0].min()) * 1e3,
                       "cpu_ms": float(np.median(a[:, 1])) * 1e3, "n": len(ts),
                       "page_faults": float(np.median(a[:, 2])) if a.shape[1] > 2 else None}
    return out


# --------------------------------------------------------------- FLOPs / rate
def flops_section(quick: bool) -> tuple[str, dict]:
    """Counts train-step FLOPs analytically and via XLA, measures XLA's
    matmul/conv rate on this machine at the train step's own shapes."""
    import time

    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    import mtspark_jax as mj

    B, T = 32, 4
    # Analytic: multiply-adds x 2 of every conv / dense, forward and backward.
    layers = []  # (name, fwd_flops, needs_dx)
    layers.append(("conv0 8x8/4 4->32 (once, direct encoding)", 2 * B * 20 * 20 * 32 * 8 * 8 * 4, False))
    layers.append(("conv1 4x4/2 32->64 (T*B)", 2 * T * B * 9 * 9 * 64 * 4 * 4 * 32, True))
    layers.append(("conv2 3x3/1 64->64 (T*B)", 2 * T * B * 7 * 7 * 64 * 3 * 3 * 64, True))
    layers.append(("a_fc + v_fc 3136->512 (T*B)", 2 * 2 * T * B * 3136 * 512, True))
    layers.append(("a_out + v_out on the mean rate", 2 * B * 512 * 19, True))
    fwd = sum(f for _, f, _ in layers)
    bwd = sum(f * (2 if dx else 1) for _, f, dx in layers)
    total = fwd + bwd

    net = mj.MTSparkADD()
    obs, tasks, target = (jnp.asarray(a) for a in make_batch(B))
    p = mj.init_network(net, jax.random.PRNGKey(0), (B, 84, 84, 4))["params"]
    opt = optax.adam(1e-4)

    def step(p, s):
        g = jax.grad(lambda p: optax.huber_loss(net.apply({"params": p}, obs, tasks).q, target, delta=1.0).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    xla_flops = None
    try:
        ca = jax.jit(step).lower(p, opt.init(p)).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        xla_flops = float(ca.get("flops", 0.0)) or None
    except Exception:
        pass

    def tm(f, *a, n=7 if quick else 15):
        f = jax.jit(f)
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t0)
        return float(np.min(ts)), float(np.median(ts))

    key = jax.random.PRNGKey(1)
    rates = []
    for m, k, n in [(128, 3136, 512), (2048, 2048, 2048)]:
        a, b = jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))
        tmin, tmed = tm(lambda a, b: a @ b, a, b)
        rates.append((f"matmul f32 {m}x{k}x{n}", 2 * m * k * n, tmin, tmed))
    dn = ("NHWC", "HWIO", "NHWC")
    for name, xs, ws, s in [("conv1 fwd f32 [128,20,20,32] 4x4/2", (128, 20, 20, 32), (4, 4, 32, 64), 2),
                            ("conv2 fwd f32 [128,9,9,64] 3x3/1", (128, 9, 9, 64), (3, 3, 64, 64), 1)]:
        x, w = jax.random.normal(key, xs), jax.random.normal(key, ws)
        ho = (xs[1] - ws[0]) // s + 1
        tmin, tmed = tm(lambda x, w: lax.conv_general_dilated(x, w, (s, s), "VALID", dimension_numbers=dn), x, w)
        rates.append((name, 2 * xs[0] * ho * ho * ws[3] * ws[0] * ws[1] * ws[2], tmin, tmed))
    peak = max(f / tmin for _, f, tmin, _ in rates)
    lines = ["| layer | forward MFLOP | backward MFLOP |", "|---|---:|---:|"]
    for name, f, dx in layers:
        lines.append(f"| {name} | {f / 1e6:.0f} | {f * (2 if dx else 1) / 1e6:.0f} |")
    lines.append(f"| **total** | **{fwd / 1e6:.0f}** | **{bwd / 1e6:.0f}** |")
    lines += ["", f"Analytic total per train step: **{total / 1e9:.2f} GFLOP** "
              f"(conv/dense only; element-wise neuron updates and Adam add < 1 %)."]
    if xla_flops:
        lines.append(f"XLA cost analysis of the compiled train step: {xla_flops / 1e9:.2f} GFLOP.")
    lines += ["", "Measured XLA rates on this machine (f32, best of repeats):", "",
              "| kernel | GFLOP | best ms | median ms | GFLOP/s (best) |", "|---|---:|---:|---:|---:|"]
    for name, f, tmin, tmed in rates:
        lines.append(f"| {name} | {f / 1e9:.3f} | {tmin * 1e3:.2f} | {tmed * 1e3:.2f} | {f / tmin / 1e9:.0f} |")
    return "\n".join(lines), {"total_flops": total, "xla_flops": xla_flops, "peak_flops_s": peak}


# --------------------------------------------------------------- profile
def profile_section(quick: bool) -> str:
    """Per-op time of our compiled train step from the JAX profiler (XLA thunks)."""
    import collections
    import glob
    import re

    import jax
    import jax.numpy as jnp
    import optax

    import mtspark_jax as mj

    try:
        from jax._src.lib import _profile_data
    except Exception as e:  # pragma: no cover
        return f"(profiler data reader unavailable: {e})"
    B = 32
    net = mj.MTSparkADD()
    obs, tasks, target = (jnp.asarray(a) for a in make_batch(B))
    p = mj.init_network(net, jax.random.PRNGKey(0), (B, 84, 84, 4))["params"]
    opt = optax.adam(1e-4)

    @jax.jit
    def step(p, s, obs, tasks, target):
        g = jax.grad(lambda p: optax.huber_loss(net.apply({"params": p}, obs, tasks).q, target, delta=1.0).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    s = opt.init(p)
    jax.block_until_ready(step(p, s, obs, tasks, target))
    n = 3 if quick else 8
    d = tempfile.mkdtemp(prefix="mtspark_prof_")
    jax.profiler.start_trace(d)
    for _ in range(n):
        jax.block_until_ready(step(p, s, obs, tasks, target))
    jax.profiler.stop_trace()
    files = glob.glob(d + "/**/*.xplane.pb", recursive=True)
    if not files:
        return "(no profile written)"
    pd = _profile_data.ProfileData.from_file(files[0])
    hlo = step.lower(p, s, obs, tasks, target).compile().as_text()
    tot = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            for ev in line.events:
                if not ev.name.startswith("ThunkExecutor"):
                    tot[ev.name] += ev.duration_ns

    def describe(name):
        m = re.search(r"^\s*%?" + re.escape(name) + r" = (\S+) ([a-z\-]+)\(([^\n]*)", hlo, re.M)
        if not m:
            return "", ""
        shape, kind, rest = m.groups()
        op = re.search(r'op_name="([^"]+)"', rest)
        op = op.group(1) if op else ""
        op = op.replace("jit(step)/", "").replace("MTSparkADD._run_streams/", "")
        if "custom_call_target" in rest or kind in ("custom-call",):
            kind = "custom-call"
        return f"{kind} {shape}", op[:90]

    def category(desc, op):
        bwd = "transpose(" in op
        if "conv" in op and ("conv_general" in op or "convolution" in desc):
            return ("conv backward" if bwd else "conv forward")
        if "dot_general" in op:
            return "dense backward" if bwd else "dense forward"
        if "while" in desc or "while" in op:
            return "neuron time scans (while loops)"
        if "add" in op and "/" not in op:
            return "Adam update"
        return "other element-wise / copies"

    total = sum(tot.values())
    cats = collections.Counter()
    rows = []
    for name, ns in tot.most_common():
        desc, op = describe(name)
        cats[category(desc, op)] += ns
        rows.append((name, ns, desc, op))
    lines = [f"Summed thunk time over both XLA worker threads, per step (mean of {n} steps): "
             f"{total / n / 1e6:.1f} ms (threads overlap, so this exceeds the wall time)."
             " The convolutions, on XLA's Eigen kernels, hand their work to Eigen's own thread pool, which"
             " this profile does not trace: their rows undercount them (docs/performance.md, section 1.1, times"
             " the trunk's share by holding layers fixed).", "",
             "| category | ms / step | share |", "|---|---:|---:|"]
    for c, ns in cats.most_common():
        lines.append(f"| {c} | {ns / n / 1e6:.1f} | {100 * ns / total:.0f} % |")
    lines += ["", "Top operations:", "", "| op | ms / step | what | from |", "|---|---:|---|---|"]
    for name, ns, desc, op in rows[:15]:
        lines.append(f"| `{name}` | {ns / n / 1e6:.2f} | `{desc[:60]}` | {op} |")
    return "\n".join(lines)


# --------------------------------------------------------------- report
def table(summary, par, order, ref="ours", goal_peers=()):
    lines = ["| framework | wall median ms | wall best ms | CPU median ms | page faults / call | n | ours faster by (wall) | parity: samples with equal Q (1e-4); max abs dQ (max abs Q) | loss / grad-norm rel. diff |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    r = summary.get(ref)
    for fw in order:
        s = summary.get(fw)
        if not s:
            continue
        ratio = f"{s['wall_ms'] / r['wall_ms']:.2f}x" if r and fw != ref else "-"
        p = par.get(fw)
        ptxt = (f"{p['samples_equal']}/{p['samples']} equal; max {p['q_max_abs_diff']:.1e} ({p['q_scale']:.2f})"
                if p else "reference")
        ltxt = f"{p['loss_rel_diff']:.1e} / {p['grad_norm_rel_diff']:.1e}" if p else "-"
        faults = "" if s.get("page_faults") is None else f"{s['page_faults']:.0f}"
        lines.append(f"| {label(fw)} | {s['wall_ms']:.1f} | {s['wall_min_ms']:.1f} | {s['cpu_ms']:.1f} | {faults} | {s['n']} | {ratio} | {ptxt} | {ltxt} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per configuration")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per framework per round")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 2 reps, skips profile")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS + ["ours+bf16", "spikingjelly+omp_passive"]),
                    help="comma-separated; a peer with +omp_passive or +reuse_malloc runs with that process "
                         "setting as an extra row; ours+bf16 is ours with dtype=bfloat16")
    ap.add_argument("--configs", default="mtspark_add:train:32,dsqn:train:32,mtspark_add:act:8,dsqn:act:8")
    ap.add_argument("--gpu", action="store_true", help="JAX + torch-on-CUDA peers, no FLOPs/profile")
    ap.add_argument("--out", default=None, help="output markdown (default BENCHMARKS.md at the repo root, "
                    "or DIR/BENCHMARKS_GPU.md with --gpu when --out is a directory)")
    ap.add_argument("--omp-wait", choices=["default", "passive", "active"], default="default",
                    help="OMP_WAIT_POLICY for every torch worker (default: unset, PyTorch's own setting; "
                         "for one extra row instead, add e.g. spikingjelly+omp_passive to --frameworks)")
    ap.add_argument("--peer-malloc", choices=["reuse", "default"], default="default",
                    help="the peers' malloc: glibc's default (default, as their users run them) or reuse "
                         "(xla_options.reuse_freed_host_memory(), as ours runs)")
    default_rl_python = os.environ.get("MTSPARK_RL_PYTHON") or next(
        (p for p in (os.path.join(ROOT, ".venv", "bin", "python"),) if os.path.exists(p)), sys.executable)
    ap.add_argument("--rl-python", default=default_rl_python,
                    help="python with EnvPool for benchmarks/rl_loop.py (default: $MTSPARK_RL_PYTHON, "
                         "else the repository's .venv, else this python)")
    ap.add_argument("--rl-args", default="", help="arguments passed to benchmarks/rl_loop.py")
    ap.add_argument("--skip-rl", action="store_true", help="do not run benchmarks/rl_loop.py")
    ap.add_argument("--no-extras", action="store_true", help="skip FLOPs, profile and RL-loop sections")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.reps = 2, 2
    out = args.out or os.path.join(ROOT, "BENCHMARKS.md")
    if os.path.isdir(out):
        out = os.path.join(out, "BENCHMARKS_GPU.md" if args.gpu else "BENCHMARKS.md")

    from mtspark_jax import xla_options

    env = dict(os.environ)  # the workers' environment; "ours" adds the XLA option itself (Worker)
    if not args.gpu:  # this process (FLOPs rate, profile) and the RL loop run as the launchers do
        xla_options.apply_options()
    info = machine_info()
    print("machine:", info, flush=True)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if args.gpu:
        env["BENCH_DEVICE"] = "cuda"
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several JAX processes share the GPU
        info["gpu"] = sh("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader")
    # PyTorch's OpenMP threads busy-wait by default (fast on an idle machine,
    # slow on a loaded one); the headline runs them at that default.
    if args.omp_wait != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    info["omp_wait_policy"] = env.get("OMP_WAIT_POLICY", "unset (PyTorch's default)")
    workdir = tempfile.mkdtemp(prefix="mtspark_bench_")
    fws = args.frameworks.split(",")
    workers = [Worker(fw, env, peer_malloc=args.peer_malloc == "reuse") for fw in fws]
    info["peer_malloc"] = args.peer_malloc
    versions = {}
    for w in workers:
        w.handshake()
        versions.update(w.versions)
        if not w.alive:
            print(f"  {w.framework}: not available", flush=True)
    workers = [w for w in workers if w.alive]

    results = []
    params_cache = {}
    for cfg in args.configs.split(","):
        net_name, mode, batch = cfg.split(":")
        batch = int(batch)
        if net_name not in params_cache:
            params_cache[net_name] = parity_params(net_name, workdir)
        path, gain, rates = params_cache[net_name]
        print(f"== {net_name} {mode} batch {batch} (weights x{gain}, rates {rates})", flush=True)
        infos, par, times = bench_config(workers, net_name, mode, batch, path, args.rounds, args.reps)
        summ = summarise(times)
        print(json.dumps(summ, indent=1), flush=True)
        results.append({"net": net_name, "mode": mode, "batch": batch, "gain": gain, "rates": rates,
                        "summary": summ, "parity": par,
                        "errors": {fw: r.get("error") for fw, r in infos.items() if not r.get("ok")}})
        # Written after every configuration, so a run cut short still leaves its tables.
        write_report(out, info, versions, results, {}, args)
    for w in workers:
        w.close()
    info["uptime_after"] = sh("uptime")

    extras = {}
    if not args.gpu and not args.no_extras:
        try:
            extras["flops"] = flops_section(args.quick)
        except Exception as e:
            extras["flops"] = (f"(failed: {e})", {})
        if not args.quick:
            try:
                extras["profile"] = profile_section(args.quick)
            except Exception as e:
                extras["profile"] = f"(failed: {e})"
        rl = os.path.join(HERE, "rl_loop.py")
        if os.path.exists(rl) and not args.skip_rl:
            # rl_loop.py needs EnvPool, which lives in the library's own venv, not the peers' one.
            cmd = [args.rl_python, rl] + args.rl_args.split()
            print("running", " ".join(cmd), flush=True)
            try:
                rl_env = dict(env)
                xla_options.use_fast_cpu_convolutions(rl_env)  # as the launchers run (rl_loop.py sets it too)
                r = subprocess.run(cmd, capture_output=True, text=True, env=rl_env, cwd=ROOT, timeout=900)
                body = r.stdout.strip() if r.returncode == 0 else f"(failed, exit {r.returncode}):\n{r.stderr[-3000:]}"
            except subprocess.TimeoutExpired:
                body = "(timed out after 900 s)"
            extras["rl_loop"] = f"Output of `{' '.join(os.path.relpath(c, ROOT) if c in (rl, args.rl_python) and c.startswith(ROOT) else c for c in cmd)}`:\n\n```\n{body}\n```"
        else:
            extras["rl_loop"] = None

    write_report(out, info, versions, results, extras, args)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"machine": info, "versions": versions, "results": results}, f, indent=1)
    print("wrote", out, flush=True)


def write_report(out, info, versions, results, extras, args):
    L = []
    where = "GPU" if args.gpu else "CPU"
    L.append(f"# Benchmarks ({where})\n")
    L.append("Generated by `benchmarks/run_all.py`" + (" --gpu" if args.gpu else "") +
             f" on {info['date']}. Each framework runs in its own process; rounds are interleaved "
             f"({args.rounds} rounds x {args.reps} calls per framework and configuration). "
             "Wall: median and best wall-clock time per call; CPU: median process CPU time per call "
             "(all threads), less sensitive to other work on the machine; page faults: median minor page "
             "faults of the process per call (memory the call maps anew or that the OS paged out). "
             "Ratios are wall-median ratios, peer / ours (> 1: ours is faster).\n")
    L.append("## Machine\n")
    if info.get("gpu"):
        L.append(f"- GPU: {info['gpu']}")
    L.append(f"- CPU: {info['cpu']}, {info['cores']} cores visible")
    L.append(f"- Load before: `{info['uptime']}`")
    L.append(f"- Load after: `{info.get('uptime_after', '')}`")
    L.append(f"- Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    L.append(f"- OMP_WAIT_POLICY for the PyTorch workers: {info.get('omp_wait_policy')}")
    if info.get("peer_malloc"):
        peers = "the peers too" if info["peer_malloc"] == "reuse" else "not the peers (glibc's default)"
        L.append("- glibc malloc keeping freed memory for reuse (`mtspark_jax.xla_options.reuse_freed_host_memory`): "
                 f"ours, the FLOPs rate, the profile, the RL loop, and {peers}")
    if info["xla_flags"]:
        L.append(f"- XLA_FLAGS of ours, the FLOPs rate, the profile and the RL loop: `{info['xla_flags']}`")
    L.append("")
    order = list(FRAMEWORKS) + [fw for fw in args.frameworks.split(",") if fw not in FRAMEWORKS]
    titles = {("mtspark_add", "train"): "MTSpark_ADD train step (forward + backward + Adam)",
              ("dsqn", "train"): "DSQN train step (forward + backward + Adam)",
              ("mtspark_add", "act"): "MTSpark_ADD acting (forward only)",
              ("dsqn", "act"): "DSQN acting (forward only)"}
    L.append("## Network benchmarks\n")
    L.append("Same weights in every framework (our Flax init, kernels scaled by the gain shown so "
             "that every spiking layer fires), same uint8 batch, Huber loss against a fixed target, "
             "Adam lr 1e-4, T = 4, tau = 2, v_th = 1, hard reset to 0, sigmoid surrogate alpha = 4. "
             "Parity columns compare each peer with ours on that batch before timing. A sample's Q counts as "
             "equal within 1e-4 x max|Q|. Where a peer's convolution rounds differently (oneDNN vs XLA), a "
             "membrane within float rounding of the threshold can fire in one and not the other (17 of "
             "401,408 trunk spikes in our check against PyTorch; ours with another XLA convolution kernel "
             "flips spikes too); with sparse head spikes one flip moves that sample's Q visibly, so a few "
             "unequal samples are expected, while the loss and gradient norm agree closely.\n")
    for r in results:
        L.append(f"### {titles.get((r['net'], r['mode']), r['net'] + ' ' + r['mode'])}, batch {r['batch']}\n")
        L.append(f"Weights x{r['gain']}; spike rates (ours): " +
                 ", ".join(f"{k} {v:.3f}" for k, v in r["rates"].items()) + "\n")
        L.append(table(r["summary"], r["parity"], order))
        if r["errors"]:
            L.append("")
            for fw, e in r["errors"].items():
                L.append(f"- {fw}: failed: `{e}`")
        L.append("")
    # Goals
    for r in results:
        if r["net"] == "mtspark_add" and r["mode"] == "train":
            s = r["summary"]
            if "ours" in s:
                o = s["ours"]["wall_ms"]
                L.append("## Goals (MTSpark_ADD train step, this run)\n")
                if "ours_xla_defaults" in s:
                    L.append(f"(ours without the process options: {s['ours_xla_defaults']['wall_ms']:.1f} ms, vs "
                             f"{o:.1f} ms as the launchers run it; the ratios below use the latter.)\n")
                torch_peers = [s[f]["wall_ms"] for f in ("spikingjelly", "snntorch") if f in s]
                if torch_peers:
                    best = min(torch_peers)
                    L.append(f"- vs the faster of SpikingJelly / snnTorch: {best / o:.2f}x (goal >= 2x): "
                             f"{'met' if best / o >= 2 else 'missed'}")
                for f in ("spyx", "spyx_layerwise"):
                    if f in s:
                        L.append(f"- vs {LABELS[f]}: {s[f]['wall_ms'] / o:.2f}x (goal >= 1.2x): "
                                 f"{'met' if s[f]['wall_ms'] / o >= 1.2 else 'missed'}")
                L.append("")
    if "flops" in extras:
        text, nums = extras["flops"]
        L.append("## Physical limit: FLOPs of one train step over the measured XLA rate\n")
        L.append(text)
        tr = next((r for r in results if r["net"] == "mtspark_add" and r["mode"] == "train"), None)
        if nums.get("peak_flops_s") and tr and "ours" in tr["summary"]:
            tmin = tr["summary"]["ours"]["wall_min_ms"] / 1e3
            tmed = tr["summary"]["ours"]["wall_ms"] / 1e3
            lim = nums["total_flops"] / nums["peak_flops_s"]
            L.append("")
            L.append(f"At the best measured rate ({nums['peak_flops_s'] / 1e9:.0f} GFLOP/s) the analytic "
                     f"FLOPs take **{lim * 1e3:.1f} ms**; our train step takes {tmed * 1e3:.1f} ms (median) / "
                     f"{tmin * 1e3:.1f} ms (best), i.e. **{100 * lim / tmed:.0f} %** (median) / "
                     f"{100 * lim / tmin:.0f} % (best) of that limit.")
        L.append("")
    if extras.get("profile"):
        L.append("## Where our train step spends its time (JAX profiler, CPU)\n")
        L.append(extras["profile"])
        L.append("")
    if "rl_loop" in extras:
        L.append("## RL loop and replay\n")
        if extras["rl_loop"]:
            L.append(extras["rl_loop"])
        else:
            L.append("Not measured in this run: `benchmarks/rl_loop.py` (the RL system's benchmark: fused "
                     "loop vs host loop vs its bound, replay bytes per transition) is not in this tree yet, or "
                     "`--skip-rl` was given. When it exists, this runner runs it with `--rl-python` (a python "
                     "with EnvPool, default `$MTSPARK_RL_PYTHON`) and `--rl-args`, and pastes its output here.")
        L.append("")
    L.append("See `docs/performance.md` for where the train step's time goes, the speed levers the code keeps "
             "and what was tried and dropped.")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
