//! A resource's state as FHIR R4 JSON, built with fhir-sdk's R4B models (identical to R4 on the wire
//! for these resources) and written by `ferry-fhir`.
//!
//! Code systems follow the HL7 v2-to-FHIR implementation guide where it names one (identifier types
//! from table 0203, encounter classes from v3 ActCode, abnormal flags from v3
//! ObservationInterpretation).

use std::str::FromStr;

use ferry_fhir::resources::{
    DiagnosticReport, DiagnosticReportEffective, Encounter, EncounterHospitalization,
    EncounterLocation, EncounterParticipant, Observation, ObservationEffective,
    ObservationReferenceRange, ObservationValue, Patient, PatientDeceased, PatientLink, Resource,
    ServiceRequest, ServiceRequestOccurrence,
};
use ferry_fhir::types::{
    Address, CodeableConcept, Coding, ContactPoint, HumanName, Identifier, Meta, Period, Quantity,
    Reference,
};
use ferry_fhir::{DateTime, Instant, codes};
use time::OffsetDateTime;

use super::{
    EncounterState, ObservationState, OrderState, PatientState, ProjectionError, ReportState,
    ResourceKey, State,
};
use crate::domain;

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
const V2_0069: &str = "http://terminology.hl7.org/CodeSystem/v2-0069";
const V2_0112: &str = "http://terminology.hl7.org/CodeSystem/v2-0112";
const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const V3_NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";
const V3_PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// The FHIR identifier system of an assigning authority (CX-4): an OID becomes `urn:oid:…`, a URI
/// stays as it is, and a local name (`HOSP`) becomes `urn:ferry:authority:HOSP`, a stable URN
/// scoped to Ferry, so `identifier=system|value` searches tell authorities apart.
pub fn identifier_system(authority: Option<&str>) -> Option<String> {
    let a = authority?.trim();
    if a.is_empty() {
        return None;
    }
    let oid = a.split('.').count() > 1
        && a.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    Some(if oid {
        format!("urn:oid:{a}")
    } else if a.contains("://") || a.starts_with("urn:") {
        a.to_owned()
    } else {
        format!("urn:ferry:authority:{a}")
    })
}

/// The FHIR system of an HL7 v2 coding system name (CE-3/CWE-3), where there is a well-known one.
pub fn coding_system(system: Option<&str>) -> Option<String> {
    let s = system?.trim();
    Some(
        match s {
            "" => return None,
            "LN" | "LOINC" => "http://loinc.org",
            "SCT" | "SNM" | "SNOMED" | "SNOMED-CT" => "http://snomed.info/sct",
            "UCUM" => "http://unitsofmeasure.org",
            "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10",
            "C4" | "CPT" => "http://www.ama-assn.org/go/cpt",
            _ if s.contains("://") || s.starts_with("urn:") => s,
            // A local coding system (99zzz, a sender's own name): say whose it is without
            // inventing a URL.
            _ => return Some(format!("urn:ferry:codesystem:{s}")),
        }
        .to_owned(),
    )
}

fn render_error(key: &ResourceKey, reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Render {
        resource: format!("{}/{}", key.resource_type, key.id),
        reason: reason.to_string(),
    }
}

/// The served JSON of a resource at a version.
pub fn body(
    key: &ResourceKey,
    version: i64,
    last_updated: OffsetDateTime,
    state: &State,
) -> Result<String, ProjectionError> {
    let meta = Meta::builder()
        .version_id(version.to_string())
        .last_updated(Instant(last_updated))
        .build()
        .map_err(|e| render_error(key, e))?;
    let resource = match state {
        State::Patient(s) => Resource::Patient(patient(key, meta, s)?),
        State::Encounter(s) => Resource::Encounter(encounter(key, meta, s)?),
        State::ServiceRequest(s) => Resource::ServiceRequest(service_request(key, meta, s)?),
        State::Observation(s) => Resource::Observation(observation(key, meta, s)?),
        State::DiagnosticReport(s) => Resource::DiagnosticReport(report(key, meta, s)?),
    };
    let bytes = ferry_fhir::to_vec(&resource).map_err(|e| render_error(key, e))?;
    String::from_utf8(bytes).map_err(|e| render_error(key, e))
}

type R<T> = Result<T, ProjectionError>;

fn reference(key: &ResourceKey, target: &str) -> R<Reference> {
    Reference::builder()
        .reference(target.to_owned())
        .build()
        .map_err(|e| render_error(key, e))
}

fn date_time(key: &ResourceKey, s: &str) -> R<DateTime> {
    DateTime::from_str(s).map_err(|e| render_error(key, format!("{s:?}: {e}")))
}

