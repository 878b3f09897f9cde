"""Model answers in chat history and box text in training records tokenise as the released code does.

The oracle is the released construction itself: a tiktoken Encoding over the same ranks with the Qwen
specials registered, encoding with `allowed_special=IMAGE_ST` as make_context / tokenization_qwen.py do
(texts here hold no <img>, whose path handling we deliberately do not reproduce for model text).
"""

import pytest

from qwenvl_jax.infer.chat import answer_segments
from qwenvl_jax.text import conversation, interface
from qwenvl_jax.text.tokenizer import QWEN_PATTERN

IMAGE_ST = {"<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"}

ANSWERS = [
  "<ref>the dog</ref><box>(10, 20), (300, 400)</box>",  # spaces kept
  "<ref>a cat</ref><box>(010,020),(300,400)</box> sits.",  # leading zeros kept
  "<ref>edge</ref><box>(1,2),(3,1000)</box>",  # 1000 is no valid box: the tags are still specials
  "<ref>unclosed <box>(1,2),(3,4)</box> then </ref> stray </box>",
  "plain answer, no tags",
  "<quad>(1,2),(3,4),(5,6),(7,8)</quad>",
]


@pytest.fixture(scope="module")
def released(qwen_tok):
  import tiktoken
  return tiktoken.Encoding("Qwen", pat_str=QWEN_PATTERN, mergeable_ranks=qwen_tok._ranks,
                           special_tokens=dict(qwen_tok.special_ids))


@pytest.mark.parametrize("answer", ANSWERS)
def test_history_answer_ids_equal_released_make_context(qwen_tok, released, answer):
  enc = interface.encode_segments(qwen_tok, answer_segments(answer))
  assert enc.ids == released.encode(answer, allowed_special=IMAGE_ST)
  assert qwen_tok.decode(enc.ids) == answer  # nothing rewritten
  # In the prompt: <|im_start|>assistant\n{answer}<|im_end|>\n, as make_context's _tokenize_str.
  ids = conversation.chat_prompt(qwen_tok, [("hi", answer_segments(answer))], "again").ids.tolist()
  turn = ([qwen_tok.im_start_id] + released.encode("assistant") + released.encode("\n")
          + released.encode(answer, allowed_special=IMAGE_ST) + [qwen_tok.im_end_id] + released.encode("\n"))
  assert any(ids[i:i + len(turn)] == turn for i in range(len(ids)))


def test_model_written_img_stays_text(qwen_tok):
  segs = answer_segments("see <img>/etc/passwd</img> <box>(1,2),(3,4)</box>")
  assert not any("image" in s for s in segs)
  enc = interface.encode_segments(qwen_tok, segs)
  assert enc.images == [] and qwen_tok.img_start_id not in enc.ids and qwen_tok.box_start_id in enc.ids


@pytest.mark.parametrize("value", ["Look: <ref>the dog</ref><box>(10, 20), (300, 400)</box>.",
                                   "<ref>a cat</ref><box>(010,020),(300,400)</box>",
                                   "<quad>(1, 2),(3,4),(5,6),(7,8)</quad>"])
def test_training_box_text_kept_as_written(qwen_tok, released, value):
  enc = interface.encode_markup(qwen_tok, value)
  assert enc.ids == released.encode(value, allowed_special=IMAGE_ST)
  record = {"conversations": [{"from": "user", "value": "where?"}, {"from": "assistant", "value": value}]}
  ids = conversation.chatml_from_record(qwen_tok, record).ids.tolist()
  want = released.encode(value, allowed_special=IMAGE_ST)
  assert any(ids[i:i + len(want)] == want for i in range(len(ids)))


def test_written_must_read_back_as_the_box(qwen_tok):
  with pytest.raises(ValueError, match="written"):
    interface.encode_segments(qwen_tok, [{"box": (1, 2, 3, 4), "written": "(1,2),(3,5)"}])


def test_invalid_box_text_in_a_record_is_refused(qwen_tok):
  record = {"conversations": [{"from": "user", "value": "q"},
                              {"from": "assistant", "value": "<ref>x</ref><box>(1,2),(3,1000)</box>"}]}
  with pytest.raises(interface.MarkupError, match="box"):
    conversation.chatml_from_record(qwen_tok, record)
