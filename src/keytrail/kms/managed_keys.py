"""AWS managed keys: the keys AWS makes in an account for a service, named by a predefined alias
(`alias/aws/s3`, `alias/aws/ebs`, …).

DescribeKey on a predefined alias that has no key yet creates its AWS managed key and associates
the alias (DescribeKey API reference), as Terraform's `data "aws_kms_key"` does to learn the ARN
for SSE-KMS. The key belongs to AWS: KeyManager AWS, rotated every year, and a key policy no one
may change, which lets account principals use it only through its service (kms:ViaService) and
read its metadata directly ("AWS managed keys", AWS KMS Developer Guide).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from keytrail.kms.keys import DEFAULT_ROTATION_PERIOD_DAYS, Key, KeyMaterial
from keytrail.kms.model import KeyManager
from keytrail.kms.partitions import partition_of

__all__ = ["PREDEFINED", "ManagedService", "managed_key", "managed_key_id", "managed_policy"]


@dataclass(frozen=True, slots=True)
class ManagedService:
    """A service with a predefined alias: its endpoint prefix (kms:ViaService
    `<prefix>.<region>.amazonaws.com`), its name and what its key protects, as the key's
    Description and policy say them."""

    alias: str
    prefix: str
    name: str
    protects: str

    @property
    def description(self) -> str:
        return f"Default key that protects my {self.protects} when no other key is defined"


# The predefined aliases a new account's ListAliases shows (with no TargetKeyId until first use): those
# of a real account's listing (acm … xray) and the ones Terraform and CloudFormation name by
# `data "aws_kms_key"` or as a resource's default key (backup, ecr, fsx, kinesis, sqs).
PREDEFINED: dict[str, ManagedService] = {
    service.alias: service
    for service in (
        ManagedService("alias/aws/acm", "acm", "ACM", "ACM private keys"),
        ManagedService("alias/aws/backup", "backup", "Backup", "backups"),
        ManagedService("alias/aws/cloud9", "cloud9", "Cloud9", "Cloud9 environments"),
        ManagedService("alias/aws/codecommit", "codecommit", "CodeCommit", "CodeCommit repositories"),
        ManagedService("alias/aws/connect", "connect", "Connect", "Connect data"),
        ManagedService("alias/aws/dynamodb", "dynamodb", "DynamoDB", "DynamoDB tables"),
        ManagedService("alias/aws/ebs", "ec2", "EBS", "EBS volumes"),
        ManagedService("alias/aws/ecr", "ecr", "ECR", "ECR repositories"),
        ManagedService("alias/aws/elasticfilesystem", "elasticfilesystem", "EFS", "EFS filesystems"),
        ManagedService("alias/aws/es", "es", "Elasticsearch", "Elasticsearch data"),
        ManagedService("alias/aws/fsx", "fsx", "FSx", "FSx file systems"),
        ManagedService("alias/aws/glue", "glue", "Glue", "Glue data"),
        ManagedService("alias/aws/kafka", "kafka", "MSK", "MSK clusters"),
        ManagedService("alias/aws/kinesis", "kinesis", "Kinesis", "Kinesis streams"),
        ManagedService("alias/aws/kinesisvideo", "kinesisvideo", "Kinesis Video Streams", "Kinesis Video Streams data"),
        ManagedService("alias/aws/lambda", "lambda", "Lambda", "Lambda functions"),
        ManagedService("alias/aws/lex", "lex", "Lex", "Lex data"),
        ManagedService("alias/aws/lightsail", "lightsail", "Lightsail", "Lightsail resources"),
        ManagedService("alias/aws/rds", "rds", "RDS", "RDS database volumes"),
        ManagedService("alias/aws/redshift", "redshift", "Redshift", "Redshift databases"),
        ManagedService("alias/aws/s3", "s3", "S3", "S3 objects"),
        ManagedService("alias/aws/secretsmanager", "secretsmanager", "Secrets Manager", "Secrets Manager data"),
        ManagedService("alias/aws/sns", "sns", "SNS", "SNS data"),
        ManagedService("alias/aws/sqs", "sqs", "SQS", "SQS data"),
        ManagedService("alias/aws/ssm", "ssm", "SSM", "SSM parameters"),
        ManagedService("alias/aws/xray", "xray", "X-Ray", "X-Ray data"),
    )
}

# Fixes the ids of AWS managed keys (`managed_key_id`); any constant would do, it must never change.
_KEY_IDS = uuid.UUID("5f0c6b5e-8d3a-4f5e-9a57-6b6579747261")
_USES = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]


def managed_key_id(account: str, region: str, alias: str) -> str:
    """The id of the AWS managed key of `alias` in an account and Region. One id, whichever node
    makes the key: two calls making it at once write one key, and a key made by a call that stopped
    before it associated the alias is found and associated by the next."""
    return str(uuid.uuid5(_KEY_IDS, f"{account}:{region}:{alias}"))


def _endpoint(prefix: str, region: str) -> str:
    suffix = "amazonaws.com.cn" if partition_of(region) == "aws-cn" else "amazonaws.com"
    return f"{prefix}.{region}.{suffix}"


def managed_policy(service: ManagedService, account: str, region: str) -> str:
    """The key policy of an AWS managed key: use through its service only, for the account's
    principals; metadata to the account directly. A direct Encrypt is denied, as in AWS."""
    document = {
        "Version": "2012-10-17",
        "Id": f"auto-{service.alias.removeprefix('alias/aws/')}-2",
        "Statement": [
            {
                "Sid": f"Allow access through {service.name} for all principals in the account "
                f"that are authorized to use {service.name}",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": _USES,
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"kms:CallerAccount": account, "kms:ViaService": _endpoint(service.prefix, region)}
                },
            },
            {
                "Sid": "Allow direct access to key metadata to the account",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition_of(region)}:iam::{account}:root"},
                "Action": ["kms:Describe*", "kms:Get*", "kms:List*"],
                "Resource": "*",
            },
        ],
    }
    return json.dumps(document, indent=2)


def managed_key(service: ManagedService, account: str, region: str, material: KeyMaterial) -> Key:
    """The AWS managed key of `service`, made now (`material.created`): rotated every year."""
    now: datetime = material.created
    return Key(
        account=account,
        region=region,
        key_id=managed_key_id(account, region, service.alias),
        creation_date=now,
        key_manager=KeyManager.AWS,
        description=service.description,
        policy=managed_policy(service, account, region),
        materials=(material,),
        rotation_enabled=True,
        rotation_period_days=DEFAULT_ROTATION_PERIOD_DAYS,
        next_rotation_date=now + timedelta(days=DEFAULT_ROTATION_PERIOD_DAYS),
    )
