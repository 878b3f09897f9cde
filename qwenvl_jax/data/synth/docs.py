"""Document pages laid out and rendered with PyMuPDF, with word boxes, for OCR and document VQA.

This is the paper's PDF route (Appendix A.4) run on synthetic pages: build a PDF page, render it with
PyMuPDF, and take every word and its box from `page.get_text("words")` (PDF points, scaled to pixels).
The page content is generated from templates (invoice, letter, form), so each question's answer is a
field the generator placed on the page and can be read off the image.
"""

from __future__ import annotations

import numpy as np
import pymupdf
from PIL import Image

from qwenvl_jax.data.synth import common

PAGE_W, PAGE_H = 306.0, 396.0  # half US-letter, in points
MARGIN = 22.0
FONTS = (("helv", "hebo"), ("tiro", "tibo"), ("cour", "cobo"))  # base-14 (regular, bold): no font files needed
FIRST = "James Mary Robert Linda Michael Sarah David Emma Daniel Olivia Thomas Sophia Peter Anna Paul Laura".split()
LAST = "Smith Johnson Brown Taylor Miller Wilson Moore Clark Lewis Walker Young Allen King Wright Scott Green".split()
ITEMS = ("Paper", "Printer ink", "Desk lamp", "Office chair", "Cables", "Notebooks", "Stapler", "Monitor",
         "Keyboard", "Coffee beans", "Delivery", "Consulting", "Repairs", "Software license")
MONTHS = "January February March April May June July August September October November December".split()
DEPTS = ("Sales", "Finance", "Research", "Marketing", "Operations", "Legal", "Support")


class _Page:
  """A cursor over a PyMuPDF page: writes lines top to bottom and wraps paragraphs."""

  def __init__(self, r: np.random.Generator):
    self.doc = pymupdf.open()
    self.page = self.doc.new_page(width=PAGE_W, height=PAGE_H)
    self.regular, self.bold = FONTS[int(r.integers(len(FONTS)))]
    self.size = float(r.uniform(8.5, 11.0))
    self.y = MARGIN
    self.bottom = PAGE_H - MARGIN  # lowered while filler text is written, to keep room for what follows

  def line(self, text: str, size: float | None = None, bold: bool = False, x: float = MARGIN, advance=True):
    size = size or self.size
    if self.y + size > self.bottom:
      return False
    self.page.insert_text((x, self.y + size), text, fontsize=size, fontname=self.bold if bold else self.regular)
    if advance:
      self.y += size * 1.45
    return True

  def full(self, lines: float = 1) -> bool:
    return self.y + lines * self.size * 1.45 > self.bottom

  def paragraph(self, words: list[str]):
    """Wrapped filler text; stops silently at `bottom`."""
    width = PAGE_W - 2 * MARGIN
    cur = []
    for w in words:
      trial = " ".join(cur + [w])
      if cur and pymupdf.get_text_length(trial, fontname=self.regular, fontsize=self.size) > width:
        if not self.line(" ".join(cur)):
          return
        cur = [w]
      else:
        cur.append(w)
    if cur:
      self.line(" ".join(cur))
    self.y += self.size * 0.6

  def rule(self):
    self.page.draw_line((MARGIN, self.y), (PAGE_W - MARGIN, self.y), color=(0.4, 0.4, 0.4), width=0.6)
    self.y += self.size * 0.8


def _name(r) -> str:
  return f"{FIRST[int(r.integers(len(FIRST)))]} {LAST[int(r.integers(len(LAST)))]}"


def _company(r) -> str:
  w = common.WORDS[int(r.integers(len(common.WORDS)))].capitalize()
  return f"{w} {('Ltd.', 'Inc.', 'Group', 'Partners', 'Supplies')[int(r.integers(5))]}"


def _date(r) -> str:
  return f"{MONTHS[int(r.integers(12))]} {int(r.integers(1, 29))}, {int(r.integers(1995, 2025))}"


def _sentence_words(r, n) -> list[str]:
  words = [common.WORDS[int(i)] for i in r.integers(len(common.WORDS), size=n)]
  words[0] = words[0].capitalize()
  words[-1] += "."
  return words


