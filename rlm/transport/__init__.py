"""Transports over the LM service: how a process other than the host reaches it."""
