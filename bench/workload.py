"""The verifier workload the pool benchmark runs: AutoIF-style functions and responses.

Functions are the kinds of string checks the pipeline's verifier stage produces (word counts,
keyword counts, regexes, case, paragraphs, endings, bullets, titles, JSON), each family
written several ways, as K sampled LLM answers for one instruction are. Every response is
distinct, so no cache keyed by input can answer a check without running it.

Two shapes:
  fixed_jobs(size, count): `count` jobs of exactly `size` inputs each;
  stream(instructions):    the responses stage's shape: per instruction 3-8 functions and
                           16 queries; each query's 8 fresh responses go to the pool as one
                           job per function, in one evaluate_many call.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from string import Template

Job = tuple[str, list[str]]          # (verifier code, inputs): what SandboxPool.evaluate takes

QUERIES_PER_INSTRUCTION = 16         # Config().responses.queries_per_instruction
RESPONSES_PER_QUERY = 8              # Config().responses.k
FUNCTIONS_PER_INSTRUCTION = (3, 8)   # what survives cross-validation of K=8 verifier answers

_WORDS = ("the data model system user answer result value quick brown fox jumps over lazy dog "
          "analysis report summary important note example python code verify response length "
          "zebra puzzle amazing quiz NASA API JSON HTTP city river mountain music history").split()
_KEYWORDS = ("data", "river", "summary", "python", "music", "city", "zebra", "history")
_ENDINGS = ("Is there anything else I can help with?", "Let me know if you have questions.",
            "That is all.")
_ARGS = ("response", "text", "s", "answer", "resp", "output", "reply", "content")

# One family per kind of instruction; each entry is one way an LLM writes that check.
# $a is the argument's name; other $names are the instruction's parameters.
_FAMILIES: dict[str, list[str]] = {
    "min_words": [
        "def evaluate($a):\n    return len($a.split()) >= $n\n",
        "import re\ndef evaluate($a):\n    return len(re.findall(r'\\b\\w+\\b', $a)) >= $n\n",
        "def evaluate($a):\n    count = 0\n    for w in $a.split():\n"
        "        if w.strip('.,!?;:'):\n            count += 1\n    return count >= $n\n",
    ],
    "max_words": [
        "def evaluate($a):\n    return len($a.split()) < $n\n",
        "import re\ndef evaluate($a):\n    words = re.findall(r'[A-Za-z]+', $a)\n    return len(words) < $n\n",
    ],
    "keyword": [
        "def evaluate($a):\n    return $a.lower().count('$kw') >= $k\n",
        "import re\ndef evaluate($a):\n"
        "    return len(re.findall(r'\\b$kw\\b', $a, flags=re.IGNORECASE)) >= $k\n",
        "def evaluate($a):\n    words = [w.strip('.,!?;:*\"<>').lower() for w in $a.split()]\n"
        "    return words.count('$kw') >= $k\n",
        "import re\nfrom collections import Counter\ndef evaluate($a):\n"
        "    counts = Counter(re.findall(r'[a-z]+', $a.lower()))\n    return counts['$kw'] >= $k\n",
    ],
    "lowercase": [
        "def evaluate($a):\n    return $a == $a.lower()\n",
        "def evaluate($a):\n    return not any(ch.isupper() for ch in $a)\n",
        "import re\ndef evaluate($a):\n    return re.search(r'[A-Z]', $a) is None\n",
    ],
    "no_commas": [
        "def evaluate($a):\n    return ',' not in $a\n",
        "def evaluate($a):\n    return $a.count(',') == 0\n",
        "import re\ndef evaluate($a):\n    return not re.search(r',', $a)\n",
        "def evaluate($a):\n    for ch in $a:\n        if ch == ',':\n            return False\n    return True\n",
    ],
    "paragraphs": [
        "def evaluate($a):\n    parts = [p for p in $a.split('\\n\\n') if p.strip()]\n    return len(parts) == $k\n",
        "import re\ndef evaluate($a):\n    parts = re.split(r'\\n\\s*\\n', $a.strip())\n"
        "    return len([p for p in parts if p.strip()]) == $k\n",
    ],
    "sections": [
        "def evaluate($a):\n    parts = [p for p in $a.split('***') if p.strip()]\n    return len(parts) == $k\n",
        "def evaluate($a):\n    return $a.count('***') == $k - 1\n",
    ],
    "ends_with": [
        "def evaluate($a):\n    return $a.strip().endswith('$end')\n",
        "def evaluate($a):\n    return $a.rstrip().lower().endswith('$end'.lower())\n",
        "import re\ndef evaluate($a):\n    return re.search(re.escape('$end') + r'\\s*\\Z', $a) is not None\n",
        "def evaluate($a):\n    lines = [l for l in $a.splitlines() if l.strip()]\n"
        "    return bool(lines) and lines[-1].strip().endswith('$end')\n",
    ],
    "bullets": [
        "import re\ndef evaluate($a):\n"
        "    return len(re.findall(r'^\\s*[\\*\\-] ', $a, flags=re.MULTILINE)) >= $k\n",
        "def evaluate($a):\n    n = 0\n    for line in $a.split('\\n'):\n"
        "        if line.lstrip().startswith(('* ', '- ')):\n            n += 1\n    return n >= $k\n",
    ],
    "title": [
        "import re\ndef evaluate($a):\n    return re.search(r'<<[^\\n]+>>', $a) is not None\n",
        "def evaluate($a):\n    start = $a.find('<<')\n    return start != -1 and $a.find('>>', start) > start + 2\n",
    ],
    "few_capitals": [
        "import re\ndef evaluate($a):\n    words = re.findall(r'[A-Za-z]+', $a)\n"
        "    caps = sum(1 for w in words if w.isupper())\n    return caps / max(1, len(words)) < 0.05\n",
        "def evaluate($a):\n    return sum(1 for w in $a.split() if w.isupper() and len(w) > 1) < $k\n",
        "import re\ndef evaluate($a):\n    return len(re.findall(r'\\b[A-Z]{2,}\\b', $a)) < $k\n",
    ],
    "max_sentences": [
        "import re\ndef evaluate($a):\n"
        "    sentences = [s for s in re.split(r'(?<=[.!?])\\s+', $a.strip()) if s]\n    return len(sentences) <= $n\n",
        "def evaluate($a):\n    return sum($a.count(c) for c in '.!?') <= $n\n",
    ],
    "is_json": [
        "import json\ndef evaluate($a):\n    try:\n        json.loads($a)\n        return True\n"
        "    except ValueError:\n        return False\n",
        "import json\ndef evaluate($a):\n    try:\n        return isinstance(json.loads($a.strip()), dict)\n"
        "    except Exception:\n        return False\n",
    ],
}


def _params(rng: random.Random) -> dict:
    return {"n": rng.choice((10, 25, 40, 60, 90, 120)), "k": rng.randint(2, 4),
            "kw": rng.choice(_KEYWORDS), "end": rng.choice(_ENDINGS)}


def instruction_functions(rng: random.Random, count: int, tag: str) -> list[str]:
    """`count` distinct functions checking one instruction (one family, several writings).

    Each opens with a comment naming the instruction `tag`, as LLM answers often do, so two
    instructions never share a function text."""
    name = rng.choice(sorted(_FAMILIES))
    family = _FAMILIES[name]
    params = _params(rng)
    codes: list[str] = []
    for i in range(count):
        body = Template(family[i % len(family)])
        code = body.substitute(params, a=_ARGS[(i // len(family)) % len(_ARGS)])
        codes.append(f"# {name.replace('_', ' ')} check for instruction {tag}\n{code}")
    assert len(set(codes)) == count
    return codes


def named_functions(seed: int = 0) -> dict[str, str]:
    """Every writing of every family once ("family_i": code), parameters drawn from `seed`."""
    params = _params(random.Random(seed))
    return {f"{name}_{i}": Template(body).substitute(params, a="response")
            for name, family in _FAMILIES.items() for i, body in enumerate(family)}


VERIFIERS: dict[str, str] = named_functions()


class Responses:
    """Synthetic responses of varied length and shape; never the same text twice."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seen: set[str] = set()

    def take(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            text = self._one()
            if text not in self.seen:
                self.seen.add(text)
                out.append(text)
        return out

    def _one(self) -> str:
        rng = self.rng
        if rng.random() < 0.05:
            return json.dumps({"answer": " ".join(rng.choices(_WORDS, k=rng.randint(3, 30)))})
        paragraphs = []
        for _p in range(rng.randint(1, 5)):
            sentences = []
            for _s in range(rng.randint(1, 6)):
                words = rng.choices(_WORDS, k=rng.randint(4, 22))
                words[0] = words[0].capitalize()
                if rng.random() < 0.3:
                    words.insert(rng.randrange(len(words)), ",")
                sentences.append(" ".join(words).replace(" ,", ",") + rng.choice(".!?"))
            paragraphs.append(" ".join(sentences))
        if rng.random() < 0.3:
            paragraphs.insert(1, "\n".join(f"* {' '.join(rng.choices(_WORDS, k=5))}"
                                           for _ in range(rng.randint(1, 5))))
        text = ("\n***\n" if rng.random() < 0.4 else "\n\n").join(paragraphs)
        if rng.random() < 0.3:
            text = f"<<{' '.join(rng.choices(_WORDS, k=3))}>>\n" + text
        if rng.random() < 0.3:
            text += "\n" + rng.choice(_ENDINGS)
        if rng.random() < 0.2:
            text = text.lower()
        return text


@dataclass(frozen=True)
class Stream:
    """The responses stage's calls: queries[i] is one evaluate_many call (one job per function)."""

    queries: list[list[Job]]
    instructions: int

    @property
    def jobs(self) -> list[Job]:
        return [job for query in self.queries for job in query]

    @property
    def checks(self) -> int:
        return sum(len(inputs) for _code, inputs in self.jobs)


def stream(instructions: int, seed: int = 1) -> Stream:
    """Instructions with 3-8 functions each; 16 queries each, every query's 8 responses fresh.

    Queries come in instruction order, as the responses stage receives them (an instruction's
    queries are released together once it survives cross-validation)."""
    rng = random.Random(seed)
    texts = Responses(seed)
    queries: list[list[Job]] = []
    for i in range(instructions):
        functions = instruction_functions(rng, rng.randint(*FUNCTIONS_PER_INSTRUCTION), f"s{seed}-{i}")
        for _q in range(QUERIES_PER_INSTRUCTION):
            responses = texts.take(RESPONSES_PER_QUERY)
            queries.append([(code, responses) for code in functions])  # one list shared, as the stage does
    return Stream(queries, instructions)


def fixed_jobs(size: int, count: int, seed: int = 2) -> list[Job]:
    """`count` jobs of exactly `size` distinct inputs, each job its own function (from every
    family), so a pool that merges jobs of the same code has nothing to merge: these are the
    costs of one job at that size."""
    rng = random.Random(seed)
    texts = Responses(seed * 1000 + size)
    jobs: list[Job] = []
    functions: list[str] = []
    instruction = 0
    while len(jobs) < count:
        if not functions:
            instruction += 1
            functions = instruction_functions(rng, rng.randint(*FUNCTIONS_PER_INSTRUCTION),
                                              f"f{seed}-{size}-{instruction}")
        jobs.append((functions.pop(), texts.take(size)))
    return jobs
