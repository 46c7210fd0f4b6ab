"""Conversation turns -> `input_ids` and `labels`, as Sa2VA's training step makes them.

Sa2VA (through xtuner) templates every turn, then tokenizes turn by turn
(`template_map_fn` + `video_lisa_encode_fn`):

- input  = SYSTEM (first turn only, when a system text is given) + INSTRUCTION.format(input)
- output = answer + SUFFIX
- BOS before the first turn only: every template used here has `SUFFIX_AS_EOS`, so no EOS is
  added and no later turn gets a BOS; Qwen tokenizers have no BOS at all (xtuner decides by
  the tokenizer's class name; we also treat a missing `bos_token_id` as none).
- SEP after every answer, without loss.
- labels: -100 on BOS, inputs and SEP; the answer and its suffix are the loss targets.

One rule differs on purpose: xtuner cuts `input_ids` at `max_length` wherever that falls, which
can cut an image or region block (the model then fills fewer `<IMG_CONTEXT>` slots than it has
features) or a `[SEG]` (a mask without its token). Here a cut is allowed only after the last
such token; otherwise the sample is refused (`EncodeError`, counted by the loader as
`too_long`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sa2va_shards.errors import SampleError
from sa2va_shards.loader.prompts import IMG_CONTEXT

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "TEMPLATES",
    "ChatTemplate",
    "EncodeError",
    "Encoder",
    "add_special_tokens",
]

IGNORE_INDEX = -100
#: tokens Sa2VA adds to the tokenizer (`[SEG]`, `<p>`, `</p>`, `<vp>`, `</vp>`) plus InternVL's
#: image tokens; each must encode to exactly one id.
SPECIAL_TOKENS: tuple[str, ...] = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>", "<img>", "</img>",
                                   IMG_CONTEXT)
#: tokens a truncation must never cut off (image/region blocks, mask requests).
_UNCUTTABLE = ("</img>", "</vp>", "[SEG]")


@dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """One xtuner `PROMPT_TEMPLATE` entry (only the fields the encode step uses)."""

    system: str
    instruction: str
    suffix: str
    sep: str
    #: the suffix ends the answer, so no EOS is appended and later turns get no BOS.
    suffix_as_eos: bool = True


#: the chat templates of Sa2VA's configs: phi3 (4B), qwen (1B and Qwen-based variants),
#: internlm2 (8B); strings as in xtuner's `PROMPT_TEMPLATE`.
TEMPLATES: dict[str, ChatTemplate] = {
    "phi3_chat": ChatTemplate(system="<|system|>\n{system}<|end|>\n",
                              instruction="<|user|>\n{input}<|end|>\n<|assistant|>\n",
                              suffix="<|end|>", sep="\n"),
    "qwen_chat": ChatTemplate(system="<|im_start|>system\n{system}<|im_end|>\n",
                              instruction="<|im_start|>user\n{input}<|im_end|>\n"
                                          "<|im_start|>assistant\n",
                              suffix="<|im_end|>", sep="\n"),
    "internlm2_chat": ChatTemplate(system="<|im_start|>system\n{system}<|im_end|>\n",
                                   instruction="<|im_start|>user\n{input}<|im_end|>\n"
                                               "<|im_start|>assistant\n",
                                   suffix="<|im_end|>", sep="\n"),
}


class EncodeError(SampleError):
    """A conversation that cannot be encoded under the rules above; `reason` is a stats key.
    The sample is intact (`corrupt=False`): skipped and counted, never a `strict` error."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, stage="encode", corrupt=False)


def add_special_tokens(tokenizer: Any) -> int:
    """Register `SPECIAL_TOKENS` with a Hugging Face tokenizer as Sa2VA does (added, special
    tokens); returns how many were new (resize the model's embeddings by that much)."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    return tokenizer.add_tokens(missing, special_tokens=True) if missing else 0


def _bos_ids(tokenizer: Any) -> list[int]:
    # xtuner's get_bos_eos_token_ids: Qwen tokenizers get no BOS whatever they declare
    if type(tokenizer).__name__.startswith(("QWenTokenizer", "Qwen2Tokenizer")):
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


class Encoder:
    """Tokenizes a sample's turns with one chat template (picklable: runs in loader workers).

    Args:
        tokenizer: a Hugging Face tokenizer (`encode(text, add_special_tokens=False)`,
            `bos_token_id`, `convert_tokens_to_ids`) with `SPECIAL_TOKENS` registered.
        template: a `TEMPLATES` name or a `ChatTemplate`.
        max_length: longest `input_ids` kept (Sa2VA's 4B config: 8192).
        system: system text for the first turn ('' for none, as Sa2VA's datasets).

    Raises:
        ValueError: an unknown template, or a special token that is not one id.
    """

    def __init__(self, tokenizer: Any, template: str | ChatTemplate = "phi3_chat", *,
                 max_length: int = 8192, system: str = "") -> None:
        if isinstance(template, str):
            if template not in TEMPLATES:
                raise ValueError(f"template {template!r}: one of {sorted(TEMPLATES)}")
            template = TEMPLATES[template]
        self.tokenizer, self.template = tokenizer, template
        self.max_length, self.system = int(max_length), system
        self.token_ids = {t: self._single_id(t) for t in SPECIAL_TOKENS}
        self.bos = _bos_ids(tokenizer)
        self.pad_id = 0  # Sa2VA's collate pads input_ids with 0 (DEFAULT_PAD_TOKEN_INDEX)

    def _single_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{token!r} encodes to {len(ids)} ids {ids}: register the special "
                             "tokens first (sa2va_shards.loader.encode.add_special_tokens)")
        return int(ids[0])

    @property
    def img_context_id(self) -> int:
        """The id every image/region feature slot holds."""
        return self.token_ids[IMG_CONTEXT]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, turns: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """`input_ids` and `labels` of turns `[{"input": question, "output": answer}, ...]`
        (question/answer text without the template).

        Raises:
            EncodeError: `too_long` when `max_length` would cut an image or region block or
                a `[SEG]`; `no_turns` for an empty conversation.
        """
        if not turns:
            raise EncodeError("no_turns", "a conversation needs at least one turn")
        t = self.template
        input_ids, labels = list(self.bos), [IGNORE_INDEX] * len(self.bos)
        for i, turn in enumerate(turns):
            text = t.instruction.format(input=turn["input"], round=i + 1)
            if i == 0 and self.system:
                text = t.system.format(system=self.system) + text
            question, answer = self._ids(text), self._ids(turn["output"] + t.suffix)
            input_ids += question + answer
            labels += [IGNORE_INDEX] * len(question) + answer
            if t.sep:
                sep = self._ids(t.sep)
                input_ids += sep
                labels += [IGNORE_INDEX] * len(sep)
        return self._truncate(input_ids, labels)

    def _truncate(self, input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        if len(input_ids) <= self.max_length:
            return input_ids, labels
        keep = {self.token_ids[tok] for tok in _UNCUTTABLE}
        last = max((i for i, v in enumerate(input_ids) if v in keep), default=-1)
        if last >= self.max_length:
            raise EncodeError("too_long", f"{len(input_ids)} tokens; max_length "
                                          f"{self.max_length} would cut an image/region block "
                                          "or a [SEG]")
        return input_ids[:self.max_length], labels[:self.max_length]
