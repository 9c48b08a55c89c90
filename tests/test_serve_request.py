"""How `rlm serve` reads a chat-completions body: what each field does to the run, and what is
refused (the server tests drive the same code through the openai SDK; these pin the edges)."""

from __future__ import annotations

from typing import Any

import pytest

from rlm.serve.chat_request import RequestError, parse_chat_request


def parse(body: dict[str, Any], split: str = "last_user", limit: int | None = None) -> Any:
    return parse_chat_request(
        {"model": "rlm", **body},
        model_id="rlm",
        default_split=split,  # type: ignore[arg-type]
        max_context_chars=limit,
    )


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_last_user_split_keeps_earlier_messages_as_context() -> None:
    chat = parse({"messages": [{"role": "system", "content": "doc"}, user("a"), user("q?")]})
    assert chat.question == "q?"
    assert chat.context == [{"role": "system", "content": "doc"}, {"role": "user", "content": "a"}]


def test_all_context_split_has_no_question() -> None:
    chat = parse({"messages": [user("a"), user("b")]}, split="all_context")
    assert chat.question is None and len(chat.context) == 2


def test_the_question_must_be_the_last_message() -> None:
    with pytest.raises(RequestError, match="last message must be a user message"):
        parse({"messages": [user("q"), {"role": "assistant", "content": "prefill"}]})


@pytest.mark.parametrize(
    "neutral",
    [{"n": 1}, {"tools": []}, {"tool_choice": "none"}, {"logprobs": False}, {"stop": None}],
)
def test_neutral_values_of_unsupported_fields_are_accepted(neutral: dict[str, Any]) -> None:
    assert parse({"messages": [user("q")], **neutral}).question == "q"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"stop": ["\n"]}, "'stop' is not supported"),
        ({"response_format": {"type": "json_object"}}, "not supported"),
        ({"stream_options": {"include_usage": True}}, "only allowed when stream is true"),
        ({"max_depth": 2, "rlm": {"max_depth": 3}}, "given twice with different values"),
        ({"rlm": {"max_budget": -1}}, "must be a positive number"),
        ({"max_iterations": 2.5}, "must be an integer"),
        ({"rlm": {"split": "middle"}}, "rlm.split must be one of"),
    ],
)
def test_fields_that_would_be_misread_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse({"messages": [user("q")], **body})


def test_top_level_max_tokens_is_openais_and_rlm_max_tokens_is_the_tree_limit() -> None:
    chat = parse({"messages": [user("q")], "max_tokens": 50, "rlm": {"max_tokens": 10_000}})
    assert chat.settings == {"max_tokens": 10_000}
    assert parse({"messages": [user("q")], "max_tokens": 50}).settings == {}


def test_only_text_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(RequestError, match="only text parts"):
        parse({"messages": [{"role": "user", "content": [image]}]})


def test_tool_messages_are_refused() -> None:
    with pytest.raises(RequestError, match="no tool messages"):
        parse({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}, user("q")]})


def test_context_size_limit_is_413() -> None:
    with pytest.raises(RequestError) as caught:
        parse({"messages": [user("x" * 101)]}, limit=100)
    assert caught.value.status == 413
