"""Assertions on AWS error responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

__all__ = ["aws_error"]


def aws_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str, int]:
    """Run a boto3 call that must fail; return (code, message, HTTP status)."""
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    error = info.value.response["Error"]
    status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return error["Code"], error.get("Message", ""), status