fn coding(
    key: &ResourceKey,
    system: Option<String>,
    code: &str,
    display: Option<&str>,
) -> R<Coding> {
    let mut b = Coding::builder().code(code.to_owned());
    if let Some(system) = system {
        b = b.system(system);
    }
    if let Some(display) = display {
        b = b.display(display.to_owned());
    }
    b.build().map_err(|e| render_error(key, e))
}

fn concept_of(key: &ResourceKey, c: &domain::Code) -> R<CodeableConcept> {
    // A concept that is only text (a FHIR CodeableConcept without coding; an HL7 CE whose code is
    // its text, without a coding system) stays text: a coding needs a code from some system.
    if c.system.is_none() && c.display.as_deref() == Some(c.code.as_str()) {
        return CodeableConcept::builder()
            .text(c.code.as_str().to_owned())
            .build()
            .map_err(|e| render_error(key, e));
    }
    let coding = coding(
        key,
        coding_system(c.system.as_deref()),
        c.code.as_str(),
        c.display.as_deref(),
    )?;
    let mut b = CodeableConcept::builder().coding(vec![Some(coding)]);
    if let Some(display) = &c.display {
        b = b.text(display.clone());
    }
    b.build().map_err(|e| render_error(key, e))
}

fn concept(key: &ResourceKey, system: &str, code: &str) -> R<CodeableConcept> {
    CodeableConcept::builder()
        .coding(vec![Some(coding(
            key,
            Some(system.to_owned()),
            code,
            None,
        )?)])
        .build()
        .map_err(|e| render_error(key, e))
}

fn identifier(
    key: &ResourceKey,
    id: &domain::Identifier,
    type_code: Option<&str>,
) -> R<Identifier> {
    let mut b = Identifier::builder().value(id.value.as_str().to_owned());
    if let Some(system) = identifier_system(id.authority.as_deref()) {
        b = b.system(system);
    }
    if let Some(code) = type_code.or(id.type_code.as_deref()) {
        b = b.r#type(concept(key, V2_0203, code)?);
    }
    if let Some(authority) = &id.authority {
        b = b.assigner(
            Reference::builder()
                .display(authority.clone())
                .build()
                .map_err(|e| render_error(key, e))?,
        );
    }
    b.build().map_err(|e| render_error(key, e))
}

fn practitioner(key: &ResourceKey, p: &domain::Practitioner) -> R<Reference> {
    let mut b = Reference::builder();
    if let Some(id) = &p.id
        && let Ok(value) = domain::NonEmpty::try_from(id.clone())
    {
        let id = domain::Identifier {
            value,
            authority: p.authority.clone(),
            type_code: None,
            facility: None,
        };
        b = b.identifier(identifier(key, &id, None)?);
    }
    let name: Vec<&str> = p
        .prefix
        .iter()
        .map(String::as_str)
        .chain(p.given.iter().map(String::as_str))
        .chain(p.family.as_deref())
        .collect();
    if !name.is_empty() {
        b = b.display(name.join(" "));
    }
    b.build().map_err(|e| render_error(key, e))
}

