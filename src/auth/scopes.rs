//! SMART on FHIR scopes: which interactions on which resource types a token allows.
//!
//! Both syntaxes are read. v1: `system/Patient.read` (read, vread, history, search),
//! `system/Patient.write` (create, update, delete), `system/Patient.*` (all). v2:
//! `system/Patient.rs`, a set of the letters `c r u d s` written in that order (a scope that
//! repeats or reorders letters is malformed and grants nothing, as the SMART spec requires the
//! order). `*` as the resource type means every type.
//!
//! What grants nothing, on purpose:
//! - `patient/…` scopes. They mean "the resources of the patient in the launch context", and
//!   Ferry implements no patient-context launch, so there is no patient to restrict them to.
//!   Treating them as `system/` would hand a patient-scoped app every patient of the tenant.
//! - v2 scopes with a query (`system/Observation.rs?category=laboratory`). Ferry cannot enforce
//!   the constraint, and ignoring the query would widen the grant to every Observation, so such a
//!   scope is refused (grants nothing) rather than read without its query. A client that needs
//!   those reads asks for the plain scope.
//! - Anything else that is not a resource scope: `openid`, `fhirUser`, `launch`,
//!   `launch/patient`, `offline_access`, `online_access` and scopes Ferry does not know are
//!   ignored; they are about identity or refresh tokens, not about FHIR data.
//!
//! `system/` and `user/` grant the same: Ferry has no per-user access rules, so the tenant
//! (checked by the caller) is the boundary for both.

use std::fmt;

/// A FHIR REST interaction that needs a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Read,
    VRead,
    HistoryInstance,
    HistoryType,
    SearchType,
    Create,
    Update,
    Delete,
}

impl Interaction {
    /// The v2 permission that allows it. The SMART v2 table: `r` covers read, vread and the
    /// history of one instance; `s` covers type-level search and history.
    fn permission(self) -> Permission {
        match self {
            Interaction::Read | Interaction::VRead | Interaction::HistoryInstance => Permission::R,
            Interaction::HistoryType | Interaction::SearchType => Permission::S,
            Interaction::Create => Permission::C,
            Interaction::Update => Permission::U,
            Interaction::Delete => Permission::D,
        }
    }
}

/// One of the v2 letters, as a bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permission(u8);

impl Permission {
    const C: Permission = Permission(1);
    const R: Permission = Permission(2);
    const U: Permission = Permission(4);
    const D: Permission = Permission(8);
    const S: Permission = Permission(16);

    fn letter(self) -> char {
        match self {
            Permission::C => 'c',
            Permission::R => 'r',
            Permission::U => 'u',
            Permission::D => 'd',
            _ => 's',
        }
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permissions(u8);

impl Permissions {
    const ALL: Permissions = Permissions(31);
    /// v1 `read`: read, vread, history, search.
    const READ: Permissions = Permissions(Permission::R.0 | Permission::S.0);
    /// v1 `write`: create, update, delete.
    const WRITE: Permissions = Permissions(Permission::C.0 | Permission::U.0 | Permission::D.0);

    fn contains(self, p: Permission) -> bool {
        self.0 & p.0 != 0
    }

    /// v2 letters: a non-empty subsequence of `cruds`, in that order, each letter at most once.
    fn from_v2(letters: &str) -> Option<Permissions> {
        const ORDER: [(char, Permission); 5] = [
            ('c', Permission::C),
            ('r', Permission::R),
            ('u', Permission::U),
            ('d', Permission::D),
            ('s', Permission::S),
        ];
        let mut next = 0;
        let mut bits = 0;
        for ch in letters.chars() {
            let offset = ORDER[next..].iter().position(|(l, _)| *l == ch)?;
            bits |= ORDER[next + offset].1.0;
            next += offset + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ResourceTypes {
    Any,
    One(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    resources: ResourceTypes,
    permissions: Permissions,
}

/// What a token's `scope` claim allows. Built by [`Scopes::parse`]; [`Scopes::all`] is the
/// unchecked principal of `auth = "none"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    all: bool,
    grants: Vec<Grant>,
}

impl Scopes {
    /// Everything, for `auth = "none"`.
    pub fn all() -> Scopes {
        Scopes {
            all: true,
            grants: Vec::new(),
        }
    }

    /// The scopes of a space-separated `scope` claim (RFC 6749 §3.3).
    pub fn parse(scope: &str) -> Scopes {
        Scopes::from_iter(scope.split_ascii_whitespace())
    }

    /// Whether `interaction` on `resource_type` is allowed.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        if self.all {
            return true;
        }
        let needed = interaction.permission();
        self.grants.iter().any(|g| {
            g.permissions.contains(needed)
                && match &g.resources {
                    ResourceTypes::Any => true,
                    ResourceTypes::One(t) => t == resource_type,
                }
        })
    }

    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        !self.all && self.grants.is_empty()
    }

    /// The narrowest v2 scope that would allow `interaction` on `resource_type`, for the
    /// `insufficient_scope` answer.
    pub fn needed(resource_type: &str, interaction: Interaction) -> String {
        format!(
            "system/{resource_type}.{}",
            interaction.permission().letter()
        )
    }
}

impl<'a> FromIterator<&'a str> for Scopes {
    fn from_iter<I: IntoIterator<Item = &'a str>>(scopes: I) -> Scopes {
        Scopes {
            all: false,
            grants: scopes.into_iter().filter_map(parse_scope).collect(),
        }
    }
}

impl fmt::Display for Scopes {
    /// A summary for logs (debug level): the grants in v2 syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("(all)");
        }
        let mut first = true;
        for g in &self.grants {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let resource = match &g.resources {
                ResourceTypes::Any => "*",
                ResourceTypes::One(t) => t,
            };
            write!(f, "system/{resource}.")?;
            for p in [
                Permission::C,
                Permission::R,
                Permission::U,
                Permission::D,
                Permission::S,
            ] {
                if g.permissions.contains(p) {
                    write!(f, "{}", p.letter())?;
                }
            }
        }
        Ok(())
    }
}

