"""core.params: one declaration gives the flags, the help, the run config keys and the checks."""

import argparse

import pytest
from pydantic import model_validator

from core.params import Params, new_parser, param, parse_known


class ToyParams(Params):
    output: str = param(help="where to write", metavar="DIR", config=False)
    inputs: list[str] = param([], flag="--input", repeat=True, help="files (repeatable)")
    min_count: int = param(5, ge=1, help="least count")
    sample: float = param(1e-3, ge=0, lt=1, help="subsampling threshold")
    max_vocab: int | None = param(None, ge=1, help="most tokens")
    kernel: str = param("auto", choices=("auto", "fused", "tf"), help="which kernel")
    standardize: bool = param(True, negate="--no-standardize", help="skip batch norm")
    compare: bool = param(False, flag="--compare-scratch", help="also train from scratch")
    folds: int | None = param(None, ge=2, group="held_out", help="K folds")
    eval_fraction: float | None = param(None, gt=0, lt=1, group="held_out", help="held-out share")

    @model_validator(mode="after")
    def _held_out_default(self):
        if self.folds is None and self.eval_fraction is None:
            self.eval_fraction = 0.1
        return self


def _parse(argv):
    return parse_known(ToyParams, ToyParams.add_flags(new_parser("toy", "a toy job")), argv)


def test_flags_come_from_the_declaration_with_defaults_and_beam_args_apart():
    params, rest = _parse(["--output", "o", "--input", "a", "--input", "b", "--min-count", "3",
                           "--no-standardize", "--runner", "DirectRunner"])
    assert params.inputs == ["a", "b"] and params.min_count == 3 and params.standardize is False
    assert params.sample == 1e-3 and params.kernel == "auto" and params.compare is False
    assert params.eval_fraction == 0.1  # the conditional default of the validator
    assert rest == ["--runner", "DirectRunner"]
    assert _parse(["--output", "o", "--folds", "3"])[0].eval_fraction is None


def test_help_shows_each_default_once():
    text = ToyParams.add_flags(new_parser("toy", "a toy job")).format_help()
    assert "least count (default 5)" in text
    assert "subsampling threshold (default 0.001)" in text
    assert "most tokens\n" in text or "most tokens " in text  # no "(default None)"
    assert "(default None)" not in text


@pytest.mark.parametrize("argv, message", [
    (["--min-count", "0"], "--min-count must be >= 1, got 0"),
    (["--sample", "1.5"], r"--sample must be in \[0, 1\), got 1.5"),
    (["--max-vocab", "0"], "--max-vocab must be >= 1, got 0"),
    (["--eval-fraction", "1"], r"--eval-fraction must be in \(0, 1\), got 1.0"),
])
def test_a_bad_flag_is_named_with_the_rule_and_the_value(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(["--output", "o", *argv])


def test_argparse_refuses_flags_of_one_group_together_and_unknown_choices():
    with pytest.raises(SystemExit):
        _parse(["--output", "o", "--folds", "3", "--eval-fraction", "0.2"])
    with pytest.raises(SystemExit):
        _parse(["--output", "o", "--kernel", "gpu"])


def test_config_sections_are_checked_by_key_with_the_type_named():
    assert ToyParams.config_keys() == ["inputs", "min_count", "sample", "max_vocab", "kernel",
                                       "standardize", "compare", "folds", "eval_fraction"]
    with pytest.raises(ValueError, match=r"unknown key toy\.output \(known in toy: inputs, "):
        ToyParams.from_mapping({"output": "x"}, "toy")
    with pytest.raises(ValueError, match="toy.min_count must be an integer >= 1, got 0"):
        ToyParams.from_mapping({"min_count": 0}, "toy")
    with pytest.raises(ValueError, match=r"toy.sample must be a number in \[0, 1\), got 'high'"):
        ToyParams.from_mapping({"sample": "high"}, "toy")
    with pytest.raises(ValueError, match=r"toy.max_vocab must be an integer >= 1 or null, got 0"):
        ToyParams.from_mapping({"max_vocab": 0}, "toy")
    with pytest.raises(ValueError, match=r"toy.kernel must be one of \['auto', 'fused', 'tf'\]"):
        ToyParams.from_mapping({"kernel": "gpu"}, "toy")
    section = ToyParams.from_mapping({"min_count": 2, "folds": 3}, "toy")
    assert section == {"inputs": [], "min_count": 2, "sample": 1e-3, "max_vocab": None, "kernel": "auto",
                       "standardize": True, "compare": False, "folds": 3, "eval_fraction": None}
    # null where no null is taken means the declared default; one string, a one-item list.
    assert ToyParams.from_mapping({"min_count": None, "inputs": "a.txt"}, "toy")["min_count"] == 5
    assert ToyParams.from_mapping({"inputs": "a.txt"}, "toy")["inputs"] == ["a.txt"]
    # A default that a validator derives is left to the job: not fixed in the section.
    assert ToyParams.from_mapping({}, "toy")["eval_fraction"] is None


def test_to_argv_gives_a_command_line_the_parser_reads_back_to_the_same_values():
    values = {"output": "o", "inputs": ["a", "b"], "min_count": 2, "sample": 0.0, "max_vocab": None,
              "kernel": "tf", "standardize": False, "compare": True, "folds": 4, "eval_fraction": None}
    argv = ToyParams.to_argv(values)
    assert argv == ["--output", "o", "--input", "a", "--input", "b", "--min-count", "2",
                    "--sample", "0.0", "--kernel", "tf", "--no-standardize", "--compare-scratch",
                    "--folds", "4"]
    assert _parse(argv)[0].model_dump() == values
    # Declared defaults are left out: the job applies them.
    assert ToyParams.to_argv({"output": "o", "min_count": 5, "kernel": "auto", "standardize": True}) == [
        "--output", "o"]


def test_a_namespace_with_unset_flags_takes_the_declared_defaults():
    args = argparse.Namespace(output="o", inputs=None, min_count=None, sample=None, max_vocab=None,
                              kernel=None, standardize=None, compare=None, folds=None,
                              eval_fraction=None, other="ignored")
    params = ToyParams.from_args(args)
    assert (params.min_count, params.sample, params.standardize, params.eval_fraction) == (5, 1e-3, True, 0.1)
