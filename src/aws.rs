//! AWS client settings shared by the S3 state backend and the DynamoDB source:
//! the standard credential chain and region, `AWS_ENDPOINT_URL` (and the
//! per-service `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL_DYNAMODB`), an
//! optional role to assume, and an HTTPS client on ring.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Who to talk to, on top of what the environment says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsSettings {
    /// Overrides `AWS_REGION` / the profile's region.
    pub region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL*`: an S3- or DynamoDB-compatible server.
    pub endpoint_url: Option<String>,
    /// A role to assume with the base credentials, e.g. for another account's tables.
    pub assume_role: Option<String>,
}

/// Which client a configuration is for, to say what to fix when it is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3State,
    DynamoDb,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::S3State => "the S3 state backend",
            Service::DynamoDb => "DynamoDB",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region configured for {service}: set AWS_REGION or a profile's region{}",
        if *.service == Service::DynamoDb { ", or `region` in [dynamodb]" } else { "" })]
    NoRegion { service: Service },
}

/// Loads the SDK configuration for one service.
pub async fn load(settings: &AwsSettings, service: Service) -> Result<SdkConfig, AwsError> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        // A black-holed endpoint must fail the run, not hang it; a connection
        // refused is retried by the SDK's standard policy (3 attempts).
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        )
        .retry_config(RetryConfig::standard());
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsError::NoRegion { service });
    }
    let Some(role) = &settings.assume_role else {
        return Ok(config);
    };
    let provider = aws_config::sts::AssumeRoleProvider::builder(role.clone())
        .session_name("lfx-sync")
        .configure(&config)
        .build()
        .await;
    Ok(config
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build())
}

/// An SDK error with its causes, `a: b: c`, for messages a person reads (the
/// SDK's own Display says only "service error" or "dispatch failure").
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // Wrappers often repeat their inner error's text.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
