"""Everything Ferry serves validates with fhir.resources: the CapabilityStatement, every search and
history Bundle, every resource and every version of it, and the OperationOutcomes of the error
answers. Each response is validated by the session's hook as it arrives (conftest.py); these tests
make sure every kind of document is fetched, and check the answers themselves."""

import pytest

import dataset
from validation import problems

TYPES = ["Patient", "Encounter", "ServiceRequest", "Observation", "DiagnosticReport"]


def test_the_validator_rejects_what_is_not_fhir():
    """A control: a validator that accepted anything would make the other tests worthless."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    entry = {"fullUrl": "http://x/fhir/Patient/p1", "resource": patient}
    searchset = {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [entry]}
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "implementation": {"description": "x"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}],
    }
    for document in [patient, searchset, statement]:
        assert problems(document) is None, problems(document)
    undated = {k: v for k, v in statement.items() if k != "date"}
    unimplemented = {k: v for k, v in statement.items() if k != "implementation"}
    twice = [{"name": "family", "type": "string"}] * 2
    broken = [
        # (document, a piece of the complaint it must draw)
        (patient | {"shoeSize": 42}, "shoeSize\n  Extra inputs are not permitted"),
        (patient | {"birthDate": "1984-13-12"}, "birthDate\n"),
        (patient | {"name": {"family": "Brandt"}}, "name\n  Input should be a valid list"),
        (patient | {"id": "no_underscores"}, "id\n  String should match pattern"),
        (patient | {"name": []}, "$.name is empty"),
        (patient | {"gender": None}, "$.gender is null"),
        (searchset | {"total": -1}, "total\n  Input should be greater than or equal to 0"),
        (searchset | {"entry": [entry | {"resource": patient | {"x": 1}}]}, "entry.0.resource.x"),
        (searchset | {"entry": [entry, entry]}, "bdl-7"),
        (searchset | {"entry": [entry | {"request": {"method": "GET", "url": "x"}}]}, "bdl-3"),
        (searchset | {"type": "collection"}, "bdl-1"),
        ({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}, "issue.0.code"),
        (undated, "date\n  Value for the field 'date' is required"),
        (unimplemented | {"software": {"name": "x"}}, "cpb-14"),
        (
            statement
            | {
                "rest": [
                    {"mode": "server", "resource": [{"type": "Patient", "searchParam": twice}]}
                ]
            },
            "cpb-12",
        ),
        ({"resourceType": "Medicament"}, "Medicament is not a valid FHIR Model"),
    ]
    for document, complaint in broken:
        assert complaint in (problems(document) or ""), (document, problems(document))


def test_the_capability_statement_validates(api, validator):
    statement = api.get("metadata")
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["status"] == "active"
    assert statement["rest"][0]["mode"] == "server"
    assert [r["type"] for r in statement["rest"][0]["resource"]] == TYPES
    assert validator.valid["CapabilityStatement"] >= 1


def versions(resource) -> int:
    return int(resource["meta"]["versionId"])


@pytest.mark.parametrize("resource_type", TYPES)
def test_every_resource_search_and_history_validates(api, resource_type):
    """Search pages, type history pages, then each resource: read, its history, each version."""
    resources = api.search_all(f"{resource_type}?_count=7")
    assert len(resources) == len({r["id"] for r in resources}) > 0
    history = api.search_all(f"{resource_type}/_history?_count=7")
    assert len(history) == sum(versions(r) for r in resources)
    for resource in resources:
        path = f"{resource_type}/{resource['id']}"
        assert api.get(path) == resource
        own = api.get(f"{path}/_history")
        assert own["type"] == "history"
        assert own["total"] == versions(resource)
        for version in range(1, versions(resource) + 1):
            assert api.get(f"{path}/_history/{version}")["meta"]["versionId"] == str(version)


def test_how_many_of_each_type_ferry_serves(api):
    totals = {t: api.get(f"{t}?_summary=count")["total"] for t in TYPES}
    assert totals == {
        "Patient": dataset.PATIENTS,
        # Brandt's stay, Wieczorek's clinic visit, Solberg's stay (from the PV1 of her lab result).
        "Encounter": dataset.HARTMANNS + 3,
        "ServiceRequest": 2,  # Brandt's head CT, Solberg's urinalysis
        "Observation": 2 + 7,  # two radiology findings, seven urinalysis results
        "DiagnosticReport": 2,
    }


def test_search_variants_validate(api, patient_ids):
    brandt = patient_ids["100010"]
    included = api.get(f"Encounter?patient={brandt}&_include=Encounter:subject")
    assert [e["search"]["mode"] for e in included["entry"]] == ["match", "include"]
    posted = api.request("POST", "Patient/_search", data={"family": "hartmann", "_count": "3"})
    assert posted.status_code == 200
    assert posted.json()["total"] == dataset.HARTMANNS
    assert len(posted.json()["entry"]) == 3
    empty = api.get("Patient?family=nobody-of-that-name")
    assert empty["total"] == 0
    assert "entry" not in empty
    since = api.get("Patient/_history?_since=2000-01-01T00:00:00Z&_count=1")
    # Brandt (A08) and Petrov (the survivor of the merge) have two versions each.
    assert since["total"] == dataset.PATIENTS + 2


ERRORS = [
    # (method, path, headers, status, issue code, expression)
    ("GET", "Patient/no-such-patient", {}, 404, "not-found", None),
    ("GET", "Patient/no-such-patient/_history", {}, 404, "not-found", None),
    ("GET", "Patient/no-such-patient/_history/1", {}, 404, "not-found", None),
    ("GET", "Medication/1", {}, 404, "not-found", None),
    ("GET", "Patient?birthdate=yesterday", {}, 400, "invalid", "birthdate"),
    ("GET", "Patient?_count=many", {}, 400, "invalid", "_count"),
    ("GET", "Patient?shoe-size=42", {"Prefer": "handling=strict"}, 400, "invalid", "shoe-size"),
    ("GET", "Patient/x/_history/one", {}, 400, "invalid", None),
    ("GET", "metadata", {"Accept": "application/fhir+xml"}, 406, "not-supported", "_format"),
    ("GET", "Patient?_format=xml", {}, 406, "not-supported", "_format"),
    ("DELETE", "Patient/x", {}, 405, "not-supported", None),
    # Writes of Patient and ServiceRequest exist; without a body they are bad requests.
    ("PUT", "Patient/x", {"Content-Type": "application/fhir+json"}, 400, "invalid", None),
    ("POST", "Patient", {"Content-Type": "application/fhir+json"}, 400, "invalid", None),
    # Other types are read-only.
    ("POST", "Encounter", {"Content-Type": "application/fhir+json"}, 405, "not-supported", None),
    ("PUT", "Observation/x", {"Content-Type": "application/fhir+json"}, 405, "not-supported", None),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "code", "expression"), ERRORS)
def test_errors_are_valid_operation_outcomes(api, method, path, headers, status, code, expression):
    response = api.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert (issue["severity"], issue["code"]) == ("error", code)
    assert issue["diagnostics"]
    if expression:
        assert issue["expression"] == [expression]


def test_a_conditional_read_answers_304_without_a_body(api, patient_ids):
    path = f"Patient/{patient_ids['100011']}"
    etag = api.request("GET", path).headers["etag"]
    assert etag == 'W/"1"'
    response = api.request("GET", path, headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
