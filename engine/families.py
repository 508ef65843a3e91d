"""Constraint families: which kind of thing an instruction constrains.

A composed prompt takes each of its constraints from another family (two length limits or two
opening rules are more likely to clash than to add anything), and the run's coverage is
counted by family. The rules below place the common phrasings deterministically and for free;
an instruction they do not place goes to the LLM with the fixed list (prompts/family.txt),
and an answer outside the list is "content/other".
"""
from __future__ import annotations

import re

FAMILIES = ("length", "keywords", "format/structure", "case", "punctuation", "start/end", "language",
            "content/other")
OTHER = "content/other"

# First match wins: the order puts the most specific families first ("end your reply with a
# question mark" is about where the text ends, not about punctuation in general).
_RULES: tuple[tuple[str, re.Pattern], ...] = tuple((family, re.compile(pattern, re.I)) for family, pattern in (
    ("start/end", r"\b(start|begin|open|end|finish|conclude|close)s?\b.{0,40}\b(with|by)\b|\b(first|last) "
                  r"(word|sentence|line|character)|\bending\b|\bopening\b|\bsign[- ]?off\b|\bP\.?S\.?\b"),
    ("case", r"\b(lower|upper)[- ]?case\b|\bcapital(s|ized|ised| letters)?\b|\ball caps\b"),
    ("language", r"\b(in|into) (english|french|spanish|german|chinese|japanese|italian|portuguese|russian|"
                 r"arabic|hindi|korean)\b|\blanguage\b"),
    ("length", r"\b(words?|sentences?|characters?|letters?|paragraphs?|lines?|syllables?)\b.{0,30}"
               r"\b(at (most|least)|fewer|more|less|under|over|exactly|no more|maximum|minimum)\b|"
               r"\b(at (most|least)|fewer than|more than|less than|under|over|exactly|no more than|"
               r"maximum of|minimum of|up to)\s+(\w+\s+){0,2}(words?|sentences?|characters?|letters?|"
               r"paragraphs?|lines?|syllables?)\b|\b(short|brief|concise|long)\b"),
    ("punctuation", r"\bcommas?\b|\bpunctuation\b|\b(exclamation|question) marks?\b|\bperiods?\b|"
                    r"\bsemicolons?\b|\bcolons?\b|\bquotation marks?\b|\bhyphens?\b|\bdashes?\b"),
    ("format/structure", r"\bbullet|\bnumbered\b|\blist\b|\bjson\b|\bmarkdown\b|\btitle\b|\bsections?\b|"
                         r"\bparagraphs?\b|\bheadings?\b|\bheaders?\b|\btable\b|\bdouble quotes\b|"
                         r"\bwrap\b|\bformat\b|<<|\bhighlight|\*|\bseparate\b|\bdivided?\b"),
    ("keywords", r"\bkeywords?\b|\b(include|mention|use|contain)s?\b.{0,20}\b(word|words|term|phrase)\b|"
                 r"\bthe (word|letter|phrase)\b|\bdigits?\b|\bnumbers?\b|\bnumerals?\b|\bemojis?\b|"
                 r"\bwithout (using|the)\b|\bdo not (use|mention|say)\b|\bavoid\b"),
))


def rule_family(text: str) -> str | None:
    """The family the rules place `text` in, or None when no rule matches."""
    for family, pattern in _RULES:
        if pattern.search(text):
            return family
    return None


def parse_family(answer: str) -> str:
    """The family a judge named on its last non-empty line, else content/other (the list's own catch-all)."""
    lines = [ln.strip().lower() for ln in answer.splitlines() if ln.strip()]
    last = lines[-1].removeprefix("kind:").strip().strip(".*` ") if lines else ""
    return next((f for f in FAMILIES if f in last or f.split("/")[0] == last), OTHER)
