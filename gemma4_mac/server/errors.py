"""API errors with their HTTP status, answered in the shape of the API that was called.

OpenAI (chat, completions, responses, models): `{"error": {"message", "type", "param", "code"}}`.
Anthropic (/v1/messages): `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

from typing import Optional

ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
                   429: "rate_limit_error", 499: "invalid_request_error", 503: "overloaded_error"}


class APIError(Exception):
    """An error answered to the client as is; `status` is the HTTP status code, `headers` go with it."""

    status = 400
    error_type = "invalid_request_error"
    code: Optional[str] = None

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 status: Optional[int] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def anthropic_body(self) -> dict:
        """The JSON body Anthropic's clients parse."""
        fallback = "api_error" if self.status >= 500 else "invalid_request_error"
        kind = ANTHROPIC_TYPES.get(self.status, fallback)
        return {"type": "error", "error": {"type": kind, "message": self.message}}


class BadRequest(APIError):
    """400: the request cannot be served as written."""


class AuthenticationError(APIError):
    status, error_type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(APIError):
    """403: the request came from where this server does not answer (a web page, an unknown host name)."""

    status, error_type, code = 403, "permission_error", "forbidden"


class NotFound(APIError):
    status, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(APIError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class RateLimited(APIError):
    status, error_type, code = 429, "rate_limit_error", "queue_full"


class NoModelLoaded(APIError):
    status, error_type, code = 503, "service_unavailable", "model_not_loaded"


class GroupDegraded(APIError):
    """A Mac of the group a split model runs on stopped answering (gemma4_mac/distributed.py)."""

    status, error_type, code = 503, "service_unavailable", "group_degraded"


class ServerError(APIError):
    status, error_type, code = 500, "server_error", "internal_error"
