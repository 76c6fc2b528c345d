"""Text to speak: clause splitting as tokens stream in, and normalisation that keeps ordinary words.

The public demo ran substring "equation" replacements over every sentence ("important" became
"impor tangent t") and lower-cased everything. Here math is verbalised only inside spans that are
recognisably math (operators between numbers or single-letter variables, function calls, powers), in the
clause's language; words, hyphens, slashes between words and acronyms are never touched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Language = Literal["en", "zh"]

STATE_TOKENS = ("☞", "☟", "☜", "<unk>", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "$$FIRST_SENTENCE_MARK$$")
"""Markers the LLM emits around its answer that must never be spoken."""

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def strip_state_tokens(text: str) -> str:
    """Remove the state/control tokens of :data:`STATE_TOKENS`."""
    for token in STATE_TOKENS:
        text = text.replace(token, "")
    return text


def detect_language(text: str) -> Language:
    """``zh`` when the text holds any CJK ideograph, else ``en``."""
    return "zh" if _CJK.search(text) else "en"


# --- math -----------------------------------------------------------------------------------------

_FUNCS = {
    "sin": "sine of", "cos": "cosine of", "tan": "tangent of", "cot": "cotangent of", "sec": "secant of",
    "csc": "cosecant of", "log": "log of", "ln": "natural log of", "exp": "exp of", "sqrt": "square root of",
    "abs": "absolute value of",
}
_FUNCS_ZH = {"sqrt": "根号", "abs": "绝对值", "ln": "自然对数"}
_OPS_EN = {
    "+": "plus", "-": "minus", "−": "minus", "*": "times", "×": "times", "·": "times", "/": "divided by",
    "÷": "divided by", "=": "equals", "!=": "is not equal to", "≠": "is not equal to",
    ">=": "is greater than or equal to", "≥": "is greater than or equal to",
    "<=": "is less than or equal to", "≤": "is less than or equal to", ">": "is greater than",
    "<": "is less than", "^": "to the power of", "**": "to the power of",
}
_OPS_ZH = {
    "+": "加", "-": "减", "−": "减", "*": "乘", "×": "乘", "·": "乘", "/": "除以", "÷": "除以", "=": "等于",
    "!=": "不等于", "≠": "不等于", ">=": "大于等于", "≥": "大于等于", "<=": "小于等于", "≤": "小于等于",
    ">": "大于", "<": "小于",
}
_NUM = r"\d+(?:\.\d+)?"
_VAR = r"(?<![^\W\d_])[A-Za-zπ](?![^\W\d_])"  # a lone letter, not part of a word
_FUNC = r"(?:" + "|".join(sorted(_FUNCS, key=len, reverse=True)) + r")"
_ATOM = rf"[(\[]*(?:{_FUNC}\s*\(\s*)*[-−]?(?:{_NUM}|{_VAR})[)\]]*"
_OP = r"\s*(?:\*\*|!=|>=|<=|[-−+*/=<>^×÷·≠≤≥])\s*"
_EXPR = re.compile(rf"{_ATOM}(?:(?:{_OP}|(?<=\))(?=\())(?:{_ATOM}))+|(?:{_FUNC})\s*\(\s*(?:{_NUM}|{_VAR})\s*\)")
_STRONG = re.compile(rf"\*\*|[=+*×÷^≠≤≥<>·]|{_FUNC}\s*\(")
_SPACED_WEAK = re.compile(r"\s[-−/]\s")
_NEGATIVE = re.compile(r"(?<![A-Za-z0-9_)\].])[-−](?=\d)")  # "-5" but not "COVID-19" or "2024-05"
_TOKEN = re.compile(rf"{_NUM}|\*\*|!=|>=|<=|{_FUNC}(?=\s*\()|[A-Za-zπ]|[-−+*/=<>^×÷·≠≤≥()\[\]]")


def _is_math(span: str) -> bool:
    # Unspaced '-' or '/' between numbers are dates, ranges and fractions ("2024-05-01", "24/7").
    return bool(_STRONG.search(span) or _SPACED_WEAK.search(span))


def _speak_math(span: str, lang: Language) -> str:
    words: list[str] = []
    prev = "start"  # kind of the previous token: start, operand, op, open, close
    power = False
    for tok in _TOKEN.findall(span):
        if tok in "([":
            if prev == "close":
                words.append(_OPS_ZH["*"] if lang == "zh" else "times")  # "(a)(b)" is a product
            prev = "open"
            continue
        if tok in ")]":
            prev = "close"
            if power and lang == "zh":
                words.append("次方")
                power = False
            continue
        if tok in ("-", "−") and prev in ("start", "op", "open"):
            words.append("负" if lang == "zh" else "minus")
            continue
        if tok in ("^", "**"):
            if lang == "zh":
                words.append("的")
                power = True
            else:
                words.append("to the power of")
            prev = "op"
            continue
        if tok in _OPS_EN:
            words.append(_OPS_ZH[tok] if lang == "zh" else _OPS_EN[tok])
            prev = "op"
            continue
        if tok in _FUNCS:
            words.append(_FUNCS_ZH.get(tok, tok) if lang == "zh" else _FUNCS[tok])
            prev = "op"
            continue
        words.append(("派" if lang == "zh" else "pi") if tok == "π" else tok)
        prev = "operand"
        if power and lang == "zh":
            words.append("次方")
            power = False
    return ("" if lang == "zh" else " ").join(words)


def _replace_math(text: str, lang: Language) -> str:
    def expr(m: re.Match[str]) -> str:
        span = m.group(0)
        if not _is_math(span):
            return span
        spoken = _speak_math(span, lang)
        return spoken if lang == "zh" else f" {spoken} "

    text = _EXPR.sub(expr, text)
    return _NEGATIVE.sub("负" if lang == "zh" else "minus ", text)


# --- normalisation ------------------------------------------------------------------------------

_MARKDOWN = [
    (re.compile(r"\*\*(.+?)\*\*|__(.+?)__"), lambda m: m.group(1) or m.group(2)),
    (re.compile(r"`+([^`]*)`+"), lambda m: m.group(1)),
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.M), lambda m: ""),
    (re.compile(r"^\s*[-*•]\s+", re.M), lambda m: ""),
]
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,.!?;:，。！？；：])")
_KEEP_CATEGORIES = ("L", "N", "P", "Zs", "Sm", "Sc")


def _drop_unspeakable(text: str) -> str:
    """Keep letters, digits, punctuation, spaces, math and currency signs; drop emoji and controls."""
    out = []
    for ch in text:
        if ch in "\n\t":
            out.append(" ")
        elif unicodedata.category(ch).startswith(_KEEP_CATEGORIES) or ch in "^°%":
            out.append(ch)
    return "".join(out)


def normalize_for_speech(text: str, lang: Language | None = None) -> str:
    """Text as the speech head should read it; ``""`` means nothing speakable (e.g. only emoji)."""
    text = strip_state_tokens(text)
    for pattern, repl in _MARKDOWN:
        text = pattern.sub(repl, text)
    text = _drop_unspeakable(unicodedata.normalize("NFC", text))
    text = _replace_math(text, lang or detect_language(text))
    text = _SPACE_BEFORE_PUNCT.sub("", _SPACES.sub(" ", text)).strip()
    if not any(unicodedata.category(ch)[0] in "LN" for ch in text):
        return ""  # punctuation-only text has nothing to say
    return text


# --- clause splitting ---------------------------------------------------------------------------

_HARD_END = set("。！？!?；;…\n")
_SOFT_END = set("，,、：:")
_CLOSERS = set("\"'”’)）】」』")


def speech_units(text: str) -> int:
    """Rough speaking length: a CJK character weighs like three Latin characters."""
    return sum(3 if _CJK.match(ch) else 1 for ch in text)


@dataclass(frozen=True, slots=True)
class ClauseOptions:
    """How streamed reply text is cut into clauses for the speech head."""

    first_min_units: int = 4
    """The first clause ends at the first comma or stop after this many units, to start speaking early."""
    first_max_units: int = 24
    """The first clause also ends at the first word boundary (a space, or after a CJK character) once it
    holds this many units, punctuation or not: about four English words or eight Chinese characters, so the
    first sound never waits for a long sentence's first comma. 0 turns this off."""
    min_units: int = 24
    """Later clauses end at a sentence stop once they hold this many units (shorter ones merge on)."""
    soft_units: int = 90
    """Later clauses may also end at a comma once they hold this many units."""
    max_units: int = 220
    """Hard cap (≈ 15 s of speech, well under the decoder's 25 s code cap): cut at the last space."""


