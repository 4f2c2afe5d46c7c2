"""Import-vectors job: another tool's word vectors -> an embeddings output with its own tokenizer.

    embedflow import-vectors --vectors FILE --format word2vec|word2vec-binary|glove|fasttext-vec
                             --output DIR [--max-words N] [--coverage-text FILE] [Beam options]
    python -m jobs.import_vectors ...   (the same)

Input: one vectors file (local or `gs://`, gzipped or not: recognised by its content);
formats, and the checks that make a bad file fail before anything is written, in
`trainer/formats.py` (errors name the file and the line).

One output directory is both a corpus-like output and an embeddings output. Downstream
jobs take a tokenizer (`--corpus`: its transform_fn) and vectors whose rows are that
tokenizer's ids (`--embeddings`); an import has no corpus, so it writes the tokenizer
graph itself, over the file's vocabulary, beside the vectors, and the same directory is
given to both flags:

    embedflow sentiment --corpus DIR --embeddings DIR ...
    embedflow train --corpus CORPUS --init-from DIR ...   (warm start from the imported rows)
    embedflow evaluate --embeddings DIR ...

Vocabulary: every word of the file goes through the product's tokenizer
(`pipelines/tokenize.py`), run on the word alone.
  * A word that is its own single token is kept ("the", "don't", "3.14").
  * A word that yields exactly one other token is folded onto it ("The" -> "the",
    "hello!" -> "hello"). When several words give the same token, the first in the file
    (the most frequent, in every format here) gives the row; the later ones are merged
    (counted; their vectors are left out). Exact duplicates in the file are errors;
    these collisions are not.
  * A word that yields no token or several ("New_York", "U.S.", "---"), word2vec's and
    fastText's end-of-sentence marker `</s>`, and a word that is not UTF-8 are dropped
    and counted.
Rows are the kept tokens in the file's order; `--max-words N` stops reading once N are
kept (the rest of the file is not read, so not checked).

The tokenizer graph is the corpus job's own preprocessing_fn (`make_preprocessing_fn`),
analysed by a small Beam + tf.Transform pass over the kept tokens themselves (one a
line, so each is its own token and the analysed vocabulary is exactly them; the job
checks that), after which the vocabulary asset is rewritten in the file's order, as the
corpus job rewrites its own (`pipelines/corpus.reorder_vocabulary`). Tokenizing the
vocabulary through Beam keeps the graph identical to the corpus job's and runs on
Dataflow like it, for vocabularies of millions of words.

The files have no counts: row i is given the count vocab_size - i, so counts strictly
decrease in the file's order, the corpus contract's (-count, token) order is the file's
order, and consumers of unigram counts get positive ones (info.json says so).

Output directory (published only when complete, see `core.outputs`):

    transform_fn/, transformed_metadata/   tf.Transform output: {"text": string} ->
                                           {"token_ids": int64}, OOV -> vocab_size
    vocab.tsv                              token<TAB>count, line i is id i (as the corpus
                                           job's; no windows/: not a training corpus)
    vectors.npy, vocab.txt                 float32 [vocab_size, dim] and token<TAB>count,
                                           vocab.txt identical to vocab.tsv
    vectors.word2vec.txt                   word2vec text format of the kept rows
    projector/vectors.tsv, projector/metadata.tsv   Embedding Projector
    saved_model/                           raw strings -> token vectors, mask, mean, ids
                                           (as `embedflow train` exports: the transform_fn
                                           is inside, so it serves alone)
    info.json                              the source (format, dim, header count, rows
                                           read, fingerprint), words read / kept / folded /
                                           merged / dropped by reason with examples,
                                           counts rule, --coverage-text share, timings
    COMPLETED                              written last.
"""

import collections
import itertools
import logging
import os
import time

import apache_beam as beam
import numpy as np

from core import files, outputs, tokens
from core.beam import pipeline_options
from core.main import main
from core.params import Params, new_parser, param, parse_known
from pipelines.corpus import ReadCorpus, Tokenize
from pipelines.tokenize import make_preprocessing_fn, tokenize
from schemas import corpus as corpus_schema
from schemas import imports as schema
from trainer.formats import END_OF_SENTENCE, FORMATS, VectorReader
from trainer.skipgram import export
from trainer.vectors import WordVectors

