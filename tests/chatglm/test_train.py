"""P-tuning v2 training on the tiny preset: the loss falls, only the prefix learns, the
checkpoint loads in the existing P-tuning loader, and runs are reproducible and resumable."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer, prefix_tuning, train
from kbqa.chatglm.load import save_pretrained
from kbqa.chatglm.prefix_tuning import IGNORE, attach_prefix, loss_sum
from kbqa.chatglm.quantize import QuantizedLinear
from kbqa.chatglm.train import (
    Encoded,
    Example,
    TrainConfig,
    Trainer,
    TrainingError,
    batch_indices,
    collate,
    encode_examples,
    evaluate_loss,
)

TINY = {**ChatGLM2.from_config("tiny").config.to_dict(), "padded_vocab_size": 512}
EXAMPLES = [
    Example("北京是中国的首都吗？", "是的。"),
    Example("你好", "你好！有什么可以帮你的吗？"),
    Example("round two?", "questions and answers.", (("round one", "yes"),)),
    Example("数字", "0 1 2 3 4 5"),
]


@pytest.fixture(scope="module")
def tok(sp_model_path: Path) -> ChatGLM2Tokenizer:
    return ChatGLM2Tokenizer(sp_model_path)


@pytest.fixture(scope="module")
def samples(tok: ChatGLM2Tokenizer) -> list[Encoded]:
    return encode_examples(tok, EXAMPLES, max_tokens=64).samples


def _base(quantize: str | None = None) -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config(TINY, quantize=quantize)


def _train(out: Path, samples: list[Encoded], **options: object) -> tuple[ChatGLM2, list[float]]:
    model = _base(options.pop("quantize", None))  # type: ignore[arg-type]
    settings = {"steps": 4, "batch_size": 2, "pre_seq_len": 4, "lr": 3e-2, **options}
    config = TrainConfig(out=out, **settings)  # type: ignore[arg-type]
    result = Trainer(model, samples, config, pad_id=0).run()
    assert len(result.losses) == result.steps == config.steps
    return model, result.losses


def test_samples_use_the_served_chat_prompt(tok: ChatGLM2Tokenizer) -> None:
    encoding = encode_examples(tok, EXAMPLES[2:3], max_tokens=64)
    (sample,) = encoding.samples
    prompt = tok.build_chat_input("round two?", [("round one", "yes")])
    response = [*tok.encode("questions and answers.", add_prefix=False), tok.eos_id]
    assert sample.input_ids == prompt + response and sample.n_prompt == len(prompt)
    assert encoding.truncated == 0

    ids, labels = collate([sample, encode_examples(tok, EXAMPLES[:1], 64).samples[0]], pad_id=0)
    assert ids.shape == labels.shape == (2, len(sample.input_ids))
    assert (labels[0, : len(prompt)] == IGNORE).all()
    assert labels[0, len(prompt) :].tolist() == response
    assert ids[1, -1] == 0 and labels[1, -1] == IGNORE  # right padding carries no loss

    # Too long: history goes first, then the question's start; the answer keeps half.
    long = Example("问题 " * 40, "答案 " * 40, (("old", "round"),))
    cut = encode_examples(tok, [long], max_tokens=32)
    assert cut.truncated == 1
    (short,) = cut.samples
    assert len(short.input_ids) == 32 and short.input_ids[:2] == tok.prefix_ids
    assert tok.decode(short.input_ids[: short.n_prompt]).endswith("答：")
    assert "old" not in tok.decode(short.input_ids)


def test_batches_depend_on_seed_and_step_only() -> None:
    first_epoch = [i for s in range(3) for i in batch_indices(6, 2, seed=1, step=s)]
    assert sorted(first_epoch) == list(range(6))
    assert batch_indices(6, 2, seed=1, step=4) == batch_indices(6, 2, seed=1, step=4)
    assert batch_indices(6, 6, seed=1, step=0) != batch_indices(6, 6, seed=2, step=0)


@pytest.mark.parametrize("projection", [False, True])
def test_training_learns_the_prefix_only_and_loads_as_a_ptuning_checkpoint(
    tmp_path: Path, samples: list[Encoded], projection: bool
) -> None:
    frozen = {k: v.clone() for k, v in _base().state_dict().items()}
    # Random tiny bases need a push to move; the projection learns faster and costs more.
    lr, steps, ratio = (0.1, 10, 0.8) if projection else (0.3, 30, 0.6)
    model, losses = _train(
        tmp_path / "out",
        samples[:2],
        steps=steps,
        lr=lr,
        prefix_projection=projection,
        save_every=steps // 3,
    )
    assert sum(losses[-3:]) / 3 < ratio * sum(losses[:3]) / 3, losses
    for name, tensor in model.state_dict().items():  # the base is bit-identical
        if not name.startswith("transformer.prefix_encoder."):
            assert torch.equal(tensor, frozen[name]), name

    out = tmp_path / "out"
    every = steps // 3
    assert {p.name for p in out.glob("checkpoint-*")} == {
        f"checkpoint-{n * every}" for n in (1, 2, 3)
    }
    base_dir = tmp_path / "base"
    save_pretrained(_base(), base_dir)
    loaded = ChatGLM2.from_pretrained(base_dir, ptuning_checkpoint=out)
    assert loaded.transformer.prefix_encoder is not None
    trained = model.transformer.prefix_encoder
    assert trained is not None
    for (name, got), (_, want) in zip(
        loaded.transformer.prefix_encoder.state_dict().items(),
        trained.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(got, want), name
    ids = torch.tensor([samples[0].input_ids])
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert not torch.allclose(ChatGLM2.from_pretrained(base_dir)(ids), model(ids), atol=1e-3)
    assert evaluate_loss(loaded, samples[:2], 0, 2) == pytest.approx(
        evaluate_loss(model, samples[:2], 0, 1), rel=1e-5
    )


def test_same_seed_same_curve_and_resume_continues_it(
    tmp_path: Path, samples: list[Encoded]
) -> None:
    _, curve = _train(tmp_path / "a", samples, steps=6, save_every=3)
    _, again = _train(tmp_path / "b", samples, steps=6)
    assert curve == again
    _, other_seed = _train(tmp_path / "c", samples, steps=6, seed=1)
    assert other_seed != curve

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a" / "checkpoint-3", resumed_dir / "checkpoint-3")
    _, resumed = _train(resumed_dir, samples, steps=6, save_every=3, resume=True)
    assert resumed == curve
    with pytest.raises(TrainingError, match="saved with batch_size=2"):
        _train(resumed_dir, samples, steps=6, batch_size=4, resume=True)


def test_micro_batches_and_recomputation_give_the_same_steps(
    tmp_path: Path, samples: list[Encoded]
) -> None:
    _, whole = _train(tmp_path / "a", samples, batch_size=4)
    _, micro = _train(tmp_path / "b", samples, batch_size=4, micro_batch=1, recompute=True)
    assert micro == pytest.approx(whole, rel=1e-5)


def test_int4_base_passes_gradients_through_its_dequantized_weights(
    tmp_path: Path, samples: list[Encoded]
) -> None:
    ids, labels = collate(samples, pad_id=0)
    model = _base("int4")
    encoder = attach_prefix(model, 4, projection=False, seed=0)
    assert all(type(m) is not QuantizedLinear for m in model.modules())
    loss_sum(model, ids, labels, recompute=False).backward()
    # Reference: the same prefix on plain QuantizedLinears, autograd keeping the weights.
    plain = _base("int4")
    plain.config.pre_seq_len = 4
    plain.transformer.prefix_encoder = copy.deepcopy(encoder)
    loss_sum(plain, ids, labels, recompute=False).backward()
    got, want = (
        encoder.embedding.weight.grad,
        plain.transformer.prefix_encoder.embedding.weight.grad,
    )
    assert got is not None and want is not None and got.abs().sum() > 0
    torch.testing.assert_close(got, want)

    model, losses = _train(tmp_path / "q", samples[:2], quantize="int4", steps=8, lr=0.3)
    assert losses[-1] < losses[0]
    assert model.config.quantization_bit == 4


def test_out_of_memory_names_what_to_lower(
    tmp_path: Path, samples: list[Encoded], monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "loss_sum", exhausted)
    with pytest.raises(TrainingError, match=r"micro-batch of 2 samples × \d+ tokens; lower the"):
        _train(tmp_path, samples, batch_size=4, micro_batch=2)


def test_the_training_forward_is_the_modules_forward(samples: list[Encoded]) -> None:
    """train_block's forward (grouped attention with the prefix always visible, the
    elementwise work as plain functions) gives the modules' hidden states and the same prefix
    gradient, with and without recomputation."""
    ids, _ = collate(samples, pad_id=0)
    model = _base()
    encoder = attach_prefix(model, 4, projection=True, seed=0)
    with torch.no_grad():
        encoder.embedding.weight.normal_()  # a prefix that matters to every layer

    def forward(run: str) -> tuple[torch.Tensor, torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        if run == "modules":
            hidden = model.transformer(ids)
        else:
            hidden = prefix_tuning.hidden_states(model, ids, recompute=run == "recompute")
        hidden.square().mean().backward()
        grad = encoder.embedding.weight.grad
        assert grad is not None
        return hidden.detach(), grad

    want_hidden, want_grad = forward("modules")
    assert want_grad.abs().sum() > 0
    for run in ("fast", "recompute"):
        hidden, grad = forward(run)
        torch.testing.assert_close(hidden, want_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)
