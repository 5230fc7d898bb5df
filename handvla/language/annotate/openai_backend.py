"""Annotation by a vision-language model behind an OpenAI-compatible chat-completions endpoint.

One request per clip (the clip's 2 FPS frames as base64 JPEG data URLs, and every per-second window of the
clip in the same request), asking for strict JSON. Standard library only (``urllib``); concurrency comes
from the caller's threads (``annotate_store(..., workers=N)``), shared across them are:
- a rate limit (requests started per second),
- retries with exponential backoff and jitter on timeouts, connection errors, HTTP 408/429/5xx (honouring
  ``Retry-After``) and on replies that are not the JSON asked for; after ``max_retries`` the clip is
  recorded as a failure (``AnnotationFailure``) and skipped;
- a content-addressed reply cache (``cache.ResponseCache``): a rerun sends nothing for clips answered
  before, even if the annotation table was lost.
HTTP 401/403/404 stop the run (a wrong key, model or URL fails every clip the same way).

Configuration: ``OpenAIConfig`` or the environment variables HANDVLA_VLM_URL (the base URL, e.g.
``http://localhost:8000/v1``, or the full ``.../chat/completions`` URL), HANDVLA_VLM_MODEL and
HANDVLA_VLM_API_KEY (optional for local servers).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from handvla.config import ConfigModel
from handvla.errors import ConfigError, InputError
from handvla.language.annotate.base import (
    HAND_KEYS,
    AnnotationFailure,
    Annotator,
    Clip,
    ClipAnnotation,
    SecondText,
    check_text,
)
from handvla.language.annotate.cache import ResponseCache, request_key
from handvla.language.annotate.rules import RuleAnnotator

ENV_URL, ENV_MODEL, ENV_KEY = "HANDVLA_VLM_URL", "HANDVLA_VLM_MODEL", "HANDVLA_VLM_API_KEY"
#: bump when the prompt changes meaningfully (it is part of every request, hence of the cache key)
PROMPT_VERSION = 1

SYSTEM_PROMPT = """You annotate short video clips of human hands manipulating objects, for training a model \
that turns instructions into hand motion. You see frames sampled at 2 per second with their times.
Directions are relative to the CAMERA: left/right and up/down as seen in the image, and towards/away \
from the camera. Be concrete: name objects by colour and shape, say which fingers or hand parts touch \
them, say whether each hand is in contact with something, and describe how the hand moves in the image.
Answer with ONE JSON object and nothing else, exactly in this form:
{"clip": {HAND: {"instruction": "...", "summary": "..."}, ...},
 "seconds": [{"start_s": S, "end_s": E, HAND: {"instruction": "...", "description": "..."}, ...}, ...]}
