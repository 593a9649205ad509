"""schemathesis hooks for scripts/fuzz.sh: bodies of the media types it cannot serialize itself."""
import schemathesis


@schemathesis.serializer("application/offset+octet-stream", "application/partial-upload")
def raw_bytes(ctx, value):
    """A tus or IETF-draft append's body: the bytes as they are."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
