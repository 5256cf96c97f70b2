"""Tags: TagResource, UntagResource, ListResourceTags."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.paging import page
from keytrail.kms.tags import validate_tags

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]


async def tag_resource(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    tags = call.params["Tags"]
    await svc.authorize(call, "kms:TagResource", key, {
        "aws:TagKeys": [t["TagKey"] for t in tags],
        **{f"aws:RequestTag/{t['TagKey']}": t["TagValue"] for t in tags},
    })
    svc.require_not_pending_deletion(key)
    await svc.store.put_key(key.with_tags(validate_tags(tags, key.tag_map)))
    return {}


async def untag_resource(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    names = call.params["TagKeys"]
    await svc.authorize(call, "kms:UntagResource", key, {"aws:TagKeys": list(names)})
    svc.require_not_pending_deletion(key)
    call.log_key_id(key.arn)  # ct-untagresource; TagResource's entries still log null. Before the write (its record)
    await svc.store.put_key(key.with_tags({k: v for k, v in key.tags if k not in set(names)}))
    return {}


async def list_resource_tags(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:ListResourceTags", key)
    chunk, paging = page(key.tags, call.params, lambda t: (t[0],), f"ListResourceTags {key.arn}", default_limit=50)
    return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in chunk], **paging}


OPERATIONS: dict[str, Operation] = {
    "TagResource": Operation(tag_resource),
    "UntagResource": Operation(untag_resource),
    "ListResourceTags": Operation(list_resource_tags, read_only=True),
}
