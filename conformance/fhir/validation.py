"""Validation of every FHIR JSON document Ferry answers with.

Three checks: the document parses with fhir.resources' R4B model for its resourceType (elements,
cardinality, required elements, primitive formats; a Bundle's entries are validated as their own
types); it keeps the rules of FHIR's JSON format that a model does not see: no null, no empty
object, array or string (https://hl7.org/fhir/R4/json.html); and it keeps the R4 invariants of
Bundle and CapabilityStatement that a model does not check (bdl-1 to bdl-4, bdl-7, bdl-8; cpb-9,
cpb-12, cpb-14). Code bindings and other invariants are not checked.
"""

import json
from collections import Counter

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


def json_format_problems(value, path="$") -> list[str]:
    """Where `value` breaks FHIR's JSON rules."""
    if value is None:
        return [f"{path} is null"]
    if isinstance(value, str) and not value.strip():
        return [f"{path} is an empty or blank string"]
    if isinstance(value, (dict, list)) and not value:
        return [f"{path} is empty"]
    if isinstance(value, dict):
        children = [(f"{path}.{key}", item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        children = []
    return [problem for child, item in children for problem in json_format_problems(item, child)]


def bundle_problems(bundle) -> list[str]:
    kind = bundle["type"]
    entries = bundle.get("entry", [])
    found = []
    if "total" in bundle and kind not in ("searchset", "history"):
        found.append("bdl-1: total only when a search or history")
    for i, entry in enumerate(entries):
        if "search" in entry and kind != "searchset":
            found.append(f"bdl-2: entry[{i}].search only when a search")
        if ("request" in entry) != (kind in ("batch", "transaction", "history")):
            found.append(f"bdl-3: entry[{i}].request mandatory for batch/transaction/history only")
        if ("response" in entry) != (kind in ("batch-response", "transaction-response", "history")):
            found.append(f"bdl-4: entry[{i}].response mandatory for responses and history only")
        if "/_history/" in entry.get("fullUrl", ""):
            found.append(f"bdl-8: entry[{i}].fullUrl is version specific")
    if kind != "history":
        keys = [
            (e.get("fullUrl"), e.get("resource", {}).get("meta", {}).get("versionId"))
            for e in entries
            if "fullUrl" in e
        ]
        if len(keys) != len(set(keys)):
            found.append("bdl-7: the same fullUrl (and versionId) twice")
    return found


def capability_problems(statement) -> list[str]:
    found = []
    if statement["kind"] == "instance" and "implementation" not in statement:
        found.append("cpb-14: kind instance without implementation")
    for rest in statement.get("rest", []):
        types = [r["type"] for r in rest.get("resource", [])]
        if len(types) != len(set(types)):
            found.append(f"cpb-9: a resource described twice in rest mode {rest['mode']}")
        for resource in rest.get("resource", []):
            names = [p["name"] for p in resource.get("searchParam", [])]
            if len(names) != len(set(names)):
                found.append(f"cpb-12: {resource['type']} lists a search parameter twice")
    return found


INVARIANTS = {"Bundle": bundle_problems, "CapabilityStatement": capability_problems}


def problems(document) -> str | None:
    """Why `document` is not a valid FHIR R4 resource, or None."""
    if not isinstance(document, dict) or "resourceType" not in document:
        return "not a JSON object with a resourceType"
    try:
        model = get_fhir_model_class(document["resourceType"])
    except ValueError as e:
        return str(e)
    try:
        model.model_validate(document)
    except ValidationError as e:
        return str(e)
    found = json_format_problems(document)
    found += INVARIANTS.get(document["resourceType"], lambda _: [])(document)
    return "\n".join(found) if found else None


class Validator:
    """Validates what it is given and remembers the outcome: counts by resourceType (entries of
    Bundles counted too), and a report of every failure with the document in full."""

    def __init__(self):
        self.valid = Counter()
        self.failures = []

    def check(self, document, source: str) -> bool:
        problem = problems(document)
        if problem:
            shown = json.dumps(document, indent=2, ensure_ascii=False)
            self.failures.append(
                f"{source}: not valid FHIR R4\n{problem}\n--- document ---\n{shown}"
            )
            return False
        self.valid[document["resourceType"]] += 1
        for entry in document.get("entry", []) if document["resourceType"] == "Bundle" else []:
            # A transaction-response's entries carry a response, not always a resource.
            if "resource" in entry:
                self.valid[f"{entry['resource']['resourceType']} (in a Bundle)"] += 1
        return True

    def take_failures(self) -> list[str]:
        """The failures since the last call."""
        failures, self.failures = self.failures, []
        return failures

    def response_hook(self, response, *args, **kwargs):
        """A requests response hook: every body must be FHIR JSON, and valid."""
        source = f"{response.request.method} {response.url} -> {response.status_code}"
        if not response.content:
            return
        media = response.headers.get("content-type", "")
        if not media.startswith("application/fhir+json"):
            self.failures.append(f"{source}: answered as {media!r}, not application/fhir+json")
            return
        try:
            document = response.json()
        except ValueError as e:
            self.failures.append(f"{source}: body is not JSON ({e}):\n{response.text}")
            return
        self.check(document, source)
