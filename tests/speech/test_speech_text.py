"""Text front: normalisation that never changes ordinary words, and streamed clause splitting."""

from __future__ import annotations

import pytest

from engine.speech.text_front import (
    ClauseOptions,
    ClauseSplitter,
    detect_language,
    normalize_for_speech,
    strip_state_tokens,
)

UNCHANGED = [
    "This is important.",
    "The second point.",
    "Let me explain.",
    "I read a blog.",
    "A well-known fact.",
    "Tea and/or coffee.",
    "NASA and the ESA launched it.",
    "Use C++ for speed, get an A+ grade, read the Q&A.",
    "It costs $5 or 10% more, e.g. at 10:30 on 2024-05-01.",
    "Open 24/7, about 1/2 full, pi is 3.14.",
    "The T-shirt has a x-ray print.",
    "这很重要，我来解释一下。",
    "第二个问题是NASA的博客。",
    "温度是3.5度，时间是2024-05-01。",
]

MATH = [
    ("Solve 3 + 4 = 7 now.", "Solve 3 plus 4 equals 7 now."),
    ("x^2 - 1 = 0", "x to the power of 2 minus 1 equals 0"),
    ("5 - 3 = 2", "5 minus 3 equals 2"),
    ("The ratio is 10 / 2.", "The ratio is 10 divided by 2."),
    ("sin(x) = 0.5", "sine of x equals 0.5"),
    ("a != b and a >= 2", "a is not equal to b and a is greater than or equal to 2"),
    ("It was -5 degrees.", "It was minus 5 degrees."),
    ("6 × 7 = 42", "6 times 7 equals 42"),
    ("计算 3+4=7。", "计算 3加4等于7。"),
    ("x^2的值是4", "x的2次方的值是4"),
    ("(a)(b)=c", "a times b equals c"),
    ("COVID-19 cases", "COVID-19 cases"),
    ("结果是(a)(b)=c", "结果是a乘b等于c"),
    ("气温-5度", "气温负5度"),
    ("sqrt(4)=2，对吗", "根号4等于2，对吗"),
    ("10 ÷ 2 = 5，对", "10除以2等于5，对"),
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_ordinary_words_pass_unchanged(text: str) -> None:
    assert normalize_for_speech(text) == text


@pytest.mark.parametrize(("text", "spoken"), MATH)
def test_math_is_spoken_only_where_it_is_math(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


def test_state_tokens_markdown_emoji_and_empty() -> None:
    assert strip_state_tokens("☞Hello<|im_end|>") == "Hello"
    assert normalize_for_speech("☞ **Bold** and `code` 🎉<|im_end|>") == "Bold and code"
    assert normalize_for_speech("# Title\n- first item\n- second") == "Title first item second"
    assert normalize_for_speech("!!! ... ???") == ""
    assert normalize_for_speech("😀😀") == ""
    assert normalize_for_speech("") == ""
    assert normalize_for_speech("NASA") == "NASA"  # no lower-casing: acronyms stay acronyms
    assert detect_language("hello 你好") == "zh" and detect_language("hello") == "en"


def _stream(text: str, pieces: int = 3, options: ClauseOptions | None = None) -> list[str]:
    splitter = ClauseSplitter(options)
    out: list[str] = []
    for i in range(0, len(text), pieces):
        out += splitter.push(text[i : i + pieces])
    return out + splitter.flush()


def test_first_clause_short_later_longer_and_trailing_text_kept() -> None:
    text = "☞Sure, it is 3.14 exactly. It was computed quickly. Then we went on, and on, and finished"
    clauses = _stream(text)
    assert clauses[0] == "Sure,"
    assert clauses[1] == "it is 3.14 exactly. It was computed quickly."  # short sentence merged on
    assert clauses[-1] == "Then we went on, and on, and finished"  # no final punctuation: still spoken
    assert "".join(clauses).replace(" ", "") == text.replace("☞", "").replace(" ", "")


def test_chinese_clauses() -> None:
    clauses = _stream("你好，我是语音助手。今天天气很好，我们去公园散步吧！最后一句没有标点", pieces=1)
    assert clauses == ["你好，", "我是语音助手。今天天气很好，我们去公园散步吧！", "最后一句没有标点"]


def test_decimals_times_and_thousands_do_not_split() -> None:
    clauses = _stream("Okay, so 3.14 and 10:30 and 1,000 are all numbers in this sentence here. Done.", pieces=1)
    assert clauses[1].startswith("so 3.14 and 10:30 and 1,000")


def test_long_text_without_punctuation_is_capped() -> None:
    text = "word " * 400
    clauses = _stream(text, pieces=7)
    assert len(clauses) > 5
    assert all(len(c) <= ClauseOptions().max_units for c in clauses)
    assert " ".join(clauses).split() == text.split()


def test_first_clause_ends_after_a_few_words_without_punctuation() -> None:
    """The first sound must not wait for a long sentence's first comma (issue 12, first sound)."""
    text = "The picture shows a small brown dog sitting on a red sofa next to a window, and it looks happy."
    clauses = _stream(text, pieces=4)
    assert clauses[0] == "The picture shows a small"  # 24 units reached at the space after "small"
    assert " ".join(clauses).split() == text.split()
    assert _stream(text, options=ClauseOptions(first_max_units=0))[0].endswith("window,")


def test_first_chinese_clause_cut_after_eight_characters_keeps_its_stop() -> None:
    clauses = _stream("我看到一只小狗坐在红色的沙发上，它看起来很开心。", pieces=1)
    assert clauses[0] == "我看到一只小狗坐"
    assert clauses[1].startswith("在红色的沙发上，")
    clauses = _stream("我看到一只小狗坐，在红色的沙发上。", pieces=1)
    assert clauses[0] == "我看到一只小狗坐，"  # the stop right after the 8th character joins it
