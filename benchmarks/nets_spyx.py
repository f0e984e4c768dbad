"""MTSpark_ADD and DSQN written with Spyx (JAX, Flax NNX).

Spyx's own neurons differ from ours (docs/design.md section 1): its ``LIF`` fires from
the previous step's membrane and resets by subtraction, its ``IF`` likewise.
So the neurons here are small custom modules in Spyx's own form (an
``nnx.Module`` with ``__call__(x, state) -> (spikes, state)`` and
``initial_state(batch)``, the ``StatefulLayer`` contract) implementing our
decay-input LIF / IF with hard reset, firing at ``H >= v_th``, with the spike
nonlinearity built by ``spyx.axn.custom`` (sigmoid surrogate, alpha = 4).

Two ways of running the network are built:

* ``spyx``: the Spyx idiom. The whole network is one step function and
  ``spyx.nn.run`` scans it over the time axis of the repeated frame, so every
  convolution and linear layer runs inside the time loop.
* ``spyx_layerwise``: the Spyx neurons run layer by layer with
  ``spyx.nn.run`` over ``[T, B, ...]`` currents, the first convolution once,
  the later ones on ``[T*B, ...]`` (our schedule, written with Spyx).
"""

from __future__ import annotations

import importlib
import sys
import types

import jax
import jax.numpy as jnp
from flax import nnx


def _import_spyx():
    """``import spyx``; where its data-loading dependencies (grain, h5py via
    nir) are missing, as on a bare GPU image, stand-ins are put in their place:
    the benchmarks use only ``spyx.nn`` and ``spyx.axn``."""
    for _ in range(4):
        try:
            return importlib.import_module("spyx")
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root not in ("grain", "h5py"):
                raise
            for name in {root, e.name}:
                stub = types.ModuleType(name)
                stub.__getattr__ = lambda attr: type(attr, (), {})  # any class / function name
                sys.modules[name] = stub
            if root == "grain":
                sys.modules["grain"].python = sys.modules.setdefault("grain.python", sys.modules["grain"])
    return importlib.import_module("spyx")


spyx = _import_spyx()

from common import ALPHA, NUM_ACTIONS, NUM_TASKS, TAU, TIME_STEPS, V_TH

CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


def _sigmoid_grad(x):
    s = jax.nn.sigmoid(ALPHA * x)
    return ALPHA * s * (1.0 - s)


SPIKE = spyx.axn.custom(bwd=_sigmoid_grad, fwd=lambda x: (x >= 0).astype(x.dtype))


class DecayInputLIF(nnx.Module):
    """H = V + (X - V)/tau; S = H >= v_th; V = H (1 - S) (hard reset to 0)."""

    def __init__(self, shape, leak=True):
        self.shape = tuple(shape)
        self.leak = leak

    def __call__(self, x, v):
        h = v + (x - v) / TAU if self.leak else v + x
        s = SPIKE(h - V_TH)
        return s, h * (1.0 - s)

    def initial_state(self, batch_size):
        return jnp.zeros((batch_size,) + self.shape)


