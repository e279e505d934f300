"""Prompt families (megasynth.generate.prompts): rendering, versions, config validation."""

from __future__ import annotations

import pytest

from megasynth.config import StudyConfig
from megasynth.generate.prompts import (COSMOPEDIA_AUDIENCES, PROMPT_FAMILIES, PROMPT_VERSION, build_prompt,
                                        prompt_spec, style_prompt_spec)
from megasynth.utils import MegasynthError

DOC = "The river rises in the northern hills and flows south for two hundred miles before it reaches the sea."
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _all_specs():
    for family, variants in PROMPT_FAMILIES.items():
        for variant in variants:
            style = variant if family == "default" else "hq"
            yield style, prompt_spec(style, family, variant)


def test_every_family_and_variant_renders_base_and_chat(tiny_hf_tokenizer):
    tok = tiny_hf_tokenizer
    tok.chat_template = CHAT_TEMPLATE
    try:
        instructions, versions = set(), set()
        for style, spec in _all_specs():
            base = build_prompt(style, DOC, "base", spec=spec)
            assert DOC in base.text and base.text.endswith(base.response_prefix) and base.add_special_tokens
            assert base.text.index("Passage:") < base.text.index(DOC)
            chat = build_prompt(style, DOC, "chat", tok, spec)
            assert chat.text.startswith("<|user|>\n") and chat.text.endswith("<|assistant|>\n") and DOC in chat.text
            instructions.add(base.text.split("\n\nPassage:")[0])
            versions.add(spec.version)
        n = sum(len(v) for v in PROMPT_FAMILIES.values())
        assert n == 3 + 4 + 5 + 4 and len(instructions) == n and len(versions) == n
    finally:
        tok.chat_template = None


def test_default_family_is_todays_prompt_and_versions():
    for style in ("hq", "qa", "txbk"):
        spec = prompt_spec(style)
        assert (spec.family, spec.variant, spec.version) == ("default", style, PROMPT_VERSION[style])
        assert build_prompt(style, DOC, "base").text == build_prompt(style, DOC, "base", spec=spec).text
    assert prompt_spec("hq", "wrap").version == "wrap-medium-v1"
    assert prompt_spec("qa", "nemotron_cc", "diverse_qa").version == "nemotron_cc-diverse_qa-v1"
    p = build_prompt("qa", DOC, "base", spec=prompt_spec("qa", "wrap", "qa"))
    assert p.response_prefix == "Question:" and "'Question:'" in p.text
    hard = build_prompt("hq", DOC, "base", spec=prompt_spec("hq", "wrap", "hard")).text
    easy = build_prompt("hq", DOC, "base", spec=prompt_spec("hq", "wrap", "easy")).text
    assert "scholar" in hard and "child" in easy


def test_cosmopedia_audience_and_topic():
    spec = prompt_spec("txbk", "cosmopedia", "wikihow", audience="young_children", topic="River transport")
    p = build_prompt("txbk", DOC, "base", spec=spec)
    assert "WikiHow" in p.text and "5 to 10 years" in p.text and 'topic "River transport"' in p.text
    assert p.response_prefix == "How to "
    texts = {a: build_prompt("txbk", DOC, "base", spec=prompt_spec("txbk", "cosmopedia", audience=a)).text
             for a in COSMOPEDIA_AUDIENCES}
    assert len(set(texts.values())) == 4 and "researchers" in texts["professionals"]
    assert spec.provenance() == {"family": "cosmopedia", "variant": "wikihow", "version": "cosmopedia-wikihow-v1",
                                 "audience": "young_children", "topic": "River transport"}
    plain = build_prompt("txbk", DOC, "base", spec=prompt_spec("txbk", "cosmopedia")).text
    assert "Write for" not in plain and "topic" not in plain


def _cfg(prompts):
    return StudyConfig.from_dict({"corpora": {"train": [{"name": "toy", "loader": "jsonl", "path": "x"}]},
                                  "generation": {"prompts": prompts}})


def test_config_prompts_select_per_style_and_bad_names_are_one_line_errors():
    cfg = _cfg({"hq": {"family": "wrap", "variant": "hard"},
                "txbk": {"family": "cosmopedia", "variant": "blog_post", "audience": "high_school"}})
    assert style_prompt_spec(cfg.generation, "hq").version == "wrap-hard-v1"
    assert style_prompt_spec(cfg.generation, "txbk").audience == "high_school"
    assert style_prompt_spec(cfg.generation, "qa").version == PROMPT_VERSION["qa"]
    bad = [({"txbk": {"family": "cosmopedia", "audience": "kids"}}, r"generation\.prompts\.txbk\.audience: unknown "
            r"audience 'kids' \(known: young_children, high_school, college, professionals\)"),
           ({"hq": {"family": "rephrase"}}, r"generation\.prompts\.hq\.family: unknown prompt family 'rephrase'"),
           ({"hq": {"family": "wrap", "variant": "wikipedia"}}, r"generation\.prompts\.hq\.variant: unknown variant"),
           ({"hq": {"family": "wrap", "audience": "college"}}, r"generation\.prompts\.hq\.audience: only the "
            r"cosmopedia family"),
           ({"poem": {"family": "wrap"}}, r"generation\.prompts\.poem: unknown style"),
           ({"hq": {"family": "wrap", "tone": "x"}}, r"generation\.prompts\.hq\.tone: unknown key")]
    for prompts, msg in bad:
        with pytest.raises(MegasynthError, match=msg) as e:
            _cfg(prompts)
        assert "\n" not in str(e.value)
