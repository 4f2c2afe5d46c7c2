"""The small core every layer above builds on: the output contract, files, Beam
options and counters, the tokenizer graph, plots and parameter declarations.

Imports only `schemas` and third-party libraries.
"""

__version__ = "0.1.0"
