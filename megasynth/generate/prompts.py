"""Prompts of the synthetic styles (HQ, QA, TXBK), in a base-model and a chat format.

The styles follow published recipes, in our own words:

- ``hq``: rephrase a web document as clear, encyclopedic prose — WRAP's "Wikipedia-style" rephrasing
  (Maini et al. 2024, "Rephrasing the Web") and Nemotron-CC's wikipedia-style prompt (Su et al. 2024).
- ``qa``: rewrite the document as conversational question–answer pairs about its content — WRAP's QA
  style and Nemotron-CC's "diverse QA pairs".
- ``txbk``: a textbook section on the document's topic with explanations, worked examples and exercises
  — HF Cosmopedia (Ben Allal et al. 2024) textbook prompts seeded by web documents.

Formats:

- ``base``: a plain continuation prompt (instruction, the document, then a header that starts the
  answer) that a base model continues; the header's answer start (``response_prefix``) is prepended
  to the generated text so records read as complete documents.
- ``chat``: one user message rendered with the tokenizer's chat template (``add_generation_prompt``).
- ``auto``: ``chat`` if the tokenizer has a chat template, else ``base``.

Bump a style's :data:`PROMPT_VERSION` whenever its text changes; records carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

from megasynth.utils import MegasynthError

PROMPT_VERSION = {"hq": "hq-v1", "qa": "qa-v1", "txbk": "txbk-v1"}

# Instruction text per style (shared by both formats).
_INSTRUCTIONS = {
    "hq": (
        "Rewrite the passage below as a clear, well-organised encyclopedia article in the neutral, "
        "factual style of Wikipedia. Keep every fact, name, date and number from the passage, explain "
        "terms a general reader may not know, use complete sentences grouped into paragraphs, and leave "
        "out opinions, rhetoric and filler. Do not add facts that the passage does not support."
    ),
    "qa": (
        "Turn the passage below into a conversation of questions and answers about its content. A "
        "curious reader asks varied questions (facts, reasons, consequences, definitions) and each "
        "answer is accurate, self-contained and based only on the passage. Write each pair as "
        "'Question:' followed by 'Answer:'."
    ),
    "txbk": (
        "Using the passage below as the starting point, write a section of a textbook for students "
        "on the passage's main topic. Explain the key ideas step by step, give at least one worked "
        "example, and finish with a few exercises for the reader. Write in clear, instructive prose."
    ),
}

# Base format: the header after the document that starts the answer, and the answer's first words.
_BASE_HEADER = {
    "hq": ("Encyclopedia article:\n\n", ""),
    "qa": ("Questions and answers about the passage:\n\n", "Question:"),
    "txbk": ("Textbook section:\n\n", "## "),
}

# Base models tend to start another "passage" after they finish: stop there.
BASE_STOP = ["\nPassage:"]


@dataclass(frozen=True)
class Prompt:
    """One rendered generation prompt.

    ``text`` is what the tokenizer encodes: with ``add_special_tokens=True`` for ``base`` (adds BOS),
    ``False`` for ``chat`` (the template already contains them). ``response_prefix`` is the start of
    the answer already in the prompt; it is prepended to the generated text.
    """

    text: str
    format: str
    add_special_tokens: bool
    response_prefix: str = ""
    stop: tuple[str, ...] = ()


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(prompt_format: str, tokenizer) -> str:
    """``auto`` → ``chat`` if the tokenizer has a chat template else ``base``.

    Raises:
        MegasynthError: ``chat`` requested for a tokenizer without a chat template, or unknown format.
    """
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "base"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise MegasynthError("generation.prompt_format: chat needs a tokenizer with a chat template "
                             "(this generator has none; use base or auto)")
    if prompt_format not in ("base", "chat"):
        raise MegasynthError(f"generation.prompt_format: must be auto, base or chat, got {prompt_format!r}")
    return prompt_format


def build_prompt(style: str, document: str, prompt_format: str, tokenizer=None) -> Prompt:
    """Render the ``style`` prompt for one document excerpt in ``prompt_format`` (``base``/``chat``).

    ``tokenizer`` is needed for ``chat`` (``apply_chat_template``).

    Raises:
        MegasynthError: unknown style or format, or ``chat`` without a chat template.
    """
    if style not in _INSTRUCTIONS:
        raise MegasynthError(f"generation.styles: unknown style {style!r} (known: {', '.join(_INSTRUCTIONS)})")
    document = document.strip()
    if prompt_format == "base":
        header, prefix = _BASE_HEADER[style]
        text = f"{_INSTRUCTIONS[style]}\n\nPassage:\n{document}\n\n{header}{prefix}"
        return Prompt(text, "base", True, prefix, tuple(BASE_STOP))
    if prompt_format == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise MegasynthError("generation.prompt_format: chat needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": f"{_INSTRUCTIONS[style]}\n\nPassage:\n{document}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prompt(text, "chat", False)
    raise MegasynthError(f"generation.prompt_format: must be base or chat here, got {prompt_format!r}")
