"""SMART on FHIR's Python client (fhirclient) against Ferry: its R4 models parse what Ferry
serves (strictly: an unknown or mistyped element raises), and read, search and paging work as it
expects."""

import math

from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.encounter import Encounter
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.models.servicerequest import ServiceRequest

import dataset
from dataset import MRN_SYSTEM


def search(resource, struct, smart):
    return list(resource.where(struct=struct).perform_resources_iter(smart.server))


def mrn(patient) -> str:
    return next(i.value for i in patient.identifier if i.system == MRN_SYSTEM)


def by_mrn(value: str, smart):
    found = search(Patient, {"identifier": f"{MRN_SYSTEM}|{value}"}, smart)
    assert [mrn(p) for p in found] == [value]
    return found[0]


def test_the_capability_statement_parses_and_lists_what_ferry_serves(smart):
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    assert statement.kind == "instance"
    assert statement.format == ["application/fhir+json", "json"]
    resources = {r.type: r for r in statement.rest[0].resource}
    assert set(resources) == {
        "Patient",
        "Encounter",
        "ServiceRequest",
        "Observation",
        "DiagnosticReport",
    }
    patient_params = {p.name for p in resources["Patient"].searchParam}
    assert {"identifier", "family", "given", "birthdate", "gender", "_id"} <= patient_params
    assert [i.code for i in resources["Observation"].interaction] == [
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search-type",
    ]


def test_reads_a_patient_by_id(smart):
    found = by_mrn("100010", smart)
    patient = Patient.read(found.id, smart.server)
    assert patient.id == found.id
    assert patient.name[0].family == "Brandt"
    assert patient.name[0].given == ["Lena", "Marie"]
    assert patient.birthDate.isostring == "1984-03-12"
    assert patient.gender == "female"
    # adt_a08_basic.hl7 changed the phone number: version 2.
    assert patient.meta.versionId == "2"
    assert any("23125011" in t.value for t in patient.telecom)


def test_searches_patients_by_identifier(smart):
    assert by_mrn("100011", smart).name[0].family == "Wieczorek"
    assert search(Patient, {"identifier": f"{MRN_SYSTEM}|999999"}, smart) == []
    assert search(Patient, {"identifier": "urn:other|100011"}, smart) == []


def test_searches_patients_by_family(smart):
    assert [mrn(p) for p in search(Patient, {"family": "Wieczorek"}, smart)] == ["100011"]
    hartmanns = search(Patient, {"family": "hartmann", "_count": "50"}, smart)
    assert len(hartmanns) == dataset.HARTMANNS
    assert {(p.name[0].use, p.name[0].family) for p in hartmanns} == {("official", "Hartmann")}
    assert {p.name[0].given[0] for p in hartmanns} == set(dataset.HARTMANN_GIVEN)


def test_pages_through_all_patients_following_next_links(smart):
    per_page = 4
    pages = list(Patient.where(struct={"_count": str(per_page)}).perform_iter(smart.server))
    assert len(pages) == math.ceil(dataset.PATIENTS / per_page)
    assert {page.total for page in pages} == {dataset.PATIENTS}
    assert [len(page.entry) for page in pages[:-1]] == [per_page] * (len(pages) - 1)
    patients = [entry.resource for page in pages for entry in page.entry]
    assert len({p.id for p in patients}) == dataset.PATIENTS
    assert {mrn(p) for p in patients} == dataset.ALL_MRNS
    # The last page has no next link, and every other page has one.
    relations = [[link.relation for link in page.link] for page in pages]
    assert ["next" in r for r in relations] == [True] * (len(pages) - 1) + [False]


def test_reads_the_encounter_found_by_search(smart):
    brandt = by_mrn("100010", smart)
    found = search(Encounter, {"patient": brandt.id}, smart)
    assert len(found) == 1
    encounter = Encounter.read(found[0].id, smart.server)
    assert encounter.subject.reference == f"Patient/{brandt.id}"
    assert encounter.status == "in-progress"
    assert encounter.class_fhir.code == "IMP"
    assert [i.value for i in encounter.identifier] == ["V200010"]


def test_reads_the_service_request_found_by_search(smart):
    brandt = by_mrn("100010", smart)
    found = search(ServiceRequest, {"subject": f"Patient/{brandt.id}"}, smart)
    assert len(found) == 1
    order = ServiceRequest.read(found[0].id, smart.server)
    assert order.intent == "order"
    assert order.code.coding[0].code == "70450"
    assert order.subject.reference == f"Patient/{brandt.id}"


def test_reads_the_diagnostic_report_and_its_observations(smart):
    solberg = by_mrn("100014", smart)
    reports = search(DiagnosticReport, {"patient": solberg.id}, smart)
    assert len(reports) == 1
    report = DiagnosticReport.read(reports[0].id, smart.server)
    assert report.code.coding[0].code == "24357-6"
    assert report.status == "final"
    # Every result the report points at can be read, and belongs to the same patient.
    results = [Observation.read(r.reference.split("/")[1], smart.server) for r in report.result]
    assert len(results) == 7
    assert {o.subject.reference for o in results} == {f"Patient/{solberg.id}"}
    gravity = search(Observation, {"patient": solberg.id, "code": "http://loinc.org|5811-5"}, smart)
    assert len(gravity) == 1
    assert gravity[0].valueQuantity.value == 1.024
    assert gravity[0].id in {o.id for o in results}
