"""What the conformance run loads into Ferry, and the facts the tests expect to read back.

The fixtures tell part of the story of `fixtures/README.md`: Lena Brandt (MRN 100010) is admitted,
has a head CT ordered and reported, and her phone number is updated; Tomasz Wieczorek (100011)
registers as an outpatient; Ingrid Solberg (100014) gets a urinalysis; 100019 is merged into
Daniel Petrov (100018). Then 22 generated admissions of the Hartmann family give paging something
to page through.
"""

from pathlib import Path

from server import REPO

FIXTURES = REPO / "fixtures" / "hl7v2"

# In this order: an order and its result after the admission, the update after the order.
FIXTURE_FILES = [
    "adt_a01_basic.hl7",
    "orm_o01_nw.hl7",
    "oru_r01_radiology.hl7",
    "adt_a08_basic.hl7",
    "adt_a04_basic.hl7",
    "oru_r01_lab.hl7",
    "adt_a40_basic.hl7",
]

# The system Ferry gives identifiers whose assigning authority (CX-4) is a plain name.
MRN_SYSTEM = "urn:ferry:authority:TEST-HOSP"

# Generated admissions: copies of adt_a01_basic.hl7 with their own control ID, MRN, visit number,
# name, birth date and sex. Odd numbers are female, even ones male; born 1950 + n.
HARTMANN_GIVEN = (
    "Ada Bruno Carla Dario Eva Felix Greta Hugo Ida Jan Katja "
    "Lars Mia Nils Olga Paul Rita Sven Tara Udo Vera Wim"
).split()


def hartmann_mrn(n: int) -> str:
    return f"3000{n:02d}"


def hartmann_admission(n: int) -> str:
    """The n-th generated A01 (n from 1)."""
    base = (FIXTURES / "adt_a01_basic.hl7").read_text()
    sex = "F" if n % 2 else "M"
    replacements = {
        "|FIX-A01-0002|": f"|CONF-A01-{n:04d}|",
        "100010^^^TEST-HOSP": f"{hartmann_mrn(n)}^^^TEST-HOSP",
        "V200010^^^TEST-HOSP": f"V{hartmann_mrn(n)}^^^TEST-HOSP",
        # XPN: family^given^middle, so that XPN-7 (name type L, "official") stays in place.
        "Brandt^Lena^Marie^": f"Hartmann^{HARTMANN_GIVEN[n - 1]}^^",
        "19840312|F|": f"{1950 + n}0615|{sex}|",
    }
    for old, new in replacements.items():
        assert base.count(old) == 1, f"adt_a01_basic.hl7 no longer has exactly one {old!r}"
        base = base.replace(old, new)
    return base


def message_files(workdir: Path) -> list[Path]:
    """The fixtures, then the generated admissions written to `workdir`."""
    files = [FIXTURES / name for name in FIXTURE_FILES]
    for n in range(1, len(HARTMANN_GIVEN) + 1):
        path = workdir / f"adt_a01_hartmann_{n:02d}.hl7"
        path.write_text(hartmann_admission(n))
        files.append(path)
    return files


# What Ferry should serve after all of that.
HARTMANNS = len(HARTMANN_GIVEN)  # 22
HARTMANN_WOMEN = 11
HARTMANNS_BORN_1960_OR_LATER = 13  # n = 10 … 22
FIXTURE_MRNS = {"100010", "100011", "100014", "100018", "100019"}
ALL_MRNS = FIXTURE_MRNS | {hartmann_mrn(n) for n in range(1, HARTMANNS + 1)}
PATIENTS = len(ALL_MRNS)  # 27
