//! The `v1-mappings` bucket (SPEC §7.3): which v2 record a v1 record became,
//! and back. A deleted pair is not removed but tombstoned (`!del`), so that a
//! record deleted once is never created again from v1.

use async_nats::jetstream::kv;

pub const TOMBSTONE: &str = "!del";

/// The key catalogue of SPEC §7.3.
pub mod keys {
    pub fn project_sfid(sfid: &str) -> String {
        format!("project.sfid.{sfid}")
    }
    pub fn project_uid(uid: &str) -> String {
        format!("project.uid.{uid}")
    }
    pub fn committee_sfid(sfid: &str) -> String {
        format!("committee.sfid.{sfid}")
    }
    pub fn committee_uid(uid: &str) -> String {
        format!("committee.uid.{uid}")
    }
    pub fn member_sfid(sfid: &str) -> String {
        format!("committee_member.sfid.{sfid}")
    }
    pub fn member_uid(uid: &str) -> String {
        format!("committee_member.uid.{uid}")
    }
    pub fn member_record_sfid(uid: &str) -> String {
        format!("committee_member.record_sfid.{uid}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    Absent,
    /// Tombstoned: deleted, in v1 or in v2.
    Deleted,
    Value(String),
}

#[derive(Debug, thiserror::Error)]
#[error("mapping bucket: cannot {action} `{key}`: {reason}")]
pub struct StoreError {
    action: &'static str,
    key: String,
    reason: String,
}

#[derive(Clone)]
pub struct MappingStore {
    kv: kv::Store,
}

impl MappingStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    pub async fn get(&self, key: &str) -> Result<Mapping, StoreError> {
        let value = self.kv.get(key).await.map_err(|e| StoreError {
            action: "read",
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(match value {
            None => Mapping::Absent,
            Some(bytes) => match std::str::from_utf8(&bytes) {
                Ok(TOMBSTONE) => Mapping::Deleted,
                Ok(text) if !text.is_empty() => Mapping::Value(text.to_string()),
                // Written by nobody we know: as good as no mapping.
                _ => Mapping::Absent,
            },
        })
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.kv
            .put(key, value.to_string().into())
            .await
            .map(drop)
            .map_err(|e| StoreError {
                action: "write",
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    pub async fn tombstone(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            self.put(key, TOMBSTONE).await?;
        }
        Ok(())
    }
}
