"""The tokenizer graph: the rules documented in pipelines/tokenize.py."""

import pytest
import tensorflow as tf

from pipelines.tokenize import tokenize


def _tokens(*texts):
    return [[t.decode("utf-8") for t in row] for row in tokenize(tf.constant(list(texts))).to_list()]


@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", ["hello", "world"]),
    ("state-of-the-art", ["state", "of", "the", "art"]),
    ("Don't stop", ["don't", "stop"]),
    ("O’Neill’s rock'n'roll", ["o'neill's", "rock'n'roll"]),
    ("'Tis the students' book", ["tis", "the", "students", "book"]),
    ("''' ' '", []),
    ("pi is 3.14, about 1,000,000 or 1,2,3.", ["pi", "is", "3.14", "about", "1,000,000", "or", "1,2,3"]),
    ("version v1.2 a.b c,d", ["version", "v1.2", "a", "b", "c", "d"]),
    ("ΚΕΙΜΕΝΟ Ελληνικά", ["κειμενο", "ελληνικά"]),
    ("東京 Straße CAFÉ", ["東京", "straße", "café"]),
    ("tabs\tand\nnewlines  spaces", ["tabs", "and", "newlines", "spaces"]),
    ("", []),
    ("�broken� bytes", ["broken", "bytes"]),
])
def test_tokenize_rules(text, expected):
    assert _tokens(text) == [expected]


def test_tokenize_keeps_batch_rows_apart():
    assert _tokens("a b", "", "c") == [["a", "b"], [], ["c"]]
