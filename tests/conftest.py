"""Shared tiny configs so the RL tests compile small networks, and one XLA compilation cache per session."""

import os
import shutil
import tempfile

import pytest

from mtspark_jax.rl.training import TrainConfig

TINY = dict(num_envs=2, hidden=16, convs="4:8:4", time_steps=2, batch_size=8, warmup_steps=40, buffer_size=400,
            target_update=100, eval_episodes=1, eval_max_steps=40,
            eval_random=False)


_CACHE_DIR = pytest.StashKey[str]()
_CACHE_MIN_COMPILE_SECS = 0.2  # cheaper programs compile again rather than fill the cache


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole session.

    Many tests compile the same small programs: in each xdist worker, in every
    launcher subprocess (a resumed run compiles what the interrupted run did)
    and again where a test builds a new jitted function for the same config.
    With one cache, each program taking more than 0.2 s to compile compiles
    once per session. The controller makes the folder before the workers
    start; they and every subprocess inherit it through the environment. A
    cache the user has set is left alone.
    """
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="mtspark-xla-cache-")
    config.stash[_CACHE_DIR] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(_CACHE_MIN_COMPILE_SECS)
    import jax  # already imported above: the variables alone would come too late for this process (-n 0)

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECS)


def pytest_unconfigure(config):
    path = config.stash.get(_CACHE_DIR, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_config():
    def make(**kw):
        return TrainConfig(**{**TINY, **kw})
    return make


@pytest.fixture(autouse=True)
def _isolated_absl_flags():
    """Launchers define absl flags on import; forget them after each test.

    ``experiments/train_atari.py`` and ``experiments/train_images.py`` both
    define ``--workdir`` and ``--progress``: without this, whichever test
    imports the second launcher gets absl's DuplicateFlagError.
    """
    import sys

    from absl import flags

    launchers = ("experiments", "train_images", "train_atari", "sweep")
    # A launcher loaded with importlib's spec_from_file_location registers its
    # top-level flags under importlib's frame, not under its own name.
    owners = launchers + ("importlib",)
    flags_before = set(flags.FLAGS)
    yield
    added = {
        flag.name
        for module, defined in flags.FLAGS.flags_by_module_dict().items()
        if module.split(".")[0] in owners
        for flag in defined
        if flag.name not in flags_before
    }
    for name in added:  # collected first: deleting a flag edits the module dict
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    for module in list(sys.modules):
        if module.split(".")[0] in launchers:
            del sys.modules[module]


@pytest.fixture
def workdir_holder():
    """``start(path) -> pid``: another process that holds ``path``'s workdir lock until the test ends."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; from mtspark_jax import workdir; workdir.claim(sys.argv[1], writer=True); "
            "print('held', flush=True); sys.stdin.read()")
    procs = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": root})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc.pid

    yield start
    for proc in procs:  # closing its stdin ends it, and the kernel drops its lock
        proc.stdin.close()
        proc.wait(timeout=60)
