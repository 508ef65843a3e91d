"""Where the response starts in an OpenRLHF query (prompt + response as the policy saw it).

OpenRLHF sends `query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`
beside the prompt string it tokenized, and cuts prompt_ids from the LEFT when the prompt is
over its budget (OpenRLHF/OpenRLHF 3c3be6234e0cb353e76bb8019947db9dfe99fca7,
openrlhf/utils/agent.py, SingleTurnAgentExecutor.execute). So a query need not start with its
prompt byte for byte:
- a SentencePiece tokenizer decodes `<s>[INST]` as `<s> [INST]`, and tokenizers add or drop
  spaces around special tokens;
- a left-truncated prompt leaves only its tail at the start of the query (its first character
  may be U+FFFD when the cut fell inside a multi-byte character).

The split compares the two with all whitespace removed: the query must start with the whole
prompt, or with at least MIN_TAIL characters of the prompt's tail (a truncated prompt), or hold
the whole prompt after a few characters the prompt lacks (a BOS the client added). The
response starts after the matched prompt text, and after the prompt's trailing whitespace
where the query repeats it. A query that matches none of these is refused: guessing would
score text that is not the response.
"""
from __future__ import annotations

from engine.reward.scorer import RequestError

MIN_TAIL = 32          # non-whitespace characters of a truncated prompt's tail the query must keep
MAX_LEAD = 16          # characters (a BOS) a query may hold before the whole prompt
REPLACEMENT = "\ufffd"  # what a decoder gives for the bytes of a character cut in half


def _border(window: str, text: str) -> int:
    """The length of the longest prefix of `window` that is also a suffix of `text` (KMP's
    failure function over window + a separator + text, in linear time)."""
    seq = [*window, None, *text]
    fail = [0] * len(seq)
    k = 0
    for i in range(1, len(seq)):
        while k and seq[i] != seq[k]:
            k = fail[k - 1]
        if seq[i] == seq[k]:
            k += 1
        fail[i] = k
    return fail[-1]


def _matched_end(q: str, p: str) -> int | None:
    """How many characters of the whitespace-free query `q` are prompt text, or None."""
    if q.startswith(p):
        return len(p)
    skip = len(q) - len(q.lstrip(REPLACEMENT))
    tail = _border(q[skip:skip + len(p)], p)
    if tail >= MIN_TAIL:
        return skip + tail
    lead = q.find(p, 0, MAX_LEAD + len(p))
    return lead + len(p) if lead >= 0 else None


def response_of(query: str, prompt: str, index: int = 0) -> str:
    """The text of `query` after its prompt; RequestError (reason unsplit_query) when the
    query does not hold the prompt in any of the forms above."""
    if query.startswith(prompt):
        return query[len(prompt):]
    kept = [i for i, c in enumerate(query) if not c.isspace()]
    p = "".join(prompt.split())
    end = _matched_end("".join(query[i] for i in kept), p) if p else None
    if end is None:
        raise RequestError(400, f"query[{index}] does not start with prompts[{index}], even with "
                                f"whitespace ignored, nor with its last {MIN_TAIL}+ characters (a "
                                "left-truncated prompt): cannot tell where the response starts "
                                f"(query starts {query[:60]!r}, prompt ends {prompt[-60:]!r})",
                           "unsplit_query")
    pos = kept[end - 1] + 1
    trailing = prompt[len(prompt.rstrip()):]
    if trailing and query.startswith(trailing, pos):
        pos += len(trailing)
    return query[pos:]
