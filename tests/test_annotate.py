"""Annotation: segmentation, the rule-based annotator against motion with known ground truth, the
annotation table, and the OpenAI-compatible backend against a local fake endpoint (success, garbage,
timeouts, 429/500, the reply cache, resuming)."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handvla.camera import Camera
from handvla.data.schema import Episode
from handvla.errors import ConfigError, InputError
from handvla.hand.anatomy import anatomical_to_pose
from handvla.hand.motion import HandMotion
from handvla.hand.registry import motion_joints
from handvla.language.annotate import kinematics as K
from handvla.language.annotate import rules as R
from handvla.language.annotate.base import AnnotationFailure, Clip, ClipAnnotation, KnownObject
from handvla.language.annotate.openai_backend import OpenAIAnnotator, OpenAIConfig, parse_reply
from handvla.language.annotate.run import annotate_store, load_clip, store_clips
from handvla.language.annotate.segments import ClipSpec, SegmentConfig, segment_episode
from handvla.language.annotate.table import AnnotationTable
from handvla.synth.builtin_motion import (
    BimanualScript,
    HandScript,
    Workspace,
    anatomical_frames,
    key_shape,
    min_jerk,
    sample_labelled_sequence,
)

FPS = 15.0
CAM = Camera(500.0, 500.0, 32.0, 24.0, 64, 48)


# ---------------------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------------------


def test_clips_are_at_most_10s_contiguous_and_start_on_whole_seconds():
    clips = segment_episode(375, FPS, 3)  # 25 s
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 150), (150, 300), (300, 375)]
    assert all(c.episode_index == 3 for c in clips) and [c.clip_index for c in clips] == [0, 1, 2]
    assert clips[1].start_s == 10.0 and clips[2].duration_s == 5.0
    assert [(c.start_frame, c.end_frame) for c in segment_episode(150, FPS)] == [(0, 150)]  # exactly 10 s
    # a tail shorter than 1 s is not left alone: the last 10.x s are split at a whole second
    assert [(c.start_frame, c.end_frame) for c in segment_episode(151, FPS)] == [(0, 75), (75, 151)]
    assert [(c.start_frame, c.end_frame) for c in segment_episode(307, FPS)] == [
        (0, 150),
        (150, 225),
        (225, 307),
    ]
    assert segment_episode(1, FPS) == [] and len(segment_episode(2, FPS)) == 1


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(2, 3000),
    fps=st.sampled_from([10.0, 15.0, 29.97, 30.0, 60.0]),
    max_clip=st.sampled_from([4.0, 10.0]),
)
def test_segmentation_partitions_the_episode(T, fps, max_clip):
    cfg = SegmentConfig(max_clip_s=max_clip)
    clips = segment_episode(T, fps, 0, cfg)
    assert clips[0].start_frame == 0 and clips[-1].end_frame == T
    for a, b in zip(clips, clips[1:]):
        assert a.end_frame == b.start_frame
    max_f = int(np.floor(max_clip * fps + 1e-6))
    assert all(0 < c.num_frames <= max_f for c in clips)
    if len(clips) > 1:
        assert all(c.num_frames >= np.ceil(cfg.min_clip_s * fps - 1e-6) for c in clips)


def test_frame_samples_and_overlapping_windows():
    c = ClipSpec(0, 0, 150, 300, FPS)  # 10 s clip starting at 10 s
    frames = c.sample_frames(2.0)
    assert len(frames) == 20 and frames[0] == 150 and frames[-1] < 300
    assert np.all(np.abs(np.diff(frames) - 7.5) <= 0.5)  # 2 FPS at 15 fps: every 7-8 frames
    w = c.windows(1.0, 0.5)
    assert w[0] == (150, 165) and w[-1] == (285, 300)
    assert all(b - a == 15 for a, b in w)  # 1 s each
    starts = np.array([a for a, _ in w])
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= 8)  # overlapping, stride ~0.5 s
    covered = np.zeros(300, bool)
    for a, b in w:
        covered[a:b] = True
    assert covered[150:].all() and not covered[:150].any()
    # a clip whose length is not a multiple of the stride still ends with a window at its end
    w2 = ClipSpec(0, 0, 0, 40, FPS).windows(1.0, 0.5)
    assert w2[-1] == (25, 40)
    assert ClipSpec(0, 0, 0, 10, FPS).windows() == [(0, 10)]  # shorter than a window
    assert c.window_times()[0] == (10.0, 11.0)
    with pytest.raises(ConfigError):
        SegmentConfig(max_clip_s=-1)


# ---------------------------------------------------------------------------------------------------------
# rule-based annotator vs ground truth
# ---------------------------------------------------------------------------------------------------------


def _hand_made(side: str, start, end, shape0: str, shape1: str, T: int = 30) -> HandMotion:
    """A hand moving its wrist from ``start`` to ``end`` (camera frame) on a min-jerk profile while the
    fingers blend between two key shapes: a motion whose direction and grip are known by construction."""
    s = min_jerk(np.linspace(0, 1, T))
    pos = np.asarray(start)[None] + s[:, None] * (np.asarray(end) - np.asarray(start))[None]
    F = anatomical_frames(side=side)
    a0, a1 = key_shape(shape0), key_shape(shape1)
    anat = a0[None] + s[:, None, None] * (a1 - a0)[None]
    pose = anatomical_to_pose(anat, F, side)
    go = np.tile([np.pi / 2, 0.0, 0.0], (T, 1))  # palm facing the camera-ish, constant
    return HandMotion(go, pose, pos, side=side, fps=FPS)


def _clip(hands: dict[str, HandMotion], objects=(), key="ep") -> Clip:
    T = len(next(iter(hands.values())))
    spec = ClipSpec(0, 0, 0, T, FPS)
    return Clip(spec, key, hands, CAM, spec.window_times(), objects=list(objects))


@pytest.mark.parametrize(
    "side,delta,term,word",
    [
        ("right", (-0.2, 0.0, 0.0), "left", "left"),
        ("right", (0.2, 0.0, 0.0), "right", "right"),
        ("left", (0.0, -0.2, 0.0), "up", "up"),
        ("left", (0.0, 0.2, 0.0), "down", "down"),
        ("right", (0.0, 0.0, -0.2), "towards", "camera"),
        ("right", (0.02, 0.0, 0.25), "away", "away"),
    ],
)
def test_rules_name_the_camera_frame_direction(side, delta, term, word):
    start = np.array([0.0, 0.05, 0.5])
    m = _hand_made(side, start, start + np.array(delta), "open", "open", T=15)  # 1 s
    ann = R.RuleAnnotator().annotate(_clip({side: m}))
    facts = ann.facts["windows"][0][side]
    assert facts["direction"][0] == term and facts["grip"] == "open" and facts.get("grip_change") is None
    assert abs(facts["distance_m"] - np.linalg.norm(delta)) < 0.03
    sec = ann.seconds[0].text[side]
    assert word in sec["instruction"] and word in sec["description"] and side in sec["instruction"]
    assert "left" not in ann.clip[side]["instruction"].replace("left hand", "") or term == "left"


def test_rules_grip_closing_opening_and_shapes():
    p = np.array([0.05, 0.1, 0.45])
    close = R.RuleAnnotator().annotate(_clip({"right": _hand_made("right", p, p, "open", "fist")}))
    f = close.facts["windows"][-1]["right"]
    assert f["grip"] == "closed" and f["shape"] == "fist" and not f.get("direction")
    assert any(w["right"].get("grip_change") == "closing" for w in close.facts["windows"])
    assert [e["kind"] for e in close.facts["events"]["right"]] == ["close"]
    assert "fist" in close.clip["right"]["instruction"]
    opened = R.RuleAnnotator().annotate(_clip({"left": _hand_made("left", p, p, "fist", "spread")}))
    assert opened.facts["windows"][-1]["left"]["shape"] == "open"
    assert [e["kind"] for e in opened.facts["events"]["left"]] == ["open"]
    for shape in ("pinch", "point", "relaxed"):
        a = R.RuleAnnotator().annotate(_clip({"right": _hand_made("right", p, p, shape, shape, T=15)}))
        assert a.facts["windows"][0]["right"]["shape"] == shape


def test_rules_grasp_carry_release_of_a_known_object():
    """Reach to a cube, close on it, carry it to the left, let go: object, grip and direction must match."""
    rng = np.random.default_rng(3)
    h = HandScript("right", rng, FPS, workspace=Workspace())
    cube = h.ws.sample_point(rng, lateral=(0.05, 0.1), forward=(0.3, 0.35), height=(0.03, 0.03))
    dest = cube + np.array([-0.22, 0.0, 0.0])
    h.reach(cube, anchor="grasp").grasp(0.7).move(dest, anchor="grasp").release()
    motion, labels = h.build(noise=True)
    T = len(motion)
    # the cube follows the grasp point while the grip is closed (a known object with a track)
    track = np.repeat(cube[None], T, 0)
    grip = labels.grip_closed
    joints = motion_joints(motion)
    palm = joints[:, [0, 5, 9, 13, 17]].mean(1)
    first = int(np.argmax(grip))
    offset = cube - palm[first]
    for t in range(first, T):
        track[t] = palm[t] + offset if grip[t] else track[t - 1]
    obj = KnownObject(
        "red cube",
        track,
        0.03,
        {"colour": "red", "size": "small"},
        geometry="box",
        half_extents_m=[0.025] * 3,
    )
    clip = _clip({"right": motion}, [obj])
    ann = R.RuleAnnotator().annotate(clip)
    kinds = [e["kind"] for e in ann.facts["events"]["right"]]
    assert "grasp" in kinds and "release" in kinds and "carry" in kinds
    carry = next(e for e in ann.facts["events"]["right"] if e["kind"] == "carry")
    assert carry["object"] == "red cube" and carry["direction"][0] == "left"
    assert kinds.index("grasp") < kinds.index("carry") < kinds.index("release")
    assert ann.facts["targets"]["right"] == "red cube"
    text = ann.clip["right"]["instruction"] + " " + ann.clip["right"]["summary"]
    assert "red cube" in text and re.search(r"grasp|grab|take hold", text) and "left" in text
    # per frame, the grip state agrees with the script's ground truth
    info = R.RuleAnnotator().analyse(clip)
    assert np.mean(info["tracks"]["right"].closed == grip) > 0.9
    held = info["held"]["right"]
    assert np.mean((held == 0)[grip]) > 0.85 and not (held == 0)[~grip].any()


def test_rules_agree_with_builtin_motion_labels():
    """Grip state per frame and direction per window against noiseless ground truth, on random scripts."""
    ann = R.RuleAnnotator()
    cfg = ann.config
    grip_ok = grip_n = dir_ok = dir_n = 0
    for i in range(6):
        hands = ("left", "right") if i % 3 == 2 else (("right",) if i % 2 else ("left",))
        m, lab = sample_labelled_sequence(np.random.default_rng(100 + i), 6.0, FPS, hands)
        m0, _ = sample_labelled_sequence(np.random.default_rng(100 + i), 6.0, FPS, hands, noise=False)
        spec = segment_episode(90, FPS)[0]
        info = ann.analyse(Clip(spec, f"e{i}", m, CAM, spec.window_times()))
        for s in m:
            grip_ok += int((info["tracks"][s].closed == lab[s].grip_closed).sum())
            grip_n += len(lab[s].grip_closed)
            for wi, (a, b) in enumerate(spec.windows()):
                d0 = m0[s].wrist_pos[b - 2 : b].mean(0) - m0[s].wrist_pos[a : a + 2].mean(0)
                if np.linalg.norm(d0) >= 2 * cfg.still_m:  # clear movements only
                    ax = int(np.argmax(np.abs(d0)))
                    dir_n += 1
                    dir_ok += info["windows"][wi][s]["direction"][:1] == [
                        K.AXIS_TERMS[(ax, 1 if d0[ax] > 0 else -1)]
                    ]
    assert grip_ok / grip_n > 0.93
    assert dir_n > 20 and dir_ok / dir_n > 0.85


def test_rules_clap_wave_and_determinism():
    rng = np.random.default_rng(5)
    b = BimanualScript(rng, FPS, Workspace())
    b.clap(n_claps=3, period=0.55)
    m, _ = b.build()
    ann = R.RuleAnnotator().annotate(_clip(m))
    assert set(ann.clip) == {"both", "left", "right"}
    assert "Clap" in ann.clip["both"]["instruction"] and "3 times" in ann.clip["both"]["instruction"]
    h = HandScript("right", np.random.default_rng(6), FPS, workspace=Workspace())
    h.wave(duration=2.5, frequency=1.6, amplitude_deg=25)
    mw, _ = h.build()
    aw = R.RuleAnnotator().annotate(_clip({"right": mw}))
    assert "wave" in [e["kind"] for e in aw.facts["events"]["right"]]
    assert "wave" in aw.clip["right"]["instruction"].lower()
    again = R.RuleAnnotator().annotate(_clip({"right": mw}))
    assert again.to_json() == aw.to_json()
    other_key = R.RuleAnnotator().annotate(_clip({"right": mw}, key="another"))
    assert other_key.facts["events"] == aw.facts["events"]  # phrasing may vary by clip, facts do not


def test_zigzag_and_direction_helpers():
    assert K.zigzag_legs(np.zeros(10), 5) == 0
    assert K.zigzag_legs(np.r_[np.linspace(0, 20, 10), np.linspace(20, 0, 10)], 5) == 2
    x = 20 * np.sin(np.linspace(0, 4 * np.pi, 80))  # two periods: four legs (plus the first half-leg)
    assert K.zigzag_legs(x, 10) in (4, 5)
    assert K.zigzag_legs(x + np.random.default_rng(0).normal(0, 0.5, 80), 10) in (4, 5)
    cfg = K.RuleConfig()
    assert K.direction_terms(np.array([-0.1, -0.08, 0.0]), cfg) == ["left", "up"]
    assert K.direction_terms(np.array([0.001, 0.0, 0.01]), cfg) == []


# ---------------------------------------------------------------------------------------------------------
# a small store, the table, resuming
# ---------------------------------------------------------------------------------------------------------


def _frames(T: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 48, 64, 3), dtype=np.uint8)
    return np.repeat(base, T, 0)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    from handvla.data.store import EpisodeWriter

    root = tmp_path_factory.mktemp("annotate_store")
    specs = [(("right",), 12.0), (("left", "right"), 4.0), (("left",), 3.0)]  # 2 + 1 + 1 clips
    with EpisodeWriter(root, fps=FPS, hand_model="builtin", joints=False) as w:
        for i, (hands, secs) in enumerate(specs):
            m, _ = sample_labelled_sequence(np.random.default_rng(i), secs, FPS, hands)
            T = len(next(iter(m.values())))
            w.add_episode(
                Episode(
                    hands=m,
                    camera=CAM,
                    fps=FPS,
                    key=f"test/{i}",
                    video=_frames(T, i),
                    tasks=[f"task {i}"],
                    source=f"src{i % 2}",
                )
            )
    return root


def test_annotate_store_with_rules_is_resumable(store_dir, tmp_path):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(store_dir, root)
    rep = annotate_store(root, R.RuleAnnotator(), limit=2, progress=False)
    assert rep["clips"] == 4 and rep["annotated"] == 2 and rep["failed"] == 0
    table = AnnotationTable(root, "rules")
    # a writer killed mid-line leaves a torn tail: readers ignore it, the next writer cuts it off
    with open(table.path, "ab") as f:
        f.write(b'{"clip_id": "test/9@0-1", "trunc')
    assert len(table.done()) == 2
    rep2 = annotate_store(root, R.RuleAnnotator(), progress=False)
    assert rep2["already_done"] == 2 and rep2["annotated"] == 2
    anns = table.load()
    assert len(anns) == 4 and all(isinstance(a, ClipAnnotation) for a in anns.values())
    assert table.path.read_bytes().endswith(b"\n")
    ep1 = next(a for a in anns.values() if a.episode_key == "test/1")
    assert ep1.hand_keys == ["both", "left", "right"] and len(ep1.seconds) == 7  # 4 s clip, 0.5 s stride
    rep3 = annotate_store(root, R.RuleAnnotator(), progress=False)
    assert rep3["annotated"] == 0 and rep3["already_done"] == 4
    # another segmentation is another set of clips
    rep4 = annotate_store(root, R.RuleAnnotator(), config=SegmentConfig(max_clip_s=5.0), progress=False)
    assert rep4["annotated"] == 5
    # a corrupted line in the middle is an error that names the file and line
    lines = table.path.read_text().splitlines()
    table.path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(InputError, match=r"rules\.jsonl:2"):
        table.load()


# ---------------------------------------------------------------------------------------------------------
# the fake OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------------------------


class FakeVLM:
    """A chat-completions server on 127.0.0.1 that answers from a script of behaviours, one per request:
    'ok', 'garbage' (content that is not JSON), 'body' (an HTTP body that is not JSON), 'short' (JSON with
    missing windows), '429', '500', '401', 'sleep' (answers after the client gave up)."""

    def __init__(self, script=(), default="ok", sleep_s=1.0):
        self.script = list(script)
        self.default = default
        self.sleep_s = sleep_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.times.append(time.monotonic())
                    action = fake.script.pop(0) if fake.script else fake.default
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if action in ("429", "500", "401"):
                    return self._send(
                        int(action), {"error": action}, {"Retry-After": "0.05"} if action == "429" else {}
                    )
                if action == "sleep":
                    time.sleep(fake.sleep_s)
                    action = "ok"
                if action == "body":
                    return self._raw(200, b"<html>gateway says hi</html>")
                content = (
                    fake.answer(body, short=action == "short")
                    if action != "garbage"
                    else "Sure! The hand moves left."
                )
                return self._send(
                    200,
                    {
                        "choices": [{"message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    },
                )

            def _send(self, code, obj, headers=None):
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code, data, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def answer(body: dict, short: bool = False) -> str:
        text = body["messages"][1]["content"][0]["text"]
        keys = json.loads(re.search(r"Hand keys to answer for: (\[.*?\])", text).group(1))
        windows = json.loads(re.search(r"answer for each in this order: (\[.*?\]\])", text).group(1))
        if short:
            windows = windows[:-1]
        return json.dumps(
            {
                "clip": {k: {"instruction": f"Do it with {k}.", "summary": f"The {k} acts."} for k in keys},
                "seconds": [
                    {
                        "start_s": a,
                        "end_s": b,
                        **{
                            k: {"instruction": f"Move {k} at {a}.", "description": f"{k} moves at {a}."}
                            for k in keys
                        },
                    }
                    for a, b in windows
                ],
            }
        )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vlm():
    servers = []

    def make(*a, **kw):
        s = FakeVLM(*a, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _cfg(url, **kw) -> OpenAIConfig:
    base = dict(
        url=url,
        model="fake-vlm",
        timeout_s=5.0,
        max_retries=2,
        backoff_s=0.01,
        max_backoff_s=0.2,
        include_kinematics=False,
    )
    base.update(kw)
    return OpenAIConfig(**base)


def test_rate_limiter_spaces_request_starts():
    from handvla.language.annotate.openai_backend import RateLimiter

    lim = RateLimiter(20.0)
    starts = []

    def go():
        lim.acquire()
        starts.append(time.monotonic())

    threads = [threading.Thread(target=go) for _ in range(6)]
    t_begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the k-th start can come no earlier than k slots (50 ms each) after the first could; a busy machine
    # only delays starts, so this bound holds however the threads are scheduled
    s = sorted(starts)
    assert all(s[k] >= t_begin + k * 0.05 - 1e-3 for k in range(6)), np.array(s) - t_begin


def _store_clip(store_dir, i=0):
    from handvla.data.store import EpisodeStore

    store = EpisodeStore(store_dir)
    cfg = SegmentConfig()
    spec, _ = store_clips(store, cfg)[i]
    return load_clip(store, spec, cfg, with_frames=True)


def test_openai_success_sends_images_and_parses_json(vlm, store_dir, tmp_path, monkeypatch):
    server = vlm()
    monkeypatch.setenv("HANDVLA_VLM_API_KEY", "sk-test")
    cfg = OpenAIConfig.from_env(url=server.url, model="fake-vlm", include_kinematics=True)
    ann = OpenAIAnnotator(cfg, cache_dir=tmp_path / "cache").annotate(_store_clip(store_dir))
    assert ann.backend == "openai" and ann.clip["right"]["instruction"] == "Do it with right."
    assert (
        len(ann.seconds) == 19 and ann.seconds[1].text["right"]["instruction"] == "Move right at 0.533."
    )  # frame 8 of 15 fps
    body = server.requests[0]
    assert body["model"] == "fake-vlm" and body["response_format"] == {"type": "json_object"}
    images = [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == 20  # 10 s clip at 2 FPS
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (64, 48)
    assert "Measured hand motion" in body["messages"][1]["content"][0]["text"]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_openai_garbage_is_retried_then_recorded_as_failure(vlm, store_dir, tmp_path):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(store_dir, root)
    # clip 1 gets garbage 3 times (1 + 2 retries) and is given up; the others succeed; with one worker the
    # requests come in clip order
    server = vlm(script=["ok", "garbage", "body", "short"])
    ann = OpenAIAnnotator(_cfg(server.url), cache_dir=tmp_path / "cache")
    rep = annotate_store(root, ann, workers=1, progress=False)
    assert rep["annotated"] == 3 and rep["failed"] == 1
    assert len(server.requests) == 6
    stats = rep["annotator"]
    assert stats["garbage"] == 3 and stats["retries"] == 2 and stats["failures"] == 1
    table = AnnotationTable(root, "openai")
    fails = table.failures()
    assert len(fails) == 1 and next(iter(fails.values()))["kind"] == "garbage"
    assert len(table.done()) == 3 and next(iter(fails)) not in table.done()
    # a rerun retries only the failed clip (the others are in the table); it now succeeds
    rep2 = annotate_store(
        root, OpenAIAnnotator(_cfg(server.url), cache_dir=tmp_path / "cache"), progress=False
    )
    assert rep2["annotated"] == 1 and rep2["already_done"] == 3 and len(server.requests) == 7
    assert table.failures() == {}


def test_openai_timeout_and_429_backoff(vlm, store_dir, tmp_path):
    clip = _store_clip(store_dir, 2)
    server = vlm(script=["sleep", "429", "500"], sleep_s=0.6)
    t0 = time.monotonic()
    a = OpenAIAnnotator(_cfg(server.url, timeout_s=0.3, max_retries=3), cache_dir=None)
    ann = a.annotate(clip)
    dt = time.monotonic() - t0
    s = a.stats()
    assert ann.clip["both"]["instruction"] == "Do it with both."
    assert (
        s["timeouts"] == 1
        and s["http_429"] == 1
        and s["http_5xx"] == 1
        and s["retries"] == 3
        and s["requests"] == 4
    )
    assert s["backoff_wait_s"] >= 0.05  # Retry-After of the 429 honoured
    assert dt >= 0.3 + 0.05
    # every attempt times out: a failure after 1 + max_retries requests
    slow = vlm(default="sleep", sleep_s=0.5)
    b = OpenAIAnnotator(_cfg(slow.url, timeout_s=0.2, max_retries=1), cache_dir=None)
    with pytest.raises(AnnotationFailure) as e:
        b.annotate(clip)
    assert e.value.kind == "timeout" and e.value.attempts == 2 and len(slow.requests) == 2


def test_openai_cache_makes_reruns_free_and_rate_limit(vlm, store_dir, tmp_path):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(store_dir, root)
    server = vlm()
    cache = tmp_path / "cache"
    rep = annotate_store(
        root, OpenAIAnnotator(_cfg(server.url, rate_per_s=20.0), cache_dir=cache), workers=3, progress=False
    )
    assert rep["annotated"] == 4 and len(server.requests) == 4
    gaps = np.diff(sorted(server.times))
    assert gaps.min() >= 0.04  # 20 requests/s: starts at least 50 ms apart (less the clock's jitter)
    first = AnnotationTable(root, "openai").load()
    # the table is lost: everything is annotated again, but from the cache, without a request
    (root / "meta/annotations/openai.jsonl").unlink()
    rep2 = annotate_store(root, OpenAIAnnotator(_cfg(server.url), cache_dir=cache), workers=2, progress=False)
    assert rep2["annotated"] == 4 and rep2["annotator"]["cache_hits"] == 4 and len(server.requests) == 4
    again = AnnotationTable(root, "openai").load()
    assert {k: v.clip for k, v in again.items()} == {k: v.clip for k, v in first.items()}
    # a different model is a different request: no cache hit
    other = OpenAIAnnotator(_cfg(server.url, model="other-vlm"), cache_dir=cache)
    other.annotate(_store_clip(store_dir, 3))
    assert len(server.requests) == 5


def test_openai_auth_error_stops_the_run_and_config_checks(vlm, store_dir, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(store_dir, root)
    server = vlm(default="401")
    with pytest.raises(ConfigError, match="HTTP 401"):
        annotate_store(root, OpenAIAnnotator(_cfg(server.url), cache_dir=None), progress=False)
    assert len(server.requests) <= 2
    monkeypatch.delenv("HANDVLA_VLM_URL", raising=False)
    with pytest.raises(ConfigError, match="HANDVLA_VLM_URL"):
        OpenAIConfig.from_env(model="m")
    assert _cfg("http://h:1/v1/").endpoint == "http://h:1/v1/chat/completions"
    assert _cfg("http://h:1/v1/chat/completions").endpoint == "http://h:1/v1/chat/completions"


def test_parse_reply_accepts_fenced_json_and_rejects_incomplete():
    windows = [(0.0, 1.0), (0.5, 1.5)]
    good = {
        "clip": {"right": {"instruction": "Lift it.", "summary": "It is lifted."}},
        "seconds": [{"right": {"instruction": "Go.", "description": "Goes."}}] * 2,
    }
    clip, secs = parse_reply("```json\n" + json.dumps(good) + "\n```", ["right"], windows, "test")
    assert clip["right"]["instruction"] == "Lift it." and len(secs) == 2 and secs[1].start_s == 0.5
    for bad in (
        "nope",
        json.dumps({**good, "seconds": good["seconds"][:1]}),
        json.dumps({**good, "clip": {}}),
    ):
        with pytest.raises(InputError):
            parse_reply(bad, ["right"], windows, "test")
    with pytest.raises(InputError):  # text for 'left' missing
        parse_reply(json.dumps(good), ["left", "right"], windows, "test")


def test_handworld_objects_targets_and_grip(tmp_path):
    """On HandWorld episodes (ground truth: objects, target, grip per frame) read back from a store."""
    import torch

    from handvla.data.store import EpisodeStore
    from handvla.synth.handworld.episodes import HandWorldConfig, generate_episodes

    torch.set_num_threads(1)
    cfg = HandWorldConfig(width=32, height=24, seconds=5.0, shadows=False, rigs=("ego",))
    generate_episodes(2, tmp_path / "hw", seed=0, config=cfg, progress=False)  # episode 0: a place task
    store = EpisodeStore(tmp_path / "hw")
    seg = SegmentConfig()
    spec, _ = store_clips(store, seg, [0])[0]
    clip = load_clip(store, spec, seg, with_frames=False)
    gt = store.load_episode(0, with_video=False).ground_truth
    target = gt["targets"][0]
    names = [o.name for o in clip.objects]
    assert f"{target['colour']} {target['noun']}" in names
    obj = clip.objects[names.index(f"{target['colour']} {target['noun']}")]
    np.testing.assert_allclose(obj.positions_m[0], target["initial_camera"], atol=1e-4)
    ann = R.RuleAnnotator()
    info = ann.analyse(clip)
    side = target["hand"]
    assert info["targets"][side] == obj.name
    grip = np.asarray(gt["grip_closed"][side], bool)
    assert np.mean(info["tracks"][side].closed == grip) > 0.9
    text = ann.annotate(clip).clip[side]["instruction"]
    assert obj.name in text


def test_dataset_action_labels_become_the_clip_instruction(tmp_path):
    """A source's own action label (FPHA's 'flip_pages' folder) reaches the annotation as the clip's
    high-level instruction ("Flip the pages."); the motion still gives the summary and the per-second texts,
    and an episode without a label keeps the kinematic instruction."""
    from handvla.data.store import EpisodeWriter
    from handvla.ingest.sources.base import action_annotation
    from handvla.language.instructions import build_instructions, read_manifest

    root = tmp_path / "s"
    with EpisodeWriter(root, fps=FPS, hand_model="builtin", joints=False, camera=None) as w:
        for i, ann in enumerate([action_annotation("flip_pages"), {}]):
            m, _ = sample_labelled_sequence(np.random.default_rng(40 + i), 4.0, FPS, ("right",))
            w.add_episode(
                Episode(hands=m, camera=CAM, fps=FPS, key=f"fpha/{i}", tasks=["flip the pages"],
                        source="fpha", annotations=ann)
            )  # fmt: skip
    annotate_store(root, R.RuleAnnotator(), progress=False)
    anns = AnnotationTable(root, "rules").load()
    labelled = [a for a in anns.values() if a.episode_key == "fpha/0"]
    plain = [a for a in anns.values() if a.episode_key == "fpha/1"]
    assert labelled and plain
    for a in labelled:
        assert a.clip["right"]["instruction"] == "Flip the pages."
        assert a.facts["action"] == "flip the pages" and a.facts["kinematic_instruction"]["right"]
        assert "flip" not in a.clip["right"]["summary"].lower()  # the summary describes the motion
        assert all("flip" not in s.text["right"]["instruction"].lower() for s in a.seconds)
    for a in plain:
        assert "flip" not in a.clip["right"]["instruction"].lower() and "action" not in a.facts
    # the instructions built from the store carry the label
    build_instructions([root], tmp_path / "m.jsonl", progress=False)
    gen = [r for r in read_manifest(tmp_path / "m.jsonl") if r["task_type"] == "generation"]
    assert any("flip the pages" in r["prompt"].lower() for r in gen if r["episode_key"] == "fpha/0")
