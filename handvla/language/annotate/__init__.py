"""Hierarchical annotation of standardised episodes (UniHand's recipe, docs/being-h0-reference.md s. 7).

- ``segments``: clips of at most 10 s, 2 FPS frame samples, overlapping 1 s windows.
- ``base``: ``Clip`` (what an annotator sees), ``ClipAnnotation`` (clip-level instruction and summary,
  per-second instruction and description, for both hands and each hand), the ``Annotator`` interface.
- ``rules``: the kinematic annotator (default; no model): camera-frame wrist directions, grip and finger
  shapes from the hand model's joints, the two hands, contact with known objects.
- ``openai_backend``: a VLM behind an OpenAI-compatible chat-completions endpoint (stdlib HTTP, retries,
  rate limit, content-addressed reply cache in ``cache``).
- ``table``: the per-backend annotation table beside the store (``meta/annotations/<backend>.jsonl``).
- ``run``: annotating a whole store, in parallel and resumable; ``objects``: known objects from ground truth.
"""

from handvla.language.annotate.base import (
    HAND_KEYS,
    AnnotationFailure,
    Annotator,
    Clip,
    ClipAnnotation,
    KnownObject,
    SecondText,
)
from handvla.language.annotate.kinematics import RuleConfig
from handvla.language.annotate.rules import RuleAnnotator
from handvla.language.annotate.segments import ClipSpec, SegmentConfig, segment_episode
from handvla.language.annotate.table import ANNOTATIONS_DIR, AnnotationTable, load_annotations

__all__ = [
    "ANNOTATIONS_DIR",
    "HAND_KEYS",
    "AnnotationFailure",
    "AnnotationTable",
    "Annotator",
    "Clip",
    "ClipAnnotation",
    "ClipSpec",
    "KnownObject",
    "RuleAnnotator",
    "RuleConfig",
    "SecondText",
    "SegmentConfig",
    "load_annotations",
    "segment_episode",
]
