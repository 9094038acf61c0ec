//! v1 row → v2 fields, per `SPEC-v2-mapping.md`.
//!
//! Every transform here is pure: it reads one decoded `v1-objects` value and
//! returns only the v2 fields the row actually provides. An absent, empty or
//! wrongly typed v1 value yields no field at all, so that [`overlay`] onto
//! the current v2 record (GET) leaves what v2 holds untouched — a v1 boolean
//! that is missing must not reset a v2 `true`. References to other records
//! (parent project, committee) come out as v1 sfids: turning them into v2
//! uids needs the mapping bucket, which is the handler's business.

use serde_json::{Map, Value};

/// A JSON object: a decoded v1 row, or (part of) a v2 record.
pub type Fields = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("required v1 column `{0}` is missing, empty or not text")]
    Missing(&'static str),
}

/// Categories project-service accepts; anything else becomes `NONE`.
const PROJECT_CATEGORIES: &[&str] = &[
    "Active",
    "Adopted",
    "Archived",
    "At-Large",
    "Early Adoption",
    "Emeritus",
    "Graduated",
    "Growth",
    "Idle",
    "Impact",
    "Incubating",
    "Kanister",
    "Mature",
    "Pre-LFESS",
    "Sandbox",
    "SIG",
    "Standards",
    "TAC",
    "Working Group",
    "TAG",
    "NONE",
];

/// Committee categories committee-service accepts; anything else is `Other`.
const COMMITTEE_CATEGORIES: &[&str] = &[
    "Ambassador",
    "Board",
    "Code of Conduct",
    "Committers",
    "Expert Group",
    "Finance Committee",
    "Government Advisory Council",
    "Legal Committee",
    "Maintainers",
    "Marketing Committee/Sub Committee",
    "Marketing Mailing List",
    "Marketing Oversight Committee/Marketing Advisory Committee",
    "Newsletter",
    "Other",
    "Product Security",
    "Special Interest Group",
    "Technical Advisory Committee",
    "Technical Mailing List",
    "Technical Oversight Committee",
    "Technical Steering Committee",
    "Working Group",
];

/// The combined v1 category v2 splits in two, by the committee's name.
const TOC_OR_TAC: &str = "Technical Oversight Committee/Technical Advisory Committee";

const MEMBER_ROLES: &[&str] = &[
    "Chair",
    "Counsel",
    "Developer Seat",
    "TAC/TOC Representative",
    "Director",
    "Lead",
    "None",
    "Secretary",
    "Treasurer",
    "Vice Chair",
    "LF Staff",
];

/// The `appointed_by` enum of committee-service
/// (linuxfoundation/lfx-v2-committee-service, `cmd/committee-api/design/type.go`,
/// `AppointedByAttribute`).
const APPOINTED_BY: &[&str] = &[
    "Community",
    "Membership Entitlement",
    "Vote of End User Member Class",
    "Vote of TSC Committee",
    "Vote of TAC Committee",
    "Vote of Academic Member Class",
    "Vote of Lab Member Class",
    "Vote of Marketing Committee",
    "Vote of Governing Board",
    "Vote of General Member Class",
    "Vote of End User Committee",
    "Vote of TOC Committee",
    "Vote of Gold Member Class",
    "Vote of Silver Member Class",
    "Vote of Strategic Membership Class",
    "None",
];

/// What a v1 `salesforce-project__c` row provides.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectChange {
    pub sfid: String,
    /// Project fields, without `parent_uid`, `legal_parent_uid` and
    /// `public`, which depend on other records.
    pub fields: Fields,
    /// `parent_project__c`; `None` means the ROOT project.
    pub parent_sfid: Option<String>,
    /// `parent_entity_relationship__c`.
    pub legal_parent_sfid: Option<String>,
    /// Fields of `/projects/{uid}/settings` the row provides.
    pub settings: Fields,
}

impl ProjectChange {
    pub fn stage(&self) -> Option<&str> {
        self.fields.get("stage").and_then(Value::as_str)
    }
}

