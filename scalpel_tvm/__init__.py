"""scalpel-tvm: hardware-aware pruning as an Apache TVM plugin."""
