"""The routing key the gateway sends a router, so that every turn of one chat lands on one worker.

A worker's radix tree holds the KV of the chats it served; a follow-up turn reuses it only on that
worker. The router cannot tell chats apart (SMG's `cache_aware` reads the prompt text, in which an
image is a placeholder), so the gateway names the chat in a header (`ROUTING_KEY_HEADER`) and the
router, started with `--sticky-sessions --routing-key-headers <it>`, pins each key to a worker.

Contract of `routing_key`: a hex digest of the model and of the chat's first image (its PNG bytes as
sent to SGLang), else its first video, else its first user message. Every turn of a chat resends its
history, so all turns hash alike; chats that differ in that first item differ in key. The first user
message and not the first message: a system prompt is shared by many chats and would pin all of them
to one worker.
"""

from __future__ import annotations

import hashlib
import json

from service.media.intake import PreparedMedia

# SMG's default routing-key header; `service.router_launch` starts SMG with this name.
ROUTING_KEY_HEADER = "x-smg-routing-key"


def routing_key(model: str, media: PreparedMedia, template_messages: list[dict]) -> str:
    """See the module docstring."""
    digest = hashlib.sha256(model.encode() + b"\0")
    if media.images:
        digest.update(b"image\0" + media.images[0].png)
    elif media.videos:
        digest.update(b"video\0" + media.videos[0].mp4)
    else:
        users = [m for m in template_messages if m.get("role") == "user"]
        first = (users or template_messages or [None])[0]
        digest.update(b"text\0" + json.dumps(first, sort_keys=True).encode())
    return digest.hexdigest()[:32]
