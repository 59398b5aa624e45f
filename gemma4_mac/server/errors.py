"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status."""

from __future__ import annotations

from typing import Optional


class APIError(Exception):
    """An error answered to the client as is; `status` is the HTTP status code."""

    status = 400
    error_type = "invalid_request_error"
    code: Optional[str] = None

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class BadRequest(APIError):
    """400: the request cannot be served as written."""


class AuthenticationError(APIError):
    status, error_type, code = 401, "authentication_error", "invalid_api_key"


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


class ServerError(APIError):
    status, error_type, code = 500, "server_error", "internal_error"