pub fn project(row: &Fields) -> Result<ProjectChange, MappingError> {
    let sfid = required(row, "sfid")?;
    let mut fields = Fields::new();
    fields.insert("name".into(), required(row, "name")?.into());
    fields.insert(
        "slug".into(),
        required(row, "slug__c")?.to_lowercase().into(),
    );
    put(&mut fields, "description", text(row, "description__c"));
    put(
        &mut fields,
        "category",
        text(row, "admin_category__c").map(|c| allowed(&c, PROJECT_CATEGORIES, "NONE")),
    );
    put(&mut fields, "legal_entity_type", text(row, "category__c"));
    put(&mut fields, "funding", text(row, "funding__c"));
    if let Some(list) = list(row, "model__c") {
        fields.insert("funding_model".into(), list);
    }
    put(&mut fields, "charter_url", url(row, "charterurl__c"));
    if let Some(b) = boolean(row, "auto_join_enabled__c") {
        fields.insert("autojoin_enabled".into(), b.into());
    }
    put(&mut fields, "formation_date", date(row, "start_date__c"));
    put(&mut fields, "logo_url", url(row, "project_logo__c"));
    put(&mut fields, "repository_url", url(row, "repositoryurl__c"));
    put(&mut fields, "website_url", url(row, "website__c"));
    put(
        &mut fields,
        "legal_entity_name",
        text(row, "project_entity_name__c"),
    );
    put(
        &mut fields,
        "entity_dissolution_date",
        date(row, "project_entity_dissolution_date__c"),
    );
    put(
        &mut fields,
        "entity_formation_document_url",
        url(row, "project_entity_formation_document__c"),
    );
    put(&mut fields, "stage", text(row, "project_status__c"));

    let mut settings = Fields::new();
    put(
        &mut settings,
        "mission_statement",
        text(row, "mission_statement"),
    );
    put(
        &mut settings,
        "announcement_date",
        date(row, "expected_announcement_date__c"),
    );
    Ok(ProjectChange {
        sfid,
        fields,
        parent_sfid: text(row, "parent_project__c"),
        legal_parent_sfid: text(row, "parent_entity_relationship__c"),
        settings,
    })
}

/// v2 `public`: only active projects under ROOT or under a public parent.
pub fn project_public(stage: Option<&str>, parent_is_root_or_public: bool) -> bool {
    stage == Some("Active") && parent_is_root_or_public
}

/// What a v1 `platform-collaboration__c` row provides.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitteeChange {
    pub sfid: String,
    /// `project_name__c`: the project's sfid, resolved to `project_uid`.
    pub project_sfid: String,
    /// Fields sent on create and update.
    pub fields: Fields,
    /// Fields sent on create only: v2 owns them afterwards.
    pub create_only: Fields,
}

pub fn committee(row: &Fields) -> Result<CommitteeChange, MappingError> {
    let sfid = required(row, "sfid")?;
    let name = required(row, "mailing_list__c")?;
    let project_sfid = required(row, "project_name__c")?;
    let mut fields = Fields::new();
    put(
        &mut fields,
        "category",
        text(row, "type__c").map(|c| committee_category(&c, &name)),
    );
    fields.insert("name".into(), name.into());
    put(&mut fields, "description", text(row, "description__c"));
    put(&mut fields, "website", url(row, "committee_website__c"));
    for (column, field) in [
        ("enable_voting__c", "enable_voting"),
        ("sso_group_enabled", "sso_group_enabled"),
        ("public_enabled", "public"),
    ] {
        if let Some(b) = boolean(row, column) {
            fields.insert(field.into(), b.into());
        }
    }
    put(&mut fields, "display_name", text(row, "public_name"));
    put(&mut fields, "mailing_list", text(row, "mailing_list_email"));
    put(&mut fields, "chat_channel", text(row, "chat_channel"));

    let mut create_only = Fields::new();
    if let Some(b) = boolean(row, "business_email_required__c") {
        create_only.insert("business_email_required".into(), b.into());
    }
    put(&mut create_only, "join_mode", text(row, "join_mode"));
    Ok(CommitteeChange {
        sfid,
        project_sfid,
        fields,
        create_only,
    })
}

fn committee_category(v1: &str, name: &str) -> String {
    if v1 == TOC_OR_TAC {
        let name = name.to_lowercase();
        // The spec's rule, literally: "tac" also matches inside words.
        return if name.contains("advisory") || name.contains("tac") {
            "Technical Advisory Committee"
        } else {
            "Technical Oversight Committee"
        }
        .to_string();
    }
    allowed(v1, COMMITTEE_CATEGORIES, "Other")
}

/// Why a member row is not synced at all (not an error: the row is acked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberSkip {
    /// `contactemail__c` is blank: v2 members are keyed by email.
    NoEmail,
}

