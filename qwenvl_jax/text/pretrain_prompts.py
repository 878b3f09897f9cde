"""The wording of the multi-task pre-training prompts (paper Table 9 / Appendix B.1), shared by the
training formats (data/tasks.py) and the evaluations that ask a pre-trained model the same way
(evals/tasks/prompts.py)."""

CAPTION_PROMPT = "Generate the caption in English:"
GROUNDING_PROMPT = "Generate the caption in English with grounding:"
OCR_PROMPT = "OCR with grounding:"


def vqa_prompt(question: str) -> str:
  """`{question} Answer:`: the released VQA evaluation's prompt, also the pre-training VQA format."""
  return f"{question} Answer:"
