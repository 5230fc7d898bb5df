"""Evaluation with statistics: Wilson intervals (known values, scipy), the input-free baselines of
``handvla.vla.baselines`` checked against independent computations on a tiny HandWorld store (the constant
is the mean training final wrist, retrieval returns the nearest-text episode), the summary JSON's keys for
a random-init tiny VLA (whose interval contains its accuracy), translation / prediction scoring, and the
``vla-eval`` CLI (training stores given, or found from the checkpoint's ``pretrain_config.json``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from handvla.errors import InputError
from handvla.stats import mcnemar_exact, paired_comparison, rate_summary, wilson_interval
from handvla.vla.baselines import (
    TrainingEpisode,
    TrainingReference,
    checkpoint_training_stores,
    constant_velocity,
    direction_hit,
    direction_words,
    instruction_template,
    names_object,
    text_tokens,
)

# ---- Wilson intervals ------------------------------------------------------------------------------------


def test_wilson_known_values():
    # 0 of 10: upper end z^2 / (n + z^2); 10 of 10 mirrored; 5 of 10 symmetric about 0.5
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2), abs=1e-12))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert lo + hi == pytest.approx(1.0)
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # z = 1.96 (rounded) moves the ends by less than 1e-4
    assert wilson_interval(3, 7, z=1.96) == pytest.approx(wilson_interval(3, 7), abs=1e-4)
    # wider with fewer trials, and it always contains the rate
    assert np.diff(wilson_interval(19, 30)) > np.diff(wilson_interval(190, 300))
    for k, n in [(1, 3), (19, 30), (63, 100), (99, 100)]:
        lo, hi = wilson_interval(k, n)
        assert lo < k / n < hi
    for bad in [(-1, 10), (11, 10), (1.5, 10), (1, -1)]:
        with pytest.raises(InputError, match="wilson_interval"):
            wilson_interval(*bad)
    r = rate_summary([True, False, True, True], "acc")
    assert r["acc"] == 0.75 and r["acc_n"] == 4 and r["acc_ci95"] == list(wilson_interval(3, 4))
    assert rate_summary([], "acc")["acc"] is None and rate_summary([], "acc")["acc_ci95"] is None


def test_wilson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    if not hasattr(stats, "binomtest"):
        pytest.skip("scipy without binomtest")
    for k, n in [(0, 10), (5, 10), (10, 10), (1, 1), (7, 23), (63, 100), (250, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        np.testing.assert_allclose(wilson_interval(k, n), (ci.low, ci.high), atol=1e-9)


def test_paired_comparison_is_the_exact_mcnemar_test():
    # by hand: 0 of 5 discordant pairs one way is 2 * 0.5 ** 5; 3 of 6 is 1; none at all is 1
    assert mcnemar_exact(0, 5) == pytest.approx(2 * 0.5**5)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0) and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(86, 27) == pytest.approx(mcnemar_exact(27, 86))
    a = [True, True, False, False, True, False, True]
    b = [True, False, True, True, True, True, False]
    r = paired_comparison(a, b)
    assert (r["won"], r["lost"], r["n"]) == (3, 2, 7) and r["p"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="one per trial"):
        paired_comparison(a, b[:-1])
    with pytest.raises(InputError, match="only_a"):
        mcnemar_exact(-1, 2)


def test_printed_json_keeps_small_numbers(capsys):
    from handvla.commands._util import print_json

    print_json({"p": 6.193e-11, "rate": 0.716783, "zero": 0.0, "lr": 0.00012345, "nested": [{"p": -2.5e-5}]})
    got = json.loads(capsys.readouterr().out)
    assert got == {"p": 6.19e-11, "rate": 0.7168, "zero": 0.0, "lr": 0.000123, "nested": [{"p": -2.5e-5}]}


# ---- the baselines' pieces -------------------------------------------------------------------------------


def _entry(i, text, acting=("right",), wrist=None, template=None, objects=(), direction=None, rig=None):
    w = np.zeros((30, 3)) + i if wrist is None else np.asarray(wrist, np.float64)
    return TrainingEpisode(
        store="s",
        index=i,
        key=f"k{i}",
        instruction=text,
        template=template or text,
        acting=tuple(acting),
        wrist={s: w for s in acting},
        valid={s: np.ones(len(w), bool) for s in acting},
        objects=list(objects),
        direction=direction,
        tokens=text_tokens(text),
        rig=rig,
    )


def test_rig_template_knows_the_camera_not_the_layout():
    ref = TrainingReference(
        [
            _entry(0, "reach", template="a", rig="ego", wrist=np.full((30, 3), 1.0)),
            _entry(1, "reach", template="a", rig="ego", wrist=np.full((30, 3), 3.0)),
            _entry(2, "reach", template="a", rig="third", wrist=np.full((30, 3), 10.0)),
            _entry(3, "push", template="b", rig="third", wrist=np.full((30, 3), 20.0)),
        ]
    )
    p, seen = ref.rig_template_mean("a", "ego", "right", 15)
    assert seen and np.allclose(p, 2.0)  # the ego episodes of template a only
    p, seen = ref.rig_template_mean("a", "third", "right", 15)
    assert seen and np.allclose(p, 10.0)
    # never filmed by that rig (or no rig known): the template's mean over every rig, marked as a fallback
    for rig in ("phone", None):
        p, seen = ref.rig_template_mean("a", rig, "right", 15)
        assert not seen and np.allclose(p, ref.template_mean("a", "right", 15)[0]) and np.allclose(p, 14 / 3)
    p, seen = ref.rig_template_mean("b", "ego", "right", 15)
    assert not seen and np.allclose(p, 20.0)
    p, seen = ref.rig_template_mean("b", "third", "left", 15)  # no left hand anywhere
    assert not seen and p is None


def test_reference_constant_template_retrieval_and_words():
    ramp = np.arange(30, dtype=np.float64)[:, None] * np.array([1.0, 0.0, 0.0])
    ref = TrainingReference(
        [
            _entry(0, "reach for the red cube", wrist=ramp, template="a", objects=["red cube"]),
            _entry(1, "reach for the blue ball", wrist=2 * ramp, template="a", objects=["blue ball"]),
            _entry(
                2,
                "push the red cube left",
                acting=("left",),
                template="b",
                direction="left",
                objects=["red cube"],
            ),
            _entry(3, "push the green cube left", template="b", objects=["green cube"], direction="left"),
        ]
    )
    # constant: mean over the episodes where the hand acts, at frame n - 1 of each
    np.testing.assert_allclose(
        ref.constant("right", 15), np.mean([ramp[14], 2 * ramp[14], np.full(3, 3.0)], 0)
    )
    np.testing.assert_allclose(ref.constant("left", 99), np.full(3, 2.0))  # n past the end: the last frame
    p, seen = ref.template_mean("a", "right", 15)
    assert seen and np.allclose(p, np.mean([ramp[14], 2 * ramp[14]], 0))
    p, seen = ref.template_mean("never", "right", 15)
    assert not seen and np.allclose(p, ref.constant("right", 15))
    # retrieval: highest Jaccard, same hand; ties -> lowest index
    assert ref.retrieve_nearest("push the red cube left", "right") == 3  # 2 is the left hand's
    assert ref.retrieve_nearest("push the red cube left", "left") == 2
    assert ref.retrieve_nearest("reach for the cube", "right") == 0  # 0 and 1 tie
    assert ref.retrieve_nearest("anything", "both") is None
    assert ref.without(["k0"]).retrieve_nearest("reach for the cube", "right") == 0  # k1, now first
    assert ref.without(["k0"]).entries[0].key == "k1"
    assert ref.constant_text() == "the red cube to the left"
    # templates: the generator's own, whatever the objects / directions / hand
    gt = {"task": "push"}
    t1 = instruction_template("use your right hand to push the red cylinder left", gt)
    t2 = instruction_template("Use your left hand to push the blue ball back towards you.", gt)
    assert t1 == t2 == "push: use your {hand} hand to push the {obj} {dir}"
    assert instruction_template("slide the cyan cube forward", None) == "slide the {colour} {noun} {dir}"
    # translation words
    assert names_object("the hand grabs the red cubes", "red", "cube")
    assert not names_object("the hand grabs the red ball", "red", "cube")
    assert direction_words("push the cube left with your right hand") == {"left"}
    assert direction_hit("move it away from you", "forward") and not direction_hit("left or right", "left")
    # constant velocity: the wrist keeps its last per-frame step, the pose is held
    from handvla.hand.motion import HandMotion

    T = 5
    hist = HandMotion(
        global_orient=np.tile([0.1, 0.2, 0.3], (T, 1)),
        hand_pose=np.random.default_rng(0).normal(0, 0.1, (T, 15, 3)),
        wrist_pos=np.arange(T)[:, None] * np.array([0.01, 0.0, 0.002]),
        side="left",
    )
    cv = constant_velocity(hist, 3)
    np.testing.assert_allclose(
        cv.wrist_pos, (T - 1 + np.arange(1, 4))[:, None] * [0.01, 0.0, 0.002], atol=1e-7
    )
    np.testing.assert_allclose(cv.hand_pose, np.repeat(hist.hand_pose[-1:], 3, 0))
    np.testing.assert_allclose(
        constant_velocity(hist, 2, hold=True).wrist_pos, np.repeat(hist.wrist_pos[-1:], 2, 0)
    )


def test_checkpoint_training_stores(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "hw").mkdir()
    stores, vf, note = checkpoint_training_stores(run / "final")
    assert stores == [] and "pretrain_config.json" in note
    (run / "pretrain_config.json").write_text(json.dumps({"data": {"stores": ["hw"], "val_fraction": 0.25}}))
    stores, vf, note = checkpoint_training_stores(run / "final")  # relative to the run folder
    assert stores == [str(run / "hw")] and vf == 0.25 and note is None
    (run / "pretrain_config.json").write_text(json.dumps({"data": {"stores": [], "manifest": "m.jsonl"}}))
    stores, _, note = checkpoint_training_stores(run / "final")
    assert stores == [] and "data.stores" in note and "manifest" in note


# ---- on a tiny HandWorld store with a random-init tiny VLA -----------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla, save_vla

    root = tmp_path_factory.mktemp("vla_eval_stats")
    cfg = HandWorldConfig(width=64, height=48, seconds=2.0, shadows=False, tasks=("reach", "push", "move"))
    generate_episodes(6, root / "train", seed=5, config=cfg, progress=False)
    generate_episodes(3, root / "eval", seed=6, config=cfg, progress=False)
    torch.manual_seed(0)
    mt = MotionTokenizer(TokenizerConfig(**PRESETS["tiny"]))
    with torch.no_grad():  # spread the codebooks so different ids decode to different motion
        for part in mt.parts.values():
            part.quantizer.codebook.normal_(0, 0.5)
    bundle = build_vla("tiny", motion_tokenizer=mt, seed=0)
    ckpt = save_vla(root / "run" / "final", bundle)
    return root, bundle, ckpt


@pytest.fixture(scope="module")
def result(world):
    from handvla.vla.evaluate import evaluate_handworld

    root, bundle, _ = world
    return evaluate_handworld(
        bundle,
        root / "eval",
        max_seconds=1,
        train_stores=[root / "train"],
        translation_episodes=2,
        prediction_episodes=2,
        translation_max_tokens=6,
    )


def test_baselines_against_independent_computations(world, result):
    from handvla.data.store import EpisodeStore
    from handvla.vla.baselines import instruction_template
    from handvla.vla.evaluate import object_positions_camera, target_hit

    root = world[0]
    train = EpisodeStore(root / "train")
    tr = [train.load_episode(k, with_video=False) for k in range(len(train))]
    ev = EpisodeStore(root / "eval")
    rows = result["episodes"]
    assert len(rows) == 3 and any(r["target_hits"] for r in rows)
    rig_checked = 0
    for r in rows:
        ep = ev.load_episode(r["episode"], with_video=False)
        n = 15  # one second at 15 fps
        objects = object_positions_camera(ep, n - 1)
        for j, side in enumerate(sorted(ep.ground_truth["acting_hands"])):
            # constant: the plain mean of the training acting hands' wrists at frame n - 1
            finals = [e.hands[side].wrist_pos[n - 1] for e in tr if side in e.ground_truth["acting_hands"]]
            mean = np.mean(np.asarray(finals, np.float64), 0)
            # retrieval: the nearest instruction by token-set Jaccard, ties to the lowest index
            q = set(ep.tasks[0].lower().replace(".", "").split())
            sims = [
                len(q & set(e.tasks[0].lower().split())) / len(q | set(e.tasks[0].lower().split()))
                if side in e.ground_truth["acting_hands"]
                else -1.0
                for e in tr
            ]
            assert r["baselines"]["retrieval"]["episodes"][j] == tr[int(np.argmax(sims))].key
            pairs = [
                int(t["object_id"])
                for t in ep.ground_truth["targets"]
                if t["hand"] == side and len(objects) >= 2
            ]
            want = [target_hit(mean, oid, objects) for oid in pairs]
            assert r["baselines"]["constant"]["target_hits"] == want
            err = np.linalg.norm(mean - ep.hands[side].wrist_pos[n - 1])
            assert r["baselines"]["constant"]["final_wrist_error_m"] == pytest.approx(err, abs=1e-5)
            # rig_template: the mean over the training episodes of the same template AND camera rig
            tmpl = instruction_template(ep.tasks[0], ep.ground_truth)
            same = [
                e.hands[side].wrist_pos[n - 1]
                for e in tr
                if side in e.ground_truth["acting_hands"]
                and e.rig == ep.rig
                and instruction_template(e.tasks[0], e.ground_truth) == tmpl
            ]
            if same:
                want = [target_hit(np.mean(np.asarray(same, np.float64), 0), oid, objects) for oid in pairs]
                assert r["baselines"]["rig_template"]["target_hits"] == want
                rig_checked += 1
    assert rig_checked > 0  # the fixture has an evaluated hand whose template and rig training filmed
    # nothing of the evaluated store leaked into the reference
    assert result["summary"]["train_reference"]["episodes"] == 6
    assert result["summary"]["train_reference"]["excluded_evaluated_episodes"] == 0


def test_summary_keys_and_intervals(result):
    s = result["summary"]
    json.dumps(result)  # plain JSON
    for key in ("target_accuracy", "target_accuracy_ci95", "oracle_target_accuracy_ci95", "chance_target_accuracy",
                "valid_output_rate_ci95", "final_wrist_error_m", "mpjpe_mm", "mwte_mm", "tokenizer_mpjpe_mm",
                "tokenizer_mwte_mm", "target_pairs", "tokens_per_s", "per_rig"):  # fmt: skip
        assert key in s, key
    assert s["valid_output_rate"] == 1.0 and s["target_pairs"] > 0 and s["final_wrist_error_m"] > 0
    lo, hi = s["target_accuracy_ci95"]
    assert lo <= s["target_accuracy"] <= hi and [lo, hi] == list(
        wilson_interval(s["target_hits"], s["target_pairs"])
    )
    assert set(s["baselines"]) == {"constant", "template", "rig_template", "retrieval", "tokenizer_floor"}
    for name, b in s["baselines"].items():
        assert b["target_pairs"] == s["target_pairs"], name
        assert b["target_accuracy_ci95"][0] <= b["target_accuracy"] <= b["target_accuracy_ci95"][1]
        assert b["final_wrist_error_m"] is not None and b["final_wrist_error_m"] >= 0
    assert s["baselines"]["tokenizer_floor"]["mpjpe_mm"] == s["tokenizer_mpjpe_mm"]
    for rig in s["per_rig"].values():
        assert "target_accuracy_ci95" in rig and "constant" in rig["baselines"]
    # per task type: the pairs split by HandWorld's task name, each rate recomputed from the rows
    rows = [r for r in result["episodes"] if r["target_hits"]]
    assert sum(t["target_pairs"] for t in s["per_task"].values()) == s["target_pairs"]
    for name, t in s["per_task"].items():
        part = [r for r in rows if r["task_type"] == name]
        hits = [h for r in part for h in r["target_hits"]]
        assert part and t["target_accuracy"] == pytest.approx(sum(hits) / len(hits))
        assert t["target_accuracy_ci95"][0] <= t["target_accuracy"] <= t["target_accuracy_ci95"][1]
        oracle = [h for r in part for h in r["oracle_hits"]]
        assert t["oracle_target_accuracy"] == pytest.approx(sum(oracle) / len(oracle))
    t = s["translation"]
    assert t["episodes"] == 2 and len(result["translation_episodes"]) == 2
    for key in (
        "translation_target_accuracy",
        "translation_target_accuracy_ci95",
        "translation_direction_accuracy",
    ):
        assert key in t
    const = t["baselines"]["constant_text"]
    assert const["text"].startswith("the ") and const["target_pairs"] == t["target_pairs"]
    p = s["prediction"]
    assert p["episodes"] == 2
    for kd in ("model", "constant_velocity", "hold_last", "tokenizer_floor"):
        assert p[kd]["mwte_mm"] > 0 and p[kd]["mpjpe_mm"] > 0
    from handvla.vla.evaluate import format_summary_table

    table = format_summary_table("eval", s)
    assert "constant" in table and "retrieval" in table and "constant_velocity" in table and "[" in table


def test_without_training_stores_and_overlap(world):
    from handvla.vla.evaluate import evaluate_handworld

    root, bundle, _ = world
    s = evaluate_handworld(bundle, root / "train", episodes=[0, 1], max_seconds=1)["summary"]
    assert set(s["baselines"]) == {"tokenizer_floor"} and "no training stores" in s["baselines_skipped"]
    assert "translation" not in s and "prediction" not in s  # off by default (periodic eval stays cheap)
    s = evaluate_handworld(
        bundle, root / "train", episodes=[0], max_seconds=1, train_stores=[root / "train"]
    )["summary"]
    assert s["train_reference"] == {
        "stores": [str(root / "train")],
        "val_fraction": 0.0,
        "episodes": 5,
        "excluded_evaluated_episodes": 1,
    }


def test_vla_eval_cli(world, capsys):
    from handvla.cli import main

    root, _, ckpt = world
    base = ["vla-eval", "--ckpt", str(ckpt), "--store", f"seen={root / 'eval'}", "--episodes", "1",
            "--max-seconds", "1", "--translation-episodes", "1", "--prediction-episodes", "0"]  # fmt: skip
    assert main(base + ["--train-store", str(root / "train")]) == 0
    out, err = capsys.readouterr()
    s = json.loads(out)["seen"]
    assert s["train_reference"]["episodes"] == 6 and "target_accuracy_ci95" in s["baselines"]["constant"]
    assert s["translation"]["episodes"] <= 1 and "prediction" not in s
    assert "constant" in err and "95% CI" in err  # the table, on stderr
    # no --train-store and no pretrain_config.json: skipped, saying why
    assert main(base + ["--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "pretrain_config.json" in json.loads(out)["seen"]["baselines_skipped"] and "95% CI" not in err
    # the checkpoint's own training stores, one folder above final/
    (root / "run" / "pretrain_config.json").write_text(
        json.dumps({"data": {"stores": [str(root / "train")]}})
    )
    assert main(base + ["--quiet"]) == 0
    s = json.loads(capsys.readouterr()[0])["seen"]
    assert s["train_reference"]["stores"] == [str(root / "train")] and "baselines_skipped" not in s
    assert "grounding" not in s
    # object grounding beside the constant box
    assert main(base + ["--quiet", "--grounding"]) == 0
    g = json.loads(capsys.readouterr()[0])["seen"]["grounding"]
    assert g["episodes"] == 1 and g["questions"] >= 1 and "right_object_ci95" in g["constant_box"]
    assert main(base + ["--prediction-episodes", "-1"]) == 2
    assert "--prediction-episodes" in capsys.readouterr()[1]
