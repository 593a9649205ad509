"""schemathesis hooks for scripts/fuzz.sh: bodies of the media types it cannot serialize itself."""
import schemathesis


@schemathesis.serializer("application/offset+octet-stream", "application/partial-upload")
def raw_bytes(ctx, value):
    """A tus or IETF-draft append's body: the bytes as they are."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Drops a header of a schema-valid case whose value does not match its parameter's `pattern`.

    schemathesis 4.32.5 fills optional header parameters with values such as "0" whatever their
    pattern says (its coverage phase does not apply patterns to headers), and then counts the
    400 they get as a valid request refused. Only positive cases and only headers whose schema
    has a pattern are touched: a negative case keeps its bad header, and the integration tests
    send malformed values of their own (tests/it/digests.rs)."""
    import re
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    if not case.headers or ctx.operation is None or str(getattr(mode, "value", mode)) != "positive":
        return
    for parameter in ctx.operation.definition.raw.get("parameters", []):
        pattern = parameter.get("schema", {}).get("pattern")
        name = parameter.get("name")
        if parameter.get("in") != "header" or not pattern or name not in case.headers:
            continue
        value = case.headers[name]
        if not isinstance(value, str) or re.search(pattern, value) is None:
            del case.headers[name]
