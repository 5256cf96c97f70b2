"""One exception tree for the key service: each class is named and coded like the AWS error.

Client faults answer HTTP 400 (as AWS KMS does for every modeled error); only internal and
dependency failures use 5xx. The message is what the caller sees: it never carries key material.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessDeniedException",
    "AlreadyExistsException",
    "CustomKeyStoreHasCMKsException",
    "CustomKeyStoreInvalidStateException",
    "CustomKeyStoreNameInUseException",
    "CustomKeyStoreNotFoundException",
    "DependencyTimeoutException",
    "DisabledException",
    "DryRunOperationException",
    "ExpiredImportTokenException",
    "IncorrectKeyException",
    "IncorrectKeyMaterialException",
    "InvalidAliasNameException",
    "InvalidArnException",
    "InvalidCiphertextException",
    "InvalidGrantIdException",
    "InvalidGrantTokenException",
    "InvalidImportTokenException",
    "InvalidKeyUsageException",
    "InvalidMarkerException",
    "KMSInternalException",
    "KMSInvalidMacException",
    "KMSInvalidSignatureException",
    "KMSInvalidStateException",
    "KeyUnavailableException",
    "KmsError",
    "LimitExceededException",
    "MalformedPolicyDocumentException",
    "NotFoundException",
    "SerializationException",
    "TagException",
    "ThrottlingException",
    "UnknownOperationException",
    "UnsupportedOperationException",
    "ValidationException",
]


class KmsError(Exception):
    """An error the API answers with `{"__type": code, "message": message}` and `status`."""

    code: ClassVar[str] = "KMSInternalException"
    status: ClassVar[int] = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _error(code: str, status: int = 400) -> type[KmsError]:
    return type(code, (KmsError,), {"code": code, "status": status, "__doc__": f"AWS `{code}`."})


AccessDeniedException = _error("AccessDeniedException")
AlreadyExistsException = _error("AlreadyExistsException")
CustomKeyStoreHasCMKsException = _error("CustomKeyStoreHasCMKsException")
CustomKeyStoreInvalidStateException = _error("CustomKeyStoreInvalidStateException")
CustomKeyStoreNameInUseException = _error("CustomKeyStoreNameInUseException")
CustomKeyStoreNotFoundException = _error("CustomKeyStoreNotFoundException")
DependencyTimeoutException = _error("DependencyTimeoutException", 500)
DisabledException = _error("DisabledException")
DryRunOperationException = _error("DryRunOperationException", 412)
ExpiredImportTokenException = _error("ExpiredImportTokenException")
IncorrectKeyException = _error("IncorrectKeyException")
IncorrectKeyMaterialException = _error("IncorrectKeyMaterialException")
InvalidAliasNameException = _error("InvalidAliasNameException")
InvalidArnException = _error("InvalidArnException")
InvalidCiphertextException = _error("InvalidCiphertextException")
InvalidGrantIdException = _error("InvalidGrantIdException")
InvalidGrantTokenException = _error("InvalidGrantTokenException")
InvalidImportTokenException = _error("InvalidImportTokenException")
InvalidKeyUsageException = _error("InvalidKeyUsageException")
InvalidMarkerException = _error("InvalidMarkerException")
KMSInternalException = _error("KMSInternalException", 500)
KMSInvalidMacException = _error("KMSInvalidMacException")
KMSInvalidSignatureException = _error("KMSInvalidSignatureException")
KMSInvalidStateException = _error("KMSInvalidStateException")
KeyUnavailableException = _error("KeyUnavailableException", 500)
LimitExceededException = _error("LimitExceededException")
MalformedPolicyDocumentException = _error("MalformedPolicyDocumentException")
NotFoundException = _error("NotFoundException")
SerializationException = _error("SerializationException")
TagException = _error("TagException")
ThrottlingException = _error("ThrottlingException")  # AWS's answer over a request quota; SDKs retry it
UnknownOperationException = _error("UnknownOperationException")
UnsupportedOperationException = _error("UnsupportedOperationException")
ValidationException = _error("ValidationException")
