"""Instruction data: template coverage and wording, balanced sampling, manifests built from annotated stores."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from handvla.errors import ConfigError, InputError
from handvla.language.instructions.build import (
    InstructionBuildConfig,
    build_instructions,
    collect_candidates,
    read_manifest,
)
from handvla.language.instructions.sampling import (
    DEFAULT_TASK_WEIGHTS,
    InstructionBalanceConfig,
    balanced_sample,
    largest_remainder,
    parse_task_weights,
)
from handvla.language.instructions.templates import (
    ALLOWED_FIELDS,
    IMAGE_TOKEN,
    MOTION_ONLY_TEMPLATES,
    MOTION_TOKEN,
    TASK_TYPES,
    TEMPLATES,
    fill,
    inline,
    templates_for,
)

FPS = 15.0
NEUTRAL = "Do the task shown."  # no side words: the hand wording must come from the template alone
BAD_AGREEMENT = [
    r"\bboth hands (moves|performs|is|does|has|was)\b",
    r"\bboth hands\b[^.?!]*\bits\b",
]
#: after these words a bare verb is right ("should the left hand move", "make both hands move")
_BARE_VERB_OK = {
    "should",
    "will",
    "would",
    "does",
    "did",
    "can",
    "could",
    "must",
    "might",
    "may",
    "make",
    "let",
    "watch",
    "see",
}


def _bad_singular(text: str) -> str | None:
    """'the left hand move' used as a finite verb (not after a modal or 'make'/'let')."""
    for m in re.finditer(r"(\w+)\s+the (left|right) hand (move|perform|are|do|have|were)\b", text):
        if m.group(1) not in _BARE_VERB_OK:
            return m.group(0)
    return None


# ---------------------------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", [True, False])
def test_template_coverage_and_fields(image):
    group = TEMPLATES if image else MOTION_ONLY_TEMPLATES
    ids = [t.id for g in (TEMPLATES, MOTION_ONLY_TEMPLATES) for ts in g.values() for t in ts]
    assert len(ids) == len(set(ids))
    for task in TASK_TYPES:
        ts = group[task]
        assert len(ts) >= (20 if image else 10), task
        assert len({t.text for t in ts}) == len(ts)
        assert templates_for(task, image=image) == ts
        for t in ts:
            assert t.fields <= ALLOWED_FIELDS, (t.id, t.fields - ALLOWED_FIELDS)
            assert t.text.count("{image}") == int(image), t.id
            assert {"duration", "steps"} & t.fields, f"{t.id} does not state the duration"
            assert "hands" in t.fields or "Hands" in t.fields or "hands_label" in t.fields, t.id
            if task == "generation":
                assert {"task", "task_inline"} & t.fields and "motion" not in t.fields, t.id
            if task == "translation":
                assert t.text.count("{motion}") == 1 and t.answer in ("instruction", "description"), t.id
            if task == "prediction":
                assert t.text.count("{motion}") == 1 and ("goal" in t.fields) == t.needs_goal, t.id
    assert {t.answer for t in group["translation"]} == {"instruction", "description"}
    goals = [t.needs_goal for t in group["prediction"]]
    assert sum(goals) >= (8 if image else 4) and len(goals) - sum(goals) >= (8 if image else 4)


@pytest.mark.parametrize("image", [True, False])
@pytest.mark.parametrize("task", TASK_TYPES)
def test_templates_hand_wording_and_duration(task, image):
    for t in (TEMPLATES if image else MOTION_ONLY_TEMPLATES)[task]:
        for mode in ("left", "right", "both"):
            for seconds in (1.0, 2.0):
                p = fill(t, mode, seconds, FPS, task=NEUTRAL, goal=NEUTRAL, history_s=1.0)
                assert "{" not in p and "}" not in p, (t.id, p)
                assert p.count(IMAGE_TOKEN) == int(image)
                assert p.count(MOTION_TOKEN) == (0 if task == "generation" else 1)
                low = p.lower()
                words = set(re.findall(r"[a-z]+", low))
                if mode == "both":
                    assert "both" in words and not words & {"left", "right"}, (t.id, p)
                else:
                    other = "right" if mode == "left" else "left"
                    assert mode in words and other not in words and "both" not in words, (t.id, p)
                for bad in BAD_AGREEMENT:
                    assert not re.search(bad, low), (t.id, mode, p)
                assert _bad_singular(low) is None, (t.id, mode, p)
                steps = str(int(seconds * FPS))
                unit = "1 second" if seconds == 1 else "2 seconds"
                assert re.search(rf"\b{steps}\b", p) or unit in p, (t.id, p)


def test_fill_checks_and_inline():
    gen = TEMPLATES["generation"][0]
    with pytest.raises(ConfigError):
        fill(gen, "left", 2.0, FPS)  # no instruction
    with pytest.raises(ConfigError):
        fill(gen, "middle", 2.0, FPS, task="x")
    goal_t = next(t for t in TEMPLATES["prediction"] if t.needs_goal)
    with pytest.raises(ConfigError):
        fill(goal_t, "left", 1.0, FPS, history_s=1.0)
    assert inline("Pick up the cup.") == "pick up the cup"
    assert inline("UR5 arm stays.") == "UR5 arm stays"
    p = fill(gen, "both", 3.0, FPS, task="Clap your hands.")
    assert p == "In <image>, clap your hands. What is the 45-step motion sequence for both hands?"


# ---------------------------------------------------------------------------------------------------------
# balancing
# ---------------------------------------------------------------------------------------------------------


def _strata(sizes: dict[tuple[str, str], int]) -> dict[tuple[str, str], np.ndarray]:
    out, start = {}, 0
    for k, n in sizes.items():
        out[k] = np.arange(start, start + n)
        start += n
    return out


def test_largest_remainder_is_exact():
    q = largest_remainder(2500, DEFAULT_TASK_WEIGHTS)
    assert q == {"generation": 1600, "prediction": 500, "translation": 400}
    for total in (0, 1, 7, 99, 1001):
        q = largest_remainder(total, {"a": 1.0, "b": 1.0, "c": 1.0})
        assert sum(q.values()) == total and max(q.values()) - min(q.values()) <= 1


def test_balanced_proportions_sources_and_replacement():
    sizes = {
        ("big", "generation"): 50_000, ("big", "translation"): 50_000, ("big", "prediction"): 60_000,
        ("mid", "generation"): 4_000, ("mid", "translation"): 4_000, ("mid", "prediction"): 3_000,
        ("tiny", "generation"): 120, ("tiny", "translation"): 120,  # no prediction candidates
    }  # fmt: skip
    strata = _strata(sizes)
    sel, rep = balanced_sample(strata, InstructionBalanceConfig(size=10_000, seed=3))
    assert len(sel) == 10_000
    task_of = np.empty(sum(sizes.values()), object)
    src_of = np.empty(sum(sizes.values()), object)
    for (s, t), idx in strata.items():
        task_of[idx], src_of[idx] = t, s
    share = {t: float(np.mean(task_of[sel] == t)) for t in TASK_TYPES}
    assert share == pytest.approx({"generation": 0.64, "translation": 0.16, "prediction": 0.2}, abs=0.001)
    assert rep["task_types"]["generation"]["share"] == pytest.approx(0.64, abs=0.001)
    # within a task type the sources that have candidates share it equally
    for t in TASK_TYPES:
        srcs = [s for (s, tt) in sizes if tt == t]
        counts = [int(np.sum((task_of[sel] == t) & (src_of[sel] == s))) for s in srcs]
        assert max(counts) - min(counts) <= 1, (t, counts)
    # the tiny source needs repeats, reported; big strata are sampled without replacement
    assert set(rep["strata_with_replacement"]) == {"tiny/generation", "tiny/translation"}
    big = sel[src_of[sel] == "big"]
    assert len(np.unique(big)) == len(big)
    tiny_gen = sel[(src_of[sel] == "tiny") & (task_of[sel] == "generation")]
    assert set(tiny_gen.tolist()) == set(strata[("tiny", "generation")].tolist())  # every candidate used
    # deterministic by seed, different for another seed
    sel2, _ = balanced_sample(strata, InstructionBalanceConfig(size=10_000, seed=3))
    sel3, _ = balanced_sample(strata, InstructionBalanceConfig(size=10_000, seed=4))
    assert np.array_equal(sel, sel2) and not np.array_equal(np.sort(sel), np.sort(sel3))


def test_balance_options():
    strata = _strata({("a", "generation"): 900, ("b", "generation"): 100, ("a", "translation"): 50})
    sel, rep = balanced_sample(
        strata, InstructionBalanceConfig(size=1000, seed=0, source_balance="proportional")
    )
    gen = rep["strata"]
    quota = {(r["source"], r["task_type"]): r["quota"] for r in gen}
    # prediction has no candidates: its share goes to the others (in their 1.6 : 0.4 ratio)
    assert rep["task_types_without_candidates"] == ["prediction"]
    assert (
        quota[("a", "generation")] + quota[("b", "generation")] == 800 and quota[("a", "translation")] == 200
    )
    assert quota[("a", "generation")] == 720  # 900 : 100 kept
    _, rep_sqrt = balanced_sample(strata, InstructionBalanceConfig(size=1000, seed=0, source_balance="sqrt"))
    q = {(r["source"], r["task_type"]): r["quota"] for r in rep_sqrt["strata"]}
    assert q[("a", "generation")] == 600  # sqrt(900) : sqrt(100) = 3 : 1
    _, rep_w = balanced_sample(
        strata, InstructionBalanceConfig(size=1000, seed=0, source_weights={"a": 1, "b": 3})
    )
    q = {(r["source"], r["task_type"]): r["quota"] for r in rep_w["strata"]}
    assert q[("b", "generation")] == 600
    assert parse_task_weights("1.6,0.4,0.5") == DEFAULT_TASK_WEIGHTS
    assert parse_task_weights("generation=1,prediction=1") == {"generation": 1.0, "prediction": 1.0}
    for bad in ("1,2", "gen=1", "1,-1,1"):
        with pytest.raises(ConfigError):
            parse_task_weights(bad)
    with pytest.raises(ConfigError):
        InstructionBalanceConfig(size=10, source_balance="loud")


# ---------------------------------------------------------------------------------------------------------
# from annotated stores to a manifest
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    """Two small motion-only stores (two sources, no video), annotated with the rule backend; one episode
    left unannotated."""
    import torch

    from handvla.camera import Camera
    from handvla.data.schema import Episode
    from handvla.data.store import EpisodeWriter
    from handvla.language.annotate.rules import RuleAnnotator
    from handvla.language.annotate.run import annotate_store
    from handvla.synth.builtin_motion import sample_labelled_sequence

    torch.set_num_threads(1)
    cam = Camera(500.0, 500.0, 320.0, 240.0, 640, 480)
    out = []
    plans = {
        "alpha": [(("right",), 12.0), (("left", "right"), 5.0)],
        "beta": [(("left",), 4.0), (("left", "right"), 3.0)],
    }
    for name, plan in plans.items():
        root = tmp_path_factory.mktemp(name)
        with EpisodeWriter(root, fps=FPS, hand_model="builtin", joints=False, camera=None) as w:
            for i, (hands, secs) in enumerate(plan):
                m, _ = sample_labelled_sequence(np.random.default_rng([len(name), i]), secs, FPS, hands)
                w.add_episode(
                    Episode(
                        hands=m,
                        camera=cam,
                        fps=FPS,
                        key=f"{name}/{i}",
                        source=name,
                        tasks=[f"{name} task {i}"],
                    )
                )
        annotate_store(root, RuleAnnotator(), progress=False, episodes=[0] if name == "beta" else None)
        out.append(root)
    return out


def test_candidates_cover_spans_hands_and_tasks(stores):
    pool = collect_candidates(stores, InstructionBuildConfig())
    c = pool.cols
    assert set(pool.sources) == {"alpha", "beta"}
    # every span lies inside its clip and covers whole seconds (or a 1 s window)
    clip_s, clip_e = c["clip_start"] / FPS, c["clip_end"] / FPS
    assert np.all(c["start"] >= clip_s - 1e-9) and np.all(c["end"] <= clip_e + 1e-9)
    dur = c["end"] - c["start"]
    assert np.allclose(dur, np.round(dur)) and dur.min() >= 1 - 1e-9
    pred = c["task"] == 2
    assert np.all(c["hist"][pred] >= clip_s[pred] - 1e-9) and np.all(c["hist"][pred] < c["start"][pred])
    assert np.isnan(c["hist"][~pred]).all()
    # the unannotated beta episode 1 (3 s, one clip): only its task instruction and prediction spans
    beta = pool.datasets[1]
    assert beta.keys == ["beta/0", "beta/1"]
    b1 = (c["dataset"] == 1) & (c["episode"] == 1)
    assert set(c["task"][b1].tolist()) == {0, 2} and set(c["span"][b1 & (c["task"] == 0)].tolist()) == {2}
    # hand modes: both + each hand for two-hand episodes
    a1 = (c["dataset"] == 0) & (c["episode"] == 1)
    assert set(c["hands"][a1].tolist()) == {0, 1, 2}


def test_manifest_samples_are_consistent_and_deterministic(stores, tmp_path):
    out = tmp_path / "m.jsonl"
    rep = build_instructions(stores, out, size=400, seed=11, progress=False)
    recs = read_manifest(out)
    assert len(recs) == 400 == rep["samples"]
    share = {t: sum(r["task_type"] == t for r in recs) / 400 for t in TASK_TYPES}
    assert share == pytest.approx({"generation": 0.64, "translation": 0.16, "prediction": 0.2}, abs=0.003)
    assert {r["source"] for r in recs} == {"alpha", "beta"}
    for r in recs:
        p = r["prompt"]
        # motion-only stores (built without video): no <image>, no image time
        assert IMAGE_TOKEN not in p and "{" not in p and r["image_s"] is None
        assert r["template_id"] in {t.id for t in MOTION_ONLY_TEMPLATES[r["task_type"]]}
        assert str(r["steps"]) in p or f"{r['duration_s']:g} second" in p
        assert r["steps"] == round(r["duration_s"] * FPS) and r["duration_s"] >= 1
        words = set(re.findall(r"[a-z]+", p.lower()))
        if r["hands"] == "both":
            assert "both" in words
        else:
            assert r["hands"] in words
        if r["task_type"] == "translation":
            assert r["answer_type"] == "text" and r["answer"] and MOTION_TOKEN in p
        else:
            assert r["answer_type"] == "motion" and r["answer"] is None
        if r["task_type"] == "prediction":
            assert r["history_start_s"] < r["history_end_s"] == r["start_s"] and MOTION_TOKEN in p
        else:
            assert r["history_start_s"] is None
        if r["task_type"] == "generation" and r["text_source"] == "rules":
            assert r["span"] in ("clip", "second")
        assert Path(r["dataset"]).is_dir() and r["episode_key"].startswith(r["source"])
    # the same seed rebuilds the same manifest; another seed does not
    out2 = tmp_path / "m2.jsonl"
    build_instructions(stores, out2, size=400, seed=11, progress=False)
    assert out.read_bytes() == out2.read_bytes()
    out3 = tmp_path / "m3.parquet"
    build_instructions(stores, out3, size=400, seed=12, progress=False)
    recs3 = read_manifest(out3)
    assert len(recs3) == 400 and [r["id"] for r in recs3] != [r["id"] for r in recs]
    # the generation prompt carries the annotation's own instruction for that span and hand
    from handvla.language.annotate.table import load_annotations

    anns = load_annotations(stores[0])
    gen = [
        r for r in recs if r["task_type"] == "generation" and r["source"] == "alpha" and r["span"] == "clip"
    ]
    assert gen
    for r in gen:
        instr = anns[r["clip_id"]].clip[r["hands"]]["instruction"].rstrip(".")
        assert instr[1:] in r["prompt"]


def test_build_without_size_writes_every_candidate_once(stores, tmp_path):
    rep = build_instructions(stores[1:], tmp_path / "all.jsonl", progress=False)
    recs = read_manifest(tmp_path / "all.jsonl")
    assert rep["samples"] == rep["pool"]["candidates"] == len(recs)
    key = [
        (r["clip_id"], r["task_type"], r["hands"], r["start_s"], r["end_s"], r["history_start_s"])
        for r in recs
    ]
    assert len(set(key)) == len(key)
    with pytest.raises(ConfigError):
        build_instructions(stores[1:], tmp_path / "x.csv", progress=False)


def test_cli_handlers(stores, tmp_path, capsys):
    import argparse

    from handvla.commands.data import add_annotate, add_instructions

    root = tmp_path / "s"
    shutil.copytree(stores[1], root)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_annotate(sub)
    add_instructions(sub)
    args = parser.parse_args(["annotate", str(root), "--quiet"])
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["annotated"] == 1 and rep["already_done"] == 1  # beta/1 was left unannotated
    args = parser.parse_args(
        [
            "instructions",
            str(root),
            "--out",
            str(tmp_path / "m.jsonl"),
            "--size",
            "50",
            "--seed",
            "3",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["samples"] == 50 and len(read_manifest(tmp_path / "m.jsonl")) == 50


# ---------------------------------------------------------------------------------------------------------
# motion-only stores -> motion-only samples -> pretraining (mixed with image samples)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_store(tmp_path_factory) -> Path:
    """A small store WITH video (random frames), to mix image samples with motion-only ones."""
    from handvla.camera import Camera
    from handvla.data.schema import Episode
    from handvla.data.store import EpisodeWriter
    from handvla.synth.builtin_motion import sample_labelled_sequence

    root = tmp_path_factory.mktemp("gamma")
    cam = Camera(60.0, 60.0, 32.0, 24.0, 64, 48)
    with EpisodeWriter(root, fps=FPS, hand_model="builtin", joints=False, camera="main") as w:
        for i in range(2):
            rng = np.random.default_rng([9, i])
            m, _ = sample_labelled_sequence(rng, 3.0, FPS, ("left", "right"))
            T = len(next(iter(m.values())))
            frames = rng.integers(0, 255, (T, 48, 64, 3), dtype=np.uint8)
            w.add_episode(
                Episode(hands=m, camera=cam, fps=FPS, key=f"gamma/{i}", source="gamma", video=frames,
                        tasks=[f"gamma task {i}"])
            )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def tiny_vla(stores, tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import calibrated_tokenizer

    from handvla.vla import build_vla
    from handvla.vla.text_tokenizer import DEFAULT_CORPUS, build_text_tokenizer

    mt = calibrated_tokenizer(stores[0])
    mt_dir = tmp_path_factory.mktemp("mt") / "mt"
    mt.save_pretrained(mt_dir)
    tok = build_text_tokenizer(list(DEFAULT_CORPUS), vocab_size=400)
    return build_vla("tiny", tokenizer=tok, motion_tokenizer=mt, seed=0), mt, mt_dir


def test_motion_only_samples_reach_the_model_and_mix_with_images(stores, video_store, tiny_vla, tmp_path):
    import torch

    from handvla.vla.data import VLADataConfig, VLAInstructionDataset, collect_samples

    bundle, mt, _ = tiny_vla
    man = tmp_path / "mixed.jsonl"
    build_instructions([video_store, stores[0]], man, size=60, seed=1, progress=False)
    recs = read_manifest(man)
    by_src = {r["source"]: (IMAGE_TOKEN in r["prompt"], r["image_s"] is None) for r in recs}
    assert by_src == {"gamma": (True, False), "alpha": (False, True)}  # video store: images; else none
    specs, dirs, _ = collect_samples(VLADataConfig(manifest=str(man)), "all")
    ds = VLAInstructionDataset(specs, dirs, bundle.processor, mt, align=False)
    assert 0 < ds.report["motion_only"] < len(ds)
    img = next(i for i, s in enumerate(ds.specs) if s.image_s is not None)
    txt = [i for i, s in enumerate(ds.specs) if s.image_s is None][:2]
    items = [ds[i] for i in [txt[0], img, txt[1]]]
    assert items[0].pixel_values is None and items[1].pixel_values is not None
    for i, it in zip([txt[0], img, txt[1]], items):
        assert len(it.input_ids) == ds.lengths[i]  # lengths of both kinds are exact
    model = bundle.model.eval()
    with torch.no_grad():
        batch = ds.collate(items)
        assert batch["pixel_values"].shape[0] == items[1].pixel_values.shape[0]
        got = model(**batch, use_cache=False).loss
        # the mixed batch's loss is the token-weighted mean of the samples' own losses
        tot = n = 0.0
        for it in items:
            one = ds.collate([it])
            k = int((one["labels"][:, 1:] != -100).sum())
            tot += float(model(**one, use_cache=False).loss) * k
            n += k
    assert torch.isfinite(got) and abs(float(got) - tot / n) < 1e-4
    # without a manifest, straight from the episodes: the same split by store
    ep_specs, ep_dirs, _ = collect_samples(
        VLADataConfig(stores=[str(video_store), str(stores[0])], seconds=[1])
    )
    assert ep_specs and all(
        (IMAGE_TOKEN in x.prompt) == (x.image_s is not None) == (x.dataset == 0) for x in ep_specs
    )
    ep_ds = VLAInstructionDataset(ep_specs, ep_dirs, bundle.processor, mt, align=False)
    assert 0 < ep_ds.report["motion_only"] < len(ep_ds)
    # a prompt with <image> over a store without video is refused before training, naming the store
    s0 = ds.specs[txt[0]]
    bad = dataclasses.replace(s0, image_s=0.0, prompt=IMAGE_TOKEN + " " + s0.prompt)
    with pytest.raises(InputError, match=rf"{re.escape(str(dirs[s0.dataset]))}.*video"):
        VLAInstructionDataset([bad], dirs, bundle.processor, mt)


def test_pretrain_accepts_a_motion_only_manifest(stores, tiny_vla, tmp_path, capsys):
    """video: false -> annotate -> instructions -> pretrain, through the CLI."""
    from handvla.cli import main

    _, _, mt_dir = tiny_vla
    man = tmp_path / "m.jsonl"
    assert main(["data", "instructions", str(stores[0]), "--out", str(man), "--size", "30", "--quiet"]) == 0
    assert not any(IMAGE_TOKEN in r["prompt"] for r in read_manifest(man))
    capsys.readouterr()
    sets = [
        f"data.manifest={man}", f"model.motion_tokenizer={mt_dir}", "model.text_vocab_size=400",
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.tensorboard=false", "train.progress=false", "train.device=cpu", "eval.val_samples=0",
    ]  # fmt: skip
    config = tmp_path / "pretrain.yaml"
    config.write_text("data: {}\n")
    args = ["pretrain", "--config", str(config), "--quiet"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["step"] == 2 and Path(out["final"]).is_dir()
