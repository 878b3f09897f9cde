"""Text side of Qwen-VL: tokenizers, box strings, multimodal segments, ChatML and packing.

  tokenizer.py     Tokenizer contract; QwenTokenizer (tiktoken), SentencePieceTokenizer; load_tokenizer
  boxes.py         pixel <-> normalised boxes, <box>/<ref>/<quad> strings, a never-raising parser
  interface.py     segment lists -> ids + images: the only way special ids enter a sequence
  conversation.py  ChatML (stage 3), pretraining (stages 1-2) samples, chat prompts -> TokenizedSample
  packing.py       fixed-length rows (packed or padded) with segment ids, positions, loss mask, images
"""

from qwenvl_jax.text.boxes import (ParsedBox, PixelBox, denormalize_box, format_box, format_quad,
                                   format_ref, normalize_box, parse_boxes, parse_boxes_per_image,
                                   parse_first_box, parse_quads, to_pixel_boxes)
from qwenvl_jax.text.conversation import (DEFAULT_SYSTEM, TokenizedSample, chat_prompt,
                                          chat_stop_ids, chatml_from_record, chatml_sample,
                                          pretrain_sample)
from qwenvl_jax.text.interface import (DEFAULT_IMAGE_TOKENS, Encoded, MarkupError, encode_markup,
                                       encode_segments, parse_markup)
from qwenvl_jax.text.packing import (PackedBatch, PackedRow, PackingStats, pack_samples,
                                     pad_samples, stack_rows)
from qwenvl_jax.text.tokenizer import (QwenTokenizer, SentencePieceTokenizer, Tokenizer,
                                       find_qwen_hf_tokenizer_json, find_qwen_vocab, load_tokenizer,
                                       special_token_names)
