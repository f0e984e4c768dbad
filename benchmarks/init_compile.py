r"""Compile and run time of the train-state initialisation, at XLA's default and as the library compiles it.

For one preset of experiments/configs/presets.py (flags override it), lowers
the jitted ``trainer.init`` once and compiles it at XLA:CPU's default
optimisation level and with :data:`mtspark_jax.init_jit.ONCE_OPTIONS` (what
:func:`mtspark_jax.init_jit.jit_once` uses on the CPU; ``--levels`` adds
others), runs each compiled program once, and says whether the train states
are bit-identical to the default's.

    PYTHONPATH=. python benchmarks/init_compile.py --preset=three_games --set=optimizer_per_task=True,hidden=128
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import apply_overrides, get_preset  # noqa: E402
from mtspark_jax.init_jit import ONCE_OPTIONS  # noqa: E402
from mtspark_jax.rl import runner  # noqa: E402
from mtspark_jax.rl import training as T  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "three_games", "Preset of experiments/configs/presets.py.")
_SET = flags.DEFINE_list("set", [], "TrainConfig overrides, key=value,...")
_LEVELS = flags.DEFINE_list("levels", [], "More xla_backend_optimization_level values to time (e.g. 0).")


def main(argv):
    del argv
    config = apply_overrides(get_preset(_PRESET.value), _SET.value)
    envs = runner.make_task_envs(config, list(config.games), is_eval=False)
    try:
        trainer = T.make_train(config, envs)
        env_states, obs = T.reset_envs(envs)
        key = jax.random.PRNGKey(0)
        lowered = jax.jit(trainer.init).lower(key, env_states, obs)
        options = [("XLA default", None), (f"init_jit {ONCE_OPTIONS}", ONCE_OPTIONS)] + [
            (f"level {lv}", {"xla_backend_optimization_level": int(lv)}) for lv in _LEVELS.value]
        reference = None
        print(f"preset {_PRESET.value} {','.join(_SET.value)}; load average {os.getloadavg()[0]:.2f}")
        for name, opts in options:
            t0 = time.perf_counter()
            compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
            t1 = time.perf_counter()
            state = jax.block_until_ready(compiled(key, env_states, obs))
            t2 = time.perf_counter()
            leaves = [np.asarray(x) for x in jax.tree.leaves((state.learner, state.replay))]
            reference = leaves if reference is None else reference
            same = all(np.array_equal(a, b) for a, b in zip(leaves, reference))
            print(f"{name:45s} compile {t1 - t0:6.1f} s   run {t2 - t1:6.2f} s   identical to default: {same}",
                  flush=True)
    finally:
        for e in envs:
            e.close()


if __name__ == "__main__":
    app.run(main)
