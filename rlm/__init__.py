"""rlm: Recursive Language Models.

    from rlm import RLM
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-5-mini"})
    out = rlm.completion(huge_document, root_prompt="Which clauses conflict?")
    out.response, out.usage_summary, out.stop_reason

`import rlm` imports no provider or sandbox SDK; they load when a backend needs them.
"""

from rlm.clients import get_client as get_client
from rlm.clients.base import BaseLM as BaseLM
from rlm.clients.scripted import ScriptedLM as ScriptedLM
from rlm.core.events import Observer
from rlm.core.rlm import RLM
from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    QueryMetadata,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    UsageSummary,
)
from rlm.environments import get_environment as get_environment
from rlm.environments.base import BaseEnv as BaseEnv
from rlm.errors import (
    AuthenticationError,
    BudgetExceededError,
    CancellationError,
    ConfigurationError,
    ContextLoadError,
    ContextWindowExceededError,
    ErrorThresholdExceededError,
    LimitExceededError,
    MissingDependencyError,
    ProtocolError,
    ProviderError,
    RemoteError,
    RLMError,
    SandboxError,
    SubcallLimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.lm_service.cache import SubcallCache
from rlm.logger import RLMLogger as RLMLogger

__version__ = "0.1.0"

# Names a subpackage exports (BaseLM, get_client, BaseEnv, get_environment, RLMLogger, ...) are
# importable from here but listed only in that subpackage's __all__, so no name is exported by
# two modules (the reference's import tests check this).
__all__ = [
    "RLM",
    "AuthenticationError",
    "BudgetExceededError",
    "CancellationError",
    "CodeBlock",
    "ConfigurationError",
    "ContextLoadError",
    "ContextWindowExceededError",
    "ErrorThresholdExceededError",
    "LimitExceededError",
    "MissingDependencyError",
    "ModelUsageSummary",
    "Observer",
    "ProtocolError",
    "ProviderError",
    "QueryMetadata",
    "REPLResult",
    "RLMChatCompletion",
    "RLMError",
    "RLMIteration",
    "RemoteError",
    "SandboxError",
    "SubcallCache",
    "SubcallLimitExceededError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "UsageSummary",
    "__version__",
]
