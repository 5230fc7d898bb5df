"""The README's main job, at smoke-test size: every stage runs, the report and metrics are written, and a
rerun resumes instead of redoing the work."""

import json

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
    # the VLA's tokenizer encodes greedily (every VLA result was measured on greedy ids)
    assert json.loads((tmp_path / "tokenizer" / "config.json").read_text())["encode_beam"] == 1
    assert metrics["vla"].keys() == saved["vla"].keys()

    # the report states the training budget and compares the model with input-free baselines
    assert "Training budget" in report and "beside models that ignore its input" in report
    assert saved["vla_train"]["steps_done"] == cfg.vla_max_steps and saved["vla_train"]["too_few_steps"]
    assert "budget-warning" in report  # 6 steps: the report warns loudly
    assert saved["vla"]["heldout_seen_rigs"]["target_accuracy_ci95"] is not None or not saved["vla"]["heldout_seen_rigs"]["target_pairs"]

    outputs = [tmp_path / "tokenizer" / "model.safetensors", tmp_path / "vla" / "final" / "model.safetensors",
               next((tmp_path / "data" / "train" / "data").rglob("*.parquet"))]  # fmt: skip
    stamps = [p.stat().st_mtime_ns for p in outputs]
    run_demo(tmp_path, cfg, progress=False)  # every stage's output exists: nothing is made again
    assert [p.stat().st_mtime_ns for p in outputs] == stamps


def test_demo_set_overrides_are_typed():
    import pytest

    from handvla.config import load_config
    from handvla.errors import ConfigError

    def demo_set(items):  # what ``handvla demo --set`` does
        return load_config(DemoConfig, None, items, DemoConfig().model_dump(), "demo --set")

    cfg = demo_set(["train_episodes=240", "vla_minutes=20", "train_rigs=ego,phone", "image_size=[64,48]"])
    assert (cfg.train_episodes, cfg.vla_minutes, cfg.train_rigs, cfg.image_size) == (
        240, 20.0, ("ego", "phone"), (64, 48)
    )
    assert isinstance(cfg.vla_minutes, float)
    assert demo_set(["vla_layer_loss_weights=null"]).vla_layer_loss_weights is None
    for bad, match in (
        ("colour=red", "field 'colour': unknown field; expected one of seed, train_episodes"),
        ("train_episodes=many", "field 'train_episodes': .*integer.*'many'"),
        ("seed", "expected key=value"),
    ):
        with pytest.raises(ConfigError, match=match):
            demo_set([bad])


def test_reading_compares_with_the_camera_aware_baseline():
    from handvla.demo import headline_rows, reading

    seen = {"target_accuracy": 0.5, "target_accuracy_ci95": [0.44, 0.56], "target_pairs": 286,
            "baselines": {"constant": {"target_accuracy": 0.29, "target_accuracy_ci95": [0.24, 0.35]},
                          "rig_template": {"target_accuracy": 0.57, "target_accuracy_ci95": [0.52, 0.63]}}}  # fmt: skip
    text = " ".join(reading({"heldout_seen_rigs": seen}))
    assert "lower bound is above it" in text  # the constant: 0.44 > 0.29
    assert "same camera" in text and "lower bound is NOT clearly above it" in text  # rig_template: 0.44 < 0.57
    rows = headline_rows({"heldout_seen_rigs": seen})
    assert any("camera rig" in r[0] and r[1].startswith("57") for r in rows)
