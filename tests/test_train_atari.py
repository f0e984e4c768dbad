"""Launcher: bad flags fail with one clear line and exit 2 before any work; flags map onto the config;
a workdir in use is refused with one line; a full disk stops the run with one line."""

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "train_atari.py")


# A one-game run that compiles small networks: 50 agent steps per chunk.
TINY = ["--preset=cpu", "--games=Pong", "--agent=dqn", "--num_envs=2", "--hidden=16", "--convs=4:8:4", "--time_steps=2",
        "--batch_size=8", "--warmup_steps=40", "--buffer_size=400", "--target_update=100", "--eval_episodes=1",
        "--eval_max_steps=40", "--noeval_random", "--chunk_iters=25", "--noprogress"]


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset=cpu", "--games=Pong,Pongg"], "unknown Atari game 'Pongg'"),
        (["--games=Pong,Breakout"], "set full_action_space=True, e.g. --full_action_space"),
        (["--workdir=/proc/forbidden/run"], "is not writable"),
    ],
)
def test_bad_flags_one_line_nonzero(tmp_path, args, message):
    """The real command line: exit status 2 and one error line."""
    wd = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path}/run"]
    proc = _run(*wd, *args)
    assert proc.returncode == 2
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and message in err_lines[0], proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--agent=ppo"], "unknown agent 'ppo'"),
        (["--buffer_size=3"], "buffer_size 3 is too small"),
        (["--num_envs=0"], "num_envs must be >= 1"),
        (["--schedule=random"], "unknown schedule 'random'"),
        (["--preset=huge"], "unknown preset 'huge'"),
        (["--backend=minatar", "--games=breakout,pong"], "unknown MinAtar game 'pong'"),
        (["--backend=gameboy"], "unknown backend 'gameboy'"),
        (["--backend=minatar", "--preset=cpu"], "do not fit minatar frames (10x10)"),
        (["--backend=minatar", "--context=none"], "context must be 'task', 'zero' or 'task_input'"),
        (["--games=Pong,Breakout", "--nofull_action_space"], "full_action_space=False (each game's minimal action set) is for one Atari"),
    ],
)
def test_bad_values_rejected_in_process(tmp_path, capsys, args, message):
    sys.path.insert(0, ROOT)
    from absl import flags

    import experiments.train_atari as launcher

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", f"--workdir={tmp_path}/run", *args])
    try:
        assert launcher.main(["prog"]) == 2
    finally:
        flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


def test_every_config_field_is_a_flag():
    sys.path.insert(0, ROOT)
    from absl import flags

    import experiments.train_atari as launcher
    from mtspark_jax.rl.training import TrainConfig

    flags.FLAGS(["prog", "--workdir=/tmp/x", "--games=Breakout,Pong", "--lr=0.0003", "--batch_norm", "--time_steps=8"])
    cfg = launcher.config_from_flags()
    assert cfg.games == ("Breakout", "Pong") and cfg.lr == 0.0003 and cfg.batch_norm and cfg.time_steps == 8
    assert cfg.eps_decay_steps == 30_000 and cfg.train_every == 8  # from the default preset, enduro
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names <= set(flags.FLAGS)
    flags.FLAGS.unparse_flags()


def test_bad_minatar_game_on_the_command_line(tmp_path):
    proc = _run(f"--workdir={tmp_path}/run", "--backend=minatar", "--games=breakout,Pong")
    assert proc.returncode == 2
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and "unknown MinAtar game 'Pong'" in err_lines[0], proc.stderr[-2000:]


def test_minatar_backend_picks_the_minatar_preset():
    sys.path.insert(0, ROOT)
    from absl import flags

    import experiments.train_atari as launcher
    from mtspark_jax.rl.minatar import MINATAR_CONVS, MINATAR_HIDDEN
    from mtspark_jax.rl.training import parse_convs

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", "--workdir=/tmp/x", "--backend=minatar", "--context=zero"])
    try:
        cfg = launcher.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert cfg.backend == "minatar" and cfg.context == "zero"
    assert parse_convs(cfg.convs) == MINATAR_CONVS and cfg.hidden == MINATAR_HIDDEN
    assert cfg.games == ("breakout", "space_invaders") and cfg.total_steps == 120_000


