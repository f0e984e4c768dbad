"""Train-step time of the spiking image classifier for a few trunk sizes (CPU or GPU).

    PYTHONPATH=. python benchmarks/image_step.py A B     # names from SPECS; batch 128, 28x28x1, T = 4
    PYTHONPATH=. python benchmarks/image_step.py --xla-defaults A B   # without mtspark_jax.xla_options' two options

Prints the median of 8 calls of ``classification.train_step`` after one
compiling call, per network (results/images_augment_rehearsal/README.md).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtspark_jax.vision import classification as C

SPECS = {
    "A": dict(convs=((32, 5, 2), (64, 3, 2)), hidden=256),  # the library default trunk
    "B": dict(convs=((64, 5, 2), (128, 3, 2)), hidden=512),  # the image presets' wider trunk
    "C": dict(convs=((32, 3, 1), (64, 3, 2), (64, 3, 2)), hidden=256),
    "D": dict(convs=((48, 5, 2), (96, 3, 2)), hidden=384),
}


def main(names):
    if "--xla-defaults" in names:
        names = [n for n in names if n != "--xla-defaults"]
    else:  # as train_images.py runs
        from mtspark_jax import xla_options

        xla_options.apply_options()
    for name in names or ["A", "B"]:
        if name not in SPECS:
            raise SystemExit(f"unknown network {name!r}; expected one of {sorted(SPECS)}")
        cfg = C.ImageConfig(image_shape=(28, 28, 1), **SPECS[name])
        state = C.create_train_state(jax.random.key(0), cfg.network(), cfg.image_shape, optax.adam(1e-3))
        rng = np.random.default_rng(0)
        batch = {"image": jnp.asarray(rng.integers(0, 255, (128, 28, 28, 1), dtype=np.uint8)),
                 "label": jnp.asarray(rng.integers(0, 10, 128)), "context": jnp.zeros(128, jnp.int32),
                 "mask": jnp.ones(128)}
        state, m = C.train_step(state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(8):
            t = time.perf_counter()
            state, m = C.train_step(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        print(f"{name} {SPECS[name]}: median {1000 * np.median(times):.1f} ms per step", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
