"""MinAtar sweeps: a vmapped seed equals its solo run; the progress bar."""

import jax
import numpy as np
import pytest

from mtspark_jax.rl.minatar_sweep import MinAtarSweep


@pytest.mark.slow
def test_minatar_sweep_vmapped_seed_equals_solo_run(tiny_config, capsys):
    config = tiny_config(agent="dqn", convs="4:3:1", hidden=8, total_steps=120, chunk_iters=20, warmup_steps=20,
                         eps_decay_steps=100, batch_size=4, buffer_size=100)
    sweep = MinAtarSweep(config, ["breakout"])
    both = sweep.run([0, 1], progress=True, desc="setting 1/1")
    err = capsys.readouterr().err
    assert "setting 1/1" in err and "120/120" in err and "SPS " in err and " ret " in err and " td " in err
    solo = sweep.run([1])
    assert capsys.readouterr().err == ""  # no bar
    assert not any(r["diverged"] for r in both["members"])
    assert all(r["episodes"] > 0 and np.isfinite(r["final_td_loss"]) for r in both["members"])
    for k in ("return", "episodes", "final_td_loss"):
        np.testing.assert_allclose(solo["members"][0][k], both["members"][1][k], rtol=1e-5, err_msg=k)
    p0 = jax.tree.leaves(both["state"].learner.variables["params"])
    assert any(not np.allclose(a[0], a[1]) for a in p0)  # different seeds, different runs
