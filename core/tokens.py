"""The corpus job's tokenizer graph (its tf.Transform `transform_fn`) as token ids.

Every consumer of raw text (the sentiment job's Beam tokenization, the SavedModels
that serve raw strings) goes through these functions, so text is tokenized the same
way everywhere and the tf.Transform specifics live in one place.
"""

from schemas import corpus as corpus_schema

_WORD = r"\p{L}\p{M}\p{N}"
# Placeholders that protect '.' and ',' between digits while punctuation is removed.
_DOT, _COMMA = "\x01", "\x02"


def tokenize(text):
    """Splits a batch of strings into tokens, by the rules in pipelines/tokenize.py's docstring.

    It lives here, below both, because the corpus job's preprocessing_fn and the trainer's
    SavedModel (the strings of unseen tokens, for their subword vectors) both run it.

    Args:
      text: string `Tensor` of shape [batch] (UTF-8).

    Returns:
      `RaggedTensor` of strings, shape [batch, None].
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    s = tf.strings.lower(text, encoding="utf-8")
    s = tf.strings.regex_replace(s, "[’‘ʼ]", "'")
    # Two passes: a match consumes the digit after the separator, so "1,2,3" needs both.
    for _ in range(2):
        s = tf.strings.regex_replace(s, r"(\p{N})\.(\p{N})", "\\1" + _DOT + "\\2")
        s = tf.strings.regex_replace(s, r"(\p{N}),(\p{N})", "\\1" + _COMMA + "\\2")
    s = tf.strings.regex_replace(s, f"[^{_WORD}'{_DOT}{_COMMA}]+", " ")
    s = tf.strings.regex_replace(s, "(^| )'+|'+( |$)", " ")
    s = tf.strings.regex_replace(s, _DOT, ".")
    s = tf.strings.regex_replace(s, _COMMA, ",")
    return tf.strings.split(s)


def transform_layer(corpus_dir):
    """(the transform_fn as a Keras layer, the OOV id == the vocabulary size)."""
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    output = tft.TFTransformOutput(corpus_dir)
    return output.transform_features_layer(), output.vocabulary_size_by_name(
        corpus_schema.VOCAB_ASSET_NAME)


def ragged_ids(layer, text):
    """A [batch] string tensor -> [batch, None] int64 RaggedTensor of token ids (in a graph)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    ids = layer({corpus_schema.TEXT_KEY: text})[corpus_schema.TOKEN_IDS_KEY]
    if isinstance(ids, tf.SparseTensor):
        ids = tf.RaggedTensor.from_sparse(ids)
    return ids


def load_tokenizer(corpus_dir):
    """The transform_fn as a function: list of str -> (ids, row_splits), numpy.

    Returns:
      (function, the OOV id == the corpus vocabulary size).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    layer, oov_id = transform_layer(corpus_dir)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def token_ids(text):
        ids = ragged_ids(layer, text)
        return ids.values, ids.row_splits

    def run(texts):
        values, splits = token_ids(tf.constant([t.encode("utf-8") for t in texts], tf.string))
        return values.numpy(), splits.numpy()

    return run, oov_id


def empty_vocabulary_placeholder():
    """The token tf.Transform writes into a vocabulary that no token reached (bytes).

    tf.Transform has no public name for it; this is the one place that reads its
    private helper (tests/test_tokens.py fails if tf.Transform changes it).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_transform import analyzers  # pylint: disable=import-outside-toplevel

    _, placeholder = analyzers.get_empy_vocabulary_dummy_value(tf.string)
    return placeholder
