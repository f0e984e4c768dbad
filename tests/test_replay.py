"""Replay: rebuilt stacks equal a naive stacked buffer on the same stream."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from mtspark_jax.rl import replay


def synthetic_stream(rng, steps, num_envs, stack, p_done=0.08, hw=(3, 2)):
    """EnvPool-style stream: done returns terminal obs; next call resets (reward 0).

    Yields (obs_before [N,H,W,S], action [N], reward [N], terminated [N], truncated [N]).
    Frames are unique integers mod 256 so mixing episodes would show.
    """
    h, w = hw
    counter = [1]

    def new_frame():
        counter[0] += 1
        return np.full((h, w), counter[0] % 251 + 1, np.uint8) + np.arange(h * w, dtype=np.uint8).reshape(h, w)

    obs = np.zeros((num_envs, h, w, stack), np.uint8)
    for i in range(num_envs):
        f = new_frame()
        obs[i] = np.repeat(f[..., None], stack, -1)
    pending_reset = np.zeros(num_envs, bool)
    out = []
    for _ in range(steps):
        action = rng.integers(0, 18, num_envs)
        nxt = obs.copy()
        reward = np.zeros(num_envs, np.float32)
        term = np.zeros(num_envs, bool)
        trunc = np.zeros(num_envs, bool)
        for i in range(num_envs):
            f = new_frame()
            if pending_reset[i]:
                nxt[i] = np.repeat(f[..., None], stack, -1)
                pending_reset[i] = False
            else:
                nxt[i] = np.concatenate([obs[i][..., 1:], f[..., None]], -1)
                reward[i] = rng.normal()
                u = rng.random()
                term[i] = u < p_done
                trunc[i] = p_done <= u < 1.5 * p_done
                pending_reset[i] = term[i] or trunc[i]
        out.append((obs.copy(), action, reward, term, trunc))
        obs = nxt
    out.append((obs.copy(), None, None, None, None))
    return out


def fill(stream, capacity, stack, num_tasks=2, task=1):
    n = stream[0][0].shape[0]
    h, w = stream[0][0].shape[1:3]
    state = replay.init_replay(num_tasks, capacity, n, (h, w, 1), stack)
    flags = replay.initial_flags(n)
    naive = {}
    add = jax.jit(replay.add, static_argnums=())
    for t, (obs, a, r, term, trunc) in enumerate(stream[:-1]):
        state = add(state, task, jnp.asarray(obs[..., -1:]), jnp.asarray(a), jnp.asarray(r),
                    jnp.asarray(term), jnp.asarray(trunc), flags.first, ~flags.terminal)
        for i in range(n):
            if not bool(flags.terminal[i]):
                naive[(t, i)] = (obs[i], a[i], r[i], stream[t + 1][0][i], float(term[i]))
        flags = replay.next_flags(flags, jnp.asarray(term), jnp.asarray(trunc))
    return state, naive


@pytest.mark.parametrize("stack,capacity,steps", [(4, 500, 120), (4, 37, 120), (1, 23, 60), (2, 11, 50)])
def test_gather_equals_naive_stacked_buffer(stack, capacity, steps):
    rng = np.random.default_rng(stack * 100 + capacity)
    stream = synthetic_stream(rng, steps, 3, stack)
    state, naive = fill(stream, capacity, stack)
    count = int(state.count[1])
    assert count == steps
    oldest = max(count - capacity, 0)
    ts, es = np.meshgrid(np.arange(oldest, count), np.arange(3), indexing="ij")
    ts, es = ts.ravel(), es.ravel()
    batch = jax.jit(replay.gather, static_argnums=1)(state, 1, jnp.asarray(ts), jnp.asarray(es))
    mask = np.asarray(batch.mask) > 0
    checked = 0
    for j, (t, e) in enumerate(zip(ts, es)):
        key = (int(t), int(e))
        if mask[j]:
            assert key in naive, f"sampleable {key} is not a real transition"
            o, a, r, o2, term = naive[key]
            np.testing.assert_array_equal(np.asarray(batch.obs[j]), o)
            np.testing.assert_array_equal(np.asarray(batch.next_obs[j]), o2)
            assert int(batch.action[j]) == a
            assert float(batch.reward[j]) == pytest.approx(float(r))
            assert float(batch.terminated[j]) == term
            checked += 1
        elif key in naive and t + 1 < count:
            # Only the records whose stack reaches past the oldest stored frame are dropped.
            assert t < oldest + stack - 1, f"real transition {key} wrongly refused"
    assert checked > 0.7 * len(ts)


def naive_n_step(stream, t, i, n, gamma):
    """(reward sum, obs after k steps, terminated, gamma**k) of env i from stream step t, by walking the stream."""
    total, k, term = 0.0, 0, 0.0
    for j in range(n):
        _, _, r, te, tr = stream[t + j]
        total += gamma**j * float(r[i])
        k += 1
        term = float(te[i])
        if te[i] or tr[i]:
            break
    return total, stream[t + k][0][i], term, gamma**k


@pytest.mark.parametrize("n_step,capacity", [(3, 500), (3, 29), (5, 500)])
def test_n_step_gather_equals_walking_the_stream(n_step, capacity):
    """n-step transitions: discounted sums stop at terminated and truncated ends, next obs after k steps."""
    rng = np.random.default_rng(n_step * 7 + capacity)
    stream = synthetic_stream(rng, 150, 3, 4, p_done=0.1)
    state, naive = fill(stream, capacity, 4)
    count = int(state.count[1])
    oldest = max(count - capacity, 0)
    ts, es = np.meshgrid(np.arange(oldest, count), np.arange(3), indexing="ij")
    ts, es = ts.ravel(), es.ravel()
    gather = jax.jit(replay.gather, static_argnums=(1, 4, 5))
    batch = gather(state, 1, jnp.asarray(ts), jnp.asarray(es), n_step, 0.9)
    mask = np.asarray(batch.mask) > 0
    short = 0
    for j, (t, e) in enumerate(zip(ts, es)):
        key = (int(t), int(e))
        if not mask[j]:
            assert key not in naive or t + n_step > count - 1 or t < oldest + 3, f"real transition {key} refused"
            continue
        assert key in naive and t + n_step <= count - 1
        r, o2, term, disc = naive_n_step(stream, int(t), int(e), n_step, 0.9)
        np.testing.assert_array_equal(np.asarray(batch.obs[j]), naive[key][0])
        np.testing.assert_array_equal(np.asarray(batch.next_obs[j]), o2)
        assert int(batch.action[j]) == naive[key][1]
        assert float(batch.reward[j]) == pytest.approx(r, rel=1e-5, abs=1e-6)
        assert float(batch.terminated[j]) == term
        assert float(batch.discount[j]) == pytest.approx(disc, rel=1e-6)
        short += disc > 0.9**n_step + 1e-9
    assert mask.sum() > 0.6 * len(ts) and short > 10  # episodes ended inside many windows
    one = gather(state, 1, jnp.asarray(ts), jnp.asarray(es), 1, 0.9)
    assert one.discount is None


@pytest.mark.parametrize("capacity", [500, 13])
def test_two_half_write_equals_one_add_and_samples_the_same(capacity):
    """add (reward and done 0) + set_outcome = add; sampling between the halves gives add's batches."""
    rng = np.random.default_rng(capacity)
    stream = synthetic_stream(rng, 60, 3, 4, p_done=0.2)
    one = two = replay.init_replay(2, capacity, 3, (3, 2, 1), 4)
    flags = replay.initial_flags(3)
    add, outcome = jax.jit(replay.add), jax.jit(replay.set_outcome)
    sample = jax.jit(replay.sample, static_argnums=(1, 3))
    none = jnp.zeros(3, bool)
    for t, (obs, a, r, term, trunc) in enumerate(stream[:-1]):
        frame, a, r, term, trunc = (jnp.asarray(x) for x in (obs[..., -1:], a, r, term, trunc))
        one = add(one, 1, frame, a, r, term, trunc, flags.first, ~flags.terminal)
        two = add(two, 1, frame, a, jnp.zeros(3), none, none, flags.first, ~flags.terminal)
        b1, b2 = sample(one, 1, jax.random.PRNGKey(t), 16), sample(two, 1, jax.random.PRNGKey(t), 16)
        m = np.asarray(b1.mask) > 0
        np.testing.assert_array_equal(np.asarray(b1.mask), np.asarray(b2.mask))
        for f in ("obs", "next_obs", "action", "reward", "terminated"):
            np.testing.assert_array_equal(np.asarray(getattr(b1, f))[m], np.asarray(getattr(b2, f))[m])
        two = outcome(two, 1, r, term, trunc)
        flags = replay.next_flags(flags, term, trunc)
    assert np.abs(np.asarray(one.rewards)).sum() > 0 and int((np.asarray(one.flags) & replay.TERMINATED).sum()) > 0
    for f in ("frames", "actions", "rewards", "flags", "count"):
        np.testing.assert_array_equal(np.asarray(getattr(one, f)), np.asarray(getattr(two, f)))


