#!/usr/bin/env python3
"""Checks docs/asyncapi.yaml, the project's own AsyncAPI description.

    python3 scripts/check-asyncapi.py [--contract DIR] [-v]

Always (no other checkout needed):
  * the file is YAML, AsyncAPI 3.0.0, and every local `$ref` in it resolves;
  * 15 consumed and 7 published messages, one receive / send operation each, names = types;
  * every message's own `examples` validate against its payload schema.

With the shared contract (--contract, $REFERRALD_CONTRACT_DIR, or ../shared/contract beside
the checkout), also:
  * each examples/consumed/*.json and examples/published/*.json validates against the payload
    schema of the message named by its `type`;
  * each examples/invalid/* that the manifest marks `invalid_data` fails its type's schema;
    the other JSON bodies fail the envelope (not_cloudevent, unsupported_specversion) or pass
    it with a type outside the catalogue (unknown_type);
  * each type's `data` schema and the envelope mean exactly what schemas/<type>.json says
    (compared with every `$ref` inlined and annotations removed);
  * the dead-letter codes and headers are the contract's.
Without it, those checks are skipped and the script says so.

Validation is JSON Schema draft-07 (AsyncAPI's default schema format) with format assertion
on (date-time, uri, uri-reference) and ECMA-262 `$` in `pattern` (end of string only).
Exits 1 when any check fails.
"""
import argparse
import copy
import json
import os
import re
import sys

try:
    import jsonschema
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7
except ImportError as exc:  # pragma: no cover
    sys.exit("check-asyncapi: needs PyYAML, jsonschema and referencing (%s)" % exc)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_PATH = os.path.join(ROOT, "docs", "asyncapi.yaml")
DOC_URI = "urn:referrald:asyncapi"
ANNOTATIONS = {"description", "title", "examples", "$comment", "$schema", "$id", "default"}


# ---- formats and patterns -----------------------------------------------------------------

URI_CHARS = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*\Z")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def is_uri_reference(value):
    return not isinstance(value, str) or bool(URI_CHARS.match(value))


def is_uri(value):
    return not isinstance(value, str) or (bool(SCHEME.match(value)) and is_uri_reference(value))


def is_date_time(value):
    if not isinstance(value, str):
        return True
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))\Z", value)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    if not (1 <= month <= 12 and 1 <= day <= days[month - 1] and hour < 24 and minute < 60 and second < 61):
        return False
    return m.group(9) is None or (int(m.group(9)) < 24 and int(m.group(10)) < 60)


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time")(is_date_time)
FORMATS.checks("uri")(is_uri)
FORMATS.checks("uri-reference")(is_uri_reference)


def ecma_pattern(validator, pattern, instance, schema):
    # In Python `$` also matches before a final newline; in ECMA-262 only at the very end.
    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield jsonschema.ValidationError("%r does not match %r" % (instance, pattern))


Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": ecma_pattern})


# ---- report -------------------------------------------------------------------------------

class Report:
    def __init__(self, verbose):
        self.verbose, self.passed, self.failed, self.skipped = verbose, 0, 0, 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print("  ok    " + what)
        else:
            self.failed += 1
            print("  FAIL  " + what + (": " + detail if detail else ""))
        return ok

    def skip(self, what):
        self.skipped += 1
        print("  SKIP  " + what)


def errors_of(validator, instance):
    return ["%s: %s" % (".".join(map(str, e.absolute_path)) or "(root)", e.message)
            for e in validator.iter_errors(instance)]


# ---- the document -------------------------------------------------------------------------

