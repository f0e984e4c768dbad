"""Shared tiny configs so the RL tests compile small networks."""

import pytest

from mtspark_jax.training import TrainConfig

TINY = dict(num_envs=2, hidden=16, convs="4:8:4", time_steps=2, batch_size=8, warmup_steps=40, buffer_size=400,
            target_update=100, eval_episodes=1, eval_max_steps=40)


@pytest.fixture
def tiny_config():
    def make(**kw):
        return TrainConfig(**{**TINY, **kw})
    return make
