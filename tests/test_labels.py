"""The shipped class-name lists: counts, order and a few entries checked against the sources."""

import pytest

from xvit_jax import labels
from xvit_jax.errors import UserError


def test_kinetics600():
  names = labels.names("kinetics600")
  assert len(names) == 600
  assert len(set(names)) == 600
  assert names == sorted(names)
  assert names[0] == "abseiling"
  assert names[-1] == "zumba"
  # Case as in the official annotation: Python's sort puts "American" before "american".
  assert names[308:310] == ["passing American football (in game)", "passing american football (not in game)"]
  assert names[287] == "massaging person's head"
  assert names[549] == "tying necktie"
  assert "throwing ball (not baseball or American football)" in names


def test_something_something_v2():
  names = labels.names("something_something_v2")
  assert len(names) == 174
  assert len(set(names)) == 174
  assert names[0] == "Approaching something with your camera"
  assert names[102] == "Putting number of something onto something"
  assert names[160] == "Touching (without moving) part of something"
  assert names[173] == "Wiping something off of something"
  assert not any("[" in n for n in names)


@pytest.mark.parametrize("dataset", labels.DATASETS)
def test_no_stray_whitespace(dataset):
  assert all(n and n == n.strip() for n in labels.names(dataset))


def test_unknown_dataset_names_the_available_ones():
  with pytest.raises(UserError, match="kinetics600.*something_something_v2"):
    labels.names("kinetics400")