class SpyxNet(nnx.Module):
    def __init__(self, params, dsqn: bool, layerwise: bool):
        rngs = nnx.Rngs(0)
        self.dsqn, self.layerwise = dsqn, layerwise
        t = params["trunk"]
        self.convs = nnx.List([
            nnx.Conv(c_in, f, (k, k), (s, s), padding="VALID", rngs=rngs)
            for c_in, (f, k, s) in zip((4, 32, 64), CONVS)
        ])
        for i, conv in enumerate(self.convs):
            conv.kernel = nnx.Param(jnp.asarray(t[f"conv{i}"]["kernel"]))
            conv.bias = nnx.Param(jnp.asarray(t[f"conv{i}"]["bias"]))
        self.lifs = nnx.List([DecayInputLIF(s) for s in ((20, 20, 32), (9, 9, 64), (7, 7, 64), (512,))])
        self.ifs = nnx.List([DecayInputLIF((512,), leak=False) for _ in range(2)])
        heads = ("fc",) if dsqn else ("a_fc", "v_fc")
        outs = {"fc": "out", "a_fc": "a_out", "v_fc": "v_out"}
        self.heads = heads
        self.fc, self.out, self.seg = nnx.Dict(), nnx.Dict(), nnx.Dict()
        for h in heads:
            self.fc[h] = nnx.Linear(3136, 512, rngs=rngs)
            self.fc[h].kernel = nnx.Param(jnp.asarray(params[h]["kernel"]))
            self.fc[h].bias = nnx.Param(jnp.asarray(params[h]["bias"]))
            o = params[outs[h]]
            self.out[h] = nnx.Linear(512, o["kernel"].shape[1], rngs=rngs)
            self.out[h].kernel = nnx.Param(jnp.asarray(o["kernel"]))
            self.out[h].bias = nnx.Param(jnp.asarray(o["bias"]))
            if not dsqn:
                self.seg[h] = nnx.Param(jnp.asarray(params[h.replace("_fc", "_gate")]["segments"]))

    def _gate(self, h, ctx):
        act = jnp.einsum("usd,bd->bus", self.seg[h][...], ctx)
        idx = jnp.argmax(jnp.abs(act), -1)
        return jax.nn.sigmoid(jnp.take_along_axis(act, idx[..., None], -1)[..., 0])

    # --- Spyx idiom: one step of the whole network, scanned by spyx.nn.run ---
    def initial_state(self, batch):
        st = [l.initial_state(batch) for l in self.lifs]
        if not self.dsqn:
            st += [l.initial_state(batch) for l in self.ifs]
        return st

    def __call__(self, inp, state):
        x, ctx = inp
        state = list(state)
        h = x
        for i in range(3):
            h, state[i] = self.lifs[i](self.convs[i](h), state[i])
        flat = h.reshape(h.shape[0], -1)
        if self.dsqn:
            s, state[3] = self.lifs[3](self.fc["fc"](flat), state[3])
            return self.out["fc"](s), state
        res = {}
        for j, hd in enumerate(("a_fc", "v_fc")):
            s, state[4 + j] = self.ifs[j](self.fc[hd](flat) * self._gate(hd, ctx), state[4 + j])
            res[hd] = self.out[hd](s)
        a, v = res["a_fc"], res["v_fc"]
        return v + a - a.mean(-1, keepdims=True), state

    # --- layer by layer ---
    def layerwise_q(self, x, ctx):
        T, B = TIME_STEPS, x.shape[0]
        run = lambda layer, cur: spyx.nn.run(layer, cur, layer.initial_state(cur.shape[1]))[0]
        cur = self.convs[0](x)
        s = run(self.lifs[0], jnp.broadcast_to(cur, (T,) + cur.shape))
        for i in (1, 2):
            cur = self.convs[i](s.reshape((T * B,) + s.shape[2:]))
            s = run(self.lifs[i], cur.reshape((T, B) + cur.shape[1:]))
        flat = s.reshape(T * B, -1)
        if self.dsqn:
            s = run(self.lifs[3], self.fc["fc"](flat).reshape(T, B, -1))
            return self.out["fc"](s.reshape(T * B, -1)).reshape(T, B, -1)
        res = {}
        for j, hd in enumerate(("a_fc", "v_fc")):
            cur = self.fc[hd](flat).reshape(T, B, -1) * self._gate(hd, ctx)
            res[hd] = self.out[hd](run(self.ifs[j], cur).mean(0))
        a, v = res["a_fc"], res["v_fc"]
        return v + a - a.mean(-1, keepdims=True)

    def q(self, obs_u8, tasks):
        x = obs_u8.astype(jnp.float32) / 255.0
        ctx = jax.nn.one_hot(tasks, NUM_TASKS)
        T = TIME_STEPS
        if self.layerwise:
            out = self.layerwise_q(x, ctx)
        else:
            xs = (jnp.broadcast_to(x, (T,) + x.shape), jnp.broadcast_to(ctx, (T,) + ctx.shape))
            out, _ = spyx.nn.run(self, xs, self.initial_state(x.shape[0]))
        if self.dsqn:  # non-spiking leaky read-out of the per-step outputs, max over time
            def body(v, c):
                v = v + (c - v) / TAU
                return v, v
            _, vs = jax.lax.scan(body, jnp.zeros_like(out[0]), out)
            return vs.max(0)
        return out if self.layerwise else out.mean(0)


def build(params, dsqn: bool, layerwise: bool) -> SpyxNet:
    return SpyxNet(params, dsqn, layerwise)
