"""Validation of every FHIR JSON document Ferry answers with.

Two checks: the document parses with fhir.resources' R4B model for its resourceType (elements,
cardinality, required elements, primitive formats; a Bundle's entries are validated as their own
types), and it keeps the rules of FHIR's JSON format that a model does not see: no null, no empty
object, array or string (https://hl7.org/fhir/R4/json.html). Code bindings are not checked.
"""

import json
from collections import Counter

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


def json_format_problems(value, path="$"):
    """Where `value` breaks FHIR's JSON rules."""
    if value is None:
        return [f"{path} is null"]
    if isinstance(value, str) and not value.strip():
        return [f"{path} is an empty or blank string"]
    if isinstance(value, (dict, list)) and not value:
        return [f"{path} is empty"]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    problems = []
    for key, item in items:
        problems += json_format_problems(
            item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        )
    return problems


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
