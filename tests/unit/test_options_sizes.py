"""Sizes (max_memory, max_job_memory): one meaning whatever the type they come as."""

from __future__ import annotations

import math

import pytest

from taskschedd.errors import OptionError
from taskschedd.options import resolve, size_bytes


@pytest.mark.parametrize(
    ("value", "mib"),
    [(1.5, 2), ("1.5", 2), ("1.5M", 2), (512, 512), ("2G", 2048), (0, 0), (2.0, 2)],
)
def test_a_size_means_the_same_as_a_number_or_as_text(value: object, mib: int) -> None:
    assert resolve({"max_memory": value})[0].max_memory == mib


@pytest.mark.parametrize(
    "value", ["١٢٣", "１２", "-1", "1e9", "5 XB", math.nan, math.inf, True, -0.5]
)
def test_what_is_not_a_size_is_refused_naming_the_option(value: object) -> None:
    with pytest.raises(OptionError, match="max_memory"):
        resolve({"max_memory": value})


def test_other_scripts_digits_are_not_a_size() -> None:
    assert size_bytes("١٢٣") is None
