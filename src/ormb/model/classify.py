"""What kind of ModelPack layer a file is: weight, weight.config, code or doc.

The rules follow modctl's (the ModelPack reference packer), so ormb and modctl put the same
file in the same kind of layer: configuration first (``*.json``, ``*.yaml``, ``*.jinja``,
tokenizer and vocabulary files), then weights by suffix (``*.safetensors``, ``*.gguf``,
``*.onnx``, ``*.bin``, ...), then code, then documentation.  Two differences:

- the files the model's declared format needs are weights whatever their names (an MXNet
  ``*.params``, a TensorRT ``*.plan``, Spark MLlib's ``data/`` and ``metadata/``), because
  ormb knows the format and modctl does not;
- a file no rule knows is a guess, and says so: above 128 MiB a weight, else code (never a
  small weight), with ``org.cncf.model.file.mediatype.untested: "true"`` on its layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

WEIGHT = "weight"
WEIGHT_CONFIG = "weight.config"
CODE = "code"
DOC = "doc"
DATASET = "dataset"
KINDS = (WEIGHT, WEIGHT_CONFIG, CODE, DOC, DATASET)  # also the order of layers in a manifest: weights first

GUESS_WEIGHT_ABOVE = 128 << 20  # modctl's threshold: an unknown file this large is taken for weights


def _suffixes(words: str) -> frozenset[str]:
    return frozenset("." + word for word in words.split())


_CONFIG_SUFFIXES = _suffixes(
    "json jsonl json5 jsonc yaml yml toml ini config cfg conf properties props prop xml xsd rng modelcard meta "
    "tiktoken jinja hparams params hyperparams wandb mlflow tensorboard"
)
_CONFIG_GLOBS = ("*tokenizer.model*", "vocab.txt", "merges.txt", "added_tokens.txt", "spiece.model", "tiktoken.model",
                 "sentencepiece*.model", "sentencepiece*.vocab", "config.json.*")
_WEIGHT_SUFFIXES = _suffixes(
    "safetensors bin pt pth mar pte pt2 ptl tflite h5 hdf hdf5 keras pb index gguf ggml ggmf ggjt q4_0 q4_1 q5_0 "
    "q5_1 q8_0 f16 f32 ckpt checkpoint dist_ckpt tensor weights state embedding vocab ot engine trt plan onnx "
    "msgpack model pkl pickle joblib npy npz nc mlmodel coreml mil mleap surml llamafile caffemodel prototxt dlc "
    "circle nb arrow parquet ftz ark db graphdef xgboost pmml dduf mmproj"
)
_WEIGHT_GLOBS = ("*.bin.*", "*.data-*", "*.gguf.*", "tensor[0-9]*_[0-9]*", "*.onnx_data*", "*.llamafile.*")
_CODE_SUFFIXES = _suffixes(
    "py ipynb sh bash zsh fish csh tcsh ksh ps1 psm1 psd1 bat cmd vbs wsf applescript scpt awk sed expect patch "
    "c h hxx cpp cc cxx c++ hpp hh h++ cu cuh java js mjs cjs jsx ts tsx go rs swift rb php scala kt kts r m mm "
    "f f90 f95 f03 f08 jl lua pl pm cs vb dart groovy elm erl hrl ex exs hs lhs clj cljs cljc cl lisp lsp scm ss "
    "rkt sql psql mysql sqlite zig env dockerfile mk cmake gradle sbt mill bazel bzl buck ninja gyp gypi waf "
    "gemspec so dll dylib lib a"
)
_CODE_GLOBS = ("makefile*", "dockerfile*", "cmakelists.txt", "build*", "workspace*", "buck*", "wscript*",
               "requirements*.txt", "pipfile*", "*.lock", "go.mod", "go.sum", "gemfile*", "mix.exs", "*.env.*")
_DOC_SUFFIXES = _suffixes(
    "txt md markdown rst pdf log doc docx docm dot dotx dotm rtf odt ott fodt pages wpd xls xlsx xlsm xlsb xlt "
    "xltx xltm ods ots fods numbers csv tsv ppt pptx pptm pps ppsx ppsm pot potx potm odp otp fodp key epub mobi "
    "azw azw3 fb2 fb3 lit pdb djvu djv html htm xhtml mhtml mht xsl xslt tex latex ltx bib asciidoc adoc textile "
    "wiki mediawiki org texi texinfo info man chm hlp xps jpg jpeg png gif bmp tiff ico webp heic heif hevc svg "
    "mp4 mov avi mkv webm m4v flv wmv mpg mpeg"
)
_DOC_GLOBS = ("license*", "licence*", "readme*", "notice*", "setup*", "*requirements*", "*.tfevents*", "copying*")


@dataclass(frozen=True)
class Kind:
    kind: str
    guessed: bool = False  # no rule knew the file: its layer is marked untested


def _matches(name: str, suffixes: frozenset[str], globs: Iterable[str]) -> bool:
    dot = name.rfind(".")
    if dot > 0 and name[dot:] in suffixes:
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in globs)


def classify(path: PurePosixPath, size: int = 0, *, format_files: frozenset[PurePosixPath] = frozenset()) -> Kind:
    """The layer kind of the file at ``path`` (relative to the model directory) of ``size`` bytes.

    ``format_files`` are the files the declared format needs (see ``formats.format_files``): weights.
    """
    if path in format_files:
        return Kind(WEIGHT)
    name = path.name.lower()
    if _matches(name, _CONFIG_SUFFIXES, _CONFIG_GLOBS):
        return Kind(WEIGHT_CONFIG)
    if _matches(name, _WEIGHT_SUFFIXES, _WEIGHT_GLOBS):
        return Kind(WEIGHT)
    if _matches(name, _CODE_SUFFIXES, _CODE_GLOBS):
        return Kind(CODE)
    if _matches(name, _DOC_SUFFIXES, _DOC_GLOBS):
        return Kind(DOC)
    return Kind(WEIGHT if size > GUESS_WEIGHT_ABOVE else CODE, guessed=True)
