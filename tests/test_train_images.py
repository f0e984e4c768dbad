"""End-to-end tests of the image protocols and the launcher on tiny generated data."""

import dataclasses
import errno
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mtspark_jax import workdir
from mtspark_jax.vision import classification as cl
from mtspark_jax.vision import data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """MNIST and Fashion-MNIST look-alikes (IDX), 64 train / 32 test each, prepared with TFDS."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("mnist", "fashion_mnist")):
        src = root / f"src_{name}"
        src.mkdir()
        for split, n in (("train", 64), ("test", 32)):
            labels = rng.integers(0, 2, n)
            images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
            for i, y in enumerate(labels):  # class = which half is bright, flipped per data set
                half = int(y) ^ k
                images[i, :, 14 * half : 14 * half + 14] = 220
            img_stem, lbl_stem = data.IDX_FILES[split]
            data.write_idx(src / f"{img_stem}.gz", images)
            data.write_idx(src / f"{lbl_stem}.gz", labels.astype(np.uint8))
        data.prepare(name, root / "tfds", src)
    return root / "tfds"


def _config(data_dir, **kw):
    base = dict(datasets=("mnist", "fashion_mnist"), epochs=2, batch_size=16, image_shape=(28, 28, 1),
                convs=((4, 5, 4),), hidden=16, time_steps=2, learning_rate=1e-2, data_dir=str(data_dir),
                eval_batch_size=32, log_every=2)
    base.update(kw)
    return cl.ImageConfig(**base)


def test_continual_reports_every_seen_data_set_after_each_stage(data_dir, tmp_path):
    config = _config(data_dir, protocol="continual", datasets=("fashion_mnist", "mnist"), epochs=10)
    rows = cl.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert [r["trained_on"] for r in rows] == [["fashion_mnist"], ["mnist"]]
    assert set(rows[0]["accuracy"]) == {"fashion_mnist"}
    assert set(rows[1]["accuracy"]) == {"fashion_mnist", "mnist"}
    assert rows[0]["accuracy"]["fashion_mnist"] >= 0.9  # the generated task is easy
    run = tmp_path / "run"
    for path in ("results.md", "results.json", "metrics.csv", "config.json", "tb", "checkpoints"):
        assert (run / path).exists(), path
    assert len([p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]) == 2  # last 2 of 20 epochs
    table = (run / "results.md").read_text()
    assert "| 1 | mnist |" in table
    saved = json.loads((run / "results.json").read_text())
    assert saved["config"]["protocol"] == "continual"
    assert "test/mnist/accuracy" in (run / "metrics.csv").read_text()


def test_rehearsal_keeps_the_first_data_set_that_plain_continual_forgets(data_dir, tmp_path):
    # The generated data sets flip each other's labels, so learning the second
    # one overwrites the first unless the network keeps using the context; a
    # rehearsed memory of the first data set makes it do so.
    kw = dict(protocol="continual", epochs=30, hidden=32, checkpoint=False)
    plain = cl.train_and_evaluate(_config(data_dir, **kw), tmp_path / "plain", progress=False)
    kept = cl.train_and_evaluate(_config(data_dir, memory_size=32, memory_share=0.5, **kw),
                                 tmp_path / "memory", progress=False)
    assert plain[0]["accuracy"]["mnist"] >= 0.9 and kept[0]["accuracy"]["mnist"] >= 0.9
    assert plain[1]["accuracy"]["mnist"] <= 0.5  # forgotten
    assert kept[1]["accuracy"]["mnist"] >= 0.9 and kept[1]["accuracy"]["fashion_mnist"] >= 0.9


@pytest.mark.parametrize("protocol, memory", [("joint", 0), ("continual", 16)])
def test_per_data_set_batchnorm_statistics_evaluate_every_data_set(data_dir, tmp_path, protocol, memory):
    config = _config(data_dir, protocol=protocol, epochs=10, checkpoint=False, task_bn_stats=True, memory_size=memory)
    rows = cl.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert set(rows[-1]["accuracy"]) == {"mnist", "fashion_mnist"}
    if protocol == "continual":  # the data set just trained, evaluated with its own statistics
        assert rows[-1]["accuracy"]["fashion_mnist"] >= 0.9


def test_joint_training_needs_the_context_when_data_sets_flip_labels(data_dir, tmp_path):
    # The two generated data sets have the same images with opposite labels: only the context tells
    # which answer is wanted. With it the network learns both; without it, it cannot beat chance on both.
    kw = dict(protocol="joint", epochs=10, hidden=32, checkpoint=False)
    on = cl.train_and_evaluate(_config(data_dir, **kw), tmp_path / "on", progress=False)[-1]["accuracy"]
    off = cl.train_and_evaluate(_config(data_dir, use_context=False, **kw), tmp_path / "off",
                                progress=False)[-1]["accuracy"]
    assert set(on) == set(off) == {"mnist", "fashion_mnist"}
    assert min(on.values()) >= 0.85, on
    assert np.mean(list(off.values())) <= 0.65, off


def test_missing_data_set_fails_before_training(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="prepare_data.py --dataset=mnist"):
        cl.train_and_evaluate(_config(tmp_path / "nothing"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_workdir_in_use_is_refused_before_anything_is_written(data_dir, tmp_path, workdir_holder):
    pid = workdir_holder(tmp_path / "run")
    with pytest.raises(workdir.WorkdirLocked, match=f"is in use by pid {pid} "):
        cl.train_and_evaluate(_config(data_dir), tmp_path / "run", progress=False)
    assert os.listdir(tmp_path / "run") == [workdir.LOCK_NAME]


def test_a_full_disk_at_a_checkpoint_is_one_line(data_dir, tmp_path, monkeypatch):
    """Orbax's error with the ENOSPC chained (faked); an image run does not resume, and says so."""
    import orbax.checkpoint as ocp

    def save(self, step, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise ValueError("Error writing params in OCDBT") from e

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(workdir.WriteFailed) as err:
        cl.train_and_evaluate(_config(data_dir, epochs=1), tmp_path / "run", progress=False)
    assert str(err.value) == (
        f"writing checkpoint 0 in {tmp_path / 'run' / 'checkpoints'} failed: the disk is full (ValueError: Error writing params in "
        "OCDBT); this run does not resume: free space and run the same command again to start it over")


def _launcher():
    spec = importlib.util.spec_from_file_location("train_images", ROOT / "experiments" / "train_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_flags_map_one_to_one_onto_the_config():
    module = _launcher()
    flags = module.flags.FLAGS
    flags(["train_images", "--protocol=continual", "--datasets=fashion_mnist,mnist", "--convs=8:3:2,16:3:1",
           "--image_shape=28,28,1", "--nouse_context", "--kwta=5"])
    config = module.config_from_flags()
    assert config == dataclasses.replace(
        cl.ImageConfig(), protocol="continual", datasets=("fashion_mnist", "mnist"),
        convs=((8, 3, 2), (16, 3, 1)), image_shape=(28, 28, 1), use_context=False, kwta=5)
    for field in dataclasses.fields(cl.ImageConfig):
        assert field.name in flags, field.name
        assert flags[field.name].help.strip() != f"ImageConfig.{field.name}.", field.name  # from the docstring


def test_launcher_preset_and_bad_trunk():
    from experiments.configs import IMAGE_PRESETS

    module = _launcher()
    flags = module.flags.FLAGS
    flags(["train_images", "--preset=mnist_fashion_continual", "--epochs=1", "--nouse_context"])
    config = module.config_from_flags()
    assert config == dataclasses.replace(IMAGE_PRESETS["mnist_fashion_continual"], epochs=1, use_context=False)
    assert config.convs == ((64, 5, 2), (128, 3, 2)) and config.memory_size == 10_000
    flags.unparse_flags()
    flags(["train_images", "--convs=8,3,2;16,3,1"])  # the old image-trunk syntax
    with pytest.raises(ValueError, match="--convs"):
        module.config_from_flags()


def test_launcher_missing_data_prints_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train_images.py"), f"--data_dir={tmp_path}",
         f"--workdir={tmp_path / 'run'}", "--datasets=fashion_mnist"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data set 'fashion_mnist' is not prepared")
    assert data.prepare_command("fashion_mnist", tmp_path) in last


def test_eval_task_bn_reports_both_statistics_for_a_finished_run(data_dir, tmp_path):
    config = _config(data_dir, protocol="continual", epochs=2, memory_size=16)
    cl.train_and_evaluate(config, tmp_path / "run", progress=False)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "eval_task_bn.py"), f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| mnist") or line.startswith("| fashion")]
    assert len(rows) == 2 and "rehearsal memory (16)" in rows[0] and "training split" in rows[1], proc.stdout
    assert all(row.rstrip().endswith("| - |") for row in rows)  # trained without --task_bn_stats: nothing saved


def test_checkpoint_keeps_the_statistics_each_data_set_was_evaluated_with(data_dir, tmp_path):
    config = _config(data_dir, protocol="continual", epochs=2, memory_size=16, task_bn_stats=True)
    rows = cl.train_and_evaluate(config, tmp_path / "run", progress=False)
    run = cl.load_run(tmp_path / "run")
    assert run.config == config and run.step == 3
    assert set(run.task_batch_stats) == {"mnist", "fashion_mnist"}
    for name, accuracy in rows[-1]["accuracy"].items():  # the saved statistics give the reported accuracy
        test = data.Loader({name: data.load_split(name, "test", config.data_dir)}, config.eval_batch_size,
                           shape=config.image_shape, shuffle=False)
        own = run.state.replace(batch_stats=run.task_batch_stats[name])
        assert cl.evaluate(own, test.epoch(0), config.use_context)["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    mnist = run.task_batch_stats["mnist"]
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(mnist), jax.tree.leaves(run.state.batch_stats)))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "eval_task_bn.py"), f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved_cells = [line.split("|")[-2].strip() for line in proc.stdout.splitlines() if line.startswith("| mnist")
                   or line.startswith("| fashion")]
    assert saved_cells == [f"{100 * rows[-1]['accuracy'][n]:.2f} %" for n in config.datasets]


