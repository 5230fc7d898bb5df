"""The README's main job, at smoke-test size: every stage runs, the report and metrics are written, and a
rerun resumes instead of redoing the work."""

import json
import time

from handvla.demo import DemoConfig, run_demo


def test_quick_demo_end_to_end_and_resume(tmp_path):
    cfg = DemoConfig.quick()
    metrics = run_demo(tmp_path, cfg, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["tokenizer"]["tokens_per_hand_second"] == 128
    for name in ("heldout_seen_rigs", "unseen_rig"):
        assert saved["vla"][name]["valid_output_rate"] == 1.0  # constrained decoding
        assert saved["vla"][name]["episodes"] == cfg.heldout_episodes
    report = (tmp_path / "report.html").read_text()
    assert "tokenizer_before_after.mp4" in report and "generated_heldout_0.mp4" in report
    assert (tmp_path / "videos" / "tokenizer_before_after.mp4").stat().st_size > 1000
    assert metrics["vla"].keys() == saved["vla"].keys()

    t0 = time.perf_counter()
    run_demo(tmp_path, cfg, progress=False)  # every stage's output exists: nothing is trained again
    assert time.perf_counter() - t0 < metrics["minutes"] * 60


def test_demo_set_overrides_are_typed():
    import pytest

    from handvla.commands.demo import apply_overrides
    from handvla.errors import ConfigError

    cfg = apply_overrides(
        DemoConfig(), ["train_episodes=240", "vla_minutes=20", "train_rigs=ego,phone", "image_size=[64,48]"]
    )
    assert (cfg.train_episodes, cfg.vla_minutes, cfg.train_rigs, cfg.image_size) == (
        240, 20.0, ("ego", "phone"), (64, 48)
    )
    assert isinstance(cfg.vla_minutes, float)
    for bad, match in (("colour=red", "KEY one of"), ("train_episodes=many", "expected int"), ("seed", "KEY=VALUE")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(DemoConfig(), [bad])
