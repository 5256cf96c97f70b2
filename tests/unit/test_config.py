"""The endpoint `serve` prints in its first-start `export AWS_ENDPOINT_URL_KMS=…` line."""

from __future__ import annotations

import boto3
import pytest

from keytrail.config import ServeSettings


@pytest.mark.parametrize(("host", "endpoint"), [
    ("127.0.0.1", "http://localhost:4599"),
    ("0.0.0.0", "http://localhost:4599"),
    ("::", "http://[::1]:4599"),
    ("::1", "http://[::1]:4599"),
    ("kms.internal", "http://kms.internal:4599"),
])
def test_the_printed_endpoint_is_one_the_aws_sdks_accept(host: str, endpoint: str) -> None:
    """An IPv6 address goes in brackets in a URL: `http://::1:4599` was refused by botocore
    ("Invalid endpoint"), so the export line serve printed did not work."""
    assert ServeSettings(host=host).endpoint == endpoint
    client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="secret")
    assert client.meta.endpoint_url == endpoint
