"""The agent files shipped under results/ play far better than the random policy.

Each file (experiments/export_params.py) is played greedily for a few
episodes of every one of its games on the run's evaluation protocol, cut at
``MAX_STEPS`` agent steps so the test stays under a minute, and compared with
the uniform random policy on the same pools and the same cut. A file that is
not in the repository (yet) skips its test, naming the file.
"""

import dataclasses
import os

import jax
import pytest

from mtspark_jax.rl import agent_file, runner
from mtspark_jax.rl.evaluation import make_evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["results/atari_main_job/agent.msgpack"]
EPISODES = 4
MAX_STEPS = 2000
"""Agent steps per episode (8,000 frames): a won Pong game takes about 1,700, a random one about 800."""
MIN_GAIN = {"Pong": 10.0, "Enduro": 5.0, "Breakout": 5.0}
"""How far the greedy mean return must clear the random policy's, per game, over the cut episodes."""


@pytest.mark.slow
@pytest.mark.parametrize("relpath", SHIPPED)
def test_shipped_agent_is_far_above_random(relpath):
    path = os.path.join(ROOT, relpath)
    if not os.path.exists(path):
        pytest.skip(f"{relpath} is not in the repository")
    agent = agent_file.load_agent(path)
    config = dataclasses.replace(agent.config, eval_episodes=EPISODES)
    games = runner.canonical_games(config)

    def envs():
        return runner.make_task_envs(config, games, is_eval=True)

    key = jax.random.PRNGKey(config.seed + 3)
    greedy = make_evaluator(agent.net, envs, MAX_STEPS)(agent.variables, key).mean_returns()
    random = make_evaluator(agent.net, envs, MAX_STEPS, epsilon=1.0)(agent.variables, key).mean_returns()
    for game, g, r in zip(games, greedy, random):
        gain = MIN_GAIN.get(game.split("@")[0], 5.0)
        assert g >= r + gain, f"{relpath}: {game} greedy {g:.2f}, random {r:.2f}; needs a gain of {gain}"
