"""Prompt templates for the three instruction task types (our own wording), and how they are filled.

Task types (docs/being-h0-reference.md section 7):
- ``generation``  (instructed motion generation): image + instruction + duration -> motion;
- ``translation`` (motion translation): image + motion -> text (an instruction or a description);
- ``prediction``  (contextual motion prediction): image + motion history (+ optional goal) -> next motion.

Stores built without video get the motion-only variants (`MOTION_ONLY_TEMPLATES`, no ``{image}``): the same
task types with the instruction / motion / duration / hands and no picture.

Every template states the target duration ({duration} = "2 seconds" and/or {steps} = seconds x fps
frames, the "{15*s}-step" of the reference prompt) and names the hands through placeholders whose wording
matches the hand mode, so a filled prompt never says "both hands moves" or "the left hand are":

    {hands}  the left hand | the right hand | both hands        {Hands} the same, capitalised
    {hands_label} left | right | both                            {s}  verb ending: 's' for one hand, '' for both
    {is}  is | are           {do}  does | do                     {its} its | their
    {image} the image token   {motion} the motion placeholder (the history for prediction, the motion
                              to describe for translation; motion is tokenized at training time)
    {task} the instruction as a sentence   {task_inline} the same without the capital and the full stop
    {goal} the goal instruction (prediction templates with ``needs_goal``)
    {duration} / {steps} / {fps}   the target span;  {history} / {history_steps}  the history span
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from handvla.errors import ConfigError

TASK_TYPES = ("generation", "translation", "prediction")
HAND_MODES = ("both", "left", "right")
IMAGE_TOKEN = "<image>"
MOTION_TOKEN = "<motion>"
#: text a translation template asks for: the instruction, or a description (the clip summary for a whole
#: clip, the per-second description for a 1 s window)
ANSWER_KINDS = ("instruction", "description")


@dataclass(frozen=True)
class Template:
    id: str
    task_type: str
    text: str
    answer: str | None = None  # translation: 'instruction' | 'description'; others: None (motion)
    needs_goal: bool = False  # prediction: the template states the goal

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}


_G = "generation"
_T = "translation"
_P = "prediction"

# fmt: off
_GENERATION = [
    "In {image}, {task_inline}. What is the {steps}-step motion sequence for {hands}?",
    "{image}\nInstruction: {task}\nGenerate {duration} of motion for {hands}.",
    "Here is the scene: {image}. Carry out the following with {hands} in {duration}: {task}",
    "{image} Task: {task} Give the motion of {hands} as {steps} steps.",
    'Look at {image}. Following the instruction "{task}", predict {duration} of motion for {hands}.',
    'Given {image} and the command "{task}", output a {steps}-step trajectory of {hands}.',
    "{image}\nWhat motion should {hands} perform over {duration} to follow this instruction? {task}",
    "The camera sees {image}. Instruction for {hands}: {task} Produce the motion ({duration}, {steps} steps).",
    "{image} Please generate the motion of {hands} that does this within {duration}: {task}",
    "Instruction: {task}\nImage: {image}\nMotion of {hands}, {steps} frames:",
    "In the scene {image}, {hands} must do the following: {task} Write out {duration} of motion.",
    "{image}\nYou control {hands}. {task} Respond with a {steps}-step motion.",
    "From the viewpoint in {image}, plan a {duration} motion of {hands} for: {task}",
    '{image} Act out the instruction "{task}" with {hands}. Length: {steps} steps.',
    'Show how {hands} move{s} to follow "{task}" in {image}, over {duration}.',
    "{image}\nCommand: {task}\nReturn the motion of {hands} for the next {duration}.",
    "Generate {steps} motion steps of {hands} for the instruction below, given {image}.\n{task}",
    '{image} What would the {duration} trajectory of {hands} be when told: "{task}"?',
    "Scene: {image}\nInstruction: {task}\nHands: {hands_label}\nDuration: {duration}\nMotion:",
    "{image}\nMake {hands} follow this instruction for {duration} ({steps} steps at {fps} fps): {task}",
    'Using {image} as context, turn the instruction "{task}" into {duration} of motion for {hands}.',
    "{image} {task} Produce the corresponding {steps}-step motion of {hands}.",
]

_TRANSLATION = [
    ("instruction", "In {image}, {hands} perform{s} this {steps}-step motion: {motion}. What instruction does it follow?"),
    ("description", "{image}\nMotion of {hands} ({duration}): {motion}\nDescribe what {hands} {do}."),
    ("instruction", "Given {image} and the {duration} motion {motion} of {hands}, write the instruction it carries out."),
    ("description", "Describe the following {steps}-step motion of {hands} in {image}: {motion}"),
    ("instruction", "{image} {motion} What command would make {hands} move like this for {duration}?"),
    ("description", "What happens in this {duration} motion of {hands}? Scene: {image}. Motion: {motion}"),
    ("instruction", "Translate this {steps}-step motion of {hands} into an instruction, using {image} for context: {motion}"),
    ("description", "{image}\nHere is {duration} of motion of {hands}: {motion}\nExplain it in words."),
    ("instruction", "Watch {hands} in {image} move as follows for {duration}: {motion}. State the instruction behind it."),
    ("description", "In {image}, {hands} move{s} like this for {steps} steps: {motion}. Describe the movement, the contacts and the hand parts involved."),
    ("instruction", "{motion}\nThe motion above lasts {duration} and belongs to {hands} in {image}. Which instruction produced it?"),
    ("description", "Caption the {duration} motion of {hands} shown here, given the scene {image}: {motion}"),
    ("instruction", "{image} A person moves {hands} for {steps} steps: {motion}. Phrase this as an imperative instruction."),
    ("description", "Summarise in one or two sentences what {hands} {do} in this {duration} motion: {motion} (scene: {image})"),
    ("instruction", "Given the scene {image}, infer the task from this {duration} motion of {hands}: {motion}"),
    ("description", "{image}\n{motion}\nDescribe the {steps}-step motion of {hands} relative to the camera."),
    ("instruction", "Motion ({steps} steps): {motion}\nHands: {hands_label}\nImage: {image}\nInstruction:"),
    ("description", "What {is} {hands} doing over these {duration}? {image} {motion}"),
    ("instruction", "{image} The following motion of {hands} takes {duration}: {motion}. What was the instruction?"),
    ("description", "Narrate the motion of {hands} in {image} for the {duration} shown: {motion}"),
    ("instruction", "Turn this {steps}-step motion of {hands} into the instruction a person would give, given {image}: {motion}"),
    ("description", "{image} Tell me how {hands} move{s} during these {steps} steps: {motion}"),
]

_PREDICTION = [
    (False, "In {image}, {hands} just moved like this for {history}: {motion}. What is the next {steps}-step motion?"),
    (False, "{image}\nPast motion of {hands} ({history}): {motion}\nContinue it for {duration}."),
    (False, "{image} Given the last {history_steps} steps of {hands}, {motion}, predict the following {steps} steps."),
    (False, "Continue the motion of {hands} in {image} for another {duration}: {motion}"),
    (False, "{image}\nHistory: {motion} ({history}, {hands_label})\nNext {duration}:"),
    (False, "Here is how {hands} moved in the previous {history}: {motion}. Scene: {image}. How will {hands} move over the next {duration}?"),
    (False, "{image} Predict the next {steps}-step motion of {hands} after this: {motion}"),
    (False, "Given the scene {image} and the recent motion {motion} of {hands}, what comes in the next {duration}?"),
    (False, "{motion}\nThis is {history} of motion of {hands} in {image}. Extend it by {steps} steps."),
    (False, "{image}\nObserved motion of {hands} over {history_steps} steps: {motion}\nForecast the next {duration} of motion."),
    (False, "In {image}, {hands} {is} in the middle of a movement: {motion}. Generate the next {duration}."),
    (True, "In {image}, {hands} {is} working on this: {goal} The last {history} of motion was {motion}. What are the next {steps} steps?"),
    (True, "{image}\nGoal: {goal}\nMotion of {hands} so far ({history}): {motion}\nContinue for {duration}."),
    (True, '{image} The task is "{goal}" Given the recent motion {motion} of {hands}, predict the following {duration}.'),
    (True, 'Keeping the goal "{goal}" in mind, continue the motion {motion} of {hands} in {image} for {steps} steps.'),
    (True, "{image}\nInstruction: {goal}\nHistory of {hands}: {motion}\nNext {steps}-step motion:"),
    (True, 'Given {image}, {hands} started to follow "{goal}" with this motion: {motion}. How does it continue over the next {duration}?'),
    (True, '{image} To complete the instruction "{goal}", what should {hands} do in the {duration} after {motion}?'),
    (True, "Scene: {image}\nTask: {goal}\nPrevious {history_steps} steps: {motion}\nPredict the next {steps} steps of {hands}."),
    (True, '{image} {Hands} moved like this while following "{goal}": {motion}. Produce the next {duration} of {its} motion.'),
    (True, "{image}\nGoal: {goal}\nContinue this {history} motion of {hands} for {duration}: {motion}"),
    (True, "Goal: {goal}\n{image}\nRecent motion of {hands}: {motion}\nWhat happens in the next {steps} steps?"),
]


# Motion-only variants (stores built without video): the same three task types, no {image}.
_GENERATION_NO_IMAGE = [
    "{task} What is the {steps}-step motion sequence for {hands}?",
    "Instruction: {task}\nGenerate {duration} of motion for {hands}.",
    "{task} Give the motion of {hands} as {steps} steps.",
    'Following the instruction "{task}", predict {duration} of motion for {hands}.',
    'Given the command "{task}", output a {steps}-step trajectory of {hands}.',
    "What motion should {hands} perform over {duration} to follow this instruction? {task}",
    "Please generate the motion of {hands} that does this within {duration}: {task}",
    "Instruction: {task}\nMotion of {hands}, {steps} frames:",
    "You control {hands}. {task} Respond with a {steps}-step motion.",
    "Hands: {hands_label}\nInstruction: {task}\nDuration: {duration}\nMotion:",
]

_TRANSLATION_NO_IMAGE = [
    ("instruction", "{Hands} perform{s} this {steps}-step motion: {motion}. What instruction does it follow?"),
    ("description", "Motion of {hands} ({duration}): {motion}\nDescribe what {hands} {do}."),
    ("instruction", "Given the {duration} motion {motion} of {hands}, write the instruction it carries out."),
    ("description", "Describe the following {steps}-step motion of {hands}: {motion}"),
    ("instruction", "{motion} What command would make {hands} move like this for {duration}?"),
    ("description", "What happens in this {duration} motion of {hands}? Motion: {motion}"),
    ("instruction", "Motion ({steps} steps): {motion}\nHands: {hands_label}\nInstruction:"),
    ("description", "Tell me how {hands} move{s} during these {steps} steps: {motion}"),
    ("instruction", "Translate this {steps}-step motion of {hands} into an instruction: {motion}"),
    ("description", "Summarise what {hands} {do} in this {duration} motion: {motion}"),
]

_PREDICTION_NO_IMAGE = [
    (False, "{Hands} just moved like this for {history}: {motion}. What is the next {steps}-step motion?"),
    (False, "Past motion of {hands} ({history}): {motion}\nContinue it for {duration}."),
    (False, "Given the last {history_steps} steps of {hands}, {motion}, predict the following {steps} steps."),
    (False, "Continue the motion of {hands} for another {duration}: {motion}"),
    (False, "History: {motion} ({history}, {hands_label})\nNext {duration}:"),
    (True, "{Hands} {is} working on this: {goal} The last {history} of motion was {motion}. What are the next {steps} steps?"),
    (True, "Goal: {goal}\nMotion of {hands} so far ({history}): {motion}\nContinue for {duration}."),
    (True, 'The task is "{goal}" Given the recent motion {motion} of {hands}, predict the following {duration}.'),
    (True, 'Keeping the goal "{goal}" in mind, continue the motion {motion} of {hands} for {steps} steps.'),
    (True, "Instruction: {goal}\nHistory of {hands}: {motion}\nNext {steps}-step motion:"),
]


# fmt: on


def _build(gen, trans, pred, tag: str = "") -> dict[str, list[Template]]:
    out: dict[str, list[Template]] = {
        _G: [Template(f"gen-{tag}{i + 1:02d}", _G, t) for i, t in enumerate(gen)],
        _T: [Template(f"trans-{tag}{i + 1:02d}", _T, t, answer=a) for i, (a, t) in enumerate(trans)],
        _P: [Template(f"pred-{tag}{i + 1:02d}", _P, t, needs_goal=g) for i, (g, t) in enumerate(pred)],
    }
    return out


#: templates with an image (stores with video)
TEMPLATES: dict[str, list[Template]] = _build(_GENERATION, _TRANSLATION, _PREDICTION)
#: motion-only templates (no ``{image}``; stores without video); ids ``gen-m01``, ``trans-m01``, ...
MOTION_ONLY_TEMPLATES: dict[str, list[Template]] = _build(
    _GENERATION_NO_IMAGE, _TRANSLATION_NO_IMAGE, _PREDICTION_NO_IMAGE, "m"
)
TEMPLATE_BY_ID: dict[str, Template] = {
    t.id: t for group in (TEMPLATES, MOTION_ONLY_TEMPLATES) for ts in group.values() for t in ts
}

#: placeholders every template may use
ALLOWED_FIELDS = {
    "image", "motion", "task", "task_inline", "goal", "duration", "steps", "fps", "history", "history_steps",
    "hands", "Hands", "hands_label", "s", "is", "do", "its",
}  # fmt: skip


def hand_words(mode: str) -> dict[str, str]:
    """Placeholder values that depend on the hand mode."""
    if mode not in HAND_MODES:
        raise ConfigError(f"hand mode: expected one of {HAND_MODES}, got {mode!r}")
    if mode == "both":
        return {
            "hands": "both hands",
            "Hands": "Both hands",
            "hands_label": "both",
            "s": "",
            "is": "are",
            "do": "do",
            "its": "their",
        }
    return {
        "hands": f"the {mode} hand",
        "Hands": f"The {mode} hand",
        "hands_label": mode,
        "s": "s",
        "is": "is",
        "do": "does",
        "its": "its",
    }


def _seconds_text(seconds: float) -> str:
    v = f"{seconds:g}"
    return f"{v} second" if v == "1" else f"{v} seconds"


def inline(sentence: str) -> str:
    """'Pick up the cup.' -> 'pick up the cup' (for templates that continue the sentence)."""
    s = sentence.strip().rstrip(".!")
    return s[:1].lower() + s[1:] if s[:1].isupper() and not s[1:2].isupper() else s


def as_sentence(text: str) -> str:
    """Capitalised, ending with a full stop."""
    s = text.strip()
    if not s:
        return s
    s = s[:1].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def fill(
    template: Template,
    hands: str,
    seconds: float,
    fps: float,
    task: str | None = None,
    goal: str | None = None,
    history_s: float | None = None,
) -> str:
    """The prompt text of ``template`` for a sample (raises ConfigError if a needed value is missing)."""
    need = template.fields
    if ("task" in need or "task_inline" in need) and not task:
        raise ConfigError(f"template {template.id}: needs an instruction text")
    if "goal" in need and not goal:
        raise ConfigError(f"template {template.id}: needs a goal text")
    if ("history" in need or "history_steps" in need) and not history_s:
        raise ConfigError(f"template {template.id}: needs a history duration")
    values = {
        "image": IMAGE_TOKEN,
        "motion": MOTION_TOKEN,
        "duration": _seconds_text(seconds),
        "steps": str(int(round(seconds * fps))),
        "fps": f"{fps:g}",
        "history": _seconds_text(history_s) if history_s else "",
        "history_steps": str(int(round(history_s * fps))) if history_s else "",
        "task": as_sentence(task) if task else "",
        "task_inline": inline(task) if task else "",
        "goal": as_sentence(goal) if goal else "",
        **hand_words(hands),
    }
    return template.text.format(**values)


def templates_for(task_type: str, goal: bool | None = None, image: bool = True) -> list[Template]:
    """Templates of one task type (prediction: only those with / without a goal when ``goal`` is given);
    ``image=False``: the motion-only variants (no ``<image>``, for stores without video)."""
    if task_type not in TEMPLATES:
        raise ConfigError(f"task type: expected one of {TASK_TYPES}, got {task_type!r}")
    ts = (TEMPLATES if image else MOTION_ONLY_TEMPLATES)[task_type]
    if goal is not None and task_type == _P:
        ts = [t for t in ts if t.needs_goal == goal]
    return ts
