"""One Ferry for the whole run: started from $FERRY_BIN, loaded with the dataset over MLLP, stopped
with SIGTERM at the end. Every client used here validates every response it gets (validation.py),
and a test fails when one of its responses is not valid FHIR R4."""

import os
from pathlib import Path

import pytest
import requests
from fhirclient import client as smart_client
from fhirpy import SyncFHIRClient

import dataset
from server import REPO, Ferry
from validation import Validator

VALIDATOR = Validator()


@pytest.fixture(scope="session")
def validator():
    return VALIDATOR


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fails the test with every document it (or the fixtures it set up) received that is not
    valid FHIR R4; that failure replaces the test's own, which it most likely caused."""
    try:
        return (yield)
    finally:
        failures = VALIDATOR.take_failures()
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture(scope="session")
def ferry(tmp_path_factory):
    binary = Path(os.environ.get("FERRY_BIN") or REPO / "target" / "debug" / "ferry")
    if not binary.is_file():
        pytest.exit(f"no ferry binary at {binary} (build it, or set FERRY_BIN)", returncode=2)
    workdir = tmp_path_factory.mktemp("ferry")
    server = Ferry(binary, workdir)
    server.start()
    try:
        files = dataset.message_files(workdir)
        summary = server.send(files)
        assert f"{len(files)} accepted" in summary, summary
        yield server
    finally:
        code = server.stop()
    assert code == 0, (
        f"ferry serve exited with {code} after SIGTERM:\n{server.stderr_path.read_text()}"
    )


class Api:
    """Plain HTTP against /fhir, for what the clients do not do (errors, history, raw Bundles)."""

    def __init__(self, base: str):
        self.base = base
        self.session = requests.Session()
        self.session.hooks["response"].append(VALIDATOR.response_hook)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}/{path}"
        return self.session.request(method, url, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> dict:
        """GET that must answer 200 with FHIR JSON."""
        response = self.request("GET", path, **kwargs)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/fhir+json")
        return response.json()

    def search_all(self, path: str) -> list[dict]:
        """Every resource of a search, following `next` links."""
        resources = []
        while path:
            bundle = self.get(path)
            resources += [entry["resource"] for entry in bundle.get("entry", [])]
            path = next((k["url"] for k in bundle["link"] if k["relation"] == "next"), None)
        return resources


@pytest.fixture(scope="session")
def api(ferry):
    return Api(ferry.fhir_base)


@pytest.fixture(scope="session")
def patient_ids(api):
    """MRN → Patient id, for tests that start from a known patient."""
    ids = {}
    for patient in api.search_all("Patient?_count=1000"):
        for identifier in patient.get("identifier", []):
            if identifier.get("system") == dataset.MRN_SYSTEM:
                ids[identifier["value"]] = patient["id"]
    return ids


@pytest.fixture(scope="session")
def smart(ferry):
    """fhirclient (SMART on FHIR) pointed at Ferry."""
    client = smart_client.FHIRClient(
        settings={"app_id": "ferry-conformance", "api_base": ferry.fhir_base}
    )
    client.server.session.hooks["response"].append(VALIDATOR.response_hook)
    return client


@pytest.fixture(scope="session")
def fhirpy_client(ferry):
    """fhirpy's synchronous client pointed at Ferry."""
    return SyncFHIRClient(
        ferry.fhir_base, requests_config={"hooks": {"response": [VALIDATOR.response_hook]}}
    )


def pytest_terminal_summary(terminalreporter):
    if VALIDATOR.valid:
        terminalreporter.section(
            "FHIR documents validated (fhir.resources R4B models, JSON rules, invariants)"
        )
        for kind, count in sorted(VALIDATOR.valid.items()):
            terminalreporter.write_line(f"{count:6d}  {kind}")