def _save_plain_adam_run(config, workdir):
    """A workdir as runs saved it before the optimiser moved to inject_hyperparams: plain Adam state."""
    import optax
    import orbax.checkpoint as ocp

    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    state = cl.create_train_state(jax.random.key(3), config.network(), config.image_shape, optax.adam(1e-3))
    mgr = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
    mgr.save(5, args=ocp.args.StandardSave(cl._checkpoint_item(state, {})))
    mgr.wait_until_finished()
    mgr.close()
    return state


def test_load_run_reads_checkpoints_saved_with_another_optimiser_state(tmp_path):
    config = _config(tmp_path)
    saved = _save_plain_adam_run(config, tmp_path / "old")
    run = cl.load_run(tmp_path / "old")
    assert run.step == 5 and run.task_batch_stats == {}
    for got, want in zip(jax.tree.leaves((run.state.params, run.state.batch_stats)),
                         jax.tree.leaves((saved.params, saved.batch_stats)), strict=True):
        np.testing.assert_array_equal(got, want)
    assert jax.tree.structure(run.state.opt_state) != jax.tree.structure(saved.opt_state)


def test_load_run_says_when_the_weights_do_not_fit_the_config(tmp_path):
    _save_plain_adam_run(_config(tmp_path), tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**raw, "convs": [[8, 5, 4]]}))
    with pytest.raises(ValueError, match="do not fit the network in config.json"):
        cl.load_run(tmp_path / "old")
