//! Settings of the v2 push (SPEC §7.2–7.4), as `lfx-sync sync` flags.
//!
//! The environment variable names are the v1-sync-helper's
//! (`PROJECT_SERVICE_URL`, `COMMITTEE_SERVICE_URL`, `HEIMDALL_CLIENT_ID`,
//! `HEIMDALL_PRIVATE_KEY`, `HEIMDALL_KEY_ID`, `AUTH0_CLIENT_ID`), so lfx-sync
//! drops into its deployment unchanged. The private key is read from the
//! environment or a file only, never from a flag, and never printed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use clap::Args;

use super::auth::{Signer, service_principal};
use super::client::{ClientSetupError, Service, V2Client};
use super::handlers::{KvHandler, KvParser, UserDirectory, V2Settings, V2Sync};
use super::store::MappingStore;
use crate::sync::config::{SettingsError, parse_duration};

/// The variable holding the PEM text of the Heimdall signing key.
pub const PRIVATE_KEY_ENV: &str = "HEIMDALL_PRIVATE_KEY";

#[derive(Debug, Clone, Args)]
pub struct V2Args {
    /// Base URL of the v2 project service; with the committee service URL,
    /// turns the KV consumer (push to v2) on.
    #[arg(long, env = "PROJECT_SERVICE_URL")]
    pub project_service_url: Option<String>,
    /// Base URL of the v2 committee service.
    #[arg(long, env = "COMMITTEE_SERVICE_URL")]
    pub committee_service_url: Option<String>,
    /// Client id of lfx-sync at Heimdall: reads act as `<id>@clients`.
    #[arg(long, env = "HEIMDALL_CLIENT_ID", default_value = "v1_sync_helper")]
    pub heimdall_client_id: String,
    /// File with the Heimdall private key (PEM), when HEIMDALL_PRIVATE_KEY
    /// does not hold it.
    #[arg(long, env = "HEIMDALL_PRIVATE_KEY_FILE")]
    pub heimdall_private_key_file: Option<PathBuf>,
    /// `kid` of the Heimdall signing key.
    #[arg(long, env = "HEIMDALL_KEY_ID")]
    pub heimdall_key_id: Option<String>,
    /// Auth0 client id of lfx-sync in v1: rows last modified by
    /// `<id>@clients` came from v2 and are not pushed back.
    #[arg(long, env = "AUTH0_CLIENT_ID")]
    pub auth0_client_id: Option<String>,
    /// `X-Skip-Notification` on committee member creation.
    #[arg(long, env = "LFX_SYNC_SKIP_NOTIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub skip_notification: bool,
    /// Timeout of one v2 request.
    #[arg(long, env = "LFX_SYNC_V2_TIMEOUT", default_value = "30s")]
    pub v2_timeout: String,
    /// Mapping bucket (v1 ↔ v2 ids).
    #[arg(long, env = "LFX_SYNC_MAPPINGS_BUCKET", default_value = "v1-mappings")]
    pub mappings_bucket: String,
    /// Durable consumer of the `v1-objects` KV stream, shared by replicas.
    #[arg(long, env = "LFX_SYNC_KV_CONSUMER", default_value = "lfx-sync-kv")]
    pub kv_consumer: String,
    /// Log every v2 decision and the request it would send; send no write.
    #[arg(long, env = "LFX_SYNC_DRY_RUN")]
    pub dry_run: bool,
    /// The `salesforce-merged_user` field holding the username v2 writes
    /// impersonate (looked up by `lastmodifiedbyid` in the objects bucket).
    #[arg(long, env = "LFX_SYNC_V1_USERNAME_FIELD", default_value = "username")]
    pub v1_username_field: String,
    /// More `v1-objects` stream prefixes that other services consume (say,
    /// the DynamoDB tables), acknowledged without a warning; the streams
    /// config's streams are always known.
    #[arg(long, env = "LFX_SYNC_KNOWN_STREAMS", value_delimiter = ',')]
    pub known_streams: Vec<String>,
}

/// Validated settings of the v2 push (Debug shows no key material).
#[derive(Debug)]
pub struct V2Config {
    pub signer: Arc<Signer>,
    pub projects: Service,
    pub committees: Service,
    pub service_principal: String,
    pub settings: V2Settings,
    pub timeout: Duration,
    pub mappings_bucket: String,
    pub kv_consumer: String,
    pub username_field: String,
}

impl V2Args {
    /// `Ok(None)` when no service URL is set: the push is off.
    pub fn validate(self) -> Result<Option<V2Config>, SettingsError> {
        let pem = std::env::var(PRIVATE_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty());
        self.validate_with(pem.as_deref())
    }

