"""Watching an agent: one episode's frames, written as a GIF (Pillow) or an MP4 (the ``video`` extra).

``record_episode(net, variables, env, task, max_steps, key)`` plays one
episode of a one-env :class:`~mtspark_jax.rl.envs.TaskEnv` with the
evaluator's policy step (:func:`mtspark_jax.rl.evaluation.make_policy_step`:
greedy at ``epsilon`` 0) and keeps every ``every``-th screen, at most
``max_frames`` of them; the episode is played to its end either way, so the
return is the whole episode's. Screens come from the env's ``render_rgb()``
when it has one (EnvPool pools built with ``render=True``: the 210x160 colour
screen), else from the newest observation frame, enlarged (:func:`frame_from_obs`).

An Atari evaluation pool's env ``j`` is seeded ``seed + j``, so a one-env pool
with the evaluation's seed plays the evaluation's first episode.

``write_video(path, frames, fps)`` writes ``.gif`` with Pillow (a dependency
already) or ``.mp4`` with imageio and its ffmpeg plugin
(``pip install -e '.[video]'``). A GIF is kept small by one palette shared by
every frame (Atari screens have far fewer than 256 colours) and by Pillow's
storing only the part of a frame that changed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from mtspark_jax.rl import envs as E
from mtspark_jax.rl import runner
from mtspark_jax.rl.envs import TaskEnv
from mtspark_jax.rl.evaluation import make_policy_step
from mtspark_jax.rl.training import TrainConfig

Array = jax.Array

FORMATS = ("gif", "mp4")
"""File types :func:`write_video` writes."""

MIN_SIDE = 160
"""Frames made from observations are enlarged (nearest neighbour) to at least this many pixels a side."""

CHANNEL_COLOURS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190],
], np.uint8)
"""Colour of each binary object channel (MinAtar: one channel per object type), cycled past 10."""


class Episode(NamedTuple):
    """One recorded episode: ``frames [F, H, W, 3]`` uint8 RGB (every ``every``-th step from the
    reset on, at most ``max_frames``); its raw return and length in agent steps; ``complete``
    False when it was cut at ``max_steps``."""

    frames: np.ndarray
    episode_return: float
    length: int
    complete: bool


def frame_from_obs(obs: np.ndarray, channels: int) -> np.ndarray:
    """The newest frame of one observation as RGB, enlarged to at least :data:`MIN_SIDE` a side.

    Args:
      obs: ``[H, W, S*C]`` uint8, the newest frame in the last ``C`` channels.
      channels: ``C``, channels per frame: 1 is grey (Atari's 84x84 frames); more are binary
        object maps (MinAtar), drawn in :data:`CHANNEL_COLOURS`, the last object on top.

    Returns:
      ``[k*H, k*W, 3]`` uint8 with ``k = ceil(MIN_SIDE / max(H, W))``.
    """
    if obs.ndim != 3 or channels < 1 or obs.shape[-1] % channels:
        raise ValueError(f"obs must be [H, W, stack * {channels}], got shape {obs.shape}")
    frame = np.asarray(obs[..., -channels:])
    if channels == 1:
        rgb = np.repeat(frame, 3, axis=-1)
    else:
        rgb = np.zeros(frame.shape[:2] + (3,), np.uint8)
        for c in range(channels):
            rgb[frame[..., c] > 0] = CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)]
    k = max(1, math.ceil(MIN_SIDE / max(frame.shape[:2])))
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


def screen_source(env: TaskEnv) -> Callable[[np.ndarray], np.ndarray]:
    """``screen(obs [1, H, W, S*C]) -> [H', W', 3]`` uint8: the env's colour screen when it (or the
    env it wraps, e.g. :class:`~mtspark_jax.rl.envs.PermutedActions`) has ``render_rgb``, else
    :func:`frame_from_obs` of ``obs``."""
    inner = env
    while inner is not None and not hasattr(inner, "render_rgb"):
        inner = getattr(inner, "env", None)
    if inner is not None:
        return lambda obs: np.asarray(inner.render_rgb()[0])
    channels = env.spec.frame_shape[-1]
    return lambda obs: frame_from_obs(np.asarray(obs[0]), channels)


def record_episode(net: nn.Module, variables: Any, env: TaskEnv, task: int, max_steps: int, key: Array,
                   epsilon: float = 0.0, every: int = 1, max_frames: int = 1000) -> Episode:
    """Plays one episode of ``env`` (one env) on task ``task`` and keeps its screens (module docstring).

    Args:
      net: the network, called as ``net.apply(variables, obs, task_ids, train=False)``.
      variables: its variables.
      env: a task env with ``spec.num_envs == 1``, not reset yet.
      task: the task index the network is told.
      max_steps: agent steps after which the episode is cut (``complete`` False).
      key: PRNG key of the policy (used only when ``epsilon > 0``).
      epsilon: exploration rate (0: greedy).
      every: keep the screen after every ``every``-th step (and the first one).
      max_frames: keep at most this many screens.
    """
    if env.spec.num_envs != 1:
        raise ValueError(f"record_episode plays a one-env pool, got num_envs={env.spec.num_envs}")
    for name, value in (("max_steps", max_steps), ("every", every), ("max_frames", max_frames)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    step = jax.jit(make_policy_step(net, env, task, epsilon))
    screen = screen_source(env)
    handle, obs = env.reset()
    frames = [screen(obs)]
    ret, length, done = 0.0, 0, False
    while not done and length < max_steps:
        key, k = jax.random.split(key)
        handle, out = step(variables, handle, obs, k)
        obs, length = out.obs, length + 1
        ret += float(out.raw_reward[0])
        done = bool(out.terminated[0] | out.truncated[0])
        if length % every == 0 and len(frames) < max_frames:
            frames.append(screen(obs))
    return Episode(np.stack(frames), ret, length, done)


def recording_envs(config: TrainConfig, tasks: Sequence[str]) -> list[TaskEnv]:
    """One one-env evaluation pool per task (``tasks``: ``runner.canonical_games(config)``), seeded as
    the evaluation pools: Atari pools render in colour and play the evaluation's first episode."""
    if config.backend != "atari":
        return runner.make_task_envs(dataclasses.replace(config, eval_episodes=1), tasks, is_eval=True)
    pool = dataclasses.replace(runner.eval_atari_config(config), num_envs=1)
    envs = E.make_atari_envs([E.base_game(t) for t in tasks], pool, render=True)
    return E.with_action_perms(envs, config.action_perms)


