"""keytrail: a self-hosted key service speaking the AWS KMS API, with a trustworthy audit trail."""

__version__ = "0.1.0"
__all__ = ["__version__"]