/// One scope string, or `None` when it grants nothing (see the module docs for which and why).
fn parse_scope(scope: &str) -> Option<Grant> {
    let (context, rest) = scope.split_once('/')?;
    match context {
        "system" | "user" => {}
        // No patient-context launch in Ferry: see the module docs.
        _ => return None,
    }
    let (resource, permission) = rest.split_once('.')?;
    // A v2 query constrains the scope; refused rather than ignored (module docs).
    if permission.contains('?') {
        return None;
    }
    let resources = if resource == "*" {
        ResourceTypes::Any
    } else if is_resource_type(resource) {
        ResourceTypes::One(resource.to_owned())
    } else {
        return None;
    };
    let permissions = match permission {
        "read" => Permissions::READ,
        "write" => Permissions::WRITE,
        "*" => Permissions::ALL,
        letters => Permissions::from_v2(letters)?,
    };
    Some(Grant {
        resources,
        permissions,
    })
}

/// FHIR resource type names: an uppercase ASCII letter, then letters.
fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::Interaction::*;
    use super::*;

    const ALL_INTERACTIONS: [Interaction; 8] = [
        Read,
        VRead,
        HistoryInstance,
        HistoryType,
        SearchType,
        Create,
        Update,
        Delete,
    ];

    /// The interactions `scopes` allow on `resource_type`, in `ALL_INTERACTIONS` order.
    fn allowed(scopes: &str, resource_type: &str) -> Vec<Interaction> {
        let s = Scopes::parse(scopes);
        ALL_INTERACTIONS
            .into_iter()
            .filter(|i| s.allows(resource_type, *i))
            .collect()
    }

    const READS: [Interaction; 5] = [Read, VRead, HistoryInstance, HistoryType, SearchType];
    const WRITES: [Interaction; 3] = [Create, Update, Delete];

    #[test]
    fn v1_read_write_and_star() {
        assert_eq!(allowed("system/Patient.read", "Patient"), READS);
        assert_eq!(allowed("system/Patient.write", "Patient"), WRITES);
        assert_eq!(allowed("system/Patient.*", "Patient"), ALL_INTERACTIONS);
        assert_eq!(allowed("system/Patient.read", "Observation"), []);
    }

    #[test]
    fn v2_letters_follow_the_smart_table() {
        assert_eq!(
            allowed("system/Patient.r", "Patient"),
            [Read, VRead, HistoryInstance]
        );
        assert_eq!(
            allowed("system/Patient.s", "Patient"),
            [HistoryType, SearchType]
        );
        assert_eq!(allowed("system/Patient.rs", "Patient"), READS);
        assert_eq!(allowed("system/Patient.c", "Patient"), [Create]);
        assert_eq!(allowed("system/Patient.u", "Patient"), [Update]);
        assert_eq!(allowed("system/Patient.d", "Patient"), [Delete]);
        assert_eq!(allowed("system/Patient.cud", "Patient"), WRITES);
        assert_eq!(allowed("system/*.cruds", "Encounter"), ALL_INTERACTIONS);
    }

    #[test]
    fn v2_letters_out_of_order_repeated_or_unknown_grant_nothing() {
        for bad in [
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.rx",
            "system/Patient.",
            "system/Patient.READ",
            "system/Patient.dc",
        ] {
            assert_eq!(allowed(bad, "Patient"), [], "{bad}");
        }
    }

    #[test]
    fn wildcard_resource_type_covers_every_type() {
        assert_eq!(allowed("system/*.read", "Observation"), READS);
        assert_eq!(allowed("user/*.rs", "ServiceRequest"), READS);
        assert_eq!(allowed("system/*.write", "Encounter"), WRITES);
    }

    #[test]
    fn user_scopes_grant_like_system_scopes() {
        assert_eq!(allowed("user/Patient.read", "Patient"), READS);
        assert_eq!(allowed("user/Observation.c", "Observation"), [Create]);
    }

    #[test]
    fn patient_scopes_grant_nothing_without_a_patient_launch() {
        assert_eq!(allowed("patient/Patient.read", "Patient"), []);
        assert_eq!(allowed("patient/*.cruds", "Observation"), []);
    }

    #[test]
    fn constrained_v2_scopes_are_refused_not_widened() {
        assert_eq!(
            allowed("system/Observation.rs?category=laboratory", "Observation"),
            []
        );
        // Beside the plain scope the plain scope still counts.
        assert_eq!(
            allowed(
                "system/Observation.rs?category=laboratory system/Observation.r",
                "Observation"
            ),
            [Read, VRead, HistoryInstance]
        );
    }

    #[test]
    fn identity_and_unknown_scopes_are_ignored() {
        let s = Scopes::parse(
            "openid fhirUser launch launch/patient offline_access online_access profile x/y.z",
        );
        assert!(s.is_empty(), "{s:?}");
        assert_eq!(
            allowed(
                "openid fhirUser system/Patient.read offline_access",
                "Patient"
            ),
            READS
        );
    }

    #[test]
    fn resource_types_must_look_like_fhir_types() {
        assert_eq!(allowed("system/patient.read", "patient"), []);
        assert_eq!(allowed("system/Pat1ent.read", "Pat1ent"), []);
        assert_eq!(allowed("system/.read", ""), []);
        // Exact match only: no prefix or case folding.
        assert_eq!(allowed("system/Patient.read", "PatientX"), []);
        assert_eq!(allowed("system/Patient.read", "patient"), []);
    }

    #[test]
    fn several_scopes_add_up_and_whitespace_separates() {
        assert_eq!(
            allowed(
                "system/Patient.r\tsystem/Patient.s  system/Patient.c",
                "Patient"
            ),
            [
                Read,
                VRead,
                HistoryInstance,
                HistoryType,
                SearchType,
                Create
            ]
        );
    }

    #[test]
    fn all_and_none() {
        assert_eq!(allowed("", "Patient"), []);
        let all = Scopes::all();
        assert!(ALL_INTERACTIONS.iter().all(|i| all.allows("Anything", *i)));
        assert!(!all.is_empty());
    }

    #[test]
    fn the_needed_scope_is_the_narrowest_v2_scope() {
        assert_eq!(Scopes::needed("Patient", Create), "system/Patient.c");
        assert_eq!(Scopes::needed("Patient", VRead), "system/Patient.r");
        assert_eq!(Scopes::needed("Patient", HistoryType), "system/Patient.s");
        assert_eq!(Scopes::needed("Encounter", Delete), "system/Encounter.d");
        // And that scope does allow it.
        for i in ALL_INTERACTIONS {
            assert!(Scopes::parse(&Scopes::needed("Patient", i)).allows("Patient", i));
        }
    }

    #[test]
    fn display_summarises_in_v2_syntax() {
        assert_eq!(
            Scopes::parse("system/Patient.read user/*.write openid").to_string(),
            "system/Patient.rs system/*.cud"
        );
        assert_eq!(Scopes::all().to_string(), "(all)");
    }
}
