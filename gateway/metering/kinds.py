"""How each forwarded route is metered: the names a route rule carries (pure constants)."""

from __future__ import annotations

CHAT = "chat"  # chat/completions
COMPLETIONS = "completions"  # the legacy completions API
RESPONSES = "responses"
EMBEDDINGS = "embeddings"
MODERATIONS = "moderations"  # free at OpenAI: charged only what a price entry says
IMAGES = "images"  # images/generations (JSON)
IMAGE_UPLOAD = "image_upload"  # images/edits and /variations (multipart)
SPEECH = "speech"  # audio/speech: charged by input characters
TRANSCRIPTION = "transcription"  # audio/transcriptions and /translations (multipart)
REQUEST = "request"  # a route added in config: per_request of the body's model
FREE = ""  # GET /v1/models: nothing is spent

TOKEN_KINDS = frozenset({CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, MODERATIONS})
JSON_KINDS = frozenset({CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, MODERATIONS, IMAGES, SPEECH})
FORM_KINDS = frozenset({IMAGE_UPLOAD, TRANSCRIPTION})
# Streams whose usage rides in the event stream.
STREAMING_KINDS = frozenset({CHAT, COMPLETIONS, RESPONSES})