fn patient(key: &ResourceKey, meta: Meta, s: &PatientState) -> R<Patient> {
    let p = &s.patient;
    let mut identifiers = Vec::with_capacity(p.identifiers.len());
    for id in &p.identifiers {
        identifiers.push(Some(identifier(key, id, None)?));
    }
    let mut names = Vec::with_capacity(p.names.len());
    for n in &p.names {
        let mut b = HumanName::builder()
            .given(n.given.iter().cloned().map(Some).collect())
            .prefix(n.prefix.iter().cloned().map(Some).collect())
            .suffix(n.suffix.iter().cloned().map(Some).collect());
        if let Some(family) = &n.family {
            b = b.family(family.clone());
        }
        if let Some(u) = n
            .use_code
            .as_deref()
            .and_then(|u| codes::NameUse::from_str(u).ok())
        {
            b = b.r#use(u);
        }
        names.push(Some(b.build().map_err(|e| render_error(key, e))?));
    }
    let mut telecoms = Vec::with_capacity(p.telecoms.len());
    for t in &p.telecoms {
        let mut b = ContactPoint::builder().value(t.value.as_str().to_owned());
        if let Some(system) = t
            .system
            .as_deref()
            .and_then(|s| codes::ContactPointSystem::from_str(s).ok())
        {
            b = b.system(system);
        }
        if let Some(u) = t
            .use_code
            .as_deref()
            .and_then(|u| codes::ContactPointUse::from_str(u).ok())
        {
            b = b.r#use(u);
        }
        telecoms.push(Some(b.build().map_err(|e| render_error(key, e))?));
    }
    let mut addresses = Vec::with_capacity(p.addresses.len());
    for a in &p.addresses {
        let mut b = Address::builder().line(a.lines.iter().cloned().map(Some).collect());
        if let Some(v) = &a.city {
            b = b.city(v.clone());
        }
        if let Some(v) = &a.state {
            b = b.state(v.clone());
        }
        if let Some(v) = &a.postal_code {
            b = b.postal_code(v.clone());
        }
        if let Some(v) = &a.country {
            b = b.country(v.clone());
        }
        if let Some(u) = a
            .use_code
            .as_deref()
            .and_then(|u| codes::AddressUse::from_str(u).ok())
        {
            b = b.r#use(u);
        }
        addresses.push(Some(b.build().map_err(|e| render_error(key, e))?));
    }
    let mut links = Vec::new();
    if let Some(survivor) = &s.replaced_by {
        links.push(Some(
            PatientLink::builder()
                .other(reference(key, &format!("Patient/{survivor}"))?)
                .r#type(codes::LinkType::ReplacedBy)
                .build()
                .map_err(|e| render_error(key, e))?,
        ));
    }
    for old in &s.replaces {
        links.push(Some(
            PatientLink::builder()
                .other(reference(key, &format!("Patient/{old}"))?)
                .r#type(codes::LinkType::Replaces)
                .build()
                .map_err(|e| render_error(key, e))?,
        ));
    }
    let mut b = Patient::builder()
        .id(key.id.clone())
        .meta(meta)
        .identifier(identifiers)
        .active(s.active)
        .name(names)
        .telecom(telecoms)
        .address(addresses)
        .link(links);
    if let Some(sex) = p.sex {
        b = b.gender(match sex {
            domain::Sex::Male => codes::AdministrativeGender::Male,
            domain::Sex::Female => codes::AdministrativeGender::Female,
            domain::Sex::Other => codes::AdministrativeGender::Other,
            domain::Sex::Unknown => codes::AdministrativeGender::Unknown,
        });
    }
    if let Some(birth) = &p.birth_date {
        let date = ferry_fhir::Date::from_str(birth.as_str())
            .map_err(|e| render_error(key, format!("birth date: {e}")))?;
        b = b.birth_date(date);
    }
    if let Some(at) = &p.deceased_at {
        b = b.deceased(PatientDeceased::DateTime(date_time(key, at.as_str())?));
    } else if p.deceased {
        b = b.deceased(PatientDeceased::Boolean(true));
    }
    b.build().map_err(|e| render_error(key, e))
}

/// v3 ActCode for the domain's encounter class (as the v2-to-FHIR IG maps PV1-2).
fn class_coding(key: &ResourceKey, class: Option<domain::EncounterClass>) -> R<Coding> {
    use domain::EncounterClass as C;
    let (system, code, display) = match class {
        Some(C::Inpatient | C::Obstetrics) => (V3_ACT_CODE, "IMP", "inpatient encounter"),
        Some(C::Outpatient | C::Recurring) => (V3_ACT_CODE, "AMB", "ambulatory"),
        Some(C::Emergency) => (V3_ACT_CODE, "EMER", "emergency"),
        Some(C::Preadmission) => (V3_ACT_CODE, "PRENC", "pre-admission"),
        Some(C::Unknown) | None => (V3_NULL_FLAVOR, "UNK", "unknown"),
    };
    coding(key, Some(system.to_owned()), code, Some(display))
}

/// `point of care, room, bed (facility)` as a Location display: Ferry has no Location resources.
fn location_display(l: &domain::Location) -> String {
    let parts: Vec<&str> = [&l.point_of_care, &l.room, &l.bed, &l.building, &l.floor]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect();
    let mut text = parts.join(" ");
    if let Some(facility) = &l.facility {
        if text.is_empty() {
            text = facility.clone();
        } else {
            text = format!("{text} ({facility})");
        }
    }
    text
}

