"""Does a reader of the question and passage tell answerable questions from unanswerable ones
better than the relevance does? Aggregates only, per question language (safe on blind sets).

    .venv/bin/python bench/eval_answerability.py --work /tmp/zh bench/eval_sets/zh_dev.jsonl …

Each question goes through `Retriever.search` as in bench/eval_zh.py; the passages the chain
would keep are those with relevance ≥ `retrieval.min_relevance`. A question with none is refused
whatever a reader says, so readers are scored on the questions with kept passages ("kept"):

- `judge`: the bundled chat model (SmolLM2-135M-Instruct, as `kbqa ask` loads it) reads one
  prompt, "Passage: … Question: … Does the passage state the answer to the question? Answer yes
  or no.", and the score is log P(yes) − log P(no) from the next-token logits of ONE forward pass
  (no generation), on the best kept passage (`judge@1`) and the best of the first two
  (`judge@2`). `judge, random passage` is the sanity check: the same prompt for each
  answerable question over another question's passage; if the model reads the passage at all,
  its own passage must score higher (AUROC well above 0.5).
- `question likelihood`: the same model's mean log-probability of the question's tokens after
  "Passage: …\n\nQuestion: " minus that after "Question: " alone (how much the passage makes
  the question expected: unsupervised passage reranking, Sachan et al. 2022), best kept passage.
- `idf coverage`: the IDF-weighted share of the question's terms (kbqa.relevance.query_terms)
  that occur in the best kept passage, IDF over the KB's chunks: rare words of the question
  (a product, the value asked about) count most.

AUROC = P(score of an answerable question > that of an unanswerable one), ties half. "Extra
refused at a cost of k" = unanswerable questions a threshold on the score refuses when it may
refuse k answerable ones (of the kept ones), for the relevance itself (a higher `min_relevance`)
and for each reader, and for the best rule "relevance < t or reader < j" (in-sample: t and j
chosen on the same questions, an upper bound).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval_retrieval import EmbeddingCache
from eval_zh import KB, build, lang_of, load_questions, search_as_asked

PROMPT = (
    "Passage:\n{passage}\n\nQuestion: {question}\n\n"
    "Does the passage state the answer to the question? Answer yes or no."
)
COSTS = (0, 2, 4, 8)


@dataclass
class Item:
    question: str
    lang: str
    unanswerable: bool
    top: float
    passages: list[str]
    """Kept passages, best first (empty: refused by relevance)."""
    scores: dict[str, float] = field(default_factory=dict)


class Judge:
    """One forward pass of the bundled model over the yes/no prompt; log-odds of yes."""

    def __init__(self, cache_root: Path) -> None:
        import torch

        from kbqa.llm.local_model import load_local_model

        self.torch = torch
        self.lm = load_local_model("", cache_root)
        self.yes = self._ids(["Yes", "yes", " Yes", " yes"])
        self.no = self._ids(["No", "no", " No", " no"])
        self.passes = 0
        self.seconds = 0.0
        self.tokens = 0

    def _ids(self, words: Sequence[str]) -> list[int]:
        tokenizer = self.lm.tokenizer
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        return sorted({i[0] for i in ids if len(i) == 1})

    def __call__(self, passage: str, question: str) -> float:
        torch = self.torch
        prompt = PROMPT.format(passage=passage, question=question)
        ids = self.lm.chat_prompt_ids([{"role": "user", "content": prompt}])
        started = time.perf_counter()
        with torch.no_grad():
            out = self.lm.model(torch.tensor([ids]), **self.lm.last_logits_only)
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)  # [vocab]
        self.seconds += time.perf_counter() - started
        self.passes += 1
        self.tokens += len(ids)
        return float(torch.logsumexp(logp[self.yes], 0) - torch.logsumexp(logp[self.no], 0))

    def question_gain(self, passage: str, question: str) -> float:
        """Mean log P(question tokens) after the passage minus that without it."""
        return self._question_logp(f"Passage: {passage}\n\nQuestion: ", question) - (
            self._question_logp("Question: ", question)
        )

    def _question_logp(self, prefix: str, question: str) -> float:
        torch = self.torch
        tokenizer = self.lm.tokenizer
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        tail = tokenizer(question, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])  # [1, S]
        with torch.no_grad():
            logp = torch.log_softmax(self.lm.model(ids).logits[0, :-1].float(), -1)  # [S-1, V]
        picked = logp.gather(1, ids[0, 1:, None])[:, 0]  # [S-1]: log P(token s+1 | ..s)
        return float(picked[len(head) - 1 :].mean())


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _occurs(term: str, text: str) -> bool:
    if not term.isascii():
        return term in text
    return re.search(rf"(?<![a-z0-9]){re.escape(term)}", text) is not None


class Idf:
    """Inverse document frequency of question terms over the KB's chunks (computed lazily)."""

    def __init__(self, settings: Any) -> None:
        from kbqa.retrieval import Retriever

        kb = Retriever(settings).kb(KB)
        self.chunks = []
        for document in kb.documents():
            got = kb.document(document.doc_id)
            for chunk in got[1] if got else []:
                self.chunks.append(_fold(f"{document.source} {chunk.heading or ''} {chunk.text}"))
        self._idf: dict[str, float] = {}

    def __call__(self, term: str) -> float:
        if term not in self._idf:
            df = sum(_occurs(term, chunk) for chunk in self.chunks)
            self._idf[term] = math.log((len(self.chunks) + 1) / (df + 1))
        return self._idf[term]

    def coverage(self, question: str, passage: str) -> float:
        from kbqa.relevance import query_terms

        weights = {t: self(t) for t in query_terms(question)}
        text = _fold(passage)
        total = sum(weights.values())
        return sum(w for t, w in weights.items() if _occurs(t, text)) / total if total else 1.0


