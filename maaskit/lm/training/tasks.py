"""A task whose answers can be checked exactly, for fine-tuning an assistant and measuring it
through the API: arithmetic and unit conversions the model must hand to a tool (and then phrase
the tool's answer), and table bookings it must turn into a JSON object of a given schema.

Why this task: a model of 0.14M parameters cannot multiply 347 by 29, and it should not try. What
it can learn is what production assistants do: recognise which tool a request needs, copy the
right values into the call's arguments, read the tool's result and say it. Every step has one
right answer, so accuracy is exact match, not a judgement.

Everything is generated offline from a seed. The held-out split (``"test"``) uses phrasings and
values never seen in training: sentences are built from parts, and whole combinations of parts
are held out (every part is seen in training, never that sentence); numbers, unit pairs and
names are held out the same way.
"""

from __future__ import annotations

import functools
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..formats.chat import compact_json

__all__ = ["TASKS", "AssistantTask", "Example", "get_task"]

CALCULATE = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Work out a sum, difference or product of two whole numbers, e.g. 347*29",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "pattern": "^[0-9]{1,4}[-+*][0-9]{1,4}$"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
}
UNITS = {
    "km": 1000.0,
    "m": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "kg": 1000.0,
    "g": 1.0,
    "mg": 0.001,
    "h": 3600.0,
    "min": 60.0,
    "s": 1.0,
}  # each unit in its group's base (m, g, s)
GROUPS = [("km", "m", "cm", "mm"), ("kg", "g", "mg"), ("h", "min", "s")]
UNIT_NAMES = {
    "km": ["km", "kilometres", "kilometers"],
    "m": ["m", "metres", "meters"],
    "cm": ["cm", "centimetres"],
    "mm": ["mm", "millimetres"],
    "kg": ["kg", "kilograms"],
    "g": ["g", "grams"],
    "mg": ["mg", "milligrams"],
    "h": ["h", "hours"],
    "min": ["min", "minutes"],
    "s": ["s", "seconds"],
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert",
        "description": "Convert a value from one unit to another of the same kind (length, mass, time)",
        "parameters": {
            "type": "object",
            "properties": {
                "value": {"type": "number", "minimum": 0, "maximum": 100000},
                "from": {"enum": list(UNITS)},
                "to": {"enum": list(UNITS)},
            },
            "required": ["value", "from", "to"],
            "additionalProperties": False,
        },
    },
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
BOOKING = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "people": {"type": "integer", "minimum": 1, "maximum": 20},
        "day": {"enum": DAYS},
        "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
    },
    "required": ["name", "people", "day", "time"],
    "additionalProperties": False,
}
# held-out names: real first names, never in training. Training names are made up (thousands of them), so
# copying the name from the request is the only way to get it right; with a few dozen real names a small
# model memorises them instead, and on a name it has not seen writes one it has.
_REAL = (
    "Ada Alan Grace Linus Guido Barbara Edsger Donald Ken Dennis Margaret Tim Radia Frances John Katherine "
    "Claude Hedy Ida Niklaus Bjarne Yukihiro Anders Brendan James Larry Rasmus Sophie Karen Mary Jean Adele "
    "Fran Shafi Leslie Judea Yoshua Geoffrey Yann Andrew Fei Daphne Cynthia Shafira Omar Priya Ravi Mei Hana "
    "Kofi Amara Zane Ines Lars Olga Pavel Nadia Tariq Leila Diego Lucia Mateo Elena Sven Ingrid Kenji Aiko "
    "Chen Wei Arjun Divya Emeka Chidi Noor Yusuf Beatriz Joao Anouk Pieter Oskar Maja Tomas Eva"
)
NAMES = _REAL.split()

# the parts sentences are built from; a whole combination is either for training or held out. Each part is
# seen in training with others, never with the same others: no value is missing from any phrasing (a small
# model learns such a gap as a rule: "after 'Could you book', the day is never Wednesday")
OPENERS = ["", "Hi! ", "Hello. ", "Good evening. ", "Excuse me: ", "Hey, "]
CLOSERS = ["", " Thanks!", " Thank you.", " Cheers.", " Quickly, please."]
ARITHMETIC = {
    "+": ["{a} plus {b}", "{a} + {b}", "the sum of {a} and {b}", "{a} added to {b}"],
    "-": ["{a} minus {b}", "{a} - {b}", "{a} take away {b}", "the difference between {a} and {b}"],
    "*": ["{a} times {b}", "{a} * {b}", "{a} multiplied by {b}", "the product of {a} and {b}"],
}
ASK = [
    "What is {x}?",
    "Compute {x}.",
    "Please work out {x}.",
    "Calculate {x} for me.",
    "How much is {x}?",
    "Quick question: what is {x}?",
    "Tell me {x}.",
    "I need {x}.",
]
CONVERT_ASK = [
    "How many {to} are {v} {frm}?",
    "Convert {v} {frm} to {to}.",
    "What is {v} {frm} in {to}?",
    "{v} {frm} is how many {to}?",
    "Please turn {v} {frm} into {to}.",
    "Express {v} {frm} in {to}.",
    "I have {v} {frm}; how many {to} is that?",
    "Change {v} {frm} to {to} for me.",
]
BOOK_ASK = [
    "Book a table for {n} at {t} on {d} under the name {name}.",
    "Please reserve a table for {n} people on {d} at {t}, name {name}.",
    "{name} would like a table for {n} on {d} at {t}.",
    "A reservation for {name}: {n} guests, {d}, {t}.",
    "Could you book {d} at {t} for {n} people? The name is {name}.",
    "Table for {n}, {d} {t}, for {name} please.",
    "Reserve {d} at {t}: {n} people, under {name}.",
    "Hi, {name} here. We are {n} and want to come on {d} at {t}.",
]


