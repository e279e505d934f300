"""Trimming of generated questions and answers that run on past their own end.

A small generator asked for "one new question" often goes on to answer it or to write another one
(``... in 1946?\\n\\nAnswer: The ...``, ``... New problem: ...``); asked for a solution, it often appends
a next problem. SynthLLM keeps questions and answers apart (the answer model answers the question), so
the part after such a block start is cut off:

- :func:`trim_question`: a leading label (``Question:``, ``New problem 2:``, ``**Question**:``) is removed;
  the text is cut at the first later label that starts an answer, a solution, an explanation, a hint or
  another question/problem (``Answer:``, ``Solution:``, ``New question:``, ``Question 2:``, ``Problem:``),
  bold or heading marks around the label included;
- :func:`trim_answer`: a leading ``Answer:``/``Solution:`` label is removed; the text is cut at the first
  label that starts another question or problem.

A label counts only at the start of the text, of a line, or after a sentence end (``.?!:``) and
whitespace, so ``the answer: yes`` inside a sentence stays. Both return ``(text, trimmed)``; the caller
counts ``trimmed`` and filters what is left (too short, truncated) as usual.
"""

from __future__ import annotations

import re

_MARK = r"[ \t]*(?:[#>*_]+[ \t]*)*"  # markdown heading / quote / bold marks before a label
_END = r"[ \t]*(?:\d+)?[ \t]*(?:[*_]+)?[ \t]*[:：](?:[ \t]*[*_]+)?"  # optional number, closing marks, colon
_QUESTION_LABEL = r"(?:new[ \t]+)?(?:question|problem|exercise)"
_ANSWER_LABEL = r"(?:final[ \t]+)?(?:answer|solution|explanation|hint|step[ \t]+1|reasoning)"
_BOUNDARY = r"(?:^|\n|(?<=[.?!:])[ \t]+)"

_LEAD_Q = re.compile(rf"^\s*{_MARK}{_QUESTION_LABEL}{_END}\s*", re.IGNORECASE)
_LEAD_A = re.compile(rf"^\s*{_MARK}{_ANSWER_LABEL}{_END}\s*", re.IGNORECASE)
_CUT_Q = re.compile(rf"{_BOUNDARY}{_MARK}(?:{_ANSWER_LABEL}|{_QUESTION_LABEL}){_END}", re.IGNORECASE)
_CUT_A = re.compile(rf"{_BOUNDARY}{_MARK}{_QUESTION_LABEL}{_END}", re.IGNORECASE)


def _trim(text: str, lead: re.Pattern, cut: re.Pattern) -> tuple[str, bool]:
    body = lead.sub("", text, count=1)
    m = cut.search(body)
    if m is None:
        return body.strip(), False
    return body[:m.start()].strip(), True


def trim_question(text: str) -> tuple[str, bool]:
    """The question alone (leading label removed; cut before an answer or a next question) and whether
    anything was cut.

    Example:
        >>> trim_question("Question: Why did the war end?\\n\\n**Answer:** Because ...")
        ('Why did the war end?', True)
    """
    return _trim(text, _LEAD_Q, _CUT_Q)


def trim_answer(text: str) -> tuple[str, bool]:
    """The answer alone (leading ``Answer:``/``Solution:`` removed; cut before a next question or problem)
    and whether anything was cut.

    Example:
        >>> trim_answer("Solution: First ... so 12.\\nNew problem: A train ...")
        ('First ... so 12.', True)
    """
    return _trim(text, _LEAD_A, _CUT_A)
