"""benchmarks/vla_vision_probe.py (the vision diagnosis of the README) runs end to end at small sizes: one
JSON object, the one it returns, with every arm trained for the asked steps; the scenes' "seen" flags are
seeded and only set when the scene has an object of that colour."""

import json

import numpy as np


def test_scenes_say_whether_the_colour_is_seen(benchmark_script):
    mod = benchmark_script("vla_vision_probe")
    from handvla.synth.handworld.scene import sample_scene

    scenes = mod.render_scenes(12, 4, (64, 48), "red")
    assert [s[2] for s in scenes] == [s[2] for s in mod.render_scenes(12, 4, (64, 48), "red")]  # seeded
    for i, (rgb, K, seen) in enumerate(scenes):
        assert rgb.shape == (48, 64, 3) and K.shape == (3, 3)
        has_red = any(o.colour == "red" for o in sample_scene(np.random.default_rng([4, i, 0x5EE])).objects)
        assert seen <= has_red  # seen only if the scene has one (it may be out of view)


def test_probe_runs_every_arm(capsys, benchmark_script):
    res = benchmark_script("vla_vision_probe").main(["--scenes", "24", "--val-scenes", "16", "--steps", "2", "--tile", "56",
                          "--render-size", "64x48", "--batch-size", "4"])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    for arm in ("vla", "tower_head", "vla_from_tower"):
        assert res[arm]["steps"] == 2 and 0.0 <= res[arm]["heldout_accuracy"] <= 1.0
        assert np.isfinite(res[arm]["final_loss"])
    assert 0.0 <= res["always_no_accuracy"] <= 1.0
