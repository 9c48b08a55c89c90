"""`ConfiguredLM`: what the provider clients built from a key, an address and headers share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlm.clients._http_errors import check_options, resolve_api_key
from rlm.clients.base import BaseLM
from rlm.errors import ConfigurationError


class ConfiguredLM(BaseLM):
    """A provider client: `api_key`, `base_url` and `default_headers`, plus `BaseLM`'s options.

    An option no class in the chain takes is a `ConfigurationError` naming the accepted ones.
    The key is resolved by `_take_key`; a missing one is raised at the first call (as the
    reference does), so code that builds an `RLM` without calling it works.
    """

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        check_options(self.provider, options)
        super().__init__(model_name, **options)
        self._api_key = api_key
        self.base_url = base_url
        self.default_headers = dict(default_headers or {})

    def _take_key(self, *env_vars: str | None, default: str | None = None) -> None:
        """The key passed, else the first env var set, else `default` (`resolve_api_key`)."""
        try:
            self._api_key = resolve_api_key(
                self.provider, self._api_key, *env_vars, default=default
            )
        except ConfigurationError as exc:  # raised at the first call (BaseLM._sdk_client)
            self._api_key, self._key_error = None, exc
