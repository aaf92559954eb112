"""Kernel templates per target: scheduled TIR for dense, node-shrunk dense and grouped-sparse layers."""