def _invoice(p: _Page, r) -> list[dict]:
  company, customer, date = _company(r), _name(r), _date(r)
  number = f"INV-{int(r.integers(10000, 99999))}"
  p.line(company, size=p.size * 1.5, bold=True)
  p.line("INVOICE", size=p.size * 1.3, bold=True)
  p.line(f"Invoice No: {number}")
  p.line(f"Date: {date}")
  p.line(f"Bill To: {customer}")
  p.rule()
  col = (MARGIN, MARGIN + 130, MARGIN + 170, MARGIN + 215)
  for x, h in zip(col, ("Description", "Qty", "Price", "Amount")):
    p.line(h, bold=True, x=x, advance=False)
  p.y += p.size * 1.45
  total = 0
  items = r.choice(len(ITEMS), size=int(r.integers(2, 6)), replace=False)
  rows = []
  for i in items:
    qty, price = int(r.integers(1, 10)), int(r.integers(2, 400))
    total += qty * price
    cells = (ITEMS[int(i)], str(qty), f"${price}.00", f"${qty * price}.00")
    for x, c in zip(col, cells):
      p.line(c, x=x, advance=False)
    p.y += p.size * 1.45
    rows.append(cells)
  p.rule()
  p.line(f"Total: ${total}.00", bold=True)
  p.y += p.size
  p.line("Notes:", bold=True)
  p.paragraph(_sentence_words(r, int(r.integers(10, 40))))
  item = rows[int(r.integers(len(rows)))]
  return [
    {"question": "What is the invoice number?", "answer": number},
    {"question": "What is the date of the invoice?", "answer": date},
    {"question": "Who is the invoice billed to?", "answer": customer},
    {"question": "What is the total amount?", "answer": f"${total}.00"},
    {"question": "Which company issued the invoice?", "answer": company},
    {"question": f"What is the quantity of {item[0].lower()}?", "answer": item[1]},
  ]


def _letter(p: _Page, r) -> list[dict]:
  company, to, sender, date = _company(r), _name(r), _name(r), _date(r)
  p.line(company, size=p.size * 1.4, bold=True)
  p.rule()
  p.line(date)
  p.y += p.size
  p.line(f"Dear {to},")
  p.bottom -= 3 * p.size * 1.45  # the closing and signature must fit
  for _ in range(int(r.integers(2, 6))):
    if p.full(2):
      break
    p.paragraph([w for _ in range(int(r.integers(2, 5))) for w in _sentence_words(r, int(r.integers(5, 12)))])
  p.bottom = PAGE_H - MARGIN
  p.line("Sincerely,")
  p.line(sender)
  return [
    {"question": "Who is the letter addressed to?", "answer": to},
    {"question": "Who signed the letter?", "answer": sender},
    {"question": "What is the date of the letter?", "answer": date},
    {"question": "Which company sent the letter?", "answer": company},
  ]


def _form(p: _Page, r) -> list[dict]:
  title = f"{DEPTS[int(r.integers(len(DEPTS)))]} Employee Record"
  fields = {
    "Name": _name(r), "Employee ID": str(int(r.integers(100000, 999999))),
    "Department": DEPTS[int(r.integers(len(DEPTS)))], "Start Date": _date(r),
    "Phone": f"{int(r.integers(200, 999))}-{int(r.integers(100, 999))}-{int(r.integers(1000, 9999))}",
    "Office": f"Room {int(r.integers(1, 500))}",
  }
  p.line(title, size=p.size * 1.4, bold=True)
  p.rule()
  for k, v in fields.items():
    p.line(f"{k}:", bold=True, advance=False)
    p.line(v, x=MARGIN + 80)
  p.y += p.size
  p.line("Remarks:", bold=True)
  for _ in range(int(r.integers(1, 4))):
    p.paragraph(_sentence_words(r, int(r.integers(15, 40))))
  qa = [{"question": f"What is the {k.lower()}?" if k != "Name" else "What is the name of the employee?",
         "answer": v} for k, v in fields.items()]
  return [{"question": "What is the title of the form?", "answer": title}] + qa


TEMPLATES = {"invoice": _invoice, "letter": _letter, "form": _form}


def generate(index: int, seed: int = 0, size: int = 448, n_questions: int = 3) -> dict:
  """One document record (schema in `qwenvl_jax.data.synth`); `size` is the page height in pixels."""
  r = common.rng(seed, index)
  kind = list(TEMPLATES)[int(r.integers(len(TEMPLATES)))]
  p = _Page(r)
  qa_all = TEMPLATES[kind](p, r)
  zoom = size / PAGE_H
  pix = p.page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
  img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
  words = []
  for x0, y0, x1, y1, text, *_ in p.page.get_text("words", sort=True):
    box = common.clip_box((x0 * zoom, y0 * zoom, x1 * zoom, y1 * zoom), pix.width, pix.height)
    words.append({"text": text, "box": box,
                  "quad": [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]})
  p.doc.close()
  picks = r.choice(len(qa_all), size=min(n_questions, len(qa_all)), replace=False)
  return {
    "id": f"docs-{seed}-{index:08d}",
    "image": common.encode_png(img),
    "width": pix.width, "height": pix.height,
    "caption": None,
    "objects": [],
    "words": words,
    "qa": [qa_all[int(i)] for i in sorted(picks)],
    "doc_type": kind,
  }