class Doc:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.doc = yaml.safe_load(f)
        self.registry = Registry().with_resource(
            DOC_URI, Resource.from_contents(self.doc, default_specification=DRAFT7))
        self.messages = self.doc["components"]["messages"]
        self.by_type = {m["name"]: key for key, m in self.messages.items() if m["name"] != "deadLetter"}

    def pointer(self, ref):
        node = self.doc
        for part in ref.lstrip("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def validator(self, schema_pointer):
        return Validator({"$ref": DOC_URI + schema_pointer}, registry=self.registry, format_checker=FORMATS)

    def payload_validator(self, event_type):
        return self.validator("#/components/messages/%s/payload" % self.by_type[event_type])

    def inline(self, schema, lookup=None):
        """Every `$ref` replaced by its target; annotations and x- extensions removed."""
        lookup = lookup or self.pointer
        if isinstance(schema, list):
            return [self.inline(s, lookup) for s in schema]
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            return self.inline(lookup(schema["$ref"]), lookup)
        return {k: self.inline(v, lookup) for k, v in schema.items()
                if k not in ANNOTATIONS and not k.startswith("x-")}


def all_refs(node, found):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.append(v)
            else:
                all_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            all_refs(v, found)
    return found


def message_names(doc, action, channel):
    names = set()
    for op in doc["operations"].values():
        if op["action"] != action or op["channel"]["$ref"] != "#/channels/" + channel:
            continue
        for ref in op["messages"]:
            msg = doc_pointer(doc, ref["$ref"])
            names.add(doc_pointer(doc, msg["$ref"])["name"] if "$ref" in msg else msg["name"])
    return names


def doc_pointer(doc, ref):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def check_document(d, rep):
    print("docs/asyncapi.yaml")
    doc = d.doc
    rep.check(doc.get("asyncapi") == "3.0.0", "asyncapi: 3.0.0")
    rep.check(doc.get("defaultContentType") == "application/cloudevents+json",
              "defaultContentType is application/cloudevents+json")
    broken = []
    for ref in all_refs(doc, []):
        try:
            d.pointer(ref)
        except (KeyError, IndexError, ValueError):
            broken.append(ref)
    rep.check(not broken, "every $ref resolves", ", ".join(sorted(set(broken))))

    consumed = message_names(doc, "receive", "referraldInbox")
    published = message_names(doc, "send", "referralEvents")
    rep.check(len(consumed) == 15, "15 consumed types received from referrald.inbox (%d)" % len(consumed))
    rep.check(len(published) == 7, "7 published types sent on referral.events (%d)" % len(published))
    rep.check(consumed | published == set(d.by_type), "every type message has an operation")
    for op_id, op in doc["operations"].items():
        for ref in op["messages"]:
            ch_ref = "#/channels/" + ref["$ref"].split("/")[2]
            rep.check(ch_ref == op["channel"]["$ref"], "%s: its messages are its channel's" % op_id)
    for t, key in sorted(d.by_type.items()):
        payload = d.messages[key]["payload"]
        rep.check(any(p.get("properties", {}).get("type", {}).get("const") == t
                      for p in payload.get("allOf", [])), "%s: payload type const is the name" % t)
        rep.check(d.messages[key].get("bindings", {}).get("amqp", {}).get("x-routing-key") == t,
                  "%s: routing key is the type" % t)
    for key, message in sorted(d.messages.items()):
        for n, example in enumerate(message.get("examples", [])):
            if "payload" in example and "payload" in message and message["name"] != "deadLetter":
                errs = errors_of(d.validator("#/components/messages/%s/payload" % key), example["payload"])
                rep.check(not errs, "%s: own example %d is valid" % (message["name"], n + 1), "; ".join(errs[:3]))
            if "headers" in example:
                errs = errors_of(d.validator("#/components/messages/%s/headers" % key), example["headers"])
                rep.check(not errs, "%s: own example %d headers are valid" % (message["name"], n + 1),
                          "; ".join(errs[:3]))


# ---- against the contract -----------------------------------------------------------------

def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_examples(d, contract, rep):
    print("contract examples")
    counted = 0
    for direction in ("consumed", "published"):
        folder = os.path.join(contract, "examples", direction)
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        rep.check(len(names) == (15 if direction == "consumed" else 7), "%s examples: %d" % (direction, len(names)))
        for name in names:
            event = read_json(os.path.join(folder, name))
            t = event.get("type")
            if not rep.check(t in d.by_type, "%s/%s: type has a message" % (direction, name)):
                continue
            errs = errors_of(d.payload_validator(t), event)
            if rep.check(not errs, "%s/%s valid" % (direction, name), "; ".join(errs[:3])):
                counted += 1
    print("  %d valid examples validated" % counted)

    folder = os.path.join(contract, "examples", "invalid")
    manifest = read_json(os.path.join(folder, "manifest.json"))
    envelope = d.validator("#/components/schemas/Envelope")
    rejected = 0
    for name, code in sorted(manifest.items()):
        with open(os.path.join(folder, name), "rb") as f:
            body = f.read()
        if code in ("not_json", "too_large"):
            continue  # nothing for a schema to say: size and syntax come first
        event = json.loads(body.decode("utf-8"))
        if code == "invalid_data":
            t = event.get("type")
            if rep.check(t in d.by_type, "invalid/%s: type %s has a message" % (name, t)):
                ok = rep.check(bool(errors_of(d.payload_validator(t), event)), "invalid/%s fails %s" % (name, t))
                rejected += ok
        elif code in ("not_cloudevent", "unsupported_specversion"):
            rep.check(bool(errors_of(envelope, event)), "invalid/%s fails the envelope (%s)" % (name, code))
        elif code == "unknown_type":
            rep.check(not errors_of(envelope, event) and event.get("type") not in d.by_type,
                      "invalid/%s: valid envelope, type outside the catalogue" % name)
    print("  %d invalid_data examples rejected" % rejected)


def check_schemas(d, contract, rep):
    print("contract schemas (meaning, annotations aside)")
    folder = os.path.join(contract, "schemas")
    for t, key in sorted(d.by_type.items()):
        theirs = read_json(os.path.join(folder, t + ".json"))
        defs = theirs.get("$defs", {})
        lookup = lambda ref, defs=defs: defs[ref.split("/")[-1]]
        payload = d.messages[key]["payload"]
        own = next(p for p in payload["allOf"] if "$ref" not in p)
        envelope_ref = next(p["$ref"] for p in payload["allOf"] if "$ref" in p)
        mine = d.inline(own["properties"]["data"])
        rep.check(mine == d.inline(theirs["properties"]["data"], lookup), "%s: data schema" % t,
                  "mine %s" % json.dumps(mine)[:300])
        source = theirs["properties"].get("source")
        my_source = (d.pointer(envelope_ref).get("allOf", [{}, {}])[1].get("properties", {}).get("source")
                     if envelope_ref.endswith("PublishedEnvelope") else None)
        rep.check(source == my_source, "%s: source constraint" % t, "%s vs %s" % (my_source, source))
        rep.check("data" in own.get("required", []) and "data" in theirs["required"], "%s: data required" % t)
    theirs = read_json(os.path.join(folder, "envelope.json"))
    lookup = lambda ref: theirs["$defs"][ref.split("/")[-1]]
    mine = d.inline(d.pointer("#/components/schemas/Envelope"))
    ref = d.inline({k: v for k, v in theirs.items() if k != "$defs"}, lookup)
    rep.check(mine == ref, "envelope", json.dumps(mine)[:300])


def check_dead_letters(d, contract, rep):
    print("contract dead letters")
    with open(os.path.join(contract, "asyncapi.yaml"), encoding="utf-8") as f:
        theirs = yaml.safe_load(f)
    codes = theirs["components"]["schemas"]["DeadLetterError"]["enum"]
    rep.check(d.pointer("#/components/schemas/DeadLetterError")["enum"] == codes, "x-referrald-error codes")
    their_headers = theirs["components"]["messages"]["deadLetter"]["headers"]
    mine = d.pointer("#/components/schemas/DeadLetterHeaders")
    rep.check(set(their_headers["required"]) <= set(mine["required"]), "required headers")
    for h in their_headers["properties"]:
        their_h = d.inline(their_headers["properties"][h],
                           lambda ref: theirs["components"]["schemas"][ref.split("/")[-1]])
        rep.check(d.inline(mine["properties"][h]) == their_h, "header %s" % h)
    their_enums = {k: v["enum"] for k, v in theirs["components"]["schemas"].items() if "enum" in v}
    for k, values in sorted(their_enums.items()):
        rep.check(d.pointer("#/components/schemas/" + k).get("enum") == values, "enum %s" % k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contract", help="the shared contract folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing checks too")
    args = parser.parse_args()
    rep = Report(args.verbose)
    try:
        d = Doc(DOC_PATH)
    except Exception as exc:
        rep.check(False, "docs/asyncapi.yaml loads", "%s: %s" % (type(exc).__name__, exc))
        d = None
    if d is not None:
        check_document(d, rep)
        contract = (args.contract or os.environ.get("REFERRALD_CONTRACT_DIR")
                    or os.path.join(os.path.dirname(ROOT), "shared", "contract"))
        if os.path.isfile(os.path.join(contract, "asyncapi.yaml")):
            for section in (check_examples, check_schemas, check_dead_letters):
                try:
                    section(d, contract, rep)
                except Exception as exc:
                    rep.check(False, "%s completed" % section.__name__, "%s: %s" % (type(exc).__name__, exc))
        else:
            rep.skip("contract checks: no contract at %s (pass --contract or set REFERRALD_CONTRACT_DIR)"
                     % contract)
    print("check-asyncapi: %d passed, %d failed, %d skipped" % (rep.passed, rep.failed, rep.skipped))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
