"""``ttdecomp compress``: compress a model's linear layers into TT-matrices and measure it::

    ttdecomp compress minilm --budget 50% --calibration tweets --output minilm-50
    ttdecomp compress minilm --budget 25% --calibration tweets --heal --output minilm-25h
    ttdecomp compress smollm2 --budget 50% --calibration chatterbot --output smollm2-50
    ttdecomp compress path/to/hf-model --budget 0.5 --calibration texts.txt --output out

``MODEL`` is a packaged model (``minilm``, ``smollm2``) or a local Hugging Face folder.
``--calibration`` is a packaged data set (``tweets`` for encoders, ``chatterbot`` for
causal LMs) or a file: ``.txt`` (one text per line), ``.csv``/``.jsonl`` with a ``text``
column, or (causal LMs) a dialogue ``.jsonl``. Its first ``--calibration-size`` training
examples calibrate; held-out examples (the packaged test split, or the file's
``--eval-size`` rows after the calibration ones) measure the model: the mean cosine of
mean-pooled sentence embeddings to the original's (encoders) or the held-out perplexity
(causal LMs), and the forward time and peak memory of a batch of 32 against the dense model.
``--heal`` distils the original into the TT cores on up to ``--heal-size`` texts that are
not held out: for ``tweets``, the training split and then the rest of the packaged corpus
(labels are not needed, and more text keeps the student from overfitting a few tweets).
The original's outputs on them are kept in up to ``--heal-cache-gb`` GiB, so each is
computed once.

The work is :func:`ttdecomp.compress.job.run_compress`; each option is a field of
:class:`~ttdecomp.compress.job.CompressConfig`, where its help text is declared. Writes
``DIR/ttdecomp_compressed.{json,safetensors}`` (reload with
:func:`ttdecomp.compress.load_compressed` into a fresh copy of the base model),
``DIR/report.json`` and ``DIR/report.txt``, and the tokenizer. Errors are printed as one
line on stderr with exit status 2, before the model is loaded where they can be known;
nothing is written then. With ``--heal`` the compression is saved before healing starts: an
interrupt (Ctrl-C) while healing keeps it, with exit status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from ..compress.job import CompressConfig, run_compress
from ..errors import TTError
from ._common import progress_default, warnings_as_lines
from ._options import HelpFormatter, add_options, error_message
from ._options import values as options

__all__ = ["add_parser", "run"]

_FIELDS = {f.name: f for f in dataclasses.fields(CompressConfig)}

EXAMPLES = """\
examples:
  ttdecomp compress minilm --budget 50% --output minilm-50
  ttdecomp compress minilm --budget 25% --heal --output minilm-25h   # + 5 minutes of healing
  ttdecomp compress smollm2 --budget 50% --calibration chatterbot --output smollm2-50
  ttdecomp compress path/to/hf-model --budget 2M --calibration texts.txt --output out
  ttdecomp compress minilm --budget 0.5 --targets query,value --output qv-50
"""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``compress`` and its options (the fields of ``CompressConfig``) to the sub-commands."""
    p = sub.add_parser(
        "compress",
        help="compress a model's linear layers into TT-matrices under one budget",
        description="Replace linear layers by TT-matrix layers (TTLinear) under one global "
        "parameter budget, report per layer and at the model's output, save the result.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_options(p, CompressConfig)
    p.set_defaults(run=run, parser=p)
    return p


def _message(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    """The library's message with each ``field=`` written as its flag (``--heal-steps 5``)."""
    names = "|".join(sorted(_FIELDS, key=len, reverse=True))
    text = str(exc).replace("heal=True", "--heal").replace("(pattern=...)", "(--targets)")
    if isinstance(exc, TTError) and getattr(exc, "option", None):
        text = error_message(exc, parser)
    return re.sub(rf"\b({names})=", lambda m: _flag(m.group(1)) + " ", text)


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp compress`` with parsed ``args``; return the exit status."""
    values = options(args, CompressConfig)
    values["progress"] = progress_default(values["progress"])
    try:
        with warnings_as_lines("compress"):
            run_compress(CompressConfig(**values))
    except (TTError, FileNotFoundError, ImportError) as exc:
        print(f"ttdecomp compress: error: {_message(exc, args.parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttdecomp compress: interrupted", file=sys.stderr)
        return 130
    return 0
