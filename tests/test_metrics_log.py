"""The one run logger: leading context columns, resume truncation, and the image path's CSV."""

from mtspark_jax.metrics_log import MetricsLogger


def test_context_columns_and_no_eval_csv(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False, columns=("time", "stage", "epoch"), eval_csv=False)
    log.scalars({"train/loss": 0.5, "train/accuracy": 0.25}, 10, time="1.5", stage=0, epoch=2)
    log.close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "time,stage,epoch,step,name,value", "1.5,0,2,10,train/loss,0.5", "1.5,0,2,10,train/accuracy,0.25"]
    assert not (tmp_path / "eval.csv").exists()


def test_resume_drops_rows_past_the_restored_step(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in (4, 8, 12):
        log.scalar("charts/SPS", step, step)
        log.eval_row(step, 0, 0, 0, "Pong", [-21.0])
    log.close()
    MetricsLogger(tmp_path, tensorboard=False, resume_step=8).close()
    assert [r.split(",")[0] for r in (tmp_path / "metrics.csv").read_text().splitlines()] == ["step", "4", "8"]
    assert [r.split(",")[0] for r in (tmp_path / "eval.csv").read_text().splitlines()] == ["step", "4", "8"]


def test_resume_drops_a_partial_last_row(tmp_path):
    """What a write cut by a full disk leaves: a row without its end, or only part of its step."""
    for tail in ("12,charts/SP", "1"):
        (tmp_path / "metrics.csv").write_text(f"step,name,value\n4,charts/SPS,4\n8,charts/SPS,8\n{tail}")
        MetricsLogger(tmp_path, tensorboard=False, resume_step=8).close()
        assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,name,value", "4,charts/SPS,4",
                                                                        "8,charts/SPS,8"], tail
