"""The one exception type users catch: every refusal names the problem and the way out."""


class ScalpelError(ValueError):
    """A model, target or log scalpel-tvm cannot handle as given; the message says what to do."""