where HAND is each of the hand keys asked for ("both" = the two hands together, "left", "right").
"instruction" is an imperative sentence a person could follow ("Pick up the red cup with your right hand."); \
"summary" is one or two sentences on what happens in the whole clip; each entry of "seconds" covers the \
1-second window given, in the same order, and its "description" states the contact state, the object \
properties, the hand parts used and the trajectory relative to the camera during that second."""


class OpenAIConfig(ConfigModel):
    """Endpoint, model and the request policy. Times in seconds."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4  # attempts after the first one
    backoff_s: float = 1.0  # first backoff; doubled per retry, with jitter
    max_backoff_s: float = 60.0
    rate_per_s: float | None = None  # requests started per second over all workers; None = no limit
    max_image_side: int = 448  # frames are downscaled so their longer side is at most this (pixels)
    jpeg_quality: int = 85
    temperature: float = 0.0
    max_tokens: int = 4096
    json_mode: bool = True  # send response_format {"type": "json_object"} (most servers support it)
    include_kinematics: bool = True  # add the rule-based measurements to the prompt as hints
    cache_dir: str | Path | None = None  # None: <store>/meta/annotations/cache/openai (set by the caller)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> OpenAIConfig:
        if not self.url or not re.match(r"^https?://", self.url):
            raise ConfigError(
                f"VLM endpoint URL: expected http(s)://host[:port]/..., got {self.url!r} (--url or ${ENV_URL})"
            )
        if not self.model:
            raise ConfigError(
                f"VLM model name: expected a model name (--model or ${ENV_MODEL}), got {self.model!r}"
            )
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"OpenAIConfig.{name}: expected a positive number of seconds, got {v!r}")
        if int(self.max_retries) != self.max_retries or self.max_retries < 0:
            raise ConfigError(
                f"OpenAIConfig.max_retries: expected a whole number >= 0, got {self.max_retries!r}"
            )
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ConfigError(
                f"OpenAIConfig.rate_per_s: expected a positive number of requests per second, got {self.rate_per_s!r}"
            )
        return self

    @property
    def endpoint(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/chat/completions") else u + "/chat/completions"

    @classmethod
    def from_env(
        cls, url: str | None = None, model: str | None = None, api_key: str | None = None, **kw
    ) -> OpenAIConfig:
        """Arguments win over the environment (HANDVLA_VLM_URL / _MODEL / _API_KEY)."""
        return cls(
            url=url or os.environ.get(ENV_URL, ""),
            model=model or os.environ.get(ENV_MODEL, ""),
            api_key=api_key or os.environ.get(ENV_KEY) or None,
            **kw,
        )


class RateLimiter:
    """At most ``rate`` request starts per second over all threads (evenly spaced)."""

    def __init__(self, rate: float | None):
        self.interval = 0.0 if not rate else 1.0 / float(rate)
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        if self.interval <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            t = max(now, self._next)
            self._next = t + self.interval
        wait = t - now
        if wait > 0:
            time.sleep(wait)
        return max(wait, 0.0)


def encode_frame(frame: np.ndarray, max_side: int, quality: int) -> str:
    """(H, W, 3) uint8 RGB -> 'data:image/jpeg;base64,...' (downscaled to ``max_side``; deterministic)."""

    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), optimize=False)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Retry(Exception):
    """A failed attempt worth retrying; ``kind`` names the cause, ``wait_s`` a server-given minimum wait."""

    def __init__(self, kind: str, message: str, wait_s: float = 0.0):
        super().__init__(message)
        self.kind, self.wait_s = kind, wait_s


