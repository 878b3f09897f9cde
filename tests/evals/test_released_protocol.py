"""The released protocols, hand-checked: MME's chat query and lmms-eval's per-task VQA normalisation."""

import pytest

from qwenvl_jax.evals import runner
from qwenvl_jax.evals.metrics.vqa_accuracy import evalai_word_tokenize, vqa_score
from qwenvl_jax.evals.tasks import get_task, score_items


# lmms-eval EvalAIAnswerProcessor: word_tokenize (lower, drop ',' '?', "'s" -> " 's") before the
# official punctuation + digit/article pass, on prediction and every answer.
@pytest.mark.parametrize("pred,answer,lmms,evalai", [
  ("whats", "what's", 1.0, 0.0),  # contractions table maps whats -> what's; "what's" became "what 's"
  ("red,white", "red white", 1.0, 0.0),  # ',' deleted outright -> "redwhite"
  ("Dog's bowl", "dog's bowl", 1.0, 1.0),  # both sides split the same way
  ("yes?", "yes", 1.0, 1.0),
  ("Two", "2", 1.0, 1.0),
])
def test_lmms_evalai_variant(pred, answer, lmms, evalai):
  assert vqa_score(pred, [answer] * 10, "lmms") == lmms
  assert vqa_score(pred, [answer] * 10, "lmms-evalai") == evalai


def test_evalai_word_tokenize():
  assert evalai_word_tokenize(" What's This, Bob? ") == "what 's this bob"


@pytest.mark.parametrize("task,expected", [("textvqa", 0.0), ("okvqa", 0.0), ("vizwiz", 0.0), ("vqav2", 100.0)])
def test_lmms_is_per_task(task, expected):
  items = [{"id": 1, "answers": ["what's"] * 10}]
  res = score_items(get_task(task), items, {"1": "whats"}, "lmms")
  assert res.variant == "lmms" and res.score == expected
  assert res.details.get("metric_variant") == ("lmms-evalai" if task != "vqav2" else None)


def test_mme_chat_query_is_the_released_one():
  """eval_mm/mme: query = f'<img>{img}</img>\\n{question}', passed to model.chat as is: ChatML user turn
  with a bare <img> span, no "Picture 1: " label."""
  from qwenvl_jax.text import conversation
  from qwenvl_jax.text.tokenizer import find_qwen_vocab, load_tokenizer

  path = find_qwen_vocab()
  if path is None:
    pytest.skip("released qwen.tiktoken not found")
  tok = load_tokenizer(path)
  task = get_task("mme")
  item = {"id": "existence/a.jpg/0", "image": "images/a.jpg", "question": "Is there a train? Please answer yes or no."}
  (req,) = runner.build_requests(task, [item])
  assert req["chat"] and req["label_pictures"] is False
  ids = conversation.chat_prompt(tok, [], req["segments"], label_pictures=req["label_pictures"],
                                 image_fill="path").ids.tolist()
  nl = tok.encode("\n")
  img = [tok.img_start_id] + list(b"images/a.jpg") + [tok.img_pad_id] * (256 - 12) + [tok.img_end_id]
  want = ([tok.im_start_id] + tok.encode("system") + nl + tok.encode("You are a helpful assistant.")
          + [tok.im_end_id] + nl + [tok.im_start_id] + tok.encode("user") + nl + img
          + tok.encode("\n" + item["question"]) + [tok.im_end_id] + nl
          + [tok.im_start_id] + tok.encode("assistant") + nl)
  assert ids == want
  assert "Picture" not in tok.decode(ids)
