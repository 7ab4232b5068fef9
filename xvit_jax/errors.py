"""The one error type for user mistakes (bad config values, bad files, bad shapes).

Command lines catch it once and print its message as a single line; everything else is a bug and
keeps its traceback.
"""


class UserError(ValueError):
  """A mistake in what the user asked for; the message names the culprit."""