def parse_reply(
    text: str, hand_keys: list[str], windows: list[tuple[float, float]], where: str
) -> tuple[dict, list[SecondText]]:
    """The model's reply text -> (clip text, per-second text), or InputError if it is not what was asked."""
    s = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", s, re.S)  # some models wrap JSON in a code fence
    if fence:
        s = fence.group(1)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise InputError(where, "content", "a JSON object", f"not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise InputError(where, "content", "a JSON object", type(obj).__name__)
    clip = obj.get("clip")
    secs = obj.get("seconds")
    if not isinstance(secs, list):
        raise InputError(where, "seconds", "a list of per-second entries", type(secs).__name__)
    clip = {
        k: {f: str(v.get(f, "")).strip() for f in ("instruction", "summary")}
        for k, v in (clip or {}).items()
        if k in hand_keys and isinstance(v, dict)
    }
    seconds = []
    for (a, b), entry in zip(windows, secs):
        if not isinstance(entry, dict):
            raise InputError(where, "seconds", "objects", type(entry).__name__)
        text_ = {
            k: {f: str(v.get(f, "")).strip() for f in ("instruction", "description")}
            for k, v in entry.items()
            if k in hand_keys and isinstance(v, dict)
        }
        seconds.append(SecondText(a, b, text_))
    check_text(clip, seconds, hand_keys, where, num_windows=len(windows))
    if len(secs) != len(windows):
        raise InputError(where, "seconds", f"{len(windows)} entries", str(len(secs)))
    return clip, seconds


class OpenAIAnnotator(Annotator):
    """Backend name 'openai': a VLM writes the text (see the module doc for the request policy)."""

    name = "openai"
    needs_frames = True

    def __init__(self, config: OpenAIConfig, cache_dir: str | Path | None = None):
        self.config = config
        root = cache_dir or config.cache_dir
        self.cache = ResponseCache(root) if root is not None else None
        self.limiter = RateLimiter(config.rate_per_s)
        self._rules = None
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "requests": 0,
            "cache_hits": 0,
            "retries": 0,
            "failures": 0,
            "http_429": 0,
            "http_5xx": 0,
            "timeouts": 0,
            "garbage": 0,
            "connection_errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "rate_wait_s": 0.0,
            "backoff_wait_s": 0.0,
        }
        self._rng = random.Random()

    def _count(self, key: str, n: float = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
        out["rate_wait_s"] = round(out["rate_wait_s"], 3)
        out["backoff_wait_s"] = round(out["backoff_wait_s"], 3)
        out["model"] = self.config.model
        out["endpoint"] = self.config.endpoint
        return out

    # -- the request -------------------------------------------------------------------------------------
    def _hints(self, clip: Clip) -> str:
        """The rule-based measurements, as short lines (camera-frame directions, grip, contact)."""

        if self._rules is None:
            self._rules = RuleAnnotator()
        info = self._rules.analyse(clip)
        t0 = clip.spec.start_s
        lines = []
        for (a, b), wf in zip(clip.windows_s, info["windows"]):
            parts = []
            for s in ("left", "right"):
                f = wf.get(s)
                if not f:
                    continue
                if not f.get("visible"):
                    parts.append(f"{s}: not visible")
                    continue
                d = "+".join(f["direction"]) or "still"
                extra = [
                    f"grip {f['grip']}" + (f" ({f['grip_change']})" if f["grip_change"] else ""),
                    f"shape {f['shape']}",
                ]
                if f.get("holding"):
                    extra.append(f"holding {f['holding']}")
                elif f.get("contact"):
                    extra.append(f"touching {f['contact']}")
                parts.append(f"{s}: {d} {round(f['distance_m'] * 100)} cm, " + ", ".join(extra))
            lines.append(f"  {a - t0:.1f}-{b - t0:.1f} s: " + "; ".join(parts))
        return "\n".join(lines)

    def build_request(self, clip: Clip) -> dict[str, Any]:
        """The chat-completions body for a clip (deterministic: the cache key depends only on the clip)."""
        cfg = self.config
        keys = clip.hand_keys
        t0 = clip.spec.start_s
        windows = [[round(a - t0, 3), round(b - t0, 3)] for a, b in clip.windows_s]
        seen = " and ".join(s for s in ("left", "right") if s in clip.hands) + (
            " hands" if len(clip.hands) == 2 else " hand only"
        )
        text = [
            f"Clip of {clip.spec.duration_s:.1f} s. Hands seen: {seen}.",
            f"Hand keys to answer for: {json.dumps(keys)}.",
            f"Per-second windows (seconds from the clip start), answer for each in this order: {json.dumps(windows)}.",
        ]
        if clip.tasks and clip.tasks[0]:
            text.append(f"The recording's task, as given by its source: {clip.tasks[0]!r}.")
        if clip.objects:
            text.append("Objects known in the scene: " + ", ".join(o.name for o in clip.objects) + ".")
        if cfg.include_kinematics and clip.hands:
            text.append(
                "Measured hand motion (camera frame; use it, but trust the images for objects):\n"
                + self._hints(clip)
            )
        content: list[dict[str, Any]] = [{"type": "text", "text": "\n".join(text)}]
        if clip.frames is not None:
            for t, frame in zip(clip.frame_times_s, clip.frames):
                content.append({"type": "text", "text": f"Frame at t = {t - t0:.1f} s:"})
                content.append(
                    {
                        "type": "image_url",
                        "image_url": {"url": encode_frame(frame, cfg.max_image_side, cfg.jpeg_quality)},
                    }
                )
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT + f"\n(prompt v{PROMPT_VERSION})"},
                {"role": "user", "content": content},
            ],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(cfg.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP attempt: the decoded JSON reply, or _Retry / ConfigError / AnnotationFailure."""
        cfg = self.config
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        req = urllib.request.Request(cfg.endpoint, data=data, headers=headers, method="POST")
        self._count("rate_wait_s", self.limiter.acquire())
        self._count("requests")
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            code = e.code
            detail = _safe_read(e)
            if code == 429:
                self._count("http_429")
                raise _Retry("http_429", f"HTTP 429 {detail}", _retry_after(e.headers)) from None
            if code >= 500 or code == 408:
                self._count("http_5xx")
                raise _Retry(f"http_{code}", f"HTTP {code} {detail}", _retry_after(e.headers)) from None
            if code in (401, 403, 404):
                raise ConfigError(
                    f"VLM endpoint {cfg.endpoint} answered HTTP {code} ({detail}): check --url, --model and the API key "
                    f"(${ENV_KEY})"
                ) from None
            raise AnnotationFailure(f"HTTP {code} {detail}", 1, f"http_{code}") from None
        except TimeoutError as e:  # socket.timeout is TimeoutError since Python 3.10
            self._count("timeouts")
            raise _Retry("timeout", f"no reply within {cfg.timeout_s} s ({e})") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                self._count("timeouts")
                raise _Retry("timeout", f"no reply within {cfg.timeout_s} s") from None
            self._count("connection_errors")
            raise _Retry("connection", f"cannot reach {cfg.endpoint}: {e.reason}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            self._count("connection_errors")
            raise _Retry("connection", f"connection to {cfg.endpoint} failed: {e!r}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._count("garbage")
            raise _Retry("garbage", f"reply body is not JSON: {raw[:120]!r}") from None

    def _content(self, reply: Any) -> str:
        try:
            msg = reply["choices"][0]["message"]
            content = msg["content"]
        except (KeyError, IndexError, TypeError):
            self._count("garbage")
            raise _Retry("garbage", f"reply without choices[0].message.content: {str(reply)[:160]}") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            self._count("garbage")
            raise _Retry("garbage", "message content is not text")
        usage = reply.get("usage") or {}
        if isinstance(usage, dict):
            self._count("prompt_tokens", int(usage.get("prompt_tokens") or 0))
            self._count("completion_tokens", int(usage.get("completion_tokens") or 0))
        return content

    def _backoff(self, attempt: int, min_wait: float) -> None:
        cfg = self.config
        cap = min(cfg.max_backoff_s, cfg.backoff_s * (2**attempt))
        with self._lock:
            jitter = self._rng.uniform(0.0, cap / 2)
        wait = max(cap / 2 + jitter, min(min_wait, cfg.max_backoff_s))
        self._count("backoff_wait_s", wait)
        time.sleep(wait)

    def annotate(self, clip: Clip) -> ClipAnnotation:
        keys = clip.hand_keys
        where = f"VLM reply for {clip.clip_id}"
        if not keys:
            raise AnnotationFailure(f"{clip.clip_id}: no hand is seen in the clip", 0, "no_hands")
        body = self.build_request(clip)
        key = request_key(self.config.endpoint, body)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            try:
                clip_txt, seconds = parse_reply(cached["content"], keys, clip.windows_s, where + " (cached)")
                self._count("cache_hits")
                return self._annotation(clip, clip_txt, seconds, key, cached=True)
            except (InputError, KeyError, TypeError):
                pass  # a stale or damaged entry: ask again
        last: _Retry | None = None
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
                self._backoff(attempt - 1, last.wait_s if last else 0.0)
            try:
                content = self._content(self._post(body))
                try:
                    clip_txt, seconds = parse_reply(content, keys, clip.windows_s, where)
                except InputError as e:
                    self._count("garbage")
                    raise _Retry("garbage", str(e)) from None
            except _Retry as r:
                last = r
                continue
            except AnnotationFailure as f:
                self._count("failures")
                f.attempts = attempt + 1
                raise
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "content": content,
                        "model": self.config.model,
                        "endpoint": self.config.endpoint,
                        "time": time.time(),
                    },
                )
            return self._annotation(clip, clip_txt, seconds, key, cached=False)
        self._count("failures")
        assert last is not None
        raise AnnotationFailure(f"gave up after {attempts} attempts: {last}", attempts, last.kind)

    def _annotation(
        self, clip: Clip, clip_txt: dict, seconds: list[SecondText], key: str, cached: bool
    ) -> ClipAnnotation:
        facts = {
            "model": self.config.model,
            "request_sha256": key,
            "cached": cached,
            "frames": 0 if clip.frames is None else len(clip.frames),
        }
        return ClipAnnotation.of_clip(clip, self.name, {k: clip_txt[k] for k in HAND_KEYS if k in clip_txt}, seconds, facts)


def _safe_read(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(200).decode("utf-8", "replace").strip().replace("\n", " ")
    except Exception:  # noqa: BLE001 - the body of an error reply is only decoration
        return ""


def _retry_after(headers) -> float:
    """Seconds from a Retry-After header (a number; HTTP dates are ignored), 0 if none."""
    try:
        v = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(v)) if v is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
