"""Text from facts and events: varied phrasings chosen by a stable hash of the clip, for one hand, two
hands, a clip or a window."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from handvla.language.annotate.base import (
    KnownObject,
)
from handvla.language.annotate.events import Event

# Text
# ---------------------------------------------------------------------------------------------------------

_DIR_WORDS = {
    "left": ("to the left", "leftwards", "towards the left"),
    "right": ("to the right", "rightwards", "towards the right"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
    "towards": ("towards the camera", "closer to the camera"),
    "away": ("away from the camera", "further from the camera"),
}
_SHAPE_WORDS = {
    "open": ("open, fingers extended", "open with the fingers straight"),
    "relaxed": ("relaxed, fingers slightly bent", "loosely curled"),
    "grip": ("closed in a grip", "curled into a grip"),
    "fist": ("clenched in a fist", "closed into a fist"),
    "pinch": ("pinching with thumb and index finger", "in a thumb-index pinch"),
    "point": ("pointing with the index finger", "extending only the index finger"),
}
_PARTS = {
    "open": "all five fingers extended",
    "relaxed": "the fingers gently bent",
    "grip": "the palm and all fingers wrapped around",
    "fist": "all fingers folded into the palm",
    "pinch": "the thumb and index fingertips",
    "point": "the index finger",
}


def _choice(rng: random.Random, options) -> str:
    return options[rng.randrange(len(options))]


def direction_phrase(terms: list[str] | tuple[str, ...], rng: random.Random) -> str:
    """['left', 'up'] -> 'to the left and up' (first term is the main one)."""
    words = [_choice(rng, _DIR_WORDS[t]) for t in terms]
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _cm(m: float) -> str:
    return f"{max(1, round(m * 100))} cm"


def _obj_phrase(objects_by_name: dict[str, KnownObject], name: str, detailed: bool) -> str:
    """'the red cube' or with properties, 'the small red cube'."""
    o = objects_by_name.get(name)
    if not detailed or o is None:
        return f"the {name}"
    size = o.properties.get("size")
    return f"the {size} {name}" if size and size not in name else f"the {name}"


@dataclass
class _Voice:
    """How to name a hand: possessive for instructions, third person for descriptions."""

    own: str  # 'your right hand'
    third: str  # 'the right hand'
    plural: bool = False


def _voice(hand_key: str) -> _Voice:
    if hand_key == "both":
        return _Voice("both hands", "both hands", True)
    return _Voice(f"your {hand_key} hand", f"the {hand_key} hand")


def _s(v: _Voice, verb: str) -> str:
    """Third-person agreement of the first word: 'moves', 'lets go of' / 'move' for both hands."""
    if v.plural:
        return verb
    head, _, rest = verb.partition(" ")
    if head.endswith(("s", "sh", "ch", "x")):
        head += "es"
    elif head.endswith("y") and head[-2:] not in ("ay", "ey", "oy", "uy"):
        head = head[:-1] + "ies"
    else:
        head += "s"
    return f"{head} {rest}" if rest else head


def _event_clause(ev: Event, mood: str, v: _Voice, rng: random.Random, last_obj: list, objs: dict) -> str:
    """One event as a clause: mood 'imp' (imperative, no subject) or 'third' (verb agreeing with v)."""

    def verb(base: str) -> str:
        return base if mood == "imp" else _s(v, base)

    def obj_ref(name: str) -> str:
        if last_obj and last_obj[0] == name:
            return "it"
        last_obj[:] = [name]
        return _obj_phrase(objs, name, detailed=mood == "third")

    d = direction_phrase(ev.direction, rng)
    dist = f" about {_cm(ev.distance_m)}" if mood == "third" and ev.distance_m > 0 else ""
    if ev.kind == "reach":
        return (
            f"{verb(_choice(rng, ('reach', 'move')))} {('for' if rng.random() < 0.5 else 'towards')} {obj_ref(ev.obj)}"
            + (f" ({d})" if mood == "third" and d else "")
        )
    if ev.kind == "carry":
        if ev.direction and ev.direction[0] == "up":
            return f"{verb(_choice(rng, ('lift', 'raise')))} {obj_ref(ev.obj)}{dist}"
        if ev.direction and ev.direction[0] == "down":
            return f"{verb(_choice(rng, ('lower', 'put down')))} {obj_ref(ev.obj)}{dist}"
        return f"{verb(_choice(rng, ('carry', 'move')))} {obj_ref(ev.obj)}{dist} {d}".rstrip()
    if ev.kind == "push":
        return f"{verb('push')} {obj_ref(ev.obj)}{dist} {d}".rstrip()
    if ev.kind == "move":
        if mood == "imp":
            hand = "your hands" if v.plural else "the hand"
            return f"{verb(_choice(rng, ('move', 'shift', 'bring')))} {hand} {d}".rstrip()
        return f"{verb(_choice(rng, ('move', 'travel')))}{dist} {d}".rstrip()
    if ev.kind == "grasp":
        if ev.shape == "pinch":
            return f"{verb('pinch')} {obj_ref(ev.obj)} between thumb and index finger"
        return f"{verb(_choice(rng, ('grasp', 'grab', 'take hold of')))} {obj_ref(ev.obj)}"
    if ev.kind == "release":
        return f"{verb(_choice(rng, ('release', 'let go of')))} {obj_ref(ev.obj)}"
    if ev.kind == "close":
        if ev.shape == "pinch":
            return f"{verb('pinch')} the thumb and index finger together"
        if ev.shape == "fist":
            return f"{verb(_choice(rng, ('make', 'form')))} a fist"
        return f"{verb('close')} the fingers into a grip"
    if ev.kind == "open":
        return f"{verb(_choice(rng, ('open', 'spread')))} the fingers"
    if ev.kind == "rotate":
        sense = f" {ev.sense}" if ev.sense else ""
        deg = f" by about {int(round(ev.angle_deg / 10.0) * 10)} degrees" if mood == "third" else ""
        return f"{verb(_choice(rng, ('turn', 'rotate')))} the wrist{sense}{deg}"
    if ev.kind == "point":
        if ev.obj:
            return f"{verb('point')} at {obj_ref(ev.obj)} with the index finger"
        return f"{verb('point')} with the index finger"
    if ev.kind == "wave":
        return f"{verb('wave')}" + (" the hand" if mood == "imp" else "")
    return f"{verb('hold')} still"


def _join(clauses: list[str]) -> str:
    if not clauses:
        return ""
    if len(clauses) == 1:
        return clauses[0]
    return (
        ", ".join(clauses[:-1]) + ", then " + clauses[-1]
        if len(clauses) > 2
        else f"{clauses[0]} and then {clauses[1]}"
    )


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _compress(events: list[Event], limit: int) -> list[Event]:
    """Keep the events worth naming: merge repeats, prefer grasps / carries over plain moves."""
    out: list[Event] = []
    for ev in events:
        if (
            out
            and ev.kind == out[-1].kind
            and ev.obj == out[-1].obj
            and ev.kind in ("move", "wave", "rotate", "point")
        ):
            out[-1].end = ev.end
            continue
        out.append(ev)
    if len(out) <= limit:
        return out
    rank = {
        "grasp": 0,
        "release": 1,
        "carry": 2,
        "reach": 3,
        "push": 3,
        "point": 3,
        "wave": 3,
        "close": 4,
        "open": 4,
        "rotate": 5,
        "move": 6,
    }

    def score(i: int) -> tuple[float, int]:
        r = rank.get(out[i].kind, 9)
        if out[i].kind == "move" and out[i].distance_m >= 0.1:
            r = 3.5  # a long movement is part of the story
        return (r, i)

    keep = sorted(sorted(range(len(out)), key=score)[:limit])
    return [out[i] for i in keep]


def clip_text(
    events: list[Event],
    hand_key: str,
    rng: random.Random,
    objs: dict[str, KnownObject],
    limit: int = 4,
    summary_limit: int = 6,
) -> dict[str, str]:
    """Clip-level imperative instruction (the ``limit`` main events) and third-person summary (up to
    ``summary_limit`` events) for one hand."""
    v = _voice(hand_key)
    evs = _compress([dataclasses.replace(e) for e in events], limit)
    evs_sum = _compress([dataclasses.replace(e) for e in events], summary_limit)
    if not evs:
        inst = _choice(
            rng, ("Keep {own} still.", "Hold {own} steady in place.", "Rest {own} without moving it.")
        )
        summ = _choice(rng, ("{Third} stays almost still.", "{Third} barely moves during the clip."))
        return {"instruction": inst.format(own=v.own), "summary": summ.format(Third=_cap(v.third))}
    last: list = []
    imp = [_event_clause(ev, "imp", v, rng, last, objs) for ev in evs]
    last = []
    third = [_event_clause(ev, "third", v, rng, last, objs) for ev in evs_sum]
    lead = _choice(rng, ("With {own}, {x}.", "Using {own}, {x}.", "{X} with {own}."))
    inst = lead.format(own=v.own, x=_join(imp), X=_cap(_join(imp)))
    summ = f"{_cap(v.third)} {_join(third)}."
    return {"instruction": inst, "summary": summ}


def window_text(
    f: dict[str, Any], hand_key: str, rng: random.Random, objs: dict[str, KnownObject]
) -> dict[str, str]:
    """Per-second instruction and description for one hand from ``window_facts``."""
    v = _voice(hand_key)
    third = _cap(v.third)
    if not f.get("visible"):
        return {
            "instruction": f"Keep {v.own} out of view.",
            "description": f"{third} is not visible in this second.",
        }
    d = direction_phrase(f["direction"], rng)
    held = f.get("holding")
    # instruction: the main action of the second
    if f.get("wave"):
        inst = _choice(rng, ("Wave {own}.", "Wave {own} from side to side."))
    elif f["grip_change"] == "closing":
        if held:
            inst = (
                "Pinch the {o} with {own}." if f["shape"] == "pinch" else "Grasp the {o} with {own}."
            ).replace("{o}", held)
        elif f["shape"] == "pinch":
            inst = "Pinch the thumb and index finger of {own} together."
        else:
            inst = _choice(rng, ("Close {own}.", "Curl the fingers of {own} into a grip."))
    elif f["grip_change"] == "opening":
        gone = f["held_during"]
        inst = (
            f"Release the {gone[0]} from {{own}}."
            if gone
            else _choice(rng, ("Open {own}.", "Extend the fingers of {own}."))
        )
    elif f["direction"]:
        if held:
            inst = f"Move the {held} {d} with {{own}}."
        elif f.get("approaching"):
            inst = f"Move {{own}} {d} towards the {f['approaching']}."
        else:
            inst = _choice(rng, (f"Move {{own}} {d}.", f"Bring {{own}} {d}.", f"Shift {{own}} {d}."))
    elif f["rotation_deg"] >= 30.0:
        sense = f" {f['rotation_sense']}" if f["rotation_sense"] else ""
        inst = f"Turn the wrist of {{own}}{sense}."
    elif f.get("pointing_at"):
        inst = f"Point at the {f['pointing_at']} with {{own}}."
    elif held:
        inst = f"Keep holding the {held} with {{own}}."
    else:
        inst = _choice(rng, ("Keep {own} still.", "Hold {own} in place."))
    inst = inst.replace("{own}", v.own)
    # description: trajectory, fingers, contact, object properties, hand parts
    parts = []
    if f["direction"]:
        parts.append(f"{third} {_s(v, 'move')} {d} at about {_cm(f['speed_m_s'])} per second")
    else:
        parts.append(
            f"{third} {_choice(rng, (_s(v, 'stay') + ' nearly still', _s(v, 'hold') + ' its position'))}"
        )
    if f.get("wave"):
        parts[-1] += ", waving from side to side"
    elif f["rotation_deg"] >= 30.0:
        sense = f" {f['rotation_sense']}" if f["rotation_sense"] else ""
        parts[-1] += (
            f" while the wrist turns{sense} by about {int(round(f['rotation_deg'] / 10.0) * 10)} degrees"
        )
    fingers = _choice(rng, _SHAPE_WORDS[f["shape"]])
    if f["grip_change"] == "closing":
        parts.append(f"the fingers close until the hand is {fingers}")
    elif f["grip_change"] == "opening":
        parts.append(f"the fingers open until the hand is {fingers}")
    else:
        parts.append(f"the hand is {fingers}")
    if held:
        o = objs.get(held)
        props = _props_text(o) if o else ""
        parts.append(
            f"it holds the {held}{props} with {_PARTS[f['shape']]}" + (" it" if f["shape"] == "grip" else "")
        )
    elif f.get("contact"):
        o = objs.get(f["contact"])
        parts.append(f"it touches the {f['contact']}{_props_text(o) if o else ''} with {_PARTS[f['shape']]}")
    elif f.get("pointing_at"):
        parts.append(f"the index finger points at the {f['pointing_at']}")
    elif f.get("approaching"):
        parts.append(f"it gets closer to the {f['approaching']}")
    elif f.get("nearest") is not None:
        parts.append(
            f"it is not touching anything (nearest object: the {f['nearest']['object']}, {_cm(max(f['nearest']['gap_m'], 0.01))} away)"
        )
    else:
        parts.append("it is not touching anything")
    desc = parts[0] + "; " + "; ".join(parts[1:]) + "."
    return {"instruction": inst, "description": _cap(desc)}


def _props_text(o: KnownObject) -> str:
    bits = [o.properties[k] for k in ("size", "material") if o.properties.get(k)]
    return f" ({', '.join(bits)})" if bits else ""


def pair_window_text(
    fl: dict[str, Any],
    fr: dict[str, Any],
    fp: dict[str, Any],
    rng: random.Random,
    objs: dict[str, KnownObject],
) -> dict[str, str]:
    """Per-second text for both hands together."""
    left = window_text(fl, "left", random.Random(rng.random()), objs)
    right = window_text(fr, "right", random.Random(rng.random()), objs)
    rel = fp.get("relation") if fp.get("visible") else None
    if rel == "approach":
        inst = _choice(rng, ("Bring both hands towards each other.", "Move your hands closer together."))
        lead = "The hands move towards each other"
    elif rel == "apart":
        inst = _choice(rng, ("Move both hands apart.", "Pull your hands away from each other."))
        lead = "The hands move apart"
    else:
        li, ri = left["instruction"].rstrip("."), right["instruction"].rstrip(".")
        inst = f"{li}, and {ri[:1].lower() + ri[1:]}."
        lead = None
    if fp.get("visible"):
        dist = f"the wrists are {_cm(fp['distance_m'])} apart" + (
            " and the hands touch" if fp.get("touching") else ""
        )
    else:
        dist = "one hand is not visible"
    desc = (
        (f"{lead}; {dist}. " if lead else f"{_cap(dist)}. ")
        + left["description"]
        + " "
        + right["description"]
    )
    return {"instruction": inst, "description": desc}


def pair_clip_text(
    ev_l: list[Event],
    ev_r: list[Event],
    pair_clip: dict[str, Any],
    rng: random.Random,
    objs: dict[str, KnownObject],
) -> dict[str, str]:
    """Clip-level text for both hands: claps and joint grasps as one action, otherwise each hand's part."""
    meetings = pair_clip.get("meetings", 0)
    grasped_l = {e.obj for e in ev_l if e.kind == "grasp"}
    grasped_r = {e.obj for e in ev_r if e.kind == "grasp"}
    shared = sorted(grasped_l & grasped_r)
    if meetings >= 2 and not grasped_l and not grasped_r:
        inst = _choice(rng, ("Clap your hands {n} times.", "Clap both hands together {n} times."))
        return {
            "instruction": inst.format(n=meetings),
            "summary": f"Both hands meet in front of the camera {meetings} times, palms facing each other, as in clapping.",
        }
    if shared:
        o = shared[0]
        lifted = any(e.kind == "carry" and e.direction and e.direction[0] == "up" for e in ev_l + ev_r)
        verb = "lift" if lifted else "hold"
        return {
            "instruction": _choice(
                rng, (f"Use both hands to {verb} the {o}.", f"{_cap(verb)} the {o} with both hands.")
            ),
            "summary": f"Both hands close on the {o} from either side and {verb} it together.",
        }
    tl = clip_text(ev_l, "left", random.Random(rng.random()), objs)
    tr = clip_text(ev_r, "right", random.Random(rng.random()), objs)
    li, ri = tl["instruction"].rstrip("."), tr["instruction"].rstrip(".")
    return {
        "instruction": f"{li}; {_choice(rng, ('meanwhile', 'at the same time'))}, {ri[:1].lower() + ri[1:]}.",
        "summary": f"{tl['summary']} {_choice(rng, ('Meanwhile, ', 'At the same time, '))}{tr['summary'][:1].lower() + tr['summary'][1:]}",
    }


# ---------------------------------------------------------------------------------------------------------
