"""Runs MTSpark_ADD on real Atari frames from EnvPool and prints Q-values and spike rates.

    python experiments/forward_atari.py --games=Pong,Breakout,Enduro --steps=8
"""

from collections.abc import Sequence

import envpool
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import mtspark_jax as mj

_GAMES = flags.DEFINE_list("games", ["Pong", "Breakout", "Enduro"], "Atari games (EnvPool names without -v5).")
_STEPS = flags.DEFINE_integer("steps", 8, "Random-action steps before the forward pass.")
_T = flags.DEFINE_integer("time_steps", 4, "Spiking time steps T.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the network and the environments.")


def main(argv: Sequence[str]) -> None:
    del argv
    frames = []
    for game in _GAMES.value:
        env = envpool.make(f"{game}-v5", env_type="gymnasium", num_envs=1, full_action_space=True, seed=_SEED.value)
        obs, _ = env.reset()
        rng = np.random.default_rng(_SEED.value)
        for _ in range(_STEPS.value):
            obs, *_ = env.step(rng.integers(0, 18, size=1))
        frames.append(np.transpose(obs[0], (1, 2, 0)))  # [4, 84, 84] -> [84, 84, 4]
    obs = jnp.asarray(np.stack(frames))
    tasks = jnp.arange(len(frames))
    net = mj.MTSparkADD(num_tasks=len(frames), time_steps=_T.value)
    variables = mj.init_network(net, jax.random.PRNGKey(_SEED.value), obs.shape)
    out = jax.jit(net.apply)(variables, obs, tasks)
    for i, game in enumerate(_GAMES.value):
        q = np.asarray(out.q[i])
        print(f"{game:>10}: greedy action {int(q.argmax()):2d}  Q[:6] = {np.array2string(q[:6], precision=4)}")
        rates = ", ".join(f"{k} {float(v[i]):.4f}" for k, v in out.spike_rates.items())
        print(f"{'':>10}  spike rates: {rates}")


if __name__ == "__main__":
    app.run(main)