_READ_CHUNK = 20_000  # rows tokenized together
_COVERAGE_BATCH = 2_000  # lines of --coverage-text tokenized together
_EXAMPLES = 10  # examples of each outcome kept for info.json
DROP_REASONS = ("no_token", "several_tokens", "end_of_sentence_marker", "invalid_utf8")


class ImportParams(Params):
    """`embedflow import-vectors`'s parameters."""

    vectors: str = param(metavar="FILE", config=False,
                         help="word vectors file (local or gs://; gzip recognised by content)")
    format: str = param(choices=FORMATS, config=False,  # pylint: disable=redefined-builtin
                        help="word2vec: text with a 'COUNT DIM' header; word2vec-binary; glove: text, "
                             "no header; fasttext-vec: fastText's .vec (text with a header)")
    output: str = param(metavar="DIR", config=False, help="output directory")
    max_words: int | None = param(None, ge=1, metavar="N",
                                  help="keep at most this many words, the first of the file "
                                       "(reading stops there)")
    coverage_text: str | None = param(None, metavar="FILE", config=False,
                                      help="report the share of this text's tokens the imported "
                                           "vocabulary covers")


PARAMS = ImportParams


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (checked ImportParams, list of Beam pipeline arguments).
    """
    parser = ImportParams.add_flags(new_parser(
        "embedflow import-vectors",
        "Import word vectors of another tool as an embeddings output with its own tokenizer.",
        epilog="Other flags go to Beam (for example --runner, --project, --temp_location)."))
    params, beam_args = parse_known(ImportParams, parser, argv)
    outputs.check_output_path(params.output)
    return params, beam_args


# ------------------------------------------------------------------------ vocabulary


class ImportedVocabulary:
    """The rows an import keeps: tokens in file order, each with the first vector folded onto it.

    Attributes:
      tokens: list of str, row order.
      counts: Counter of outcomes: read, kept_as_is, kept_folded, folded, merged,
        dropped_<reason>.
      examples: {"folded", "merged", "dropped"}: the first few of each, for info.json.
    """

    def __init__(self):
        self.tokens, self._vectors = [], []
        self._row_of = {}  # token -> the line of the word that gave its row
        self.counts = collections.Counter()
        self.examples = {"folded": [], "merged": [], "dropped": []}

    def __len__(self):
        return len(self.tokens)

    def _example(self, kind, entry):
        if len(self.examples[kind]) < _EXAMPLES:
            self.examples[kind].append(entry)

    def _drop(self, row, reason):
        self.counts[f"dropped_{reason}"] += 1
        word = row.word if row.word is not None else row.raw_word.decode("utf-8", "backslashreplace")
        self._example("dropped", {"word": word, "line": row.line, "reason": reason})

    def add(self, row, word_tokens):
        """Files one `trainer.formats.Row` given the tokens its word yields."""
        self.counts["read"] += 1
        if row.word is None:
            self._drop(row, "invalid_utf8")
            return
        if row.word == END_OF_SENTENCE:
            self._drop(row, "end_of_sentence_marker")
            return
        if len(word_tokens) != 1:
            self._drop(row, "no_token" if not word_tokens else "several_tokens")
            return
        token = word_tokens[0]
        folded = token != row.word
        if folded:
            self.counts["folded"] += 1
            self._example("folded", {"word": row.word, "token": token, "line": row.line})
        if token in self._row_of:
            self.counts["merged"] += 1
            self._example("merged", {"word": row.word, "token": token, "line": row.line,
                                     "row_from_line": self._row_of[token]})
            return
        self._row_of[token] = row.line
        self.tokens.append(token)
        self._vectors.append(row.vector)
        self.counts["kept_folded" if folded else "kept_as_is"] += 1

    def word_vectors(self):
        """WordVectors of the kept rows, counts vocab_size - rank (see the module docstring)."""
        n = len(self.tokens)
        return WordVectors(self.tokens, np.stack(self._vectors), np.arange(n, 0, -1, dtype=np.int64))

    def summary(self):
        """The "words" entry of info.json."""
        c = self.counts
        dropped = {reason: c[f"dropped_{reason}"] for reason in DROP_REASONS}
        return {"read": c["read"], "kept": len(self.tokens), "kept_as_is": c["kept_as_is"],
                "kept_folded": c["kept_folded"], "folded": c["folded"], "merged": c["merged"],
                "dropped": sum(dropped.values()), "dropped_by_reason": dropped,
                "examples": self.examples}


def word_tokenizer():
    """list of str -> list of token lists, with the product's tokenizer (TensorFlow ops)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(words):
        return tokenize(words)

    def token_lists(words):
        if not words:
            return []
        ragged = run(tf.constant([w.encode("utf-8") for w in words], tf.string))
        return [[t.decode("utf-8") for t in row] for row in ragged.to_list()]

    return token_lists


