"""One framework in its own process, driven by run_all.py over stdin/stdout.

    python benchmarks/worker.py FRAMEWORK

FRAMEWORK: ours | ours_xla_defaults | spikingjelly | snntorch | spyx | spyx_layerwise.
Commands (one JSON object per line): ``setup`` builds a network from saved
weights and returns its Q-values, loss and gradient norm on the fixed batch
(the parity check); ``time`` runs the built step n times and returns
``[(wall_s, cpu_s), ...]``; ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    LR,
    make_batch,
    protect_stdout,
    send,
    time_calls,
    unflatten_params,
)

import numpy as np  # noqa: E402


def _load(path):
    with np.load(path) as z:
        return unflatten_params({k: z[k] for k in z.files})


def _jax_adam_run(loss_fn, opt, p, obs, tasks, target):
    """Compiles and warms one donated Adam step on ``loss_fn(p, obs, tasks, target) -> (loss, aux)``.

    Returns ``run()``, which takes one step and waits for it.
    """
    import jax
    import optax

    def _step(p, s, obs, tasks, target):
        (l, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, obs, tasks, target)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    step = jax.jit(_step, donate_argnums=(0, 1))
    state = {"p": p, "s": opt.init(p)}

    def run():
        state["p"], state["s"], l = step(state["p"], state["s"], obs, tasks, target)
        jax.block_until_ready((state["p"], l))

    run()
    return run


# ---------------------------------------------------------------- ours (JAX)
def setup_ours(net_name, mode, batch, params):
    import jax
    import jax.numpy as jnp
    import optax

    import mtspark_jax as mj
    from mtspark_jax.nn.networks import compute_dtype

    # run_all.py's "ours+bf16" row: mixed precision (BENCH_DTYPE=bfloat16).
    net = mj.make_network(net_name, dtype=compute_dtype(os.environ.get("BENCH_DTYPE", "float32")))
    obs, tasks, target = (jnp.asarray(a) for a in make_batch(batch))
    p = jax.tree.map(jnp.asarray, params)
    opt = optax.adam(LR)

    def loss_fn(p, obs, tasks, target):
        q = net.apply({"params": p}, obs, tasks).q
        return optax.huber_loss(q, target, delta=1.0).mean(), q

    (loss, q), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, obs, tasks, target)
    info = {"q": np.asarray(q).tolist(), "loss": float(loss),
            "grad_norm": float(optax.global_norm(g))}
    if mode == "act":
        act = jax.jit(lambda p, o, c: net.apply({"params": p}, o, c).q)
        jax.block_until_ready(act(p, obs, tasks))
        return info, lambda: jax.block_until_ready(act(p, obs, tasks))
    return info, _jax_adam_run(loss_fn, opt, p, obs, tasks, target)


# ---------------------------------------------------------------- Spyx (JAX)
def setup_spyx(net_name, mode, batch, params, layerwise):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import nets_spyx

    model = nets_spyx.build(params, net_name == "dsqn", layerwise)
    graphdef, p, rest = nnx.split(model, nnx.Param, ...)
    obs, tasks, target = (jnp.asarray(a) for a in make_batch(batch))
    opt = optax.adam(LR)

    def q_fn(p, obs, tasks):
        return nnx.merge(graphdef, p, rest).q(obs, tasks)

    def loss_fn(p, obs, tasks, target):
        q = q_fn(p, obs, tasks)
        return optax.huber_loss(q, target, delta=1.0).mean(), q

    (loss, q), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, obs, tasks, target)
    info = {"q": np.asarray(q).tolist(), "loss": float(loss),
            "grad_norm": float(optax.global_norm(g))}
    if mode == "act":
        act = jax.jit(q_fn)
        jax.block_until_ready(act(p, obs, tasks))
        return info, lambda: jax.block_until_ready(act(p, obs, tasks))

    return info, _jax_adam_run(loss_fn, opt, p, obs, tasks, target)


# ---------------------------------------------------------------- torch peers
def setup_torch(framework, net_name, mode, batch, params):
    import torch
    import torch.nn.functional as F

    import nets_torch

    torch.manual_seed(0)
    dev = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = nets_torch.build(framework, params, net_name == "dsqn").to(dev)
    obs, tasks, target = (torch.from_numpy(a).to(dev) for a in make_batch(batch))
    q = model(obs, tasks)
    loss = F.huber_loss(q, target, delta=1.0)
    loss.backward()
    gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    info = {"q": q.detach().cpu().numpy().tolist(), "loss": float(loss), "grad_norm": float(gn)}
    model.zero_grad(set_to_none=True)
    if mode == "act":
        def run():
            with torch.inference_mode():
                model(obs, tasks)
            sync()
        run()
        return info, run
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def run():
        opt.zero_grad(set_to_none=True)
        F.huber_loss(model(obs, tasks), target, delta=1.0).backward()
        opt.step()
        sync()

    run()
    return info, run


def main():
    framework = sys.argv[1]
    protect_stdout()
    if os.environ.get("BENCH_REUSE_HOST_MEMORY") == "1":  # set by run_all.py; before any thread starts
        from mtspark_jax.xla_options import reuse_freed_host_memory

        if not reuse_freed_host_memory():
            raise SystemExit("BENCH_REUSE_HOST_MEMORY=1, but this C library has no glibc malloc options")
    versions = {}
    if framework in ("spikingjelly", "snntorch"):
        import torch
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
        versions["torch"] = torch.__version__
        if os.environ.get("BENCH_DEVICE", "cpu") == "cuda" and not torch.cuda.is_available():
            raise SystemExit("BENCH_DEVICE=cuda but torch has no CUDA")
        mod = __import__(framework)
        versions[framework] = getattr(mod, "__version__", None)
        if versions[framework] is None:
            from importlib.metadata import version
            versions[framework] = version(framework)
    else:
        import jax
        versions["jax"] = jax.__version__
        versions["backend"] = jax.default_backend()
        if framework.startswith("spyx"):
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from nets_spyx import spyx
            versions["spyx"] = spyx.__version__
    send({"ok": True, "versions": versions})
    run = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                break
            if msg["cmd"] == "setup":
                params = _load(msg["params"])
                args = (msg["net"], msg["mode"], msg["batch"], params)
                if framework in ("ours", "ours_xla_defaults"):
                    info, run = setup_ours(*args)
                elif framework.startswith("spyx"):
                    info, run = setup_spyx(*args, layerwise=framework == "spyx_layerwise")
                else:
                    info, run = setup_torch(framework, *args)
                send({"ok": True, **info})
            elif msg["cmd"] == "time":
                send({"ok": True, "times": time_calls(run, msg["n"])})
        except Exception as e:  # report to the coordinator, keep serving
            send({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


if __name__ == "__main__":
    main()
