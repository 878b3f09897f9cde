"""TFDS: a builder for the synthetic sets, and prepared TFDS datasets read as raw records.

Works without TensorFlow: the builder writes ArrayRecord files (`file_format="array_record"`) and images
are handed to TFDS already PNG-encoded (TFDS only needs TF to *encode* numpy images), and reading goes
through `tfds.data_source`, which decodes with PIL. `tensorflow_datasets` is imported lazily, so the rest
of `data` does not pay for it.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np

from qwenvl_jax.data import synth


def _features():
  import tensorflow_datasets as tfds

  f = tfds.features
  return f.FeaturesDict({
    "id": f.Text(),
    "image": f.Image(shape=(None, None, 3), encoding_format="png"),
    "width": np.int32, "height": np.int32,
    "caption": f.Text(),
    "objects": f.Sequence({"phrase": f.Text(), "box": f.Tensor(shape=(4,), dtype=np.int32),
                           "span": f.Tensor(shape=(2,), dtype=np.int32)}),
    "words": f.Sequence({"text": f.Text(), "box": f.Tensor(shape=(4,), dtype=np.int32),
                         "quad": f.Tensor(shape=(4, 2), dtype=np.int32)}),
    "qa": f.Sequence({"question": f.Text(), "answer": f.Text()}),
  })


def _to_example(rec: dict) -> dict:
  objs = rec.get("objects") or []
  words = rec.get("words") or []
  qa = rec.get("qa") or []
  return {
    "id": rec["id"], "image": io.BytesIO(rec["image"]), "width": rec["width"], "height": rec["height"],
    "caption": rec.get("caption") or "",
    "objects": {"phrase": [o["phrase"] for o in objs],
                "box": np.asarray([o["box"] for o in objs], np.int32).reshape(-1, 4),
                "span": np.asarray([o.get("span") or [-1, -1] for o in objs], np.int32).reshape(-1, 2)},
    "words": {"text": [w["text"] for w in words],
              "box": np.asarray([w["box"] for w in words], np.int32).reshape(-1, 4),
              "quad": np.asarray([w["quad"] for w in words], np.int32).reshape(-1, 4, 2)},
    "qa": {"question": [q["question"] for q in qa], "answer": [q["answer"] for q in qa]},
  }


def make_builder(kind: str, n_train: int, n_test: int = 0, seed: int = 0, size: int | None = None,
                 data_dir: str | None = None, workers: int = 1):
  """A TFDS builder named `qwenvl_synth_{kind}`: train = samples [0, n_train), test = the next n_test.

  The class is made here so `tensorflow_datasets` is only imported when a builder is wanted.
  """
  import tensorflow_datasets as tfds

  # Each call makes a new class; registering it by name would make a second call (same kind, same
  # process) raise "already registered". Nothing looks these builders up by name.
  with tfds.core.registered.skip_registration():
    class QwenvlSynth(tfds.core.GeneratorBasedBuilder):
      name = f"qwenvl_synth_{kind}"
      VERSION = tfds.core.Version("1.0.0")
      RELEASE_NOTES = {"1.0.0": "Synthetic set from qwenvl_jax.data.synth."}

      # TFDS 4.9.10 looks for a checksums file next to a builder's module and, for a module inside a
      # package, touches `importlib_resources` (only installed on Python < 3.9). There is nothing to
      # download, so there is no code path to look in.
      @tfds.core.utils.classproperty
      @classmethod
      def code_path(cls):
        return None

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_features(),
                                     description=f"qwenvl-jax synthetic '{kind}' set, seed {seed}.")

      def _split_generators(self, dl_manager):
        splits = {"train": self._generate_examples(0, n_train)}
        if n_test:
          splits["test"] = self._generate_examples(n_train, n_test)
        return splits

      def _generate_examples(self, start, n):
        for rec in synth.generate(kind, n, seed=seed, size=size, workers=workers, start=start):
          yield rec["id"], _to_example(rec)

  return QwenvlSynth(data_dir=data_dir, file_format="array_record")


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def from_example(ex: dict) -> dict:
  """A decoded synthetic TFDS example -> a raw record (image as PNG bytes)."""
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(np.asarray(ex["image"])).save(buf, format="PNG", compress_level=1)
  o, w, q = ex["objects"], ex["words"], ex["qa"]
  objects = []
  for phrase, box, span in zip(o["phrase"], o["box"], o["span"]):
    obj = {"phrase": _text(phrase), "box": [int(v) for v in box]}
    if span[0] >= 0:
      obj["span"] = [int(v) for v in span]
    objects.append(obj)
  return {
    "id": _text(ex["id"]), "image": buf.getvalue(), "width": int(ex["width"]), "height": int(ex["height"]),
    "caption": _text(ex["caption"]) or None,
    "objects": objects,
    "words": [{"text": _text(t), "box": [int(v) for v in b], "quad": np.asarray(qd).astype(int).tolist()}
              for t, b, qd in zip(w["text"], w["box"], w["quad"])],
    "qa": [{"question": _text(a), "answer": _text(b)} for a, b in zip(q["question"], q["answer"])],
  }


def _prepared_record(ex: dict, rid: str, image_key: str, text_keys: tuple[str, ...]) -> dict:
  """A prepared TFDS example with an image feature -> a minimal raw record: the first of `text_keys`
  present (nested dicts are searched one level) becomes the caption."""
  from PIL import Image

  if image_key not in ex:
    raise KeyError(f"TFDS example {rid} has no image feature {image_key!r} (features: {sorted(ex)})")
  arr = np.asarray(ex[image_key])
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
  caption = None
  for scope in [ex] + [v for v in ex.values() if isinstance(v, dict)]:
    for k in text_keys:
      if k in scope:
        v = scope[k]
        v = v[0] if isinstance(v, (list, np.ndarray)) and len(v) else v
        caption = _text(v)
        break
    if caption is not None:
      break
  return {"id": rid, "image": buf.getvalue(), "width": int(arr.shape[1]), "height": int(arr.shape[0]),
          "caption": caption, "objects": [], "words": [], "qa": []}


class TfdsRecords:
  """Random access to a prepared TFDS split as raw records, for the grain pipeline.

  The project's synthetic builders (`make_builder`) keep every field (boxes, words, QA); any other
  dataset with an image feature gives caption records. The TFDS source is opened lazily so the object
  pickles cheaply into grain worker processes.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, image_key: str = "image",
               text_keys: tuple[str, ...] = ("caption", "text")):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.image_key, self.text_keys = image_key, tuple(text_keys)
    self._src = None
    self._len = len(self._source())  # fails here, naming the dataset, if it is not prepared

  def _source(self):
    if self._src is None:
      import tensorflow_datasets as tfds
      try:
        self._src = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)
      except Exception as e:  # TFDS raises several types for "not prepared" / "no such split"
        raise FileNotFoundError(f"TFDS dataset {self.name}:{self.split} in {self.data_dir or 'the default dir'}"
                                f" cannot be opened ({type(e).__name__}: {e})") from None
    return self._src

  def __getstate__(self):
    return {**self.__dict__, "_src": None}

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict:
    ex = self._source()[int(i)]
    if "objects" in ex and "words" in ex:
      return from_example(ex)
    return _prepared_record(ex, f"{self.name}-{self.split}-{int(i)}", self.image_key, self.text_keys)


def read_prepared(name: str, split: str = "train", data_dir: str | None = None, image_key: str = "image",
                  text_keys: tuple[str, ...] = ("caption", "text")) -> Iterator[dict]:
  """Any prepared TFDS dataset with an image feature -> minimal raw records {id, image, width, height,
  caption}: the first of `text_keys` present becomes the caption (nested dicts are searched one level)."""
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, split=split, data_dir=data_dir)
  for i in range(len(source)):
    yield _prepared_record(source[i], f"{name}-{split}-{i}", image_key, text_keys)