def test_gpu_atari_script_stops_at_its_time_limit_and_writes_the_curve(tmp_path):
    """scripts/gpu_atari.sh on the CPU with tiny sizes: the time limit ends training, the final
    evaluation and the random policy still run, and summary.json and the curves are written."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TIME_LIMIT": "1", "EVAL_GRACE": "300"}
    tiny = ["--num_envs=2", "--batch_size=4", "--buffer_size=2000", "--warmup_steps=64", "--total_steps=1000000",
            "--chunk_iters=40", "--eval_episodes=1", "--eval_max_steps=100", "--hidden=16", "--convs=4:8:4,8:4:2",
            "--checkpoint_every=1000000"]
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_atari.sh"), str(out), *tiny],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "time limit of 1 s reached" in proc.stdout
    with open(out / "run" / "summary.json") as f:
        summary = json.load(f)
    assert summary["time_up"] and not summary["finished"]
    assert 0 < summary["agent_steps"] < 1_000_000 and summary["games"] == ["Pong"]
    assert len(summary["eval_mean_return"]) == 1 and len(summary["random_mean_return"]) == 1
    assert "--preset=pong_gpu" in summary["command"] and "--time_limit=1" in summary["command"]
    assert (out / "run" / "learning_curves.png").stat().st_size > 0
    with open(out / "run" / "metrics.csv") as f:
        walls = [float(line.split(",")[2]) for line in f if ",charts/wall_s," in line]
    assert walls and walls == sorted(walls) and walls[-1] >= 1.0


def test_every_preset_is_a_valid_config():
    sys.path.insert(0, ROOT)
    from experiments.configs import PRESETS, get_preset
    from mtspark_jax.rl.training import validate_config

    for name in PRESETS:
        validate_config(get_preset(name))
    pong = get_preset("pong")
    assert pong.games == ("Pong",) and not pong.full_action_space and pong.n_step == 3 and pong.rate_floor > 0


def test_gpu_speed_script_runs_every_part_and_projects_a_paper_run(tmp_path):
    """scripts/gpu_speed.sh on the CPU with tiny sizes: the train-step table with the bf16 row, the RL
    loop (in float32 only: each dtype is one more rl_loop.py process) and the projected wall time of a
    12M-step run from the fused loop."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "CONFIGS": "dqn:train:2", "ROUNDS": "1", "REPS": "1",
           "BENCH_LIMIT": "240", "LOOP_PRESET": "cpu", "LOOP_BUFFER": "1200", "LOOP_CHUNK": "5",
           "LOOP_REPEATS": "1", "LOOP_LIMIT": "300", "LOOP_ARGS": "--nohost", "LOOP_DTYPES": "float32",
           "LOOP_SET": "agent=dqn,num_envs=2,batch_size=4,hidden=8,convs=4:8:4,warmup_steps=20,games=Pong"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_speed.sh"), str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "bench" / "BENCHMARKS_GPU.md").read_text()
    assert "dtype=bfloat16" in table, table[-2000:]
    projection = (out / "projection.txt").read_text().splitlines()
    assert len(projection) == 1, projection
    for line, name in zip(projection, ("rl_loop_f32",)):
        rate = float(line.split("fused loop ")[1].split(" env-steps/s")[0])
        hours = float(line.split("would take ")[1].split(" h")[0])
        assert line.startswith(name) and rate > 0 and abs(hours - 12_000_000 / rate / 3600) <= 0.02 * hours + 0.01


def test_a_second_launcher_on_a_live_workdir_exits_at_once_with_one_line(tmp_path, workdir_holder):
    wd = tmp_path / "run"
    pid = workdir_holder(wd)
    before = {name: (wd / name).read_bytes() for name in os.listdir(wd)}
    proc = _run(f"--workdir={wd}", *TINY, "--total_steps=200")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: workdir {wd} is in use by pid {pid} on host {socket.gethostname()}: wait for that run to end, "
        "or pass another --workdir"]
    assert {name: (wd / name).read_bytes() for name in os.listdir(wd)} == before  # nothing written


def test_a_full_disk_while_logging_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch):
    """Every log write from agent step 150 on fails with ENOSPC (faked): after checkpoint 100."""
    sys.path.insert(0, ROOT)
    from absl import flags

    import experiments.train_atari as launcher
    from mtspark_jax.metrics_log import MetricsLogger

    real_scalar = MetricsLogger.scalar

    def scalar(self, name, value, step, **context):
        if step >= 150:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_scalar(self, name, value, step, **context)

    monkeypatch.setattr(MetricsLogger, "scalar", scalar)
    wd = tmp_path / "run"
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", f"--workdir={wd}", *TINY, "--total_steps=300", "--checkpoint_every=100", "--eval_every=100"])
    try:
        with pytest.raises(SystemExit) as exited:
            launcher.main(["prog"])
    finally:
        flags.FLAGS.unparse_flags()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: writing the logs in {wd} (metrics.csv, eval.csv) failed: the disk is full (OSError: [Errno 28] No "
        "space left on device); the newest complete checkpoint is step 100: free space and run the same command "
        "again to resume from it"]
    assert sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit()) == [100]
