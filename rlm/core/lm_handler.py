"""The reference's `rlm.core.lm_handler`: `LMHandler`, the LM service over TCP.

The service itself (sessions, the one LM path, child RLMs, tools) is `rlm.lm_service.service`; the
TCP server is `rlm.transport.tcp`. Both are named here for code written against the reference.
"""

from rlm.lm_service.service import LMService, Session
from rlm.transport.inprocess import ServiceLink
from rlm.transport.tcp import LMHandler, running_handler

__all__ = ["LMHandler", "LMService", "ServiceLink", "Session", "running_handler"]
