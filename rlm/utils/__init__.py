"""The reference implementation's `rlm.utils` paths, kept so its users' imports work.

Each module here adapts or re-exports the part of `rlm` that does the job; none is a second
implementation.
"""
