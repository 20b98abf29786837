"""The JSON-lines format, both ways; recordings written, read, replayed and reported."""