def read_vocabulary(path, fmt, max_words=None, chunk=_READ_CHUNK):
    """Reads and checks a vectors file and folds its words onto the tokenizer's tokens.

    Returns:
      (ImportedVocabulary, the "source" entry of info.json).

    Raises:
      ValueError: the file is bad (naming it and the line), or no word is kept.
    """
    vocabulary = ImportedVocabulary()
    token_lists = word_tokenizer()
    with VectorReader(path, fmt) as reader:
        rows = iter(reader)
        read_to_end = False
        while max_words is None or len(vocabulary) < max_words:
            # Each row keeps at most one token: never read past the N-th kept word.
            want = chunk if max_words is None else min(chunk, max_words - len(vocabulary))
            batch = list(itertools.islice(rows, want))
            if not batch:
                read_to_end = True
                break
            for row, word_tokens in zip(batch, token_lists([r.word or "" for r in batch])):
                vocabulary.add(row, word_tokens)
            logging.info("import-vectors: %d rows read, %d words kept", vocabulary.counts["read"],
                         len(vocabulary))
        source = {"format": fmt, "dim": reader.dim, "header_count": reader.declared_count,
                  "rows_read": vocabulary.counts["read"], "read_to_end": read_to_end}
    if not vocabulary.tokens:
        raise ValueError(f"--vectors {path}: none of its {vocabulary.counts['read']:,} words is a "
                         f"token of embedflow's tokenizer (dropped: "
                         f"{vocabulary.summary()['dropped_by_reason']}); nothing to import")
    return vocabulary, source


# ------------------------------------------------------------------------ tokenizer graph


def build(pipeline, words_path, words_size, transform_dir, temp_dir):
    """Adds the analysis pass: the kept tokens, one a line -> transform_fn in `transform_dir`."""
    import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel

    with tft_beam.Context(temp_dir=temp_dir):
        # str lines, each one token -> (pa.RecordBatch of "text", TensorAdapterConfig)
        dataset = (pipeline
                   | "ReadWords" >> ReadCorpus(files=[(words_path, words_size)], fmt="text")
                   | "BatchWords" >> Tokenize())
        transform_fn = dataset | "AnalyzeVocabulary" >> tft_beam.AnalyzeDataset(make_preprocessing_fn(1))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir)


def write_tokenizer(out_dir, vocab, beam_args):
    """Writes transform_fn/ + transformed_metadata/ whose ids are the rows of `vocab`, and vocab.tsv.

    Args:
      out_dir: the (staging) output directory.
      vocab: list of (token, count), row order.
      beam_args: Beam's flags.
    """
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    temp_dir = outputs.join(out_dir, schema.TEMP_DIR)
    words_path = outputs.join(temp_dir, schema.WORDS_FILE)
    if not outputs.is_remote(temp_dir):
        os.makedirs(temp_dir, exist_ok=True)
    text = "".join(f"{t}\n" for t, _ in vocab).encode("utf-8")
    outputs.write_bytes(words_path, text)
    with beam.Pipeline(options=pipeline_options(beam_args, "import-vectors")) as p:
        build(p, words_path, len(text), out_dir, temp_dir)
    asset = tft.TFTransformOutput(out_dir).vocabulary_file_by_name(corpus_schema.VOCAB_ASSET_NAME)
    # tf.Transform wrote "count token" lines; every kept token was analysed once, alone.
    analysed = {line.split(" ", 1)[1] for line in outputs.read_text(asset).splitlines() if line}
    expected = {t for t, _ in vocab}
    if analysed != expected:
        odd = sorted(analysed ^ expected)[:5]
        raise RuntimeError(f"the tokenizer graph's vocabulary differs from the imported words ({odd}): "
                           "the tokenizer is not idempotent on them; please report this")
    # As the corpus job does: one token a line, line i is id i (what apply_vocabulary reads).
    outputs.write_text(asset, "".join(f"{t}\n" for t, _ in vocab))
    outputs.write_text(outputs.join(out_dir, corpus_schema.VOCAB_FILE),
                       "".join(f"{t}\t{c}\n" for t, c in vocab))
    outputs.delete_tree(temp_dir)


