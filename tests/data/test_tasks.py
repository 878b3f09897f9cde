"""The 7 task formats against hand-written strings taken from the paper's Box B.1 examples.

The records use a 1000x1000 image so pixel boxes equal their normalised values and the paper's numbers can
be written in directly. Spacing follows the evaluation prompts (see `data.tasks`); `<eos>` is appended by
the tokenizer side, not by the task.
"""

import pytest

from qwenvl_jax.data import tasks
from qwenvl_jax.text import interface


def rec(image, **kw):
  return {"id": "x", "image": image, "width": 1000, "height": 1000, **kw}


def test_caption():
  r = rec("cc3m/01581435.jpg", caption="the beautiful flowers for design.")
  assert tasks.caption(r) == ("<img>cc3m/01581435.jpg</img>Generate the caption in English:",
                              " the beautiful flowers for design.")


def test_vqa():
  r = rec("VG_100K_2/1.jpg", qa=[
    {"question": "Does the bandage have a different color than the wrist band?",
     "answer": "No, both the bandage and the wrist band are white."},
    {"question": "What is the title of this book?",
     "answer": "Asi Se Dice!, Volume 2: Workbook And Audio Activities (Glencoe Spanish) (Spanish Edition)"}])
  assert tasks.vqa(r) == (
    "<img>VG_100K_2/1.jpg</img>Does the bandage have a different color than the wrist band? Answer:",
    " No, both the bandage and the wrist band are white.")
  assert tasks.vqa(r, 1) == (
    "<img>VG_100K_2/1.jpg</img>What is the title of this book? Answer:",
    " Asi Se Dice!, Volume 2: Workbook And Audio Activities (Glencoe Spanish) (Spanish Edition)")


def test_grounding_caption_with_boxes():
  cap = "Beautiful shot of bees gathering nectars from an apricot flower"
  r = rec("coyo700m/1.jpg", caption=cap, objects=[
    {"phrase": "bees", "box": [661, 612, 833, 812], "span": [18, 22]},
    {"phrase": "bees", "box": [120, 555, 265, 770], "span": [18, 22]},
    {"phrase": "an apricot flower", "box": [224, 13, 399, 313], "span": [46, 63]}])
  assert tasks.grounding(r) == (
    "<img>coyo700m/1.jpg</img>Generate the caption in English with grounding:",
    " Beautiful shot of <ref>bees</ref><box>(661,612),(833,812)</box><box>(120,555),(265,770)</box>"
    " gathering nectars from <ref>an apricot flower</ref><box>(224,13),(399,313)</box>")


def test_ref_grounding():
  r = rec("VG_100K_2/3.jpg", objects=[{"phrase": "the ear on a giraffe", "box": [176, 106, 232, 160]}])
  assert tasks.ref_grounding(r) == ("<img>VG_100K_2/3.jpg</img><ref>the ear on a giraffe</ref>",
                                    "<box>(176,106),(232,160)</box>")


def test_grounded_caption():
  r = rec("VG_100K_2/4.jpg", objects=[{"phrase": "Yellow cross country ski racing gloves",
                                        "box": [360, 542, 476, 705]}])
  assert tasks.grounded_caption(r) == ("<img>VG_100K_2/4.jpg</img><ref>This</ref><box>(360,542),(476,705)</box>",
                                       " is Yellow cross country ski racing gloves")


def test_ocr():
  r = rec("synthdog/1.jpg", words=[
    {"text": "It is managed", "box": [567, 121, 625, 182], "quad": [[568, 121], [625, 131], [624, 182], [567, 172]]},
    {"text": "by", "box": [10, 10, 20, 20], "quad": [[10, 10], [20, 10], [20, 20], [10, 20]]}])
  assert tasks.ocr(r) == (
    "<img>synthdog/1.jpg</img>OCR with grounding:",
    " <ref>It is managed</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>"
    "<ref>by</ref><quad>(10,10),(20,10),(20,20),(10,20)</quad>")
  assert tasks.ocr(r, max_regions=1)[1] == (
    " <ref>It is managed</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>")


def test_pure_text():
  assert tasks.pure_text({"id": "t", "text": "Once upon a time."}) == ("", "Once upon a time.")


def test_normalisation_uses_image_size():
  r = {"id": "r", "image": b"...", "width": 448, "height": 224,
       "objects": [{"phrase": "all", "box": [0, 0, 448, 224]}, {"phrase": "mid", "box": [112, 56, 224, 112]}]}
  assert tasks.ref_grounding(r) == ("<img>r</img><ref>all</ref>", "<box>(0,0),(999,999)</box>")  # bytes: id
  assert tasks.ref_grounding(r, 1)[1] == "<box>(250,250),(500,500)</box>"


def test_not_applicable():
  r = rec("a.jpg")
  for fn in (tasks.caption, tasks.vqa, tasks.grounding, tasks.ref_grounding, tasks.grounded_caption, tasks.ocr,
             tasks.pure_text):
    with pytest.raises(tasks.TaskNotApplicable):
      fn(r)
  overlapping = rec("a.jpg", caption="a red dog", objects=[
    {"phrase": "a red dog", "box": [0, 0, 5, 5], "span": [0, 9]},
    {"phrase": "dog", "box": [1, 1, 4, 4], "span": [6, 9]}])
  with pytest.raises(tasks.TaskNotApplicable, match="overlapping"):
    tasks.grounding(overlapping)


def test_examples_and_markup_parses():
  """Every synthetic record's examples are well-formed markup for the tokenizer side."""
  from qwenvl_jax.data import synth
  names = set()
  for kind in ("shapes", "text", "docs"):
    for r in synth.generate(kind, 3, seed=0):
      for name, prompt, target in tasks.examples(r, max_regions=20):
        names.add(name)
        segs = interface.parse_markup(prompt + target, strict=True)
        assert segs[0] == {"image": r["id"]}
  assert names == {"caption", "vqa", "grounding", "ref_grounding", "grounded_caption", "ocr"}


def test_a_task_named_twice_is_offered_twice():
  """`tasks` doubles as the mixture: the sample builder draws uniformly among a record's examples, so a
  name given k times is drawn k times as often (experiments/configs.py weights ref_grounding this way)."""
  r = rec("a.png", caption="two shapes.",
          objects=[{"phrase": "the red circle", "box": [10, 10, 200, 200]},
                   {"phrase": "the blue square", "box": [300, 300, 600, 600]}])
  once = [name for name, *_ in tasks.examples(r, ("caption", "ref_grounding"))]
  twice = [name for name, *_ in tasks.examples(r, ("caption", "ref_grounding", "ref_grounding"))]
  assert once.count("caption") == twice.count("caption") == 1
  assert once.count("ref_grounding") == 2 and twice.count("ref_grounding") == 4
