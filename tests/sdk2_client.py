"""Run by the SDK-2.26 interpreter (see tests/integration/test_videos_sdk2.py), not by pytest.

Drives client.videos end to end against a live gateway and prints what it saw as JSON.
"""

import json
import sys
from typing import Any, cast

import openai

base_url, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=token, _strict_response_validation=True)
out: dict[str, object] = {"sdk": openai.__version__}

raw = client.videos.with_raw_response.create(prompt="a kite", seconds="8")
out["request_content_type"] = raw.http_request.headers["content-type"]
first = raw.parse()
out["created"] = {"id": first.id, "status": first.status, "seconds": first.seconds}

done = client.videos.create_and_poll(prompt="a boat", poll_interval_ms=50)
out["polled"] = {"status": done.status, "progress": done.progress}
out["content_length"] = len(client.videos.download_content(done.id).read())
remix = client.videos.remix(done.id, prompt="at night")
out["remix_of"] = remix.remixed_from_video_id == done.id

for i in range(5):
    client.videos.create(prompt=f"clip {i}")
out["listed"] = len([v.id for v in client.videos.list(limit=2)])

client.videos.delete(first.id)
try:
    client.videos.retrieve(first.id)
    out["after_delete"] = "found"
except openai.NotFoundError as e:
    out["after_delete"] = e.code
try:
    # Outside the SDK's Literal on purpose: the gateway, not the SDK, must refuse it.
    client.videos.create(prompt="p", seconds=cast(Any, "5"))
except openai.BadRequestError as e:
    out["bad_seconds"] = [e.param, e.code]
print(json.dumps(out))
