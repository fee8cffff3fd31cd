"""What the search service accepts, checked before any work: one schema for a JSON body, a multipart form and an
item id in a path. Every refusal is an `Invalid` with an HTTP status and a message that names the field.

    POST /search  JSON   {"text": str | "embedding": [number, ...] | "id": int, "k": int (optional)}
                  form   image=<file>, k=<digits> (optional)

Types are exact (k 5, not "5", 1.5 or true; numbers finite: no NaN, Infinity or 1e999), ranges bounded (k in
1..max_k, ids in 1..2**63-1, SQLite's integers), texts well-formed Unicode (no lone surrogates) of at most
max_text characters, the JSON flat (no nesting beyond the embedding's one list), and no unknown fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import DualtowerError

MAX_ID = 2**63 - 1  # SQLite's largest integer
FIELDS = ("text", "embedding", "id")


class Invalid(DualtowerError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Query:
    kind: str  # "text", "embedding", "id" or "image"
    value: object  # the text, the list of floats, the id, or the upload's bytes
    k: int
    name: str = ""  # an upload's file name


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(422, f"numbers must be finite, got {text[:20]}")
    return value


def _constant(name: str):
    raise Invalid(422, f"numbers must be finite, got {name}")


def check_k(value, max_k: int, given_as_text: bool = False) -> int:
    if given_as_text:  # a form field: decimal digits
        if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9:
            raise Invalid(422, f"k must be an integer between 1 and {max_k}, got {str(value)[:20]!r}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(422, f"k must be an integer between 1 and {max_k}, got {json.dumps(value)[:20]}")
    if not 1 <= value <= max_k:
        raise Invalid(422, f"k must be between 1 and {max_k}, got {value}")
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


def parse_json(body: bytes, max_k: int, max_text: int, dim: int) -> Query:
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
    unknown = sorted(set(data) - {*FIELDS, "k"})
    if unknown:
        raise Invalid(422, f"unknown fields {unknown[:5]}; a search takes {', '.join(FIELDS)} and k")
    given = [key for key in FIELDS if data.get(key) is not None]
    if len(given) != 1:
        raise Invalid(422, "give exactly one of 'text', 'embedding', 'id' (or upload an 'image')")
    k = check_k(data.get("k", 10), max_k)
    kind = given[0]
    value = data[kind]
    if kind == "text":
        return Query("text", check_text(value, max_text), k)
    if kind == "id":
        return Query("id", check_id(value), k)
    return Query("embedding", check_embedding(value, dim), k)


def check_form(form, max_k: int) -> tuple[object, int]:
    """(the upload, k) of a multipart search form."""
    unknown = sorted(set(form.keys()) - {"image", "k"})
    if unknown:
        raise Invalid(422, f"unknown form fields {[u[:40] for u in unknown[:5]]}; a search form takes image and k")
    uploads = form.getlist("image")
    if len(uploads) != 1 or isinstance(uploads[0], str):
        raise Invalid(422, "a multipart search needs one file field named 'image'")
    ks = form.getlist("k")
    if len(ks) > 1:
        raise Invalid(422, "k is given more than once")
    return uploads[0], check_k(ks[0] if ks else "10", max_k, given_as_text=True)
