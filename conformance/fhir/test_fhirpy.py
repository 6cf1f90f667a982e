"""fhirpy's synchronous client against Ferry: searches with filters, fetch_all across pages,
count, _summary=count, _include of the subject, reads by reference."""

from fhirpy import SyncFHIRClient

import dataset
from dataset import MRN_SYSTEM


def mrn(patient) -> str:
    return next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)


def test_search_with_filters(fhirpy_client):
    patients = fhirpy_client.resources("Patient")
    women = patients.search(family="hartmann", gender="female").limit(50).fetch()
    assert len(women) == dataset.HARTMANN_WOMEN
    assert {p["gender"] for p in women} == {"female"}
    assert {p["name"][0]["family"] for p in women} == {"Hartmann"}
    # birthdate=ge1960-01-01 (fhirpy's __ge suffix).
    later = patients.search(family="hartmann", birthdate__ge="1960-01-01").limit(50).fetch()
    assert sorted(p["birthDate"] for p in later) == [
        f"{1950 + n}-06-15" for n in range(10, dataset.HARTMANNS + 1)
    ]
    assert len(later) == dataset.HARTMANNS_BORN_1960_OR_LATER
    # Both conditions (AND), and a given name.
    ada = patients.search(family="hartmann", given="ada").fetch()
    assert [mrn(p) for p in ada] == [dataset.hartmann_mrn(1)]
    assert patients.search(family="hartmann", given="ada", gender="male").fetch() == []


def test_fetch_all_follows_next_links_across_pages(ferry, validator):
    urls = []
    client = SyncFHIRClient(
        ferry.fhir_base,
        requests_config={
            "hooks": {"response": [validator.response_hook, lambda r, *a, **k: urls.append(r.url)]}
        },
    )
    hartmanns = client.resources("Patient").search(family="hartmann").limit(5).fetch_all()
    assert len(hartmanns) == dataset.HARTMANNS
    assert len({p["id"] for p in hartmanns}) == dataset.HARTMANNS
    assert {mrn(p) for p in hartmanns} == {
        dataset.hartmann_mrn(n) for n in range(1, dataset.HARTMANNS + 1)
    }
    # 22 matches, 5 a page: five requests, the later ones from next links (with _offset).
    assert len(urls) == 5
    assert [("_offset=" in url) for url in urls] == [False, True, True, True, True]


def test_count_and_summary_count(fhirpy_client):
    patients = fhirpy_client.resources("Patient")
    assert patients.search(family="hartmann").count() == dataset.HARTMANNS
    assert patients.count() == dataset.PATIENTS
    # Inpatient stays: the Hartmanns', Brandt's, and Solberg's (from the PV1 of her lab result).
    assert (
        fhirpy_client.resources("Encounter").search(**{"class": "IMP"}).count()
        == dataset.HARTMANNS + 2
    )
    summary = patients.search(_summary="count").fetch_raw()
    assert summary["type"] == "searchset"
    assert summary["total"] == dataset.PATIENTS
    assert "entry" not in summary


def test_include_of_the_subject(fhirpy_client, patient_ids):
    solberg = patient_ids["100014"]
    bundle = (
        fhirpy_client.resources("Observation")
        .search(patient=solberg)
        .include("Observation", "subject")
        .limit(50)
        .fetch_raw()
    )
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes == [("Observation", "match")] * 7 + [("Patient", "include")]
    assert bundle["total"] == 7  # includes are not counted
    assert bundle["entry"][-1]["resource"]["id"] == solberg
    # Brandt's radiology report and Solberg's lab report: two reports, two distinct patients.
    reports = (
        fhirpy_client.resources("DiagnosticReport")
        .include("DiagnosticReport", "patient")
        .fetch_raw()
    )
    included = {e["resource"]["id"] for e in reports["entry"] if e["search"]["mode"] == "include"}
    assert included == {patient_ids["100010"], solberg}


def test_reads_by_reference(fhirpy_client, patient_ids):
    report = fhirpy_client.resources("DiagnosticReport").search(patient=patient_ids["100014"]).get()
    patient = report["subject"].to_resource()
    assert mrn(patient) == "100014"
    assert patient["name"][0]["family"] == "Solberg"
    encounter = fhirpy_client.resources("Encounter").search(patient=patient_ids["100011"]).get()
    assert encounter["class"]["code"] == "AMB"
    assert encounter["status"] == "in-progress"
