"""Tolerant parsers for what LLMs actually write.

Every parser either returns a value or raises / returns a *reason* (a short snake_case
string) that the calling stage counts with `ctx.funnel.drop(stage, reason)`.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson

from engine.records import Case


class ParseError(ValueError):
    """A parse failure with a countable reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------- JSON inside text

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def _balanced_spans(text: str, limit: int = 32, budget: int = 2_000_000) -> Iterator[str]:
    """Outermost {...} / [...] spans, skipping brackets inside quoted strings.

    `budget` caps the characters scanned in all, so text full of unmatched brackets stays cheap.
    """
    i, n, found = 0, len(text), 0
    while i < n and found < limit and budget > 0:
        if text[i] not in "{[":
            i += 1
            continue
        depth, quote, j = 0, "", i
        while j < n and budget > 0:
            budget -= 1
            ch = text[j]
            if quote:
                if ch == "\\":
                    j += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                # an apostrophe in prose outside any string must not open a string
                if ch == '"' or (j > i and text[j - 1] in ":,[{ \n\t"):
                    quote = ch
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if depth == 0 and j < n:
            found += 1
            yield text[i:j + 1]
            i = j + 1
        else:
            i += 1


def json_candidates(text: str) -> Iterator[str]:
    """Strings that might be the JSON an answer meant: fenced blocks first, then bare spans."""
    fenced = list(_FENCE.finditer(text))
    fenced.sort(key=lambda m: m.group(1).lower() != "json")     # ```json before other fences
    for m in fenced:
        body = m.group(2).strip()
        if body:
            yield body
            yield from _balanced_spans(body)
    yield text.strip()
    yield from _balanced_spans(text)


def _fix_escapes(s: str) -> str:
    """Double backslashes that start no valid JSON escape (regexes like \\d in code strings)."""
    return re.sub(r"\\(.)", lambda m: m.group(0) if m.group(1) in "\"\\/bfnrtu" else "\\\\" + m.group(1),
                  s, flags=re.S)


def loads_lenient(s: str) -> Any:
    """JSON, then JSON with raw control characters / bad escapes / trailing commas, then a Python literal."""
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        pass
    no_trailing = re.sub(r",(\s*[}\]])", r"\1", s)
    for attempt in (s, _fix_escapes(s), no_trailing, _fix_escapes(no_trailing)):
        try:
            return json.loads(attempt, strict=False)
        except ValueError:
            continue
    try:
        return ast.literal_eval(s)        # single quotes, True/False, triple-quoted code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ParseError("bad_json") from None


def parse_bool(value: Any) -> bool | None:
    """True/False from a bool, "true"/"True"/"yes"/"pass", 1/0; None when it is none of these."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().strip(".\"'`*").lower()
        if word in ("true", "yes", "pass", "passed", "1", "correct"):
            return True
        if word in ("false", "no", "fail", "failed", "0", "incorrect"):
            return False
    return None


# ---------------------------------------------------------------- verifier answers

_FUNC_KEYS = ("func", "function", "eval_func", "code", "evaluate")
_CASE_KEYS = ("cases", "test_cases", "tests", "examples")
_INPUT_KEYS = ("input", "response", "text")
_OUTPUT_KEYS = ("output", "expected", "expected_output", "label", "result")


@dataclass
class ParsedVerifier:
    code: str
    cases: list[Case] = field(default_factory=list)
    bad_cases: int = 0                    # case entries that could not be read
    missing_cases: bool = False

    def add_entries(self, entries: Any) -> None:
        """Read each {"input", "output"} entry into a case; count the ones that are not."""
        for entry in entries:
            case = _read_case(entry)
            if case is None:
                self.bad_cases += 1
            else:
                self.cases.append(case)


def _unwrap(value: Any) -> Any:
    """Peel single-element wrappers: [obj], {"answer": obj}."""
    for _ in range(4):
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        elif (isinstance(value, dict) and len(value) == 1
              and isinstance(next(iter(value.values())), (dict, list))
              and not any(k in value for k in _FUNC_KEYS + _CASE_KEYS)):
            value = next(iter(value.values()))
        else:
            break
    return value


def clean_code(code: Any) -> str:
    """Normalize a code field: list of lines, fenced code, or newlines escaped twice."""
    if isinstance(code, list) and all(isinstance(x, str) for x in code):
        code = "\n".join(code)
    if not isinstance(code, str):
        raise ParseError("func_not_string")
    code = code.strip()
    fence = _FENCE.search(code)
    if fence:
        code = fence.group(2)
    if "\n" not in code and "\\n" in code:
        # the model escaped its newlines one time too many
        code = code.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    return code.strip("\n") + "\n"


def _read_case(entry: Any) -> Case | None:
    inp: Any = None
    out: Any = None
    if isinstance(entry, dict):
        inp = next((entry[k] for k in _INPUT_KEYS if k in entry), None)
        out = next((entry[k] for k in _OUTPUT_KEYS if k in entry), None)
    elif isinstance(entry, (list, tuple)) and len(entry) == 2:
        inp, out = entry
    expected = parse_bool(out)
    if not isinstance(inp, str) or expected is None:
        return None
    return Case(input=inp, expected=expected)


class _Seen:
    """Whether any candidate of an answer was JSON at all (no_json vs. a missing field)."""

    json = False


def json_values(text: str, seen: _Seen) -> Iterator[Any]:
    """Each candidate of `text` that parses as JSON, unwrapped, in json_candidates' order."""
    for candidate in json_candidates(text):
        try:
            value = _unwrap(loads_lenient(candidate))
        except ParseError:
            continue
        seen.json = True
        yield value


