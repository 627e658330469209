"""The prompts file (JSONL) and how each side's context is built from it.

One JSON object per line (blank lines are skipped):

    {"id": "colors", "prompt": "Name three primary colors.", "completion": "Red, yellow"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]}

- `prompt` (text) or `messages` (a chat: a list of {"role", "content"} with text content), not both;
- `completion` (optional text): the continuation that teacher forcing runs over. A chat whose last
  message is from the assistant and that has no `completion` uses that message as the completion;
- `id` (optional, text or integer): the prompt's name in outputs (default `line N`), unique;
- `theta_system`, `target_system` (optional text): this prompt's system prompt on that side, in
  place of `--theta-system` / `--target-system` (e.g. a different steering prompt per line).

Parsing needs no model; building token ids needs the tokenizer (`encode_context`): when the
tokenizer has a chat template (and it is not switched off), `prompt` becomes one user message and
the template is applied with the generation prompt; `--theta-system` / `--target-system` put a
system message first on that side (replacing one the chat already has). Without a chat template
the prompt text is used as it is (and system prompts or `messages` are refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from geomix_cli.errors import InputError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PromptRecord:
    """One line of the prompts file."""

    id: str
    line: int
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    completion: str = ""
    theta_system: str | None = None
    target_system: str | None = None


def parse_prompts(text: str, file: str) -> list[PromptRecord]:
    """PromptRecords from JSONL text; InputError naming `file:line` for the first bad line."""
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{file}:{number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON at column {exc.colno}: {exc.msg}", file=where) from None
        record = _record(obj, number, where)
        if record.id in seen:
            raise InputError(f"id {record.id!r} is already used on line {seen[record.id]}",
                             file=where)
        seen[record.id] = number
        records.append(record)
    if not records:
        raise InputError("no prompts (the file is empty; expected one JSON object per line with "
                         "'prompt' or 'messages')", file=file)
    return records


def read_prompts(path) -> list[PromptRecord]:
    """Read and parse a prompts JSONL file (through io, the only file reader)."""
    from geomix_cli.io import read_text

    return parse_prompts(read_text(path, what="prompts file"), str(path))


def _record(obj, number: int, where: str) -> PromptRecord:
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=where)
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        raise InputError("needs exactly one of 'prompt' (text) or 'messages' (a chat)",
                         file=where)
    completion = obj.get("completion", "")
    if completion is None:
        completion = ""
    if not isinstance(completion, str):
        raise InputError("'completion' must be text", file=where)
    systems = {}
    for side in ("theta_system", "target_system"):
        value = obj.get(side)
        if value is not None and not isinstance(value, str):
            raise InputError(f"'{side}' must be text", file=where)
        systems[side] = value
    raw_id = obj.get("id", f"line {number}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise InputError("'id' must be text or an integer", file=where)
    if has_prompt:
        if not isinstance(obj["prompt"], str):
            raise InputError("'prompt' must be text", file=where)
        return PromptRecord(id=str(raw_id), line=number, prompt=obj["prompt"],
                            completion=completion, **systems)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty list of {\"role\", \"content\"}",
                         file=where)
    clean = []
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise InputError(f"message {i} must be an object with text 'role' and 'content'",
                             file=where)
        if message["role"] not in ROLES:
            raise InputError(f"message {i} has role {message['role']!r}; expected one of "
                             f"{', '.join(ROLES)}", file=where)
        clean.append({"role": message["role"], "content": message["content"]})
    if clean[-1]["role"] == "assistant" and "completion" not in obj:
        completion = clean.pop()["content"]
        if not clean:
            raise InputError("the chat has only an assistant message (nothing to answer)",
                             file=where)
    return PromptRecord(id=str(raw_id), line=number, messages=tuple(clean), completion=completion,
                        **systems)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def context_text(tokenizer, record: PromptRecord, *, system: str | None = None,
                 chat: bool | None = None) -> tuple[str, bool]:
    """(the text of the context before the completion, whether the chat template was used).

    system: the side's system prompt (the record's own `theta_system` / `target_system`, when
    given, is passed here by the caller in its place).
    chat: None = use the chat template when the tokenizer has one; True = require it; False =
    never (raw `prompt` text)."""
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat and not has_chat_template(tokenizer):
        raise InputError("the tokenizer has no chat template (use --no-chat-template for raw "
                         "prompt text)")
    if not use_chat:
        if record.messages is not None:
            raise InputError(f"prompt {record.id!r} (line {record.line}) is a chat ('messages') "
                             "but no chat template is used; give 'prompt' text instead")
        if system is not None:
            raise InputError("--theta-system / --target-system need a chat template; this "
                             "tokenizer has none (or --no-chat-template was given)")
        return record.prompt, False
    messages = (list(record.messages) if record.messages is not None
                else [{"role": "user", "content": record.prompt}])
    if system is not None:
        messages = [{"role": "system", "content": system}] + [
            m for m in messages if m["role"] != "system"]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template may reject a role order
        raise InputError(f"prompt {record.id!r} (line {record.line}): the chat template "
                         f"refused it: {str(exc).splitlines()[0][:200]}") from None
    return text, True


def encode_context(tokenizer, record: PromptRecord, *, system: str | None = None,
                   chat: bool | None = None, split_special_tokens: bool = False) -> list[int]:
    """Token ids of one side's context (before the completion).

    A rendered chat template already holds its special tokens (BOS included), so it is tokenized
    without adding any; raw prompt text gets the tokenizer's usual special tokens (e.g. BOS).
    split_special_tokens=True tokenizes markup such as `<|im_start|>` as plain text (how the
    shipped SmolLM2 sample was made; see docs/models.md)."""
    text, used_chat = context_text(tokenizer, record, system=system, chat=chat)
    ids = tokenizer(text, add_special_tokens=not used_chat,
                    split_special_tokens=split_special_tokens)["input_ids"]
    if not ids:
        raise InputError(f"prompt {record.id!r} (line {record.line}) has no tokens")
    return list(ids)


def encode_both(record: PromptRecord, theta_tokenizer, target_tokenizer, *,
                theta_system: str | None = None, target_system: str | None = None,
                chat: bool | None = None, split_special_tokens: bool = False):
    """(theta context ids, target context ids): each side with its system prompt (the record's
    own `theta_system` / `target_system` first, then the command's)."""
    options = {"chat": chat, "split_special_tokens": split_special_tokens}
    theta_ids = encode_context(theta_tokenizer, record,
                               system=_pick(record.theta_system, theta_system), **options)
    target_ids = encode_context(target_tokenizer, record,
                                system=_pick(record.target_system, target_system), **options)
    return theta_ids, target_ids


def _pick(own: str | None, default: str | None) -> str | None:
    return own if own is not None else default


def encode_completion(tokenizer, record: PromptRecord, *,
                      split_special_tokens: bool = False) -> list[int]:
    """Token ids of the completion, tokenized on its own (so the completion's tokens are the same
    for both sides whatever their contexts)."""
    if not record.completion:
        return []
    return list(tokenizer(record.completion, add_special_tokens=False,
                          split_special_tokens=split_special_tokens)["input_ids"])


def token_text(tokenizer, token_id: int) -> str:
    """A token as text, for records and tables."""
    return tokenizer.decode([int(token_id)])