def test_sample_only_valid_and_uniformish():
    rng = np.random.default_rng(0)
    stream = synthetic_stream(rng, 80, 2, 4, p_done=0.2)
    state, naive = fill(stream, 50, 4, num_tasks=1, task=0)
    batch = jax.jit(replay.sample, static_argnums=(1, 3))(state, 0, jax.random.PRNGKey(3), 256)
    assert batch.obs.shape == (256, 3, 2, 4)
    assert float(batch.mask.mean()) == 1.0
    seen = set()
    for j in range(256):
        # The sampled obs must be one of the naive stacks (never mixed episodes).
        assert any(np.array_equal(np.asarray(batch.obs[j]), v[0]) and np.array_equal(np.asarray(batch.next_obs[j]), v[3])
                   for v in naive.values())
        seen.add(np.asarray(batch.obs[j]).tobytes())
    assert len(seen) > 40


def test_empty_buffer_gives_masked_batch():
    state = replay.init_replay(1, 10, 2, (4, 4, 1), 4)
    batch = replay.sample(state, 0, jax.random.PRNGKey(0), 8)
    assert float(batch.mask.sum()) == 0.0


def test_bytes_per_transition_atari():
    state = replay.init_replay(1, 16, 2, (84, 84, 1), 4)
    assert replay.bytes_per_transition(state) == 84 * 84 + 1 + 4 + 1
    assert replay.bytes_per_transition(state) <= 7200


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="capacity"):
        replay.init_replay(1, 3, 2, (84, 84, 1), 4)
    with pytest.raises(ValueError, match="num_envs"):
        replay.init_replay(1, 100, 0, (84, 84, 1), 4)