def parse_verifier_answer(text: str) -> ParsedVerifier:
    """Read {"func": "def evaluate(response): ...", "cases": [{"input", "output"}, ...]} from an answer."""
    seen = _Seen()
    obj = next((v for v in json_values(text, seen) if isinstance(v, dict) and any(k in v for k in _FUNC_KEYS)),
               None)
    if obj is None:
        raise ParseError("no_func_field" if seen.json else "no_json")
    code = clean_code(next(obj[k] for k in _FUNC_KEYS if k in obj))
    if not re.search(r"^\s*def\s+evaluate\s*\(", code, re.M):
        raise ParseError("no_evaluate_function")
    check_not_placeholder(code)
    raw_cases = next((obj[k] for k in _CASE_KEYS if k in obj), None)
    parsed = ParsedVerifier(code=code, missing_cases=raw_cases is None)
    if isinstance(raw_cases, dict):          # {"input": ..., "output": ...} alone
        raw_cases = [raw_cases]
    parsed.add_entries(raw_cases or ())
    return parsed


# ---------------------------------------------------------------- short verdicts

def _last_lines(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[::-1]


def _strip_markup(s: str) -> str:
    return re.sub(r"[*_`#>\"'\[\]()]", "", s).strip()


def parse_yes_no(text: str) -> bool | None:
    """A YES/NO verdict: the last line's leading word, else the last capitalized YES/NO, else a bare word."""
    lines = _last_lines(text)
    if lines:
        last = _strip_markup(lines[0])
        last = re.sub(r"^(final\s+)?(answer|verdict|decision)\s*[:：-]\s*", "", last, flags=re.I)
        m = re.match(r"(yes|no)\b", last, re.I)
        if m:
            return m.group(1).lower() == "yes"
    caps = re.findall(r"\b(YES|NO)\b", text)
    if caps:
        return caps[-1] == "YES"
    m = re.search(r"(?:answer|verdict)\s*(?:is)?\s*[:：]?\s*\**\s*(yes|no)\b", text, re.I)
    if m:
        return m.group(1).lower() == "yes"
    return None


_NLI = {"entailment": "entailment", "entails": "entailment", "entailed": "entailment",
        "neutral": "neutral",
        "contradiction": "contradiction", "contradicts": "contradiction",
        "contradictory": "contradiction", "contradict": "contradiction"}
_NLI_RE = re.compile(r"\b(" + "|".join(sorted(_NLI, key=len, reverse=True)) + r")\b", re.I)


def parse_nli_label(text: str) -> str | None:
    """entailment / neutral / contradiction: the last label on the last line that has one."""
    for line in _last_lines(text):
        found = _NLI_RE.findall(line)
        if found:
            return _NLI[found[-1].lower()]
    return None


_SCORE_RE = re.compile(r"score\s*\**\s*(?:is)?\s*[:：=-]?\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*10\b)?", re.I)
_OUT_OF_10 = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*10\b", re.I)


def parse_score(text: str, low: int = 1, high: int = 10) -> int | None:
    """The last "Score: N" (also **Score:** N, Score: 8/10), else the last "N/10"; None if absent or out of range."""
    found = _SCORE_RE.findall(text) or _OUT_OF_10.findall(text)
    if not found:
        return None
    value = float(found[-1])
    if not low <= value <= high:
        return None
    return int(math.floor(value))        # 7.5 does not round up into a keep threshold of 8


# ---------------------------------------------------------------- free text lists

# chatter around a list: "Sure, here are...", "I hope this helps", questions back to the user
_CHATTER = re.compile(r"^(?:i\b|i'|we\b|sure\b|here\b|okay\b|ok\b|certainly\b|of course\b|hope\b|these\b|note\b)",
                      re.I)
_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|\(\d+\)|[-*•+])\s+(.*\S)\s*$")


