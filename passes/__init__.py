"""Relax passes of scalpel-tvm."""
