"""The one exception type users catch: every refusal names the problem and the way out."""
import tvm_ffi


@tvm_ffi.error.register_error
class ScalpelError(ValueError):
    """A model, target or log scalpel-tvm cannot handle as given; the message says what to do.

    Registered with tvm-ffi so it keeps its type when raised inside a pass that TVM runs.
    """
