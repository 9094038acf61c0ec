//! The KV consumer's work (SPEC §7.2): one `v1-objects` change → the v2
//! call(s) it needs, in the order of the decision list:
//!
//! 1. own write (`lastmodifiedbyid` is lfx-sync's Auth0 client) → skip;
//! 2. tombstoned mapping → skip (a delete made in v2 is not undone from v1);
//! 3. soft delete / KV DEL / PURGE → DELETE with `If-Match` and tombstone the
//!    mappings; without a mapping → warn and skip;
//! 4. no mapping → POST, then store both mappings;
//! 5. mapping → GET, overlay the v1 fields, PUT with `If-Match` only when
//!    something changed.
//!
//! Failures come back as [`SyncFail`]: `Retry` (service unavailable, a
//! parent not mapped yet, a record that keeps changing under us, NATS) is
//! redelivered later with backoff and dead-lettered after the retry budget;
//! `Reject` (the service refused the data, the row is unusable) goes to the
//! dead letters at once.

use std::collections::HashSet;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::client::{ApiError, Header, Service, V2Client};
use super::mapping::{self, Fields, MappingError, MemberSkip};
use super::store::{Mapping, MappingStore, StoreError, keys};
use crate::sync::consumer::{Failure, Handler, Prepared, Rejection};

pub const PROJECTS_STREAM: &str = "salesforce-project__c";
pub const COMMITTEES_STREAM: &str = "platform-collaboration__c";
pub const MEMBERS_STREAM: &str = "platform-community__c";
/// The header JetStream KV puts on deletions: `DEL` or `PURGE`.
const KV_OPERATION: &str = "KV-Operation";
/// Asked (payload `ROOT`) for the uid of the ROOT project.
pub const SLUG_TO_UID_SUBJECT: &str = "lfx.projects-api.slug_to_uid";

/// Attempts of one GET → PUT/DELETE round when the record changes under us
/// (412) before the message is handed back for a later retry.
const CONFLICT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct V2Settings {
    /// `<AUTH0_CLIENT_ID>@clients`: rows it last modified came from v2.
    pub own_principal: String,
    /// `X-Skip-Notification` on member creation.
    pub skip_notification: bool,
    /// Log every decision and the request it would send; send no write.
    pub dry_run: bool,
    /// Where v1 user ids are turned into the usernames writes impersonate;
    /// `None`: every write acts as the service principal.
    pub users: Option<UserDirectory>,
}

/// The v1 users, read from the `salesforce-merged_user` stream of
/// `v1-objects` (the backfill keeps it there, keyed by sfid): the replica of
/// the v1 database the daemon already reads, so it needs no database
/// connection of its own.
#[derive(Debug, Clone)]
pub struct UserDirectory {
    objects: kv::Store,
    key_prefix: String,
    username_field: String,
    /// Found usernames; a miss is asked again, as the user may be synced later.
    known: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

/// The stream of v1 users in `v1-objects`.
pub const USERS_STREAM: &str = "salesforce-merged_user";

impl UserDirectory {
    pub fn new(objects: kv::Store, key_prefix: &str, username_field: &str) -> Self {
        Self {
            objects,
            key_prefix: key_prefix.to_string(),
            username_field: username_field.to_string(),
            known: Arc::default(),
        }
    }

