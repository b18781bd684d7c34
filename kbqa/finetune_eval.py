"""Held-out evaluation of a P-tuned model: response loss, and how much of each reference
answer the greedy generation reproduces (exact match and ROUGE-L).

ROUGE-L here is the F1 of the longest common subsequence over units that suit both
scripts: each CJK character is one unit (Chinese has no spaces to split words on, and the
official ChatGLM2 scripts score characters after jieba anyway), a run of letters or digits
is another, punctuation and spaces are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kbqa.chatglm.chatglm2 import ChatGLM2
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer
from kbqa.chatglm.train import Example, encode_examples, evaluate_loss

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def units(text: str) -> list[str]:
    return [u.lower() for u in _UNIT.findall(text)]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, one row of the table at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """F1 of the longest common subsequence of units (0 when either side has none)."""
    pred, ref = units(prediction), units(reference)
    common = _lcs(pred, ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """Equal once case, spaces and punctuation are set aside."""
    return units(prediction) == units(reference)


@dataclass(frozen=True)
class HeldOutResult:
    n: int
    loss: float  # mean response-token cross-entropy
    rouge_l: float  # mean over the samples
    exact_match: float  # share of samples

    def to_json(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "loss": round(self.loss, 4),
            "rouge_l": round(self.rouge_l, 4),
            "exact_match": round(self.exact_match, 4),
        }


def evaluate_held_out(
    model: ChatGLM2,
    tokenizer: ChatGLM2Tokenizer,
    examples: Sequence[Example],
    max_tokens: int,
    max_new_tokens: int = 128,
    batch: int = 4,
) -> HeldOutResult:
    """Loss on examples (as trained: truncated to max_tokens), then a greedy answer to each."""
    encoded = encode_examples(tokenizer, examples, max_tokens).samples
    loss = evaluate_loss(model, encoded, tokenizer.pad_id, batch)
    model.refresh_prefix()  # a KV cache set up before training holds the old prefix
    rouge, exact = 0.0, 0
    for example, sample in zip(examples, encoded, strict=True):
        prompt = sample.input_ids[: sample.n_prompt]
        new = model.generate(
            prompt, max_new_tokens=max_new_tokens, temperature=0, eos_token_ids=[tokenizer.eos_id]
        )
        answer = tokenizer.decode(list(new))
        rouge += rouge_l(answer, example.response)
        exact += exact_match(answer, example.response)
    n = len(examples)
    return HeldOutResult(n, loss, rouge / n, exact / n)
