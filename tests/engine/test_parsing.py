"""The tolerant parsers against the shapes LLM answers really take."""
import pytest

from engine.parsing import (ParseError, clean_code, json_candidates, loads_lenient, parse_back_translation,
                            parse_bool, parse_instruction_list, parse_nli_label, parse_score,
                            parse_verifier_answer, parse_yes_no)

CODE = "def evaluate(response):\n    return ',' not in response\n"


def test_fenced_json_block():
    text = ('Here you go:\n```json\n{"func": "def evaluate(response):\\n    return \',\' not in response",'
            ' "cases": [{"input": "a b", "output": true}, {"input": "a, b", "output": false}]}\n```\nHope it helps!')
    p = parse_verifier_answer(text)
    assert p.code == CODE
    assert [(c.input, c.expected) for c in p.cases] == [("a b", True), ("a, b", False)]
    assert p.bad_cases == 0 and not p.missing_cases


def test_bare_json_embedded_in_prose_with_trailing_text():
    text = ('Sure. {"func": "def evaluate(response):\\n    return len(response) < 5", '
            '"cases": [{"input": "hi", "output": "true"}, {"input": "hello there", "output": "False"}]} '
            'The function checks {length}.')
    p = parse_verifier_answer(text)
    assert "len(response) < 5" in p.code
    assert [c.expected for c in p.cases] == [True, False]


def test_newlines_escaped_twice_in_code():
    # the JSON string holds a backslash + n (escaped one level too many)
    text = r'{"func": "def evaluate(response):\\n    return response.islower()", "cases": []}'
    p = parse_verifier_answer(text)
    assert p.code == "def evaluate(response):\n    return response.islower()\n"


def test_raw_newlines_and_regex_escapes_inside_json_string():
    text = '{"func": "def evaluate(response):\n    import re\n    return bool(re.search(r\'\\d\', response))",\n "cases": [["abc1", "True"], ["abc", 0]]}'
    p = parse_verifier_answer(text)
    assert "re.search(r'\\d', response)" in p.code
    assert [(c.input, c.expected) for c in p.cases] == [("abc1", True), ("abc", False)]


def test_single_element_list_and_named_wrapper():
    inner = '{"func": "def evaluate(response):\\n    return True", "cases": [{"input": "x", "output": 1}]}'
    assert parse_verifier_answer(f"[{inner}]").cases[0].expected is True
    assert parse_verifier_answer(f'{{"answer": {inner}}}').code.startswith("def evaluate")


def test_python_literal_with_triple_quoted_code():
    text = "{'func': '''def evaluate(response):\n    return response.endswith('!')''', 'cases': [{'input': 'hey!', 'output': True}]}"
    p = parse_verifier_answer(text)
    assert p.code.endswith("return response.endswith('!')\n")
    assert p.cases[0].expected is True


def test_code_wrapped_in_a_fence_inside_the_string():
    text = '{"func": "```python\\ndef evaluate(response):\\n    return True\\n```", "cases": []}'
    assert parse_verifier_answer(text).code == "def evaluate(response):\n    return True\n"


def test_bad_cases_are_counted_not_fatal():
    text = '{"func": "def evaluate(response):\\n    return True", "cases": [{"input": "x", "output": "maybe"}, {"input": 3, "output": true}, {"input": "ok", "output": true}]}'
    p = parse_verifier_answer(text)
    assert p.bad_cases == 2 and len(p.cases) == 1


def test_missing_cases_is_flagged():
    p = parse_verifier_answer('{"func": "def evaluate(response):\\n    return True"}')
    assert p.missing_cases and p.cases == []


@pytest.mark.parametrize("text, reason", [
    ("I cannot write this function.", "no_json"),
    ('{"cases": [{"input": "a", "output": true}]}', "no_func_field"),
    ('{"func": "def check(response):\\n    return True", "cases": []}', "no_evaluate_function"),
    ('{"func": 42}', "func_not_string"),
])
def test_failures_have_reasons(text, reason):
    with pytest.raises(ParseError) as info:
        parse_verifier_answer(text)
    assert info.value.reason == reason


