"""Validates OCSF JSON lines against the OCSF 1.3.0 JSON Schema.

usage: validate.py SCHEMA.json EVENTS.jsonl

SCHEMA.json is the schema of every OCSF 1.3.0 class and object ($defs),
as exported by the OCSF schema server. Each line is validated against its
class (by `class_uid`), with `additionalProperties: false` on every class
and object that lists its attributes (an attribute OCSF does not define
is an error; free-form data goes under `unmapped`). The schema export
applies every profile, so it requires what the cloud, OSINT and security
control profiles require (`cloud`, `osint`, `action_id`): a line is held
to a profile's requirements when it names the profile in
`metadata.profiles`. Checks beyond the schema:
`type_uid` = `class_uid` * 100 + `activity_id`, `category_uid` =
`class_uid` // 1000, and the class's name. Prints one line per problem
and a summary; exits 1 if there was any problem.
"""

import collections
import json
import sys

import jsonschema

CLASSES = {
    0: "base_event",
    1001: "file_activity",
    1007: "process_activity",
    3002: "authentication",
    3003: "authorize_session",
    4007: "ssh_activity",
    6003: "api_activity",
    6005: "datastore_activity",
}
PROFILE_ONLY = {"cloud": "cloud", "osint": "osint", "action_id": "security_control"}


def main():
    schema_path, events_path = sys.argv[1], sys.argv[2]
    with open(schema_path) as f:
        defs = json.load(f)["$defs"]
    for definition in defs.values():
        definition.pop("$id", None)
        definition.pop("$schema", None)
        if definition.get("properties"):
            definition["additionalProperties"] = False
    validators = {}
    problems = 0
    seen = collections.Counter()
    with open(events_path) as f:
        for number, line in enumerate(f, 1):
            event = json.loads(line)
            class_uid = event.get("class_uid")
            name = CLASSES.get(class_uid)
            if name is None:
                print(f"line {number}: class_uid {class_uid} is not one this check knows")
                problems += 1
                continue
            profiles = frozenset(event.get("metadata", {}).get("profiles", []))
            key = (name, profiles)
            if key not in validators:
                root = json.loads(json.dumps(defs))
                required = root[name].get("required", [])
                root[name]["required"] = [
                    r for r in required if r not in PROFILE_ONLY or PROFILE_ONLY[r] in profiles
                ]
                validators[key] = jsonschema.Draft7Validator({"$ref": f"#/$defs/{name}", "$defs": root})
            for error in validators[key].iter_errors(event):
                where = "/".join(str(p) for p in error.absolute_path)
                print(f"line {number} ({name}): {where}: {error.message}")
                problems += 1
            activity = event.get("activity_id")
            if event.get("type_uid") != class_uid * 100 + (activity or 0):
                print(f"line {number}: type_uid {event.get('type_uid')} is not class_uid * 100 + activity_id")
                problems += 1
            if event.get("category_uid") != class_uid // 1000:
                print(f"line {number}: category_uid {event.get('category_uid')} is not class_uid's")
                problems += 1
            seen[class_uid] += 1
    summary = ", ".join(f"{uid}:{count}" for uid, count in sorted(seen.items()))
    print(f"{sum(seen.values())} objects ({summary}), {problems} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
