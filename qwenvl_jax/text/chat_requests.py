"""The wording of the ChatML requests in the project's stage-3 data (data/chat_format.py), shared with
the evaluations that ask a chat model the same way (evals/tasks/prompts.py). The paper does not publish
its instructions; these are ours."""

DESCRIBE_REQUEST = "Describe the image."
READ_ALL_REQUEST = "Read all the text in the image."


def grounding_request(phrase: str) -> str:
  return f"Output the bounding box of {phrase}."
