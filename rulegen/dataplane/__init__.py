"""Kernel object models and clients that back ends share (never each other's code)."""
