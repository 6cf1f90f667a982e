"""Writes by real clients: fhirpy creates and updates a Patient (its `save()` is POST, then PUT),
fhirclient creates a ServiceRequest for it, and a transaction Bundle goes over plain HTTP. Every
answer (resources, the transaction-response Bundle, OperationOutcomes) is validated like the
reads. This module runs after the read tests (pytest's file order), so their counts of the
dataset's patients stay as they were."""

from fhirclient.models.servicerequest import ServiceRequest

SYSTEM = "urn:oid:1.2.276.0.76.4.99"


def test_fhirpy_creates_and_updates_a_patient(fhirpy_client):
    patient = fhirpy_client.resource(
        "Patient",
        identifier=[{"system": SYSTEM, "value": "CONF-1"}],
        name=[{"family": "Okafor", "given": ["Ada"]}],
        gender="female",
        birthDate="1991-02-03",
    )
    patient.save()
    assert patient["id"]
    assert patient["meta"]["versionId"] == "1"
    read = fhirpy_client.reference("Patient", patient["id"]).to_resource()
    assert read["name"][0]["family"] == "Okafor"
    assert read["identifier"][0] == {**read["identifier"][0], "system": SYSTEM, "value": "CONF-1"}

    read["name"][0]["family"] = "Okafor-Bello"
    read.save()
    again = fhirpy_client.reference("Patient", patient["id"]).to_resource()
    assert again["meta"]["versionId"] == "2"
    assert again["name"][0]["family"] == "Okafor-Bello"
    found = fhirpy_client.resources("Patient").search(identifier=f"{SYSTEM}|CONF-1").fetch()
    assert [p["id"] for p in found] == [patient["id"]]


def test_fhirclient_creates_a_service_request(smart, fhirpy_client, api):
    patient = fhirpy_client.resources("Patient").search(identifier=f"{SYSTEM}|CONF-1").get()
    order = ServiceRequest(
        {
            "resourceType": "ServiceRequest",
            "identifier": [{"system": SYSTEM + ".2", "value": "CONF-ORD-1"}],
            "status": "active",
            "intent": "order",
            "priority": "stat",
            "code": {"coding": [{"system": "http://loinc.org", "code": "30746-2"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }
    )
    answer = order.create(smart.server)
    assert answer["resourceType"] == "ServiceRequest"
    created = ServiceRequest.read(answer["id"], smart.server)
    assert created.subject.reference == f"Patient/{patient['id']}"
    assert created.priority == "stat"
    # Stale If-Match: 412 with an OperationOutcome (validated by the session hook).
    body = created.as_json()
    stale = api.request(
        "PUT",
        f"ServiceRequest/{created.id}",
        json={**body, "status": "revoked"},
        headers={"If-Match": 'W/"9"', "Content-Type": "application/fhir+json"},
    )
    assert stale.status_code == 412, stale.text
    assert stale.json()["resourceType"] == "OperationOutcome"


def test_a_transaction_bundle_creates_both_or_nothing(api):
    patient_url = "urn:uuid:0b7c9a52-7d3e-4d36-9b55-1c3f9e0d2a11"

    def bundle(code):
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": patient_url,
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [{"system": SYSTEM, "value": "CONF-TX"}],
                    },
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "status": "active",
                        "intent": "order",
                        "code": code,
                        "subject": {"reference": patient_url},
                    },
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
            ],
        }

    refused = api.request("POST", api.base, json=bundle({"coding": [{"system": "http://loinc.org"}]}))
    assert refused.status_code == 422, refused.text
    assert api.get(f"Patient?identifier={SYSTEM}|CONF-TX")["total"] == 0
    done = api.request("POST", api.base, json=bundle({"text": "Knee MRI"}))
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    assert api.get(f"Patient?identifier={SYSTEM}|CONF-TX")["total"] == 1