def text_coverage(transform_dir, path, batch=_COVERAGE_BATCH):
    """The share of a text's tokens that the tokenizer graph in `transform_dir` knows.

    Args:
      transform_dir: a directory with transform_fn/ (an import or corpus output).
      path: a text file (gzip recognised by content), UTF-8 (invalid bytes replaced).

    Returns:
      {"file", "lines", "tokens", "covered", "share"}.
    """
    token_ids, oov_id = tokens.load_tokenizer(transform_dir)
    lines = total = covered = 0
    pending = []

    def flush():
        nonlocal total, covered
        ids, _ = token_ids(pending)
        total += len(ids)
        covered += int((ids < oov_id).sum())
        pending.clear()

    with files.open_binary(path) as f:
        for raw in iter(f.readline, b""):
            lines += 1
            pending.append(raw.decode("utf-8", "replace"))
            if len(pending) == batch:
                flush()
    if pending:
        flush()
    return {"file": path, "lines": lines, "tokens": total, "covered": covered,
            "share": covered / total if total else None}


# ------------------------------------------------------------------------ job


def _one_file(pattern, flag):
    found = files.match_files(pattern, flag)
    if len(found) != 1:
        raise ValueError(f"{flag} {pattern} matches {len(found)} files: give one file")
    return found


def run(argv=None):
    """Runs the import job. Returns the output directory."""
    params, beam_args = parse_args(argv)
    metadata = _one_file(params.vectors, "--vectors")
    if params.coverage_text:
        _one_file(params.coverage_text, "--coverage-text")
    inputs = [params.vectors, params.coverage_text]
    outputs.check_output_dir(params.output, inputs=inputs)
    file_info, fingerprint = outputs.fingerprint_files(metadata)

    started = time.time()
    vocabulary, source = read_vocabulary(metadata[0].path, params.format, params.max_words)
    vectors = vocabulary.word_vectors()
    words = vocabulary.summary()
    logging.info("import-vectors: %d words read, %d kept (%d folded onto another), %d merged, "
                 "%d dropped", words["read"], words["kept"], words["kept_folded"], words["merged"],
                 words["dropped"])
    read = time.time()
    with outputs.StagedOutput(params.output, inputs=inputs) as out:
        write_tokenizer(out.path, list(zip(vectors.index_to_key, vectors.counts.tolist())), beam_args)
        analysed = time.time()
        export(vectors, out.path, out.path)
        exported = time.time()
        coverage = text_coverage(out.path, params.coverage_text) if params.coverage_text else None
        info = {
            "job": schema.JOB,
            "inputs": {"vectors": params.vectors, "files": file_info, "fingerprint": fingerprint,
                       "coverage_text": params.coverage_text},
            "parameters": {"format": params.format, "max_words": params.max_words, "dim": vectors.dim},
            "source": source,
            "vocab_size": len(vectors),
            "oov_id": len(vectors),
            "dim": vectors.dim,
            "words": words,
            "counts": {"synthetic": True,
                       "rule": "the file has no counts: row i has count vocab_size - i (file order)"},
            "coverage": coverage,
            "seconds": {"read": round(read - started, 2), "tokenizer": round(analysed - read, 2),
                        "export": round(exported - analysed, 2)},
        }
        out.publish(info)
    logging.info("import-vectors: wrote %s (%d words of dimension %d)", params.output, len(vectors),
                 vectors.dim)
    if coverage:
        logging.info("import-vectors: the vocabulary covers %.1f%% of the %d tokens of %s",
                     100 * (coverage["share"] or 0), coverage["tokens"], params.coverage_text)
    return params.output


if __name__ == "__main__":
    main(schema.JOB, run)
