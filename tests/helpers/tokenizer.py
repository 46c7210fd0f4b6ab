"""A tiny byte-level BPE tokenizer built here with the `tokenizers` library (nothing downloaded),
wrapped as a Hugging Face fast tokenizer with the chat-template and Sa2VA special tokens."""

from __future__ import annotations

from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sa2va_shards.loader.encode import add_special_tokens

#: template markers of phi3 / qwen / internlm2, registered as single tokens like the real ones.
CHAT_TOKENS = ["<|user|>", "<|end|>", "<|assistant|>", "<|system|>", "<|im_start|>",
               "<|im_end|>"]
_CORPUS = ["There are 2 part regions in the picture: region1, region2.",
           "Segment the red dog on the left. Describe the region in detail.",
           "a person holding a cup; the car is blue, the cat is grey; yes no"]


@cache
def tiny_tokenizer(*, bos: bool = True, sa2va_tokens: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes), ~300 ids; `bos=False` imitates Qwen (no BOS);
    `sa2va_tokens=False` leaves Sa2VA's special tokens unregistered."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                 **({"bos_token": "<s>"} if bos else {}))
    hf.add_tokens(CHAT_TOKENS, special_tokens=True)
    if sa2va_tokens:
        add_special_tokens(hf)
    return hf
