"""mtspark_jax.rl.video: recording an episode's screens and writing them as GIF or MP4."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mtspark_jax.rl import video
from mtspark_jax.rl.envs import EnvSpec, EnvStep


def _frames(rng, num_colours, shape=(5, 12, 10)):
    """``[F, H, W, 3]`` uint8 frames drawn from ``num_colours`` random colours."""
    colours = rng.integers(0, 256, (num_colours, 3), dtype=np.uint8)
    return colours[rng.integers(0, num_colours, shape)]


@pytest.mark.parametrize("num_colours", [1, 7, 256])
def test_palette_is_exact_up_to_256_colours(num_colours):
    frames = _frames(np.random.default_rng(num_colours), num_colours)
    indices, palette = video.to_palette(frames)
    assert indices.shape == frames.shape[:3] and indices.dtype == np.uint8
    assert len(palette) == len(np.unique(frames.reshape(-1, 3), axis=0))
    np.testing.assert_array_equal(palette[indices], frames)


def test_palette_merges_colours_past_the_limit_by_dropping_low_bits():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)  # ~4800 colours
    indices, palette = video.to_palette(frames, max_colours=64)
    assert len(palette) <= 64
    error = np.abs(palette[indices].astype(int) - frames.astype(int))
    assert error.max() < 128 and (palette[indices] <= frames).all()  # bits dropped, never added


def test_frame_from_obs_takes_the_newest_grey_frame_and_enlarges_it():
    obs = np.zeros((84, 84, 4), np.uint8)
    obs[..., 3] = np.arange(84, dtype=np.uint8)[None, :]  # the newest frame: a horizontal ramp
    obs[..., 0] = 255
    frame = video.frame_from_obs(obs, channels=1)
    assert frame.shape == (168, 168, 3)
    np.testing.assert_array_equal(frame[0, :, 0], np.repeat(np.arange(84), 2))
    np.testing.assert_array_equal(frame[..., 0], frame[..., 2])


def test_frame_from_obs_colours_binary_object_channels():
    obs = np.zeros((10, 10, 10), np.uint8)
    obs[2, 3, 1] = 255
    obs[5, 5, 0] = obs[5, 5, 4] = 255  # two objects on one cell: the later channel is drawn
    frame = video.frame_from_obs(obs, channels=10)
    assert frame.shape == (160, 160, 3)
    np.testing.assert_array_equal(frame[2 * 16, 3 * 16], video.CHANNEL_COLOURS[1])
    np.testing.assert_array_equal(frame[5 * 16 + 15, 5 * 16], video.CHANNEL_COLOURS[4])
    assert (frame[0, 0] == 0).all()


def test_gif_reads_back_frame_for_frame(tmp_path):
    frames = _frames(np.random.default_rng(1), 12, (6, 20, 16))
    path = video.write_video(str(tmp_path / "clip.gif"), frames, fps=20)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (16, 20) and gif.info["duration"] == 50
        for i in range(6):
            gif.seek(i)
            np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), frames[i])


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio reads through an ffmpeg subprocess
def test_mp4_reads_back_with_the_video_extra(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = np.zeros((8, 20, 16, 3), np.uint8)
    frames[:, :, :8] = 200
    path = video.write_video(str(tmp_path / "clip.mp4"), frames, fps=10)
    back = np.stack(imageio.mimread(path))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 8  # lossy, but the picture is the same


def test_mp4_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)  # makes `import imageio` raise ImportError
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[video\]'"):
        video.check_format("mp4")
    video.check_format("gif")


def test_bad_format_and_name():
    with pytest.raises(ValueError, match="video format"):
        video.write_video("clip.avi", np.zeros((1, 2, 2, 3), np.uint8), fps=10)
    assert video.video_name("Pong", -21.0, "gif") == "Pong_return_-21.gif"
    assert video.video_name("Pong@1-0", 2.5, "mp4") == "Pong@1-0_return_2.5.mp4"


class CountdownEnv:
    """One env; ``obs`` is filled with the step count; reward 1 per step; the episode ends at step ``length``."""

    def __init__(self, length):
        self.length = length
        self.spec = EnvSpec("countdown", 1, (4, 4, 1), 2, 3)

    def reset(self):
        return jnp.zeros((), jnp.int32), jnp.zeros(self.spec.obs_shape, jnp.uint8)

    def step(self, t, actions):
        t = t + 1
        obs = jnp.full(self.spec.obs_shape, t, jnp.uint8)
        one = jnp.ones((1,), jnp.float32)
        return t, EnvStep(obs, one, one, jnp.full((1,), t >= self.length), jnp.zeros((1,), bool))


class _Out:
    def __init__(self, q):
        self.q = q


class ConstantQ(nn.Module):
    """Q-values ``[B, 3]`` that do not depend on the observation (the tests need none)."""

    @nn.compact
    def __call__(self, obs, task, train=False):
        return _Out(jnp.zeros((obs.shape[0], 3)) + self.param("bias", nn.initializers.zeros, (3,)))


@pytest.mark.parametrize("length,every,max_frames", [(7, 1, 100), (7, 2, 100), (20, 3, 4)])
def test_record_plays_to_the_end_and_keeps_every_nth_screen(length, every, max_frames):
    net = ConstantQ()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2), jnp.uint8), jnp.zeros((1,), jnp.int32))
    ep = video.record_episode(net, variables, CountdownEnv(length), 0, 50, jax.random.PRNGKey(0),
                              every=every, max_frames=max_frames)
    assert ep.complete and ep.length == length and ep.episode_return == length
    kept = [0] + [t for t in range(1, length + 1) if t % every == 0]
    kept = kept[:max_frames]
    assert ep.frames.shape == (len(kept), 160, 160, 3)  # 4x4 frames enlarged 40x
    assert [int(f[0, 0, 0]) for f in ep.frames] == kept


def test_record_cuts_at_max_steps_and_checks_its_input():
    net = ConstantQ()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2), jnp.uint8), jnp.zeros((1,), jnp.int32))
    ep = video.record_episode(net, variables, CountdownEnv(100), 0, 10, jax.random.PRNGKey(0))
    assert not ep.complete and ep.length == 10 and ep.episode_return == 10
    with pytest.raises(ValueError, match="every must be >= 1"):
        video.record_episode(net, variables, CountdownEnv(5), 0, 10, jax.random.PRNGKey(0), every=0)


def test_minatar_episodes_are_drawn_from_their_object_channels(tiny_config):
    from mtspark_jax.rl import runner
    from mtspark_jax.rl import training as T

    config = tiny_config(backend="minatar", games=("breakout",), agent="dqn", convs="8:3:1")
    envs = video.recording_envs(config, runner.canonical_games(config))
    assert len(envs) == 1 and envs[0].spec.num_envs == 1
    net = T.build_network(config, envs[0].spec, 1)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros(envs[0].spec.obs_shape, jnp.uint8),
                         jnp.zeros((1,), jnp.int32), train=False)
    ep = video.record_episode(net, variables, envs[0], 0, 12, jax.random.PRNGKey(0), every=4)
    assert 1 <= ep.length <= 12 and ep.frames.shape == (1 + ep.length // 4, 160, 160, 3)
    colours = {tuple(c) for c in ep.frames.reshape(-1, 3)}
    assert (0, 0, 0) in colours and len(colours) >= 3  # background, the paddle, the ball, the bricks
    assert colours <= {(0, 0, 0)} | {tuple(c) for c in video.CHANNEL_COLOURS}


def test_colour_screens_leave_the_episodes_as_they_are():
    from mtspark_jax.rl.envs import AtariConfig, EnvPoolAtari

    config = AtariConfig(num_envs=2, seed=3)
    plain, shown = EnvPoolAtari("Pong", config), EnvPoolAtari("Pong", config, render=True)
    assert not hasattr(plain, "render_rgb")
    step = jax.jit(lambda env, h, a: env.step(h, a), static_argnums=0)
    (hp, op), (hs, os_) = plain.reset(), shown.reset()
    actions = np.random.default_rng(0).integers(0, 18, (60, 2)).astype(np.int32)
    screens = [shown.render_rgb()]
    for a in actions:
        hp, outp = step(plain, hp, jnp.asarray(a))
        hs, outs = step(shown, hs, jnp.asarray(a))
        for got, want in zip(outs, outp):
            np.testing.assert_array_equal(got, want)
        screens.append(shown.render_rgb())
    plain.close(), shown.close()
    assert screens[0].shape == (2, 210, 160, 3) and screens[0].dtype == np.uint8
    assert not np.array_equal(screens[0], screens[-1])  # the screen follows the game
    assert len(np.unique(screens[-1].reshape(-1, 3), axis=0)) > 2  # in colour
