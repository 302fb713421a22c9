#!/usr/bin/env python3
"""Validates one published event (stdin) against a JSON Schema file (argv[1]), with format
assertion on and ECMA-262 `$` semantics, as the contract's examples/README.md asks.
Prints nothing and exits 0 when valid; prints the first error and exits 1 otherwise."""
import json
import re
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
event = json.loads(sys.stdin.buffer.read())


def ecma_pattern(validator, pattern, instance, schema):
    # Python's `$` also matches before a final newline; ECMA-262's does not. Only the final
    # anchor is rewritten: a `$` inside a character class is a literal dollar.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if isinstance(instance, str) and not re.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


cls = jsonschema.validators.validator_for(schema)
Validator = jsonschema.validators.extend(cls, {"pattern": ecma_pattern})
errors = sorted(Validator(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(event), key=str)
if errors:
    e = errors[0]
    print(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
    sys.exit(1)
