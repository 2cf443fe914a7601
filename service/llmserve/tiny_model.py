"""Build a small, deterministic Qwen2-shaped causal LM with random weights.

The result looks like a DeepSeek-R1-Distill-Qwen checkpoint (architecture, special
tokens, chat template) at a size that loads in a second on a CPU. It is meant for
tests, benchmarks and smoke checks of a deployment, never for real answers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = "<\uff5c\u2581pad\u2581\uff5c>"
SPECIAL_TOKENS = [
    BOS,
    EOS,
    PAD,
    "<\uff5cUser\uff5c>",
    "<\uff5cAssistant\uff5c>",
    "<think>",
    "</think>",
]


@dataclass(frozen=True)
class TinyShape:
    """Shape of the generated model."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 0  # 0: derived from hidden_size like Qwen2 (about 2.75x)
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    seed: int = 0


def _data_text(name: str) -> str:
    return resources.files("llmserve").joinpath("data", name).read_text(encoding="utf-8")


def _train_tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _data_text("corpus.txt").splitlines()
    tok.train_from_iterator(corpus, trainer=trainer)
    # Like the DeepSeek-R1-Distill tokenizers: BOS is prepended to plain prompts.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 0)]
            ),
        ]
    )
    return tok


def write_sha256sums(directory: Path) -> Path:
    """Write a `sha256sum -c` compatible manifest of every file in `directory`."""
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.name == "SHA256SUMS":
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(directory).as_posix()}\n")
    manifest = directory / "SHA256SUMS"
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def make_tiny_model(directory: str | os.PathLike[str], shape: TinyShape | None = None) -> Path:
    """Create the model in `directory` and return its path."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    shape = shape or TinyShape()
    if shape.hidden_size % shape.heads or shape.heads % shape.kv_heads:
        raise ValueError("hidden size must divide by heads, and heads by kv heads")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(shape.vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=shape.max_position_embeddings,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _data_text("chat_template.jinja")
    # The shipped text yields fewer merges than a large vocabulary needs. Fill the rest
    # with plain added tokens so that every id the random model samples decodes to
    # visible text (a real checkpoint never samples ids its tokenizer lacks).
    missing = shape.vocab_size - len(tokenizer)
    if missing > 0:
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(missing)])
    vocab = max(shape.vocab_size, len(tokenizer))
    intermediate = shape.intermediate_size or (shape.hidden_size * 11 // 4 + 63) // 64 * 64

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        torch_dtype="float32",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(shape.seed)
    model = Qwen2ForCausalLM(config).eval()
    # The default init leaves the next-token distribution nearly flat. This scale gives the
    # tied embeddings a logit of about 6 for repeating the last token: sampling stays
    # varied while temperature and top-k visibly matter, as with a trained model.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(shape.seed)
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=gen) * (6.0 / shape.hidden_size))
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.95
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600; readers may be another user
    write_sha256sums(out)
    return out