def _held_out(*parts: Any) -> bool:
    """One in four combinations of ``parts`` is held out, the same ones on every machine (crc32, not hash())."""
    return zlib.crc32(repr(parts).encode()) % 4 == 0


_REAL_NAMES = {n.lower() for n in NAMES}


def _phrasing(
    rng: random.Random, test: bool, kind: str, templates: int, *rest: object
) -> tuple[int, Callable[[str], str]]:
    """One of ``templates`` request templates of ``kind``, and an opener and closer around it, drawn
    until the whole combination (with ``rest``) is held out (``test``) or not; returns the template's
    index and the function that wraps a template in the opener and closer (before its values are
    filled in, so a name that starts the sentence keeps its capital)."""
    while True:
        ask, opener, closer = rng.randrange(templates), rng.randrange(len(OPENERS)), rng.randrange(len(CLOSERS))
        if _held_out(kind, ask, opener, closer, *rest) == test:
            break

    def wrap(sentence: str) -> str:
        joined = OPENERS[opener].endswith((", ", ": "))  # "Hey, could you ..." but "Hello. Could you ..."
        text = OPENERS[opener] + (sentence[0].lower() + sentence[1:] if joined else sentence)
        return text[0].upper() + text[1:] + CLOSERS[closer]

    return ask, wrap


_LETTERS = "eeeeaaaiiooonnrrsstlldhcumkbgjpvwyzfq"  # roughly as often as in names


def _made_up_name(rng: random.Random) -> str:
    """Half the time letters at random (3 to 8: every letter pair occurs, as in real names), half the
    time a word of Python's documentation, capitalised: its letters come in the tokenizer's longer
    pieces, as a real name's do ("James" is a few tokens, not five). Made-up names of neat syllables
    alone leave both out, and the model then cannot copy a real name it has not seen."""
    if rng.random() < 0.5:
        return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 8))).capitalize()
    return rng.choice(_corpus_words()).capitalize()


@functools.cache
def _corpus_words() -> list[str]:
    from .corpus import load_corpus

    words = {w.lower() for w in re.findall(r"\b[A-Za-z]{3,9}\b", load_corpus())}
    return sorted(words - _REAL_NAMES)


def _number(value: float) -> str:
    """A result as the tool writes it: whole numbers without a point, others to at most 4 decimals."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class Example:
    """One request of the task: the ``question``, the ``tools`` offered, the ``call`` expected (or
    None), the tool's ``result``, and the expected ``answer`` (the final text, or the JSON object)."""

    kind: str  # "calculate", "convert" or "book"
    question: str
    tools: list[dict] = field(default_factory=list)
    call: dict | None = None
    result: str | None = None
    answer: str = ""
    schema: dict | None = None  # a booking's response_format

    def conversation(self) -> list[dict]:
        """The whole exchange as chat messages: what fine-tuning trains on."""
        messages: list[dict] = [{"role": "user", "content": self.question}]
        if self.call is not None:
            call = {
                "id": "call_0",
                "type": "function",
                "function": {"name": self.call["name"], "arguments": compact_json(self.call["arguments"])},
            }
            messages += [
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_0", "content": self.result},
            ]
        return [*messages, {"role": "assistant", "content": self.answer}]