def _clean_item(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^\*\*(.+?)\*\*:?\s*", r"\1 ", s).strip()     # "**Constraint:** text"
    s = re.sub(r"^(?:new\s+)?(?:instruction|constraint)\s*\d*\s*[:：]\s*", "", s, flags=re.I)
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
        s = s[1:-1].strip()
    return s


def parse_instruction_list(text: str, min_words: int = 3, max_words: int = 80) -> list[str]:
    """New instructions from an answer: a JSON list of strings, else numbered/bulleted lines, else lines."""
    items: list[str] = []
    for candidate in json_candidates(text):
        if not candidate.startswith("["):
            continue
        try:
            value = loads_lenient(candidate)
        except ParseError:
            continue
        if isinstance(value, list):
            for v in value:
                if isinstance(v, dict):
                    v = v.get("instruction") or v.get("constraint") or v.get("text")
                if isinstance(v, str):
                    items.append(v)
            if items:
                break
    if not items:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("```")]
        listed = [m.group(1) for m in map(_ITEM.match, lines) if m]
        items = listed if listed else lines
    out: list[str] = []
    for item in items:
        item = _clean_item(item)
        if item.endswith((":", "?")) or _CHATTER.match(item):   # headings, questions, chatter
            continue
        if min_words <= len(item.split()) <= max_words:
            out.append(item)
    return out


def parse_back_translation(text: str) -> str:
    """The instruction sentence an LLM wrote back from code ("" when there is none)."""
    text = text.strip()
    if text.startswith("```"):
        fence = _FENCE.match(text)
        if fence:
            text = fence.group(2).strip()
    for para in re.split(r"\n\s*\n", text):
        para = _clean_item(" ".join(para.split()))
        if para:
            return para
    return ""


# ---------------------------------------------------------------- verifiers, two-request form

EVALUATE_HEADER = "def evaluate(response: str) -> bool:\n"


def _is_placeholder_body(code: str) -> bool:
    """True when evaluate() only restates a template: its body is `...`, `pass` or a docstring."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "evaluate":
            return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                   and (s.value.value is Ellipsis or isinstance(s.value.value, str)))
                       for s in node.body)
    return False


def check_not_placeholder(code: str) -> str:
    if _is_placeholder_body(code):
        raise ParseError("template_echo", "evaluate() body is only ... / pass")
    return code


def parse_code_completion(text: str, header: str = EVALUATE_HEADER) -> str:
    """The whole function from a completion of `header`: its indented body, up to the first line
    that is not indented (the next example, a test call, prose)."""
    body: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip() and not line[:1].isspace():
            break
        body.append(line.rstrip())
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    if not any(line.strip() for line in body):
        raise ParseError("no_body")
    return check_not_placeholder(header + "\n".join(body) + "\n")


def prompt_examples(template_text: str) -> set[str]:
    """Every double-quoted JSON string in a prompt template: a case equal to one is an echo."""
    found = set()
    for m in re.finditer(r'"((?:[^"\\\n]|\\.)*)"', template_text):
        try:
            found.add(json.loads(f'"{m.group(1)}"').strip())
        except ValueError:
            continue
    return found


def parse_case_answer(text: str) -> ParsedVerifier:
    """Test cases from {"follow": [...], "break": [...]}, or a list of {"input", "output"}
    (also under "cases"). The code field stays empty."""
    seen = _Seen()
    for value in json_values(text, seen):
        parsed = ParsedVerifier(code="")
        if isinstance(value, dict) and ("follow" in value or "break" in value):
            for key, expected in (("follow", True), ("break", False)):
                items = value.get(key) or []
                for item in items if isinstance(items, list) else [items]:
                    if isinstance(item, str):
                        parsed.cases.append(Case(input=item, expected=expected))
                    else:
                        parsed.bad_cases += 1
            return parsed
        if isinstance(value, dict):         # one {"input", "output"} alone, or {"cases": [...]}
            value = [value] if any(k in value for k in _INPUT_KEYS) else \
                next((value[k] for k in _CASE_KEYS if k in value), None)
        if isinstance(value, list):
            parsed.add_entries(value)
            return parsed
    raise ParseError("no_cases_field" if seen.json else "no_json")


def parse_conflict(text: str) -> bool | None:
    """A conflict judge's verdict: True for "conflict", False for "compatible", from the last line
    that is one of the two words alone; None when none is."""
    for line in _last_lines(text):
        word = _strip_markup(line).lower().rstrip(".!").removeprefix("verdict:").strip()
        if word in ("conflict", "compatible"):
            return word == "conflict"
    return None
