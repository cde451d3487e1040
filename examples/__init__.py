"""Runnable examples of the framework (see docs/unroll.md)."""