def _ends_at(buf: str, index: int) -> bool:
    return index < len(buf) and (buf[index] in _HARD_END or buf[index] in _SOFT_END or buf[index] == ".")


class ClauseSplitter:
    """Accumulates streamed reply text and hands out speakable clauses as soon as they are complete."""

    def __init__(self, options: ClauseOptions | None = None) -> None:
        self.options = options or ClauseOptions()
        self._buffer = ""
        self._count = 0

    def push(self, delta: str) -> list[str]:
        """Add newly generated text; returns the clauses it completed (raw text, not normalised)."""
        self._buffer += delta.replace("☞", "").replace("☜", "").replace("☟", "")
        out = []
        while (cut := self._find_cut(final=False)) is not None:
            out.append(self._take(cut))
        return [c for c in out if c.strip()]

    def flush(self) -> list[str]:
        """End of the reply: whatever is left (even without final punctuation) is a clause."""
        out = []
        while (cut := self._find_cut(final=True)) is not None:
            out.append(self._take(cut))
        if self._buffer.strip():
            out.append(self._take(len(self._buffer)))
        self._buffer = ""
        return [c for c in out if c.strip()]

    def _take(self, cut: int) -> str:
        clause, self._buffer = self._buffer[:cut], self._buffer[cut:]
        self._count += 1
        return clause.strip()

    def _find_cut(self, final: bool) -> int | None:
        opts, buf = self.options, self._buffer
        first = self._count == 0
        units = 0
        for i, ch in enumerate(buf):
            units += 3 if _CJK.match(ch) else 1
            end = i + 1
            while end < len(buf) and buf[end] in _CLOSERS:
                end += 1
            if ch == "." or ch in _HARD_END or ch in _SOFT_END:
                if ch in ".:,":
                    # ASCII '.', ':' and ',' end a clause only before whitespace: not in 3.14, 10:30, 1,000.
                    if end == len(buf) and not final:
                        return None  # wait for the next character to decide
                    if end < len(buf) and not buf[end].isspace():
                        continue
                hard = ch in _HARD_END or ch == "."
                limit = opts.first_min_units if first else (opts.min_units if hard else opts.soft_units)
                if units >= limit:
                    return end
            if first and opts.first_max_units and units >= opts.first_max_units and i > 0:
                if ch.isspace():
                    return i + 1  # the word before this space is complete
                # A CJK character is a word; wait for the next character so that a stop after it joins.
                if _CJK.match(ch) and (end < len(buf) or final) and not _ends_at(buf, end):
                    return end
            if units >= opts.max_units:
                space = buf.rfind(" ", 0, end)
                return space + 1 if space > 0 else end
        return None