    /// The username of a v1 user id, when its user record has one.
    async fn username(&self, user_id: &str) -> Result<Option<String>, SyncFail> {
        if let Some(name) = self.known.lock().ok().and_then(|k| k.get(user_id).cloned()) {
            return Ok(Some(name));
        }
        let key = format!("{}{USERS_STREAM}.{user_id}", self.key_prefix);
        let value = self
            .objects
            .get(&key)
            .await
            .map_err(|e| SyncFail::Retry(format!("reading {key}: {e}")))?;
        let name = value
            .as_deref()
            .and_then(crate::kv::writer::decode)
            .and_then(|user| mapping::text(&user, &self.username_field));
        if let (Some(name), Ok(mut known)) = (&name, self.known.lock()) {
            known.insert(user_id.to_string(), name.clone());
        }
        Ok(name)
    }
}

/// A `v1-objects` change: the key (without any key prefix) and what happened.
#[derive(Debug, Clone)]
pub struct KvChange {
    pub key: String,
    pub operation: Operation,
}

#[derive(Debug, Clone)]
pub enum Operation {
    Put(Fields),
    /// KV DEL or PURGE.
    Delete,
}

#[derive(Debug)]
pub enum SyncFail {
    Retry(String),
    Reject(Rejection),
}

impl From<ApiError> for SyncFail {
    fn from(e: ApiError) -> Self {
        let reason = match &e {
            // A 412 that outlasted the re-reads: the record is busy, not wrong.
            ApiError::Unavailable { .. }
            | ApiError::Timeout { .. }
            | ApiError::Transport { .. }
            | ApiError::PreconditionFailed { .. } => return Self::Retry(e.to_string()),
            ApiError::Rejected { .. } => "v2_rejected",
            ApiError::NotFound { .. } => "v2_not_found",
            ApiError::BadResponse { .. } => "v2_bad_response",
            ApiError::Auth(_) | ApiError::InvalidRequest(_) => "v2_request",
        };
        Self::Reject(Rejection::new(reason, e.to_string()))
    }
}

impl From<StoreError> for SyncFail {
    fn from(e: StoreError) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<MappingError> for SyncFail {
    fn from(e: MappingError) -> Self {
        Self::Reject(Rejection::new("invalid_record", e.to_string()))
    }
}

pub struct V2Sync {
    client: V2Client,
    projects: Service,
    committees: Service,
    store: MappingStore,
    nats: async_nats::Client,
    root_uid: OnceCell<String>,
    settings: V2Settings,
}

/// A reference to another v1 record, resolved through the mappings.
enum Parent {
    Uid(String),
    /// Not synced yet: try again later.
    Pending(String),
}

impl V2Sync {
    pub fn new(
        client: V2Client,
        projects: Service,
        committees: Service,
        store: MappingStore,
        nats: async_nats::Client,
        settings: V2Settings,
    ) -> Self {
        Self {
            client,
            projects,
            committees,
            store,
            nats,
            root_uid: OnceCell::new(),
            settings,
        }
    }

    /// Applies one change; the outcome label on success.
    pub async fn apply(&self, change: &KvChange) -> Result<&'static str, SyncFail> {
        let Some((stream, id)) = change.key.split_once('.') else {
            return Err(reject("bad_key", format!("key `{}` has no id", change.key)));
        };
        let row = match &change.operation {
            Operation::Put(row) => {
                if mapping::last_modified_by(row).as_deref() == Some(&self.settings.own_principal) {
                    tracing::debug!(key = %change.key, "own write: skipped");
                    return Ok("own_write");
                }
                (!mapping::soft_deleted(row)).then_some(row)
            }
            Operation::Delete => None,
        };
        if !matches!(stream, PROJECTS_STREAM | COMMITTEES_STREAM | MEMBERS_STREAM) {
            return Ok("other_stream");
        }
        let principal = self.write_principal(row).await?;
        let principal = principal.as_str();
        match stream {
            PROJECTS_STREAM => self.project(id, row, principal).await,
            COMMITTEES_STREAM => self.committee(id, row, principal).await,
            _ => self.member(id, row, principal).await,
        }
    }