/// What a v1 `platform-community__c` row provides.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberChange {
    pub sfid: String,
    /// `collaboration_name__c`: the committee's sfid (the request path).
    pub committee_sfid: String,
    /// `contact_name__c` when it is a valid Salesforce id; the reverse
    /// mappings are written only then.
    pub contact_sfid: Option<String>,
    pub fields: Fields,
    /// Sent on create only, so that v2 edits of them survive.
    pub create_only: Fields,
}

pub fn member(row: &Fields) -> Result<Result<MemberChange, MemberSkip>, MappingError> {
    let sfid = required(row, "sfid")?;
    let committee_sfid = required(row, "collaboration_name__c")?;
    let Some(email) = text(row, "contactemail__c") else {
        return Ok(Err(MemberSkip::NoEmail));
    };
    let mut fields = Fields::new();
    fields.insert("email".into(), email.into());
    fields.insert("version".into(), "1".into());
    put(&mut fields, "job_title", text(row, "title"));
    let mut role = Fields::new();
    put(
        &mut role,
        "name",
        text(row, "role__c").map(|r| allowed(&r, MEMBER_ROLES, "None")),
    );
    put(&mut role, "start_date", date(row, "start_date__c"));
    put(&mut role, "end_date", date(row, "end_date__c"));
    nest(&mut fields, "role", role);
    put(
        &mut fields,
        "appointed_by",
        text(row, "appointed_by__c").map(|a| allowed(&a, APPOINTED_BY, "None")),
    );
    put(&mut fields, "status", text(row, "status__c"));
    let mut voting = Fields::new();
    put(&mut voting, "status", text(row, "voting_status__c"));
    put(&mut voting, "start_date", date(row, "voting_start_date__c"));
    put(&mut voting, "end_date", date(row, "voting_end_date__c"));
    nest(&mut fields, "voting", voting);
    let mut organization = Fields::new();
    put(&mut organization, "id", text(row, "account__c"));
    nest(&mut fields, "organization", organization);

    let mut create_only = Fields::new();
    if !fields.contains_key("status") {
        // v1 rows without a status are active members.
        create_only.insert("status".into(), "Active".into());
    }
    Ok(Ok(MemberChange {
        sfid,
        committee_sfid,
        contact_sfid: text(row, "contact_name__c").filter(|c| is_salesforce_id(c)),
        fields,
        create_only,
    }))
}