def video_name(task: str, episode_return: float, fmt: str) -> str:
    """``Pong_return_18.gif``: the task and the episode's return (``Pong@1-0_return_-21.5.mp4``)."""
    if fmt not in FORMATS:
        raise ValueError(f"video format must be one of {FORMATS}, got {fmt!r}")
    return f"{task}_return_{episode_return:g}.{fmt}"


def to_palette(frames: np.ndarray, max_colours: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``frames [F, H, W, 3]`` uint8 -> ``(indices [F, H, W] uint8, palette [K, 3] uint8)``, ``K <= max_colours``.

    Exact when the frames hold at most ``max_colours`` colours; otherwise the
    lowest bits of every channel are dropped, one more at a time, until they do.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if not 1 <= max_colours <= 256:
        raise ValueError(f"max_colours must be in [1, 256], got {max_colours}")
    r, g, b = (frames[..., i].astype(np.uint32) for i in range(3))
    packed = (r << 16) | (g << 8) | b
    for drop in range(9):
        keep = (0xFF << drop) & 0xFF
        coarse = packed & ((keep << 16) | (keep << 8) | keep)
        colours = np.unique(coarse)
        if len(colours) <= max_colours:
            break
    palette = np.stack([(colours >> 16) & 0xFF, (colours >> 8) & 0xFF, colours & 0xFF], axis=-1)
    return np.searchsorted(colours, coarse).astype(np.uint8), palette.astype(np.uint8)


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    """Writes ``frames [F, H, W, 3]`` uint8 to ``path`` as a looping GIF of one shared palette."""
    from PIL import Image

    indices, palette = to_palette(frames)
    flat = palette.ravel().tolist()
    images = []
    for idx in indices:
        image = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
        image.putpalette(flat)
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def mp4_writer() -> Callable[..., Any]:
    """imageio's ``mimwrite``; ImportError naming the ``video`` extra when imageio or its ffmpeg plugin is missing."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the plugin imageio needs for MP4)
    except ImportError:
        raise ImportError("writing MP4 needs imageio and imageio-ffmpeg: pip install -e '.[video]' "
                          "(GIFs need only Pillow, a dependency already)") from None
    return imageio.mimwrite


def check_format(fmt: str) -> None:
    """ValueError for an unknown format, ImportError when its writer is not installed; call before playing."""
    if fmt not in FORMATS:
        raise ValueError(f"video format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "mp4":
        mp4_writer()


def write_video(path: str, frames: np.ndarray | Sequence[np.ndarray], fps: float) -> str:
    """Writes ``frames [F, H, W, 3]`` uint8 to ``path`` (``.gif`` or ``.mp4``, by its extension); returns ``path``."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    check_format(fmt)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = np.asarray(frames)
    if fmt == "gif":
        write_gif(path, frames, fps)
    else:  # H.264 wants even sides: EnvPool's 210x160 and the enlarged frames have them
        with warnings.catch_warnings():  # imageio starts ffmpeg with fork + exec, which JAX warns about in vain
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            mp4_writer()(path, list(frames), fps=fps, codec="libx264", macro_block_size=2, ffmpeg_log_level="error")
    return path
