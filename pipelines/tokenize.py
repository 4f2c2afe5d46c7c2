"""The tokenizer, as TensorFlow ops, and the corpus job's tf.Transform preprocessing_fn.

The same graph tokenizes the corpus, the sentiment job's labelled text and raw
requests to the serving SavedModels, because all of them run the corpus job's
`transform_fn`.

Tokenization rules (deliberate, stable; changing them changes every id):
  * Text is lower-cased with Unicode case mapping (`tf.strings.lower(encoding="utf-8")`);
    no other normalisation (no accent stripping, no NFKC).
  * A token is a maximal run of letters, combining marks and digits (`\\p{L}`,
    `\\p{M}`, `\\p{N}`), so non-Latin scripts tokenize like Latin ones.
  * Apostrophes (', ’, ‘, ʼ, all mapped to ') inside a word keep it whole:
    "don't", "o'neill", "rock'n'roll". At the start or end of a word they are
    dropped: "'tis" -> "tis", "students'" -> "students".
  * Numbers stay whole, including "." or "," between digits: "3.14", "1,000",
    "2015". They are not normalised ("1000" and "1,000" are two tokens).
  * Everything else (punctuation, symbols, hyphens, whitespace) separates tokens
    and is dropped: "state-of-the-art" -> "state", "of", "the", "art".

Ids: the vocabulary file lists tokens ordered by (-count, token); line i holds id i.
Every token outside the vocabulary maps to the single out-of-vocabulary id
`vocab_size` (one OOV bucket after the vocabulary).
"""

import tensorflow_transform as tft

from core.tokens import tokenize  # noqa: F401  (the rules above; also what the trainer's SavedModel runs)
from schemas import corpus as schema

def make_preprocessing_fn(min_count):
    """Returns the corpus job's preprocessing_fn.

    Args:
      min_count: tokens seen fewer times are left out of the vocabulary.

    Returns:
      preprocessing_fn mapping {"text": [batch] string} to
      {"token_ids": ragged [batch, None] int64}, OOV tokens mapped to `vocab_size`.
    """

    def preprocessing_fn(inputs):
        tokens = tokenize(inputs[schema.TEXT_KEY])
        vocab = tft.vocabulary(
            tokens,
            frequency_threshold=min_count if min_count > 1 else None,
            store_frequency=True,
            vocab_filename=schema.VOCAB_ASSET_NAME,
        )
        ids = tft.apply_vocabulary(tokens, vocab, num_oov_buckets=1)
        return {schema.TOKEN_IDS_KEY: ids}

    return preprocessing_fn