fn encounter(key: &ResourceKey, meta: Meta, s: &EncounterState) -> R<Encounter> {
    let e = &s.encounter;
    let status = codes::EncounterStatus::from_str(&s.status)
        .map_err(|_| render_error(key, format!("unknown encounter status {:?}", s.status)))?;
    let mut identifiers = Vec::new();
    if let Some(v) = &e.visit_number {
        identifiers.push(Some(identifier(key, v, Some("VN"))?));
    }
    let mut participants = Vec::new();
    for a in &e.attending {
        participants.push(Some(
            EncounterParticipant::builder()
                .r#type(vec![Some(concept(key, V3_PARTICIPATION, "ATND")?)])
                .individual(practitioner(key, a)?)
                .build()
                .map_err(|e| render_error(key, e))?,
        ));
    }
    let mut locations = Vec::new();
    let current_status = if s.status == "finished" {
        codes::EncounterLocationStatus::Completed
    } else {
        codes::EncounterLocationStatus::Active
    };
    for (l, status) in [
        (&e.location, current_status),
        (&e.prior_location, codes::EncounterLocationStatus::Completed),
    ] {
        if let Some(l) = l {
            let display = location_display(l);
            if display.is_empty() {
                continue;
            }
            locations.push(Some(
                EncounterLocation::builder()
                    .location(
                        Reference::builder()
                            .display(display)
                            .build()
                            .map_err(|e| render_error(key, e))?,
                    )
                    .status(status)
                    .build()
                    .map_err(|e| render_error(key, e))?,
            ));
        }
    }
    let mut b = Encounter::builder()
        .id(key.id.clone())
        .meta(meta)
        .identifier(identifiers)
        .status(status)
        .class(class_coding(key, e.class)?)
        .subject(reference(key, &format!("Patient/{}", s.patient))?)
        .participant(participants)
        .location(locations);
    if e.admitted_at.is_some() || e.discharged_at.is_some() {
        let mut period = Period::builder();
        if let Some(start) = &e.admitted_at {
            period = period.start(date_time(key, start.as_str())?);
        }
        if let Some(end) = &e.discharged_at {
            period = period.end(date_time(key, end.as_str())?);
        }
        b = b.period(period.build().map_err(|e| render_error(key, e))?);
    }
    if let Some(service) = &e.hospital_service {
        b = b.service_type(concept(key, V2_0069, service)?);
    }
    if let Some(disposition) = &e.discharge_disposition {
        b = b.hospitalization(
            EncounterHospitalization::builder()
                .discharge_disposition(concept(key, V2_0112, disposition)?)
                .build()
                .map_err(|e| render_error(key, e))?,
        );
    }
    b.build().map_err(|e| render_error(key, e))
}

fn service_request(key: &ResourceKey, meta: Meta, s: &OrderState) -> R<ServiceRequest> {
    let o = &s.order;
    let status = codes::RequestStatus::from_str(&s.status)
        .map_err(|_| render_error(key, format!("unknown request status {:?}", s.status)))?;
    let mut identifiers = Vec::new();
    if let Some(placer) = &o.placer_order_number {
        identifiers.push(Some(identifier(key, placer, Some("PLAC"))?));
    }
    if let Some(filler) = &o.filler_order_number {
        identifiers.push(Some(identifier(key, filler, Some("FILL"))?));
    }
    let mut b = ServiceRequest::builder()
        .id(key.id.clone())
        .meta(meta)
        .identifier(identifiers)
        .status(status)
        .intent(codes::RequestIntent::Order)
        .subject(reference(key, &format!("Patient/{}", s.patient))?);
    if let Some(section) = &o.diagnostic_service_section {
        b = b.category(vec![Some(concept(key, V2_0074, section)?)]);
    }
    if let Some(p) = o
        .priority
        .as_deref()
        .and_then(|p| codes::RequestPriority::from_str(p).ok())
    {
        b = b.priority(p);
    }
    if let Some(code) = &o.code {
        b = b.code(concept_of(key, code)?);
    }
    if let Some(group) = &o.placer_group_number {
        b = b.requisition(identifier(key, group, Some("PGN"))?);
    }
    if let Some(encounter) = &s.encounter {
        b = b.encounter(reference(key, &format!("Encounter/{encounter}"))?);
    }
    if let Some(at) = &o.requested_at {
        b = b.occurrence(ServiceRequestOccurrence::DateTime(date_time(
            key,
            at.as_str(),
        )?));
    }
    if let Some(at) = &o.ordered_at {
        b = b.authored_on(date_time(key, at.as_str())?);
    }
    if let Some(p) = &o.ordering_provider {
        b = b.requester(practitioner(key, p)?);
    }
    if let Some(reason) = &o.reason {
        b = b.reason_code(vec![Some(concept_of(key, reason)?)]);
    }
    b.build().map_err(|e| render_error(key, e))
}

fn instant(key: &ResourceKey, s: &str) -> R<Instant> {
    Instant::from_str(s).map_err(|e| render_error(key, format!("{s:?}: {e}")))
}