class AssistantTask:
    """``examples(split, n, seed)``: ``n`` requests, a third of each kind; ``run_tool`` answers a
    call as the task's tools do; ``check_answer`` and ``check_call`` grade what a model said."""

    name = "assistant"
    kinds = ("calculate", "convert", "book")
    tools = [CALCULATE, CONVERT]
    schema = BOOKING

    def examples(self, split: str = "train", n: int = 300, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (held out), got {split!r}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        rng = random.Random(f"{self.name}-{split}-{seed}")
        makers: list[Callable[[random.Random, bool], Example]] = [self._calculate, self._convert, self._book]
        out: list[Example] = []
        while len(out) < n:
            example = makers[len(out) % 3](rng, split == "test")
            out.append(example)
        return out

    # --- the three kinds --------------------------------------------------------------------

    def _calculate(self, rng: random.Random, test: bool) -> Example:
        phrase = rng.randrange(4)
        ask, wrap = _phrasing(rng, test, "calculate", len(ASK), phrase)
        while True:  # the same phrasings are held out for every operation, and values on their own
            op = rng.choice("+-*")
            a, b = rng.randint(2, 999), rng.randint(2, 99 if op == "*" else 999)
            if op == "-" and b > a:
                a, b = b, a
            if _held_out(a, op, b) == test:
                break
        question = wrap(ASK[ask]).format(x=ARITHMETIC[op][phrase].format(a=a, b=b))
        arguments = {"expression": f"{a}{op}{b}"}
        result = self.run_tool("calculate", arguments)
        return Example(
            "calculate",
            question,
            self.tools,
            {"name": "calculate", "arguments": arguments},
            result,
            f"That is {result}.",
        )

    def _convert(self, rng: random.Random, test: bool) -> Example:
        frm_name, to_name = rng.randrange(3), rng.randrange(3)  # a symbol or a word, for each unit
        ask, wrap = _phrasing(rng, test, "convert", len(CONVERT_ASK), frm_name > 0, to_name > 0)
        while True:
            group = rng.choice(GROUPS)
            frm, to = rng.sample(group, 2)
            value = rng.randint(1, 999) if rng.random() < 0.7 else rng.randint(10, 999) / 10
            if _held_out(value, frm, to) == test:
                break
        names = UNIT_NAMES[frm][frm_name % len(UNIT_NAMES[frm])], UNIT_NAMES[to][to_name % len(UNIT_NAMES[to])]
        arguments = {"value": value, "from": frm, "to": to}
        result = self.run_tool("convert", arguments)
        v = _number(value)
        return Example(
            "convert",
            CONVERT_ASK[ask].format(v=v, frm=names[0], to=names[1]),
            self.tools,
            {"name": "convert", "arguments": arguments},
            result,
            f"That is {result} {to}.",
        )

    def _book(self, rng: random.Random, test: bool) -> Example:
        ask, wrap = _phrasing(rng, test, "book", len(BOOK_ASK))
        name = rng.choice(NAMES) if test else _made_up_name(rng)
        while name.lower() in _REAL_NAMES and not test:
            name = _made_up_name(rng)
        people, day = rng.randint(1, 12), rng.choice(DAYS)
        time = f"{rng.randint(11, 22):02d}:{rng.choice(['00', '15', '30', '45'])}"
        question = wrap(BOOK_ASK[ask]).format(n=people, t=time, d=day, name=name)
        answer = compact_json({"name": name, "people": people, "day": day, "time": time})
        return Example("book", question, [], None, None, answer, self.schema)

    # --- the tools, and grading ---------------------------------------------------------------

    def run_tool(self, name: str, arguments: dict) -> str:
        """What the tool answers (a string, as a tool message's content); a bad call gets an error text."""
        try:
            if name == "calculate":
                match = re.fullmatch(r"(\d+)([-+*])(\d+)", str(arguments["expression"]))
                if match is None:
                    return "error: expression must be like 12*34"
                a, op, b = int(match[1]), match[2], int(match[3])
                return str(a + b if op == "+" else a - b if op == "-" else a * b)
            if name == "convert":
                frm, to = arguments["from"], arguments["to"]
                if not any(frm in g and to in g for g in GROUPS):
                    return f"error: cannot convert {frm} to {to}"
                return _number(float(arguments["value"]) * UNITS[frm] / UNITS[to])
        except (KeyError, TypeError, ValueError) as err:
            return f"error: {err}"
        return f"error: no tool named {name}"

    @staticmethod
    def check_answer(example: Example, reply: str | None) -> bool:
        """Exact match: for a booking, the JSON object equals the expected one; otherwise the reply's
        last number is the tool's result, written the same way."""
        if reply is None:
            return False
        if example.kind == "book":
            try:
                return json.loads(reply) == json.loads(example.answer)
            except json.JSONDecodeError:
                return False
        numbers = re.findall(r"-?\d+(?:\.\d+)?", reply)
        return bool(numbers) and numbers[-1] == example.result

    def check_call(self, example: Example, name: str | None, arguments: str | None) -> tuple[bool, bool]:
        """``(valid, correct)`` for a tool call: valid when it names an offered tool and its arguments
        are JSON that its schema accepts; correct when running it gives the expected result."""
        import jsonschema

        tool = next((t["function"] for t in example.tools if t["function"]["name"] == name), None)
        try:
            parsed = json.loads(arguments or "")
            if tool is None:
                return False, False
            jsonschema.validate(parsed, tool["parameters"])
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return False, False
        correct = example.call is not None and name == example.call["name"]
        return True, correct and self.run_tool(str(name), parsed) == example.result


TASKS: dict[str, type[AssistantTask]] = {"assistant": AssistantTask}


def get_task(name: str) -> AssistantTask:
    """The task called ``name`` (``maaskit lm finetune --task NAME``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    return TASKS[name]()
