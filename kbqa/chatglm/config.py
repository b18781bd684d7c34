"""ChatGLM2 configuration, with field names exactly as in the checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ChatGLM2Config:
    num_layers: int = 28
    hidden_size: int = 4096
    num_attention_heads: int = 32
    kv_channels: int = 128  # per-head width
    multi_query_attention: bool = True
    multi_query_group_num: int = 2  # number of key/value groups when multi_query_attention
    ffn_hidden_size: int = 13696
    padded_vocab_size: int = 65024
    seq_length: int = 32768  # longest position the rotary table covers
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    add_bias_linear: bool = False  # bias on dense / dense_h_to_4h / dense_4h_to_h
    add_qkv_bias: bool = True
    post_layer_norm: bool = True  # final_layernorm present
    apply_residual_connection_post_layernorm: bool = False
    original_rope: bool = True
    rope_ratio: float = 1.0  # rotary positions are divided by it (chatglm2-6b-32k: 16)
    quantization_bit: int = 0  # 0: floating point; 4 or 8: the chatglm2-6b-int4/int8 layout
    pre_seq_len: int | None = None  # P-tuning v2 prefix length
    prefix_projection: bool = False
    eos_token_id: int = 2
    pad_token_id: int = 0
    torch_dtype: str = "float16"

    def __post_init__(self) -> None:
        if not self.rmsnorm or not self.original_rope:
            raise ValueError(
                "only ChatGLM2's RMSNorm and original (interleaved) rotary are supported"
            )
        if self.num_attention_heads % self.kv_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"multi_query_group_num {self.kv_groups}"
            )
        # The rotary half of a head is rotated as (even, odd) pairs, so it must be even.
        if self.kv_channels % 4:
            raise ValueError(f"kv_channels must be a multiple of 4, got {self.kv_channels}")
        if self.quantization_bit not in (0, 4, 8):
            raise ValueError(f"quantization_bit must be 0, 4 or 8, got {self.quantization_bit}")
        if self.pre_seq_len is not None and self.pre_seq_len <= 0:
            raise ValueError(f"pre_seq_len must be positive, got {self.pre_seq_len}")

    @property
    def kv_groups(self) -> int:
        return (
            self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads
        )

    @property
    def qkv_size(self) -> int:
        """Output width of the fused query_key_value projection."""
        return (self.num_attention_heads + 2 * self.kv_groups) * self.kv_channels

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatGLM2Config:
        """Build from a config.json dict; keys that are not fields (auto_map, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_name(cls, name: str) -> ChatGLM2Config:
        if name not in PRESETS:
            raise ValueError(f"unknown ChatGLM2 preset {name!r}; known: {', '.join(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    def to_dict(self) -> dict[str, Any]:
        """The config.json content, including the keys that mark it as a ChatGLM checkpoint."""
        return {
            "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            **dataclasses.asdict(self),
        }


PRESETS: dict[str, dict[str, Any]] = {
    "chatglm2-6b": {},  # the dataclass defaults are chatglm2-6b's config.json
    # Fast on CPU; the real vocabulary size so ChatGLM2's special ids (64790..64793) are
    # valid and a real tokenizer can drive it. kv_channels 16 gives four rotary pairs.
    "tiny": {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "kv_channels": 16,
        "multi_query_group_num": 2,
        "ffn_hidden_size": 128,
        "seq_length": 2048,
        "torch_dtype": "float32",
    },
}