fn observation(key: &ResourceKey, meta: Meta, s: &ObservationState) -> R<Observation> {
    let o = &s.observation;
    let status_code = o.status.as_deref().unwrap_or("unknown");
    let status = codes::ObservationStatus::from_str(status_code)
        .map_err(|_| render_error(key, format!("unknown observation status {status_code:?}")))?;
    let mut b = Observation::builder()
        .id(key.id.clone())
        .meta(meta)
        .status(status)
        .code(concept_of(key, &o.code)?)
        .subject(reference(key, &format!("Patient/{}", s.patient))?);
    if let Some(order) = &s.based_on {
        b = b.based_on(vec![Some(reference(
            key,
            &format!("ServiceRequest/{order}"),
        )?)]);
    }
    if let Some(encounter) = &s.encounter {
        b = b.encounter(reference(key, &format!("Encounter/{encounter}"))?);
    }
    if let Some(at) = &o.observed_at {
        b = b.effective(ObservationEffective::DateTime(date_time(key, at.as_str())?));
    }
    if let Some(at) = &s.issued {
        b = b.issued(instant(key, at)?);
    }
    if let Some(value) = o.value.as_deref().filter(|v| !v.trim().is_empty()) {
        b = b.value(observation_value(key, o, value)?);
    }
    if let Some(range) = &o.reference_range {
        b = b.reference_range(vec![Some(
            ObservationReferenceRange::builder()
                .text(range.clone())
                .build()
                .map_err(|e| render_error(key, e))?,
        )]);
    }
    let mut interpretation = Vec::new();
    for flag in &o.abnormal_flags {
        interpretation.push(Some(concept(key, V3_INTERPRETATION, flag)?));
    }
    b = b.interpretation(interpretation);
    b.build().map_err(|e| render_error(key, e))
}

/// OBX-5 by OBX-2: a numeric value (NM, SN without comparator) becomes a Quantity with its unit, any
/// other a string.
fn observation_value(
    key: &ResourceKey,
    o: &domain::Observation,
    value: &str,
) -> R<ObservationValue> {
    let numeric = matches!(o.value_type.as_deref(), Some("NM"))
        .then(|| value.trim().parse::<f64>().ok())
        .flatten()
        .filter(|v| v.is_finite());
    let Some(number) = numeric else {
        return Ok(ObservationValue::String(value.to_owned()));
    };
    let mut q = Quantity::builder().value(number);
    if let Some(unit) = &o.units {
        q = q
            .unit(
                unit.display
                    .clone()
                    .unwrap_or_else(|| unit.code.as_str().to_owned()),
            )
            .code(unit.code.as_str().to_owned());
        if let Some(system) = coding_system(unit.system.as_deref()).or_else(|| {
            // Units without a coding system are, in practice, UCUM (the v2 default for OBX-6).
            Some("http://unitsofmeasure.org".to_owned())
        }) {
            q = q.system(system);
        }
    }
    Ok(ObservationValue::Quantity(
        q.build().map_err(|e| render_error(key, e))?,
    ))
}

fn report(key: &ResourceKey, meta: Meta, s: &ReportState) -> R<DiagnosticReport> {
    let status = codes::DiagnosticReportStatus::from_str(&s.status)
        .map_err(|_| render_error(key, format!("unknown report status {:?}", s.status)))?;
    let code = match s.order.as_ref().and_then(|o| o.code.as_ref()) {
        Some(code) => concept_of(key, code)?,
        // DiagnosticReport.code is required; a result without an order names no test.
        None => CodeableConcept::builder()
            .text("Results".to_owned())
            .build()
            .map_err(|e| render_error(key, e))?,
    };
    let mut results = Vec::with_capacity(s.results.len());
    for id in &s.results {
        results.push(Some(reference(key, &format!("Observation/{id}"))?));
    }
    let mut b = DiagnosticReport::builder()
        .id(key.id.clone())
        .meta(meta)
        .status(status)
        .code(code)
        .subject(reference(key, &format!("Patient/{}", s.patient))?)
        .result(results);
    if let Some(order) = &s.based_on {
        b = b.based_on(vec![Some(reference(
            key,
            &format!("ServiceRequest/{order}"),
        )?)]);
    }
    if let Some(encounter) = &s.encounter {
        b = b.encounter(reference(key, &format!("Encounter/{encounter}"))?);
    }
    if let Some(section) = s
        .order
        .as_ref()
        .and_then(|o| o.diagnostic_service_section.as_ref())
    {
        b = b.category(vec![Some(concept(key, V2_0074, section)?)]);
    }
    if let Some(at) = &s.issued {
        b = b.issued(instant(key, at)?);
    }
    if let Some(at) = &s.effective {
        b = b.effective(DiagnosticReportEffective::DateTime(date_time(key, at)?));
    }
    b.build().map_err(|e| render_error(key, e))
}