    /// `row` is `None` for a deletion; `id` is the key's id part (the sfid).
    async fn project(
        &self,
        id: &str,
        row: Option<&Fields>,
        principal: &str,
    ) -> Result<&'static str, SyncFail> {
        let sfid_key = keys::project_sfid(id);
        let mapped = self.store.get(&sfid_key).await?;
        let Some(row) = row else {
            let Mapping::Value(uid) = mapped else {
                return Ok(self.unmapped_delete(&mapped, &sfid_key));
            };
            self.remove(&self.projects, &format!("/projects/{uid}"))
                .await?;
            if !self.settings.dry_run {
                self.store
                    .tombstone(&[sfid_key, keys::project_uid(&uid)])
                    .await?;
            }
            return Ok("deleted");
        };
        if mapped == Mapping::Deleted {
            return Ok("tombstoned");
        }
        let change = mapping::project(row)?;
        let parent_uid = match &change.parent_sfid {
            None => self.root_uid().await?,
            Some(parent) => match self.resolve(&keys::project_sfid(parent)).await? {
                Parent::Uid(uid) => uid,
                Parent::Pending(why) => return self.pending(why),
            },
        };
        let mut fields = change.fields.clone();
        fields.insert("parent_uid".into(), parent_uid.clone().into());
        if let Some(legal) = &change.legal_parent_sfid {
            match self.resolve(&keys::project_sfid(legal)).await? {
                Parent::Uid(uid) => fields.insert("legal_parent_uid".into(), uid.into()),
                Parent::Pending(why) => return self.pending(why),
            };
        }
        // `public` follows the stage; a row without one says nothing about it.
        if let Some(stage) = change.stage() {
            let parent_open = change.parent_sfid.is_none()
                || self.is_public(&format!("/projects/{parent_uid}")).await?;
            let public = mapping::project_public(Some(stage), parent_open);
            fields.insert("public".into(), public.into());
        }
        let uid = match mapped {
            Mapping::Value(uid) => uid,
            _ => {
                // project-service requires a description (empty is fine);
                // on create there is no v2 value an empty one could clobber.
                if !fields.contains_key("description") {
                    fields.insert("description".into(), "".into());
                }
                let Some(created) = self
                    .create(&self.projects, "/projects", &fields, principal, &[])
                    .await?
                else {
                    return Ok("dry_run");
                };
                let uid = created_uid(&created);
                self.store.put(&sfid_key, &uid).await?;
                self.store.put(&keys::project_uid(&uid), id).await?;
                if !change.settings.is_empty() {
                    self.update(
                        &self.projects,
                        &settings_path(&uid),
                        &change.settings,
                        principal,
                    )
                    .await?;
                }
                return Ok("created");
            }
        };
        let outcome = self
            .update(
                &self.projects,
                &format!("/projects/{uid}"),
                &fields,
                principal,
            )
            .await?;
        // Settings only when the row carries some: absent ones change nothing.
        let settings = if change.settings.is_empty() {
            "unchanged"
        } else {
            self.update(
                &self.projects,
                &settings_path(&uid),
                &change.settings,
                principal,
            )
            .await?
        };
        Ok(if settings == "updated" {
            "updated"
        } else {
            outcome
        })
    }