/// A Salesforce id: 15 (case-sensitive) or 18 (case-insensitive) alphanumerics.
pub fn is_salesforce_id(text: &str) -> bool {
    matches!(text.len(), 15 | 18) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `_sdc_deleted_at` set, or `isdeleted` true.
pub fn soft_deleted(row: &Fields) -> bool {
    text(row, "_sdc_deleted_at").is_some() || boolean(row, "isdeleted") == Some(true)
}

/// `lastmodifiedbyid`, the principal of the last v1 write.
pub fn last_modified_by(row: &Fields) -> Option<String> {
    text(row, "lastmodifiedbyid")
}

/// `current` with `patch` laid over it (objects merged key by key, anything
/// else replaced); `None` when that changes nothing, so no PUT is needed.
pub fn overlay(current: &Fields, patch: &Fields) -> Option<Fields> {
    let mut merged = current.clone();
    merge(&mut merged, patch);
    (merged != *current).then_some(merged)
}

fn merge(into: &mut Fields, patch: &Fields) {
    for (key, value) in patch {
        match (into.get_mut(key), value) {
            (Some(Value::Object(inner)), Value::Object(sub)) => merge(inner, sub),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn put(fields: &mut Fields, field: &str, value: Option<String>) {
    if let Some(value) = value {
        fields.insert(field.into(), value.into());
    }
}

/// Adds a nested object only when v1 provides some of it.
fn nest(fields: &mut Fields, field: &str, inner: Fields) {
    if !inner.is_empty() {
        fields.insert(field.into(), Value::Object(inner));
    }
}

fn required(row: &Fields, column: &'static str) -> Result<String, MappingError> {
    text(row, column).ok_or(MappingError::Missing(column))
}

/// A non-blank string column, as stored.
pub fn text(row: &Fields, column: &str) -> Option<String> {
    match row.get(column)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Only a JSON boolean counts: `"true"` or `1` is a wrongly typed value.
fn boolean(row: &Fields, column: &str) -> Option<bool> {
    row.get(column)?.as_bool()
}

/// URL-cleaned: trimmed, non-empty, not `nil`; `https://` when no scheme.
fn url(row: &Fields, column: &str) -> Option<String> {
    let raw = text(row, column)?;
    let trimmed = raw.trim();
    if trimmed.eq_ignore_ascii_case("nil") {
        return None;
    }
    Some(if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("https://{trimmed}")
    })
}

/// The date part of a timestamp (or a bare date): the text before `T`.
fn date(row: &Fields, column: &str) -> Option<String> {
    let raw = text(row, column)?;
    let day = raw.split('T').next().unwrap_or_default().trim();
    (!day.is_empty()).then(|| day.to_string())
}

/// A `;`-separated list, items trimmed, blanks dropped.
fn list(row: &Fields, column: &str) -> Option<Value> {
    let raw = text(row, column)?;
    let items: Vec<Value> = raw
        .split(';')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| Value::String(item.to_string()))
        .collect();
    (!items.is_empty()).then_some(Value::Array(items))
}

/// The allow-listed spelling of `value` (exact, else case-insensitive), or
/// `fallback`.
fn allowed(value: &str, list: &[&str], fallback: &str) -> String {
    let value = value.trim();
    list.iter()
        .find(|item| **item == value)
        .or_else(|| list.iter().find(|item| item.eq_ignore_ascii_case(value)))
        .unwrap_or(&fallback)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Fields {
        match value {
            Value::Object(map) => map,
            _ => panic!("test rows are objects"),
        }
    }

    fn full_project() -> Fields {
        row(json!({
            "sfid": "a0941000002wBymAAE",
            "name": "Kubernetes",
            "slug__c": "KuberNetes",
            "description__c": "Containers",
            "admin_category__c": "Graduated",
            "category__c": "Series LLC",
            "funding__c": "Funded",
            "model__c": " Membership ; Crowdfunding;; ",
            "charterurl__c": " example.org/charter ",
            "auto_join_enabled__c": true,
            "start_date__c": "2015-07-21T00:00:00+00:00",
            "project_logo__c": "http://example.org/logo.svg",
            "repositoryurl__c": "nil",
            "website__c": "",
            "project_entity_name__c": "Kubernetes LLC",
            "project_entity_dissolution_date__c": "2030-01-02",
            "project_entity_formation_document__c": "https://docs/x",
            "parent_project__c": "a0941000002wByaAAE",
            "parent_entity_relationship__c": "a0941000002wBybAAE",
            "project_status__c": "Active",
            "mission_statement": "Orchestrate",
            "expected_announcement_date__c": "2015-07-01T12:00:00Z",
            "lastmodifiedbyid": "0051T000008Xyz1QAC",
        }))
    }

    #[test]
    fn project_maps_every_column() {
        let change = project(&full_project()).unwrap();
        assert_eq!(change.sfid, "a0941000002wBymAAE");
        assert_eq!(change.parent_sfid.as_deref(), Some("a0941000002wByaAAE"));
        assert_eq!(
            change.legal_parent_sfid.as_deref(),
            Some("a0941000002wBybAAE")
        );
        assert_eq!(
            Value::Object(change.fields),
            json!({
                "name": "Kubernetes",
                "slug": "kubernetes",
                "description": "Containers",
                "category": "Graduated",
                "legal_entity_type": "Series LLC",
                "funding": "Funded",
                "funding_model": ["Membership", "Crowdfunding"],
                "charter_url": "https://example.org/charter",
                "autojoin_enabled": true,
                "formation_date": "2015-07-21",
                "logo_url": "http://example.org/logo.svg",
                "legal_entity_name": "Kubernetes LLC",
                "entity_dissolution_date": "2030-01-02",
                "entity_formation_document_url": "https://docs/x",
                "stage": "Active",
            })
        );
        assert_eq!(
            Value::Object(change.settings),
            json!({"mission_statement": "Orchestrate", "announcement_date": "2015-07-01"})
        );
    }

    #[test]
    fn project_requires_sfid_name_and_slug() {
        for column in ["sfid", "name", "slug__c"] {
            let mut r = full_project();
            r.insert(column.into(), json!("  "));
            assert_eq!(project(&r).unwrap_err(), MappingError::Missing(column));
            r.remove(column);
            assert_eq!(project(&r).unwrap_err(), MappingError::Missing(column));
        }
    }

    #[test]
    fn absent_empty_and_wrongly_typed_values_leave_fields_unset() {
        let change = project(&row(json!({
            "sfid": "a0941000002wBymAAE",
            "name": "K",
            "slug__c": "k",
            "description__c": null,
            "auto_join_enabled__c": "true",
            "model__c": " ; ",
            "admin_category__c": 7,
            "start_date__c": "",
        })))
        .unwrap();
        assert_eq!(
            Value::Object(change.fields),
            json!({"name": "K", "slug": "k"})
        );
        assert_eq!(change.parent_sfid, None);
        assert!(change.settings.is_empty());
    }

    #[test]
    fn project_category_allow_list() {
        let mut r = full_project();
        for (v1, v2) in [
            ("Working Group", "Working Group"),
            ("sandbox", "Sandbox"),
            ("Pre-LFESS", "Pre-LFESS"),
            ("Something new", "NONE"),
        ] {
            r.insert("admin_category__c".into(), json!(v1));
            assert_eq!(project(&r).unwrap().fields["category"], json!(v2), "{v1}");
        }
    }

    #[test]
    fn public_needs_active_stage_and_public_or_root_parent() {
        assert!(project_public(Some("Active"), true));
        assert!(!project_public(Some("Active"), false));
        assert!(!project_public(Some("Archived"), true));
        assert!(!project_public(None, true));
    }

    #[test]
    fn url_cleaning() {
        for (raw, cleaned) in [
            ("example.org", Some("https://example.org")),
            (" https://x.io/a ", Some("https://x.io/a")),
            ("ftp://x", Some("ftp://x")),
            ("NIL", None),
            ("nil", None),
            ("   ", None),
        ] {
            assert_eq!(
                url(&row(json!({"u": raw})), "u").as_deref(),
                cleaned,
                "{raw}"
            );
        }
    }

    #[test]
    fn date_part() {
        for (raw, day) in [
            ("2024-05-01T00:00:00.000000+00:00", Some("2024-05-01")),
            ("2024-05-01", Some("2024-05-01")),
            ("T10:00", None),
        ] {
            assert_eq!(date(&row(json!({"d": raw})), "d").as_deref(), day, "{raw}");
        }
    }

    fn full_committee() -> Fields {
        row(json!({
            "sfid": "a0R5G0000000000002",
            "mailing_list__c": "Technical Steering",
            "project_name__c": "a0941000002wBymAAE",
            "description__c": "Steers",
            "type__c": "Technical Steering Committee",
            "committee_website__c": "tsc.example.org",
            "enable_voting__c": true,
            "sso_group_enabled": false,
            "public_enabled": true,
            "public_name": "TSC",
            "business_email_required__c": true,
            "join_mode": "closed",
            "mailing_list_email": "tsc@lists.example.org",
            "chat_channel": "#tsc",
        }))
    }

    #[test]
    fn committee_maps_every_column() {
        let change = committee(&full_committee()).unwrap();
        assert_eq!(change.sfid, "a0R5G0000000000002");
        assert_eq!(change.project_sfid, "a0941000002wBymAAE");
        assert_eq!(
            Value::Object(change.fields),
            json!({
                "category": "Technical Steering Committee",
                "name": "Technical Steering",
                "description": "Steers",
                "website": "https://tsc.example.org",
                "enable_voting": true,
                "sso_group_enabled": false,
                "public": true,
                "display_name": "TSC",
                "mailing_list": "tsc@lists.example.org",
                "chat_channel": "#tsc",
            })
        );
        assert_eq!(
            Value::Object(change.create_only),
            json!({"business_email_required": true, "join_mode": "closed"})
        );
    }

    #[test]
    fn committee_requires_name_and_project() {
        for column in ["sfid", "mailing_list__c", "project_name__c"] {
            let mut r = full_committee();
            r.remove(column);
            assert_eq!(committee(&r).unwrap_err(), MappingError::Missing(column));
        }
    }

    #[test]
    fn committee_category_rules() {
        for (v1, name, v2) in [
            ("Board", "Governing Board", "Board"),
            ("Unheard of", "x", "Other"),
            (
                TOC_OR_TAC,
                "Technical Advisory Council",
                "Technical Advisory Committee",
            ),
            (TOC_OR_TAC, "The TAC", "Technical Advisory Committee"),
            (TOC_OR_TAC, "Oversight", "Technical Oversight Committee"),
        ] {
            let mut r = full_committee();
            r.insert("type__c".into(), json!(v1));
            r.insert("mailing_list__c".into(), json!(name));
            assert_eq!(
                committee(&r).unwrap().fields["category"],
                json!(v2),
                "{v1}/{name}"
            );
        }
    }

    fn full_member() -> Fields {
        row(json!({
            "sfid": "a0Q5G0000000000001",
            "collaboration_name__c": "a0R5G0000000000002",
            "contactemail__c": "contact1@example.com",
            "contact_name__c": "0035G0000000000101",
            "title": "Engineer",
            "role__c": "Vice Chair",
            "start_date__c": "2023-01-08",
            "end_date__c": null,
            "appointed_by__c": "Vote of TSC Committee",
            "voting_status__c": "Alternate Voting Rep",
            "voting_start_date__c": "2023-01-08T00:00:00Z",
            "account__c": "0014100000Te2cmAAB",
        }))
    }

    #[test]
    fn member_maps_every_column() {
        let change = member(&full_member()).unwrap().unwrap();
        assert_eq!(change.committee_sfid, "a0R5G0000000000002");
        assert_eq!(change.contact_sfid.as_deref(), Some("0035G0000000000101"));
        assert_eq!(
            Value::Object(change.fields),
            json!({
                "email": "contact1@example.com",
                "version": "1",
                "job_title": "Engineer",
                "role": {"name": "Vice Chair", "start_date": "2023-01-08"},
                "appointed_by": "Vote of TSC Committee",
                "voting": {"status": "Alternate Voting Rep", "start_date": "2023-01-08"},
                "organization": {"id": "0014100000Te2cmAAB"},
            })
        );
        assert_eq!(
            Value::Object(change.create_only),
            json!({"status": "Active"})
        );
    }

    #[test]
    fn member_allow_lists_status_and_contact() {
        let mut r = full_member();
        r.insert("role__c".into(), json!("Observer"));
        r.insert("appointed_by__c".into(), json!("Vote of the moon"));
        r.insert("status__c".into(), json!("Inactive"));
        r.insert("contact_name__c".into(), json!("Contact 1"));
        let change = member(&r).unwrap().unwrap();
        assert_eq!(change.fields["role"]["name"], json!("None"));
        assert_eq!(change.fields["appointed_by"], json!("None"));
        assert_eq!(change.fields["status"], json!("Inactive"));
        assert!(change.create_only.is_empty());
        assert_eq!(change.contact_sfid, None);
    }

    #[test]
    fn member_without_email_is_skipped() {
        let mut r = full_member();
        r.insert("contactemail__c".into(), json!(" "));
        assert_eq!(member(&r).unwrap(), Err(MemberSkip::NoEmail));
        r.remove("collaboration_name__c");
        assert_eq!(
            member(&r).unwrap_err(),
            MappingError::Missing("collaboration_name__c")
        );
    }

    #[test]
    fn salesforce_ids() {
        assert!(is_salesforce_id("0035G0000000000"));
        assert!(is_salesforce_id("0035G0000000000101"));
        assert!(!is_salesforce_id("0035G000000000010"));
        assert!(!is_salesforce_id("0035G00000000-0101"));
    }

    #[test]
    fn soft_deletion_and_principal() {
        assert!(soft_deleted(&row(
            json!({"_sdc_deleted_at": "2024-01-01T00:00:00Z"})
        )));
        assert!(soft_deleted(&row(json!({"isdeleted": true}))));
        assert!(!soft_deleted(&row(
            json!({"isdeleted": false, "_sdc_deleted_at": null})
        )));
        assert!(!soft_deleted(&row(json!({"_sdc_deleted_at": ""}))));
        assert_eq!(
            last_modified_by(&full_project()).as_deref(),
            Some("0051T000008Xyz1QAC")
        );
    }

    #[test]
    fn overlay_keeps_v2_values_v1_does_not_provide() {
        let current = row(json!({
            "uid": "u1", "name": "K", "autojoin_enabled": true,
            "role": {"name": "Chair", "end_date": "2030-01-01"},
        }));
        // Absent v1 boolean, nested object partly provided: no change.
        assert_eq!(
            overlay(
                &current,
                &row(json!({"name": "K", "role": {"name": "Chair"}}))
            ),
            None
        );
        let merged = overlay(
            &current,
            &row(json!({"name": "K2", "role": {"name": "Lead"}})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(merged),
            json!({
                "uid": "u1", "name": "K2", "autojoin_enabled": true,
                "role": {"name": "Lead", "end_date": "2030-01-01"},
            })
        );
        let merged = overlay(&current, &row(json!({"autojoin_enabled": false}))).unwrap();
        assert_eq!(merged["autojoin_enabled"], json!(false));
    }
}
