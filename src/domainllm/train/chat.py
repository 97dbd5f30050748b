"""The chat template set on every tokenizer the pipeline builds.

Real base models bring their own template; built tiny models get this one, so
that instruction tuning, generation and judging all format prompts the same way.
"""

from __future__ import annotations

USER_HEADER = "### ユーザー:\n"
ASSISTANT_HEADER = "### アシスタント:\n"

# Jinja, as transformers' apply_chat_template expects. The assistant turn ends
# with the eos token so that generation learns to stop. The headers are
# substituted as Jinja string literals (their newlines escaped).
CHAT_TEMPLATE = (
    (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}{{ '@USER@' }}{{ message['content'] }}\n"
        "{% elif message['role'] == 'assistant' %}{{ '@ASSISTANT@' }}"
        "{{ message['content'] }}{{ eos_token }}\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '@ASSISTANT@' }}{% endif %}"
    )
    .replace("@USER@", USER_HEADER.replace("\n", "\\n"))
    .replace("@ASSISTANT@", ASSISTANT_HEADER.replace("\n", "\\n"))
)


def format_prompt(tokenizer, instruction: str) -> str:
    """Return the chat-formatted prompt for one user instruction, ready for generation."""
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )
