"""Tiny random-initialised causal LMs and a word-level tokenizer, built in the tests (no download).

`save_tiny_model(folder, seed=..., words=...)` writes a Hugging Face folder (config.json, weights,
tokenizer with a chat template) that `geomix pairs` / `geomix sample` load like any local model.
Weights are drawn with a large initialiser range so next-token distributions are far from uniform
(alpha* then moves away from 1/2 and the ESS balance is not trivially 1)."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<|sys|>", "<|user|>", "<|asst|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<|sys|> {{ m['content'] }} <|end|> "
    "{% elif m['role'] == 'user' %}<|user|> {{ m['content'] }} <|end|> "
    "{% else %}<|asst|> {{ m['content'] }} <|end|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|asst|> {% endif %}")


def words(n_plain: int = 25) -> list[str]:
    return SPECIALS + [f"w{i}" for i in range(n_plain)]


def tiny_tokenizer(vocab_words=None, *, chat_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = vocab_words or words()
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab_words)},
                                         unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="w0",
                                  additional_special_tokens=SPECIALS[3:])
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size: int, *, seed: int = 0, init: float = 0.35):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, initializer_range=init, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_model(folder, *, seed: int = 0, vocab_words=None, chat_template: bool = True,
                    init: float = 0.35) -> Path:
    folder = Path(folder)
    tok = tiny_tokenizer(vocab_words, chat_template=chat_template)
    model = tiny_model(len(tok), seed=seed, init=init)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