def test_loads_lenient_trailing_comma_and_failure():
    assert loads_lenient('{"a": [1, 2,],}') == {"a": [1, 2]}
    with pytest.raises(ParseError):
        loads_lenient("{not json at all")


def test_json_candidates_prefers_json_fence():
    text = "```python\nx = {1: 2}\n```\n```json\n{\"k\": 1}\n```"
    assert next(json_candidates(text)) == '{"k": 1}'


@pytest.mark.parametrize("value, expected", [
    (True, True), ("true", True), ("True", True), ("FALSE", False), (" yes ", True), (0, False), (1, True),
    ("maybe", None), (2, None), (None, None),
])
def test_parse_bool(value, expected):
    assert parse_bool(value) is expected


def test_clean_code_from_list_of_lines():
    assert clean_code(["def evaluate(response):", "    return True"]) == "def evaluate(response):\n    return True\n"


@pytest.mark.parametrize("text, expected", [
    ("YES", True), ("no.", False), ("Reasoning: counting words is easy.\nAnswer: Yes", True),
    ("It needs semantic judgment, so NO is my answer.\n", False), ("**No**", False),
    ("Final answer: NO", False), ("I am not sure.", None), ("", None),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("entailment", "entailment"), ("The hypothesis adds detail.\nVerdict: **Neutral**", "neutral"),
    ("They demand different word counts, which contradicts.\ncontradiction", "contradiction"),
    ("Neutral at first glance, but in the end: Entailment", "entailment"), ("no idea", None),
])
def test_parse_nli_label(text, expected):
    assert parse_nli_label(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Good reply.\nScore: 9", 9), ("**Score:** 8", 8), ("Score: 7/10", 7), ("I'd give it 8/10.", 8),
    ("Score: 3 at first... revised. Score: 10", 10), ("score = 8.5", 8), ("Score: 11", None),
    ("Excellent!", None), ("**Score: 6**", 6),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_instruction_list_numbered_with_noise():
    text = ("Here are new constraints:\n1. Use exactly three hashtags in your reply.\n"
            "2) **Constraint:** End every sentence with a semicolon instead of a period.\n"
            "- \"Write the reply as a single line without any line breaks.\"\n3. Short\nThat is all.")
    assert parse_instruction_list(text) == [
        "Use exactly three hashtags in your reply.",
        "End every sentence with a semicolon instead of a period.",
        "Write the reply as a single line without any line breaks.",
    ]


def test_instruction_list_json_array():
    text = '```json\n["Reply with at most two sentences please.", {"instruction": "Do not use the letter q anywhere."}]\n```'
    assert parse_instruction_list(text) == ["Reply with at most two sentences please.",
                                            "Do not use the letter q anywhere."]


def test_instruction_list_plain_lines_when_unnumbered():
    assert parse_instruction_list("Include the word apple twice.\nNever use the word banana at all.") == [
        "Include the word apple twice.", "Never use the word banana at all."]


def test_back_translation_cleanup():
    assert parse_back_translation('"Your reply must not contain any commas."\n\nThis checks commas.') == \
        "Your reply must not contain any commas."
    assert parse_back_translation("Instruction: Answer in lowercase only.") == "Answer in lowercase only."
    assert parse_back_translation("   ") == ""


def test_instruction_list_skips_chatter_and_questions():
    text = ("Sure, here are two new constraints for you\n"
            "I hope these are useful for your tests\n"
            "Would you like more of these constraints?\n"
            "Write the reply without the letter k.\n"
            "Put every sentence on its own line.")
    assert parse_instruction_list(text) == ["Write the reply without the letter k.",
                                            "Put every sentence on its own line."]
    assert parse_instruction_list("I'd rather not do this task.") == []


def test_unbalanced_brackets_stay_cheap():
    import time
    text = "{" * 20000 + ' {"func": "def evaluate(response):\\n    return True", "cases": []}'
    start = time.perf_counter()
    with pytest.raises(ParseError):
        parse_verifier_answer(text)             # the budget runs out before the real object
    assert time.perf_counter() - start < 5
    assert parse_verifier_answer("{{ " + text[-70:]).code.startswith("def evaluate")