    /// [`validate`](Self::validate) with the key's PEM text passed in.
    pub fn validate_with(self, pem: Option<&str>) -> Result<Option<V2Config>, SettingsError> {
        if self.project_service_url.is_none() && self.committee_service_url.is_none() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let mut url = |value: Option<String>, name: &str| match value {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u),
            Some(u) => {
                problems.push(format!("{name} `{u}` is not an http(s) URL"));
                None
            }
            None => {
                problems.push(format!(
                    "{name} is required when the other service URL is set"
                ));
                None
            }
        };
        let projects = url(self.project_service_url, "PROJECT_SERVICE_URL");
        let committees = url(self.committee_service_url, "COMMITTEE_SERVICE_URL");
        let kid = self.heimdall_key_id.filter(|k| !k.is_empty());
        if kid.is_none() {
            problems.push("HEIMDALL_KEY_ID is required".into());
        }
        let own = self.auth0_client_id.filter(|id| !id.is_empty());
        if own.is_none() {
            // Without it, changes made by v2 would be pushed back to v2.
            problems.push("AUTH0_CLIENT_ID is required".into());
        }
        if self.v1_username_field.trim().is_empty() {
            problems.push("LFX_SYNC_V1_USERNAME_FIELD must not be empty".into());
        }
        let timeout = parse_duration(&self.v2_timeout).filter(|t| !t.is_zero());
        if timeout.is_none() {
            problems.push(format!(
                "LFX_SYNC_V2_TIMEOUT `{}` is not a duration",
                self.v2_timeout
            ));
        }
        let kid_text = kid.clone().unwrap_or_default();
        let signer = match (pem, &self.heimdall_private_key_file) {
            (Some(pem), _) => Signer::from_pem(pem.as_bytes(), kid_text).map_err(|e| e.to_string()),
            (None, Some(path)) => Signer::from_pem_file(path, kid_text).map_err(|e| e.to_string()),
            (None, None) => Err(format!(
                "{PRIVATE_KEY_ENV} or HEIMDALL_PRIVATE_KEY_FILE is required"
            )),
        };
        let signer = signer.map_err(|e| problems.push(e)).ok();
        match (projects, committees, kid, own, timeout, signer) {
            (Some(projects), Some(committees), Some(_), Some(own), Some(timeout), Some(signer))
                if problems.is_empty() =>
            {
                Ok(Some(V2Config {
                    signer: Arc::new(signer),
                    projects: Service::projects(&projects),
                    committees: Service::committees(&committees),
                    service_principal: service_principal(&self.heimdall_client_id),
                    settings: V2Settings {
                        own_principal: format!("{own}@clients"),
                        skip_notification: self.skip_notification,
                        dry_run: self.dry_run,
                        // Set by `handler`, which has the objects bucket.
                        users: None,
                    },
                    username_field: self.v1_username_field,
                    timeout,
                    mappings_bucket: self.mappings_bucket,
                    kv_consumer: self.kv_consumer,
                }))
            }
            _ => Err(SettingsError { problems }),
        }
    }
}

impl V2Config {
    /// The KV consumer's handler: `objects` is the opened `v1-objects`
    /// bucket named `bucket`, `mappings` the opened mapping bucket.
    pub fn handler(
        self,
        nats: async_nats::Client,
        objects: kv::Store,
        mappings: kv::Store,
        bucket: &str,
        key_prefix: &str,
        known_streams: HashSet<String>,
    ) -> Result<KvHandler, ClientSetupError> {
        let client = V2Client::new(self.signer, self.service_principal, self.timeout)?;
        let mut settings = self.settings;
        settings.users = Some(UserDirectory::new(
            objects.clone(),
            key_prefix,
            &self.username_field,
        ));
        let sync = V2Sync::new(
            client,
            self.projects,
            self.committees,
            MappingStore::new(mappings),
            nats,
            settings,
        );
        Ok(KvHandler::new(
            Arc::new(sync),
            KvParser::new(bucket, key_prefix, known_streams),
            objects,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const KEY: &str = include_str!("../../../tests/fixtures/v2/heimdall-test-key.pem");

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        v2: V2Args,
    }

    fn args(extra: &[&str]) -> V2Args {
        let mut argv = vec!["lfx-sync"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().v2
    }

    const FULL: &[&str] = &[
        "--project-service-url",
        "http://projects:8080",
        "--committee-service-url",
        "https://committees",
        "--heimdall-key-id",
        "kid-1",
        "--auth0-client-id",
        "abc",
    ];

    #[test]
    fn off_without_service_urls() {
        assert!(args(&[]).validate_with(Some(KEY)).unwrap().is_none());
    }

    #[test]
    fn complete_settings() {
        let config = args(FULL).validate_with(Some(KEY)).unwrap().unwrap();
        assert_eq!(config.service_principal, "v1_sync_helper@clients");
        assert_eq!(config.settings.own_principal, "abc@clients");
        assert!(config.settings.skip_notification);
        assert!(!config.settings.dry_run);
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert_eq!(config.mappings_bucket, "v1-mappings");
        let mut off = FULL.to_vec();
        off.extend(["--skip-notification", "false", "--dry-run"]);
        let config = args(&off).validate_with(Some(KEY)).unwrap().unwrap();
        assert!(!config.settings.skip_notification);
        assert!(config.settings.dry_run);
    }

    #[test]
    fn key_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, KEY).unwrap();
        let mut with_file = FULL.to_vec();
        let path_text = path.display().to_string();
        with_file.extend(["--heimdall-private-key-file", path_text.as_str()]);
        assert!(args(&with_file).validate_with(None).unwrap().is_some());
    }

    #[test]
    fn every_problem_is_reported_without_secrets() {
        let err = args(&[
            "--project-service-url",
            "projects:8080",
            "--v2-timeout",
            "soon",
        ])
        .validate_with(Some(
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        ))
        .unwrap_err();
        let text = err.problems.join("\n");
        for expected in [
            "PROJECT_SERVICE_URL `projects:8080` is not an http(s) URL",
            "COMMITTEE_SERVICE_URL is required",
            "HEIMDALL_KEY_ID is required",
            "AUTH0_CLIENT_ID is required",
            "LFX_SYNC_V2_TIMEOUT `soon`",
            "not a usable RSA key",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        assert!(!text.contains("c2VjcmV0"));
        let err = args(FULL).validate_with(None).unwrap_err();
        assert_eq!(
            err.problems,
            ["HEIMDALL_PRIVATE_KEY or HEIMDALL_PRIVATE_KEY_FILE is required"]
        );
    }
}
