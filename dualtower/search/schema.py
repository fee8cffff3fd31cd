"""What the search service accepts, checked before any work: one schema for a JSON body, a multipart form and an
item id in a path. Every refusal is an `Invalid` with an HTTP status and a message that names the field.

    POST /search  JSON   {"text": str | "embedding": [number, ...] | "id": int | "positive": [example, ...]
                          with "negative": [example, ...], "k": int (optional), "offset": int, "min_score": number,
                          "generation": int, "where": [str, ...] (each optional)}; an example is
                          {"text": str | "id": int | "embedding": [number, ...], "weight": number (optional)}
                  form   image=<file> (one or more), text=<str>, negative_image=<file>, negative_text=<str> (any
                         number), k=<digits>, offset=<digits>, min_score=<number>, where=<condition> (any
                         number) (each but one image optional): more than one example is a query by examples

offset skips that many nearer hits (the next page: k more after offset); min_score keeps hits of at least that
cosine similarity; generation, the one an earlier page's answer gave, refuses the page (409) if the index has
changed since, so pages never silently mix two states of the index; where, filter conditions (filters.py:
"ext=jpg", "rating>=3"), all met by every hit.

Types are exact (k 5, not "5", 1.5 or true; numbers finite: no NaN, Infinity or 1e999), ranges bounded (k in
1..max_k, ids in 1..2**63-1, SQLite's integers), texts well-formed Unicode (no lone surrogates) of at most
max_text characters, the JSON flat (no nesting beyond the embedding's and where's one list), and no unknown
fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import DualtowerError

MAX_ID = 2**63 - 1  # SQLite's largest integer
FIELDS = ("text", "embedding", "id", "positive")
EXAMPLE_FIELDS = ("text", "id", "embedding")
FORM_EXAMPLES = ("image", "text", "negative_image", "negative_text")
MAX_EXAMPLES = 16
OPTIONS = ("k", "offset", "min_score", "generation", "where")


class Invalid(DualtowerError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Page:
    """Which part of a query's ranking to answer: after `offset` hits, at least `min_score`, of `generation`, of
    the items that meet `where`."""

    offset: int = 0
    min_score: float | None = None
    generation: int | None = None
    where: tuple = ()  # filters.Condition, parsed


@dataclass(frozen=True)
class Query:
    kind: str  # "text", "embedding", "id" or "image"
    value: object  # the text, the list of floats, the id, or the upload's bytes
    k: int
    name: str = ""  # an upload's file name
    page: Page = Page()


def check_offset(value, max_offset: int, given_as_text: bool = False) -> int:
    return check_count(value, "offset", 0, max_offset, given_as_text)


def check_min_score(value, given_as_text: bool = False) -> float:
    if given_as_text:
        try:
            value = float(value) if isinstance(value, str) and len(value) <= 30 else value
        except ValueError:
            raise Invalid(422, f"min_score must be a number between -1 and 1, got {value[:20]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise Invalid(422, f"min_score must be a number between -1 and 1 (a cosine similarity), got "
                           f"{json.dumps(value)[:20] if not isinstance(value, str) else repr(value[:20])}")
    return float(value)


def check_where(value) -> tuple:
    """Filter conditions, parsed (their meaning for this index is checked when the query runs)."""
    from .filters import FilterError, parse

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(422, 'where must be a list of conditions such as ["ext=jpg", "rating>=3"]')
    try:
        return parse(value)
    except FilterError as e:
        raise Invalid(422, str(e)) from None


def check_generation(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise Invalid(422, f"generation must be the integer an earlier answer gave, got {json.dumps(value)[:20]}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(422, f"numbers must be finite, got {text[:20]}")
    return value


def _constant(name: str):
    raise Invalid(422, f"numbers must be finite, got {name}")


def check_k(value, max_k: int, given_as_text: bool = False) -> int:
    return check_count(value, "k", 1, max_k, given_as_text)


def check_count(value, field: str, low: int, high: int, given_as_text: bool = False) -> int:
    """An integer in [low, high]: exactly an int in JSON (not "5", 1.5 or true), decimal digits in a form."""
    if given_as_text:  # a form field: decimal digits
        if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9:
            raise Invalid(422, f"{field} must be an integer between {low} and {high}, got {str(value)[:20]!r}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(422, f"{field} must be an integer between {low} and {high}, got {json.dumps(value)[:20]}")
    if not low <= value <= high:
        raise Invalid(422, f"{field} must be between {low} and {high}, got {value}")
    return value


def check_id(value, field: str = "id") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(422, f"{field} must be an integer")
    if not 1 <= value <= MAX_ID:
        raise Invalid(404, f"no item {value}" if value <= 0 or len(str(value)) < 40 else "no such item")
    return value


def check_text(value, max_text: int, field: str = "text") -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(422, f"{field} must be a non-empty string")
    if len(value) > max_text:
        raise Invalid(422, f"{field} is {len(value)} characters, over the {max_text} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Invalid(422, f"{field} is not well-formed Unicode (a lone surrogate at character {e.start})") from None
    return value


def check_embedding(value, dim: int) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise Invalid(422, "embedding must be a list of numbers")
    if len(value) != dim:
        raise Invalid(422, f"embedding must have {dim} finite numbers, got {len(value)}")
    return [float(x) for x in value]


def check_examples(value, field: str, max_text: int, dim: int) -> list[dict]:
    """A list of examples, each {"text" | "id" | "embedding": ..., "weight": number (optional)}."""
    if not isinstance(value, list) or not value and field == "positive" or len(value) > MAX_EXAMPLES:
        raise Invalid(422, f"{field} must be a list of 1 to {MAX_EXAMPLES} examples such as "
                           '{"text": "a beach"}, {"id": 12} or {"embedding": [...]}, each with an optional "weight"')
    out = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise Invalid(422, f"{where} must be an object such as {{\"text\": \"a beach\", \"weight\": 2}}")
        given = [k for k in EXAMPLE_FIELDS if item.get(k) is not None]
        unknown = sorted(set(item) - {*EXAMPLE_FIELDS, "weight"})
        if len(given) != 1 or unknown:
            raise Invalid(422, f"{where} must have exactly one of {', '.join(EXAMPLE_FIELDS)} and may have a weight"
                               + (f"; unknown fields {unknown[:3]}" if unknown else ""))
        kind = given[0]
        checked = {"text": lambda v: check_text(v, max_text, f"{where}.text"),
                   "id": lambda v: check_id(v, f"{where}.id"),
                   "embedding": lambda v: check_embedding(v, dim)}[kind](item[kind])
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1000:
            raise Invalid(422, f"{where}.weight must be a number above 0 and at most 1000, got "
                               f"{json.dumps(weight)[:20]}")
        out.append({kind: checked, "weight": float(weight)})
    return out


def parse_json(body: bytes, max_k: int, max_text: int, dim: int, max_offset: int = 10_000) -> Query:
    try:
        data = json.loads(body.decode("utf-8") if body else "null", parse_float=_finite, parse_constant=_constant)
    except UnicodeDecodeError as e:
        raise Invalid(422, f"the body is not JSON: not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise Invalid(422, f"the body is not JSON: {e}") from None
    except RecursionError:
        raise Invalid(422, "the body is not a search request: JSON nested too deeply") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise Invalid(422, f"the body is not a search request: {str(e)[:100]}") from None
    if not isinstance(data, dict):
        raise Invalid(422, 'expected a JSON object such as {"text": "a red car", "k": 10}')
    unknown = sorted(set(data) - {*FIELDS, *OPTIONS, "negative"})
    if unknown:
        raise Invalid(422, f"unknown fields {unknown[:5]}; a search takes {', '.join(FIELDS)} and "
                           f"{', '.join(OPTIONS)}")
    given = [key for key in FIELDS if data.get(key) is not None]
    if len(given) != 1:
        raise Invalid(422, "give exactly one of 'text', 'embedding', 'id', 'positive' (or upload an 'image')")
    if data.get("negative") is not None and given[0] != "positive":
        raise Invalid(422, "negative examples go with positive ones: give 'positive' too")
    k = check_k(data.get("k", 10), max_k)
    page = Page(check_offset(data.get("offset", 0), max_offset),
                None if data.get("min_score") is None else check_min_score(data["min_score"]),
                None if data.get("generation") is None else check_generation(data["generation"]),
                () if data.get("where") is None else check_where(data["where"]))
    kind = given[0]
    value = data[kind]
    if kind == "text":
        return Query("text", check_text(value, max_text), k, page=page)
    if kind == "id":
        return Query("id", check_id(value), k, page=page)
    if kind == "positive":
        return Query("examples", (check_examples(value, "positive", max_text, dim),
                                  check_examples(data.get("negative") or [], "negative", max_text, dim)), k, page=page)
    return Query("embedding", check_embedding(value, dim), k, page=page)


def check_form(form, max_k: int, max_offset: int = 10_000, max_text: int = 1000) -> tuple[dict, int, Page]:
    """(the examples: {"image": [uploads], "text": [str], "negative_image": [...], "negative_text": [...]}, k, the
    page) of a multipart search form."""
    unknown = sorted(set(form.keys()) - {*FORM_EXAMPLES, *OPTIONS})
    if unknown:
        raise Invalid(422, f"unknown form fields {[u[:40] for u in unknown[:5]]}; a search form takes "
                           f"{', '.join(FORM_EXAMPLES)} and {', '.join(OPTIONS)}")
    given = {name: form.getlist(name) for name in FORM_EXAMPLES}
    if not given["image"] or sum(map(len, given.values())) > MAX_EXAMPLES:
        raise Invalid(422, f"a multipart search needs a file field named 'image' (and at most {MAX_EXAMPLES} "
                           "examples in all)")
    for name, values in given.items():
        for value in values:
            if name.endswith("image") and isinstance(value, str):
                raise Invalid(422, f"{name} must be a file")
            if name.endswith("text"):
                check_text(value, max_text, name)
    for name in OPTIONS:
        if name != "where" and len(form.getlist(name)) > 1:
            raise Invalid(422, f"{name} is given more than once")
    k = check_k(form.get("k", "10"), max_k, given_as_text=True)
    offset = check_offset(form.get("offset", "0"), max_offset, given_as_text=True)
    min_score = None if form.get("min_score") is None else check_min_score(form.get("min_score"), given_as_text=True)
    generation = form.get("generation")
    if generation is not None:
        if not isinstance(generation, str) or not generation.isascii() or not generation.isdigit() \
                or len(generation) > 18:
            raise Invalid(422, f"generation must be the integer an earlier answer gave, got {str(generation)[:20]!r}")
        generation = int(generation)
    return given, k, Page(offset, min_score, generation, check_where(form.getlist("where")))