    async fn committee(
        &self,
        id: &str,
        row: Option<&Fields>,
        principal: &str,
    ) -> Result<&'static str, SyncFail> {
        let sfid_key = keys::committee_sfid(id);
        let mapped = self.store.get(&sfid_key).await?;
        let Some(row) = row else {
            let Mapping::Value(uid) = mapped else {
                return Ok(self.unmapped_delete(&mapped, &sfid_key));
            };
            self.remove(&self.committees, &format!("/committees/{uid}?v=1"))
                .await?;
            if !self.settings.dry_run {
                self.store
                    .tombstone(&[sfid_key, keys::committee_uid(&uid)])
                    .await?;
            }
            return Ok("deleted");
        };
        if mapped == Mapping::Deleted {
            return Ok("tombstoned");
        }
        let change = mapping::committee(row)?;
        let project_uid = match self
            .resolve(&keys::project_sfid(&change.project_sfid))
            .await?
        {
            Parent::Uid(uid) => uid,
            Parent::Pending(why) => return self.pending(why),
        };
        let mut fields = change.fields.clone();
        fields.insert("project_uid".into(), project_uid.into());
        match mapped {
            Mapping::Value(uid) => {
                self.update(
                    &self.committees,
                    &format!("/committees/{uid}?v=1"),
                    &fields,
                    principal,
                )
                .await
            }
            _ => {
                let mut body = change.create_only.clone();
                body.extend(fields);
                let Some(created) = self
                    .create(&self.committees, "/committees?v=1", &body, principal, &[])
                    .await?
                else {
                    return Ok("dry_run");
                };
                let uid = created_uid(&created);
                self.store.put(&sfid_key, &uid).await?;
                self.store
                    .put(
                        &keys::committee_uid(&uid),
                        &format!("{}:{id}", change.project_sfid),
                    )
                    .await?;
                Ok("created")
            }
        }
    }

    async fn member(
        &self,
        id: &str,
        row: Option<&Fields>,
        principal: &str,
    ) -> Result<&'static str, SyncFail> {
        let sfid_key = keys::member_sfid(id);
        let mapped = self.store.get(&sfid_key).await?;
        let existing = match &mapped {
            Mapping::Value(pair) => match pair.split_once(':') {
                Some((committee, member)) => Some((committee.to_string(), member.to_string())),
                None => {
                    return Err(reject(
                        "bad_mapping",
                        format!("`{sfid_key}` is `{pair}`, not `<committee_uid>:<member_uid>`"),
                    ));
                }
            },
            _ => None,
        };
        let Some(row) = row else {
            let Some((committee, member)) = existing else {
                return Ok(self.unmapped_delete(&mapped, &sfid_key));
            };
            self.remove(&self.committees, &member_path(&committee, &member))
                .await?;
            if !self.settings.dry_run {
                self.store
                    .tombstone(&[
                        sfid_key,
                        keys::member_record_sfid(&member),
                        keys::member_uid(&member),
                    ])
                    .await?;
            }
            return Ok("deleted");
        };
        if mapped == Mapping::Deleted {
            return Ok("tombstoned");
        }
        let change = match mapping::member(row)? {
            Ok(change) => change,
            Err(MemberSkip::NoEmail) => return Ok("no_email"),
        };
        if let Some((committee, member)) = existing {
            return self
                .update(
                    &self.committees,
                    &member_path(&committee, &member),
                    &change.fields,
                    principal,
                )
                .await;
        }
        let committee_uid = match self
            .resolve(&keys::committee_sfid(&change.committee_sfid))
            .await?
        {
            Parent::Uid(uid) => uid,
            Parent::Pending(why) => return self.pending(why),
        };
        let mut body = change.create_only.clone();
        body.extend(change.fields.clone());
        let skip = if self.settings.skip_notification {
            "true"
        } else {
            "false"
        };
        let Some(created) = self
            .create(
                &self.committees,
                &format!("/committees/{committee_uid}/members?v=1"),
                &body,
                principal,
                &[("X-Skip-Notification", skip)],
            )
            .await?
        else {
            return Ok("dry_run");
        };
        let member_uid = created_uid(&created);
        self.store
            .put(&sfid_key, &format!("{committee_uid}:{member_uid}"))
            .await?;
        if let Some(contact) = &change.contact_sfid {
            self.store
                .put(&keys::member_record_sfid(&member_uid), id)
                .await?;
            // `<project_sfid>:<committee_sfid>`, written when the committee
            // was; a committee synced by another tool may lack it.
            match self.store.get(&keys::committee_uid(&committee_uid)).await? {
                Mapping::Value(pair) if pair.contains(':') => {
                    let project_sfid = pair.split(':').next().unwrap_or_default();
                    self.store
                        .put(
                            &keys::member_uid(&member_uid),
                            &format!("{project_sfid}:{}:{contact}", change.committee_sfid),
                        )
                        .await?;
                }
                _ => tracing::warn!(
                    committee_uid = %committee_uid,
                    member_uid = %member_uid,
                    "committee has no project mapping: committee_member.uid not written"
                ),
            }
        }
        Ok("created")
    }

    /// The uid a `*.sfid.*` mapping points to, or why it is not there yet.
    async fn resolve(&self, key: &str) -> Result<Parent, SyncFail> {
        match self.store.get(key).await? {
            Mapping::Value(value) => Ok(Parent::Uid(value)),
            Mapping::Absent => Ok(Parent::Pending(format!("`{key}` is not mapped yet"))),
            Mapping::Deleted => Err(reject(
                "parent_deleted",
                format!("`{key}` is deleted in v2"),
            )),
        }
    }

    fn pending(&self, why: String) -> Result<&'static str, SyncFail> {
        if self.settings.dry_run {
            tracing::info!(%why, "dry run: would wait for the parent");
            return Ok("dry_run");
        }
        Err(SyncFail::Retry(why))
    }

    fn unmapped_delete(&self, mapped: &Mapping, key: &str) -> &'static str {
        if *mapped == Mapping::Deleted {
            return "tombstoned";
        }
        tracing::warn!(mapping = %key, "deleted in v1 but never synced to v2: nothing to delete");
        "delete_unmapped"
    }

    /// The ROOT project's uid, asked once from project-service over NATS.
    async fn root_uid(&self) -> Result<String, SyncFail> {
        self.root_uid
            .get_or_try_init(|| async {
                let reply = self
                    .nats
                    .request(SLUG_TO_UID_SUBJECT, "ROOT".into())
                    .await
                    .map_err(|e| SyncFail::Retry(format!("{SLUG_TO_UID_SUBJECT}: {e}")))?;
                let uid = String::from_utf8_lossy(&reply.payload).trim().to_string();
                if uid.is_empty() {
                    return Err(SyncFail::Retry(format!(
                        "{SLUG_TO_UID_SUBJECT}: no uid for ROOT"
                    )));
                }
                Ok(uid)
            })
            .await
            .cloned()
    }

    async fn is_public(&self, path: &str) -> Result<bool, SyncFail> {
        let current = self.client.get(&self.projects, path).await?;
        Ok(current.record.get("public").and_then(Value::as_bool) == Some(true))
    }

    /// POSTs `body`; `None` in a dry run.
    async fn create(
        &self,
        service: &Service,
        path: &str,
        body: &Fields,
        principal: &str,
        headers: &[Header<'_>],
    ) -> Result<Option<Fields>, SyncFail> {
        if self.settings.dry_run {
            let body = Value::Object(body.clone());
            tracing::info!(method = "POST", %path, %body, "dry run: would create");
            return Ok(None);
        }
        let created = self
            .client
            .create(service, path, body, principal, headers)
            .await?;
        tracing::info!(%path, uid = %created_uid(&created), "created in v2");
        Ok(Some(created))
    }

    /// GET, overlay `patch`, PUT if anything changed; a 412 starts over.
    async fn update(
        &self,
        service: &Service,
        path: &str,
        patch: &Fields,
        principal: &str,
    ) -> Result<&'static str, SyncFail> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = self.client.get(service, path).await?;
            let Some(merged) = mapping::overlay(&current.record, patch) else {
                return Ok("unchanged");
            };
            if self.settings.dry_run {
                let body = Value::Object(merged);
                tracing::info!(method = "PUT", %path, if_match = %current.etag, %body, "dry run: would update");
                return Ok("dry_run");
            }
            match self
                .client
                .update(service, path, &current.etag, &merged, principal, &[])
                .await
            {
                Ok(()) => return Ok("updated"),
                Err(ApiError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncFail::Retry(format!(
            "{path} changed under every one of {CONFLICT_ATTEMPTS} updates"
        )))
    }

    /// GET for the tag, then DELETE; already gone counts as done.
    async fn remove(&self, service: &Service, path: &str) -> Result<(), SyncFail> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = match self.client.get(service, path).await {
                Ok(current) => current,
                Err(ApiError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if self.settings.dry_run {
                tracing::info!(method = "DELETE", %path, if_match = %current.etag, "dry run: would delete");
                return Ok(());
            }
            match self
                .client
                // No v1 principal comes with a deletion: the sync app deletes.
                .delete(
                    service,
                    path,
                    &current.etag,
                    self.client.service_principal(),
                    &[],
                )
                .await
            {
                Ok(()) | Err(ApiError::NotFound { .. }) => return Ok(()),
                Err(ApiError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncFail::Retry(format!(
            "{path} changed under every one of {CONFLICT_ATTEMPTS} deletes"
        )))
    }

    /// Who a write acts as (SPEC §7.4): the v1 user who last modified the row,
    /// when `lastmodifiedbyid` is a Salesforce user id with a username in
    /// `salesforce-merged_user`; else the service principal.
    async fn write_principal(&self, row: Option<&Fields>) -> Result<String, SyncFail> {
        let user_id = row
            .and_then(mapping::last_modified_by)
            .filter(|id| mapping::is_salesforce_id(id));
        if let (Some(users), Some(user_id)) = (&self.settings.users, user_id) {
            if let Some(name) = users.username(&user_id).await? {
                return Ok(name);
            }
            tracing::debug!(%user_id, "no username for the v1 user: writing as the service principal");
        }
        Ok(self.client.service_principal().to_string())
    }
}

fn created_uid(created: &Fields) -> String {
    // `V2Client::create` only returns records with a non-empty `uid`.
    created
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn settings_path(uid: &str) -> String {
    format!("/projects/{uid}/settings")
}

fn member_path(committee: &str, member: &str) -> String {
    format!("/committees/{committee}/members/{member}?v=1")
}

fn reject(reason: &'static str, detail: String) -> SyncFail {
    SyncFail::Reject(Rejection::new(reason, detail))
}

/// Reads `$KV.<bucket>.<key_prefix><stream>.<id>` messages.
#[derive(Debug, Clone)]
pub struct KvParser {
    subject_prefix: String,
    key_prefix: String,
    /// Streams of `v1-objects` other services consume: acknowledged quietly.
    known_streams: HashSet<String>,
}

impl KvParser {
    pub fn new(bucket: &str, key_prefix: &str, known_streams: HashSet<String>) -> Self {
        Self {
            subject_prefix: format!("$KV.{bucket}."),
            key_prefix: key_prefix.to_string(),
            known_streams,
        }
    }

    /// The change a message carries, `None` for streams not synced to v2.
    /// The operation is the `KV-Operation` header's (`DEL`, `PURGE`); a
    /// message without one is a put.
    pub fn parse(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<Option<KvChange>, Rejection> {
        let key = subject
            .strip_prefix(&self.subject_prefix)
            .and_then(|k| k.strip_prefix(&self.key_prefix))
            .ok_or_else(|| Rejection::new("bad_subject", subject.to_string()))?;
        let stream = key.split('.').next().unwrap_or_default();
        if ![PROJECTS_STREAM, COMMITTEES_STREAM, MEMBERS_STREAM].contains(&stream) {
            if !self.known_streams.contains(stream) {
                tracing::warn!(%key, "unknown stream prefix: acknowledged without action");
            }
            return Ok(None);
        }
        let operation = headers
            .and_then(|h| h.get(KV_OPERATION))
            .map(|v| v.as_str());
        let operation = if matches!(operation, Some("DEL" | "PURGE")) {
            Operation::Delete
        } else {
            match crate::kv::writer::decode(payload) {
                Some(row) => Operation::Put(row),
                None => {
                    return Err(Rejection::new(
                        "undecodable",
                        format!("{key}: neither a JSON nor a MessagePack object"),
                    ));
                }
            }
        };
        Ok(Some(KvChange {
            key: key.to_string(),
            operation,
        }))
    }
}

/// The KV consumer input for the issue-5 [`Input`](crate::sync::consumer::Input).
pub struct KvHandler {
    sync: Arc<V2Sync>,
    parser: KvParser,
    /// The `v1-objects` bucket: each change is applied as the key's latest
    /// state, read at apply time.
    objects: kv::Store,
}

impl KvHandler {
    pub fn new(sync: Arc<V2Sync>, parser: KvParser, objects: kv::Store) -> Self {
        Self {
            sync,
            parser,
            objects,
        }
    }

    /// The key's current state. A message that failed is redelivered after a
    /// delay, possibly after a newer revision of its key was applied; reading
    /// the latest state makes that late delivery harmless (it re-applies the
    /// newest row, which changes nothing) instead of rolling v2 back.
    async fn latest(&self, change: KvChange) -> Result<KvChange, Failure> {
        let key = format!("{}{}", self.parser.key_prefix, change.key);
        let entry = self
            .objects
            .entry(key.as_str())
            .await
            .map_err(|e| Failure::Transient(format!("reading {key}: {e}")))?;
        let operation = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                match crate::kv::writer::decode(&entry.value) {
                    Some(row) => Operation::Put(row),
                    None => {
                        return Err(Failure::Permanent(Rejection::new(
                            "undecodable",
                            format!("{key}: neither a JSON nor a MessagePack object"),
                        )));
                    }
                }
            }
            // Deleted, purged, or gone with the bucket's history.
            _ => Operation::Delete,
        };
        Ok(KvChange {
            key: change.key,
            operation,
        })
    }
}

impl Handler for KvHandler {
    type Job = KvChange;

    fn prepare(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Prepared<KvChange> {
        match self.parser.parse(subject, headers, payload) {
            Ok(Some(change)) => Prepared::Apply {
                key: change.key.clone(),
                job: change,
            },
            Ok(None) => Prepared::Skip("other_stream"),
            Err(rejection) => Prepared::Reject(rejection),
        }
    }

    async fn apply(&self, job: KvChange) -> Result<&'static str, Failure> {
        let change = self.latest(job).await?;
        self.sync.apply(&change).await.map_err(|fail| match fail {
            SyncFail::Retry(why) => Failure::Transient(why),
            SyncFail::Reject(rejection) => Failure::Permanent(rejection),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(op: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, op);
        headers
    }

    fn parser() -> KvParser {
        KvParser::new(
            "v1-objects",
            "",
            HashSet::from(["platform-meeting".to_string()]),
        )
    }

    #[test]
    fn messages_become_changes_by_stream() {
        let p = parser();
        let put = p
            .parse(
                "$KV.v1-objects.salesforce-project__c.a09",
                None,
                br#"{"sfid": "a09"}"#,
            )
            .unwrap()
            .unwrap();
        assert_eq!(put.key, "salesforce-project__c.a09");
        assert!(matches!(put.operation, Operation::Put(ref row) if row["sfid"] == "a09"));
        for op in ["DEL", "PURGE"] {
            let delete = p
                .parse(
                    "$KV.v1-objects.platform-community__c.a0Q",
                    Some(&operation(op)),
                    b"",
                )
                .unwrap()
                .unwrap();
            assert!(matches!(delete.operation, Operation::Delete), "{op}");
        }
        // Without the header an empty value is a put, and not a row.
        assert_eq!(
            p.parse("$KV.v1-objects.platform-community__c.a0Q", None, b"")
                .unwrap_err()
                .reason,
            "undecodable"
        );
        assert!(
            p.parse("$KV.v1-objects.platform-meeting.1", None, b"{}")
                .unwrap()
                .is_none()
        );
        assert!(
            p.parse("$KV.v1-objects.mystery.1", None, b"{}")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            p.parse("$KV.other.salesforce-project__c.1", None, b"{}")
                .unwrap_err()
                .reason,
            "bad_subject"
        );
        assert_eq!(
            p.parse("$KV.v1-objects.platform-collaboration__c.1", None, b"\xc1")
                .unwrap_err()
                .reason,
            "undecodable"
        );
    }

    #[test]
    fn message_pack_values_are_read() {
        let value = rmpv::Value::Map(vec![(rmpv::Value::from("sfid"), rmpv::Value::from("a0R"))]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        let change = parser()
            .parse("$KV.v1-objects.platform-collaboration__c.a0R", None, &bytes)
            .unwrap()
            .unwrap();
        assert!(matches!(change.operation, Operation::Put(ref row) if row["sfid"] == "a0R"));
    }

    #[test]
    fn key_prefixes_are_stripped() {
        let p = KvParser::new("v1-objects", "lfx.", HashSet::new());
        let change = p
            .parse(
                "$KV.v1-objects.lfx.salesforce-project__c.a09",
                Some(&operation("DEL")),
                b"",
            )
            .unwrap()
            .unwrap();
        assert_eq!(change.key, "salesforce-project__c.a09");
    }

    #[test]
    fn api_errors_split_into_retries_and_rejections() {
        let url = "http://x/projects/1".to_string();
        let retry = [
            ApiError::Unavailable {
                method: hyper::Method::PUT,
                url: url.clone(),
                status: 503,
                body: String::new(),
            },
            ApiError::PreconditionFailed {
                method: hyper::Method::PUT,
                url: url.clone(),
            },
        ];
        for e in retry {
            assert!(matches!(SyncFail::from(e), SyncFail::Retry(_)));
        }
        let rejected = SyncFail::from(ApiError::Rejected {
            method: hyper::Method::POST,
            url,
            status: 400,
            body: "name is required".into(),
        });
        match rejected {
            SyncFail::Reject(r) => {
                assert_eq!(r.reason, "v2_rejected");
                assert!(r.detail.contains("name is required"));
            }
            SyncFail::Retry(why) => panic!("{why}"),
        }
    }
}
