//! Pushing v1 changes to the LFX One (v2) project and committee services
//! (SPEC §7.2–7.4, `SPEC-v2-mapping.md`).
//!
//! [`mapping`] turns a v1 row into the v2 fields it provides and overlays
//! them onto the current v2 record; [`auth`] signs the Heimdall-style JWTs
//! the services accept; [`client`] speaks their HTTP API with ETag
//! concurrency; [`store`] is the `v1-mappings` bucket; [`handlers`] runs the
//! decision list for each `v1-objects` change and is the KV consumer input;
//! [`config`] holds its flags and environment variables.

pub mod auth;
pub mod client;
pub mod config;
pub mod handlers;
pub mod mapping;
pub mod store;