def collect(settings: Any, questions: list[dict[str, Any]]) -> list[Item]:
    from kbqa.relevance import relevance_of
    from kbqa.retrieval import Retriever

    retriever = Retriever(settings)
    items = []
    for q in questions:
        hits = search_as_asked(retriever, q, settings.retrieval.top_k)
        kept = retriever.relevant(hits)
        top = relevance_of(hits[0]) if hits else 0.0
        passages = [h.text for h in kept[:2]]
        item = Item(q["question"], lang_of(q), bool(q.get("unanswerable")), top, passages)
        item.scores["relevance"] = top
        items.append(item)
    return items


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def refused_at_cost(items: list[Item], score: Callable[[Item], float], cost: int) -> int:
    """Unanswerable items below the threshold that refuses at most `cost` answerable ones."""
    answerable = sorted(score(i) for i in items if not i.unanswerable)
    if cost >= len(answerable):
        return sum(i.unanswerable for i in items)
    threshold = answerable[cost]  # refuse strictly below the (cost+1)-th lowest answerable
    return sum(i.unanswerable and score(i) < threshold for i in items)


def best_combined(items: list[Item], reader: str, cost: int) -> int:
    """The most unanswerable items "relevance < t or reader < j" refuses at `cost`."""
    best = 0
    for t in [*sorted({i.scores["relevance"] for i in items}), math.inf]:
        below = [i for i in items if i.scores["relevance"] < t]
        spent = sum(not i.unanswerable for i in below)
        if spent > cost:
            break  # t only grows
        rest = [i for i in items if i.scores["relevance"] >= t]
        # Of the rest, refuse by the reader up to the (cost - spent + 1)-th answerable score.
        best = max(
            best,
            sum(i.unanswerable for i in below)
            + refused_at_cost(rest, lambda i: i.scores[reader], cost - spent),
        )
    return best


def report(items: list[Item], readers: list[str], label: str) -> None:
    print(f"\n{label}\n")
    for lang in sorted({i.lang for i in items}):
        mine = [i for i in items if i.lang == lang]
        kept = [i for i in mine if i.passages]
        pos = [i for i in kept if not i.unanswerable]
        neg = [i for i in kept if i.unanswerable]
        all_pos = [i.top for i in mine if not i.unanswerable]
        all_neg = [i.top for i in mine if i.unanswerable]
        print(
            f"{lang}: {len(all_pos)} answerable ({len(pos)} kept), {len(all_neg)} unanswerable "
            f"({len(neg)} kept: passed the relevance); relevance AUROC over all "
            f"{auroc(all_pos, all_neg):.3f}\n"
        )
        costs = " | ".join(f"cost {c}" for c in COSTS)
        print(f"| score (kept questions) | AUROC | extra refused at {costs} |")
        print("|---|---|" + "---|" * len(COSTS))
        for name in ["relevance", *readers]:
            s = [refused_at_cost(kept, lambda i, n=name: i.scores[n], c) for c in COSTS]
            a = auroc([i.scores[name] for i in pos], [i.scores[name] for i in neg])
            print(f"| {name} | {a:.3f} | " + " | ".join(f"{x}/{len(neg)}" for x in s) + " |")
        for name in readers:
            s = [best_combined(kept, name, c) for c in COSTS]
            print(
                f"| relevance < t or {name} < j (in-sample best) | – | "
                + " | ".join(f"{x}/{len(neg)}" for x in s)
                + " |"
            )
        checks = [i for i in pos if "random" in i.scores]
        if checks:
            own = [i.scores["judge@1"] for i in checks]
            other = [i.scores["random"] for i in checks]
            print(
                f"\njudge, own passage vs another question's passage (answerable, kept): "
                f"AUROC {auroc(own, other):.3f} over {len(checks)}"
            )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sets", type=Path, nargs="+", help="question files (JSONL)")
    parser.add_argument("--work", type=Path, required=True, help="corpus, KB and vector cache")
    parser.add_argument("--lang", choices=["en", "zh", "all"], default="all")
    parser.add_argument("--no-judge", action="store_true", help="lexical readers only")
    args = parser.parse_args()
    cache = EmbeddingCache(args.work / "embeddings.npz")
    cache.install()
    settings = build(args.work, rebuild=False)
    items: list[Item] = []
    for path in args.sets:
        items += [
            i for i in collect(settings, load_questions(path)) if args.lang in ("all", i.lang)
        ]
    cache.save()
    idf = Idf(settings)
    judge = None if args.no_judge else Judge(settings.cache_dir)
    kept = [i for i in items if i.passages]
    for n, item in enumerate(kept):
        question = item.question
        item.scores["idf coverage"] = idf.coverage(question, item.passages[0])
        if judge is not None:
            judged = [judge(p, question) for p in item.passages]
            item.scores["judge@1"], item.scores["judge@2"] = judged[0], max(judged)
            item.scores["question likelihood"] = judge.question_gain(item.passages[0], question)
            if not item.unanswerable:  # another question's passage, far down the list
                other = kept[(n + len(kept) // 2) % len(kept)].passages[0]
                item.scores["random"] = judge(other, question)
    llm = ["judge@1", "judge@2", "question likelihood"]
    readers = ["idf coverage"] + ([] if judge is None else llm)
    names = ", ".join(p.name for p in args.sets)
    report(items, readers, f"{names}: {len(items)} questions")
    if judge is not None and judge.passes:
        print(
            f"judge: {judge.passes} forward passes, {judge.tokens / judge.passes:.0f} tokens "
            f"and {1000 * judge.seconds / judge.passes:.0f} ms each on average"
        )


if __name__ == "__main__":
    main()
