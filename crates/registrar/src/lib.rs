//! # dynreg-registrar: the registration decision
//!
//! Whether a CONNECT is allowed ([`Registrar::authenticate`]: credentials, product
//! signature settings, bans, the record of shared credentials), and given an authenticated device (pid, unique) and its register
//! request, the reply: idempotency per device, the re-registration policy, quotas,
//! triplet pools, on-the-spot generation, barcode overwrite, `replacePid`, revocation.
//! Time is passed in; storage is reached only
//! through the [`Store`] trait, so every rule is tested without IO (see
//! [`memory::MemoryStore`]).
//!
//! ## Layout
//! - [`model`]: products, triplets, registrations and their values.
//! - [`store`]: the [`Store`] and [`Tx`] traits a storage backend implements.
//! - [`registrar`]: [`Registrar`], the registration rules.
//! - [`auth`]: the CONNECT decision ([`Registrar::authenticate`] asks its
//!   `ConnectGate`, which reads products through the registrar's caches); its unit
//!   tests in `auth/tests.rs`.
//! - [`sharing`]: the in-process record of seed credentials shared by several uniques.
//! - [`ban`]: the failed-authentication ban per source address.
//! - [`cache`]: the caches of products and expected devices in front of any store.
//! - [`rate`]: token-bucket rate limits (registrations per product).
//! - [`events`]: where device events go (the outbox's destinations).
//! - [`generate`]: random secrets, uuids and pids from the OS CSPRNG.
//! - [`memory`]: an in-memory store for tests and examples.
//! - [`metrics`]: the Prometheus metrics each registrar owns ([`Registrar::metrics`]).
//! - [`pace`]: backoff and "log once per burst", for every part of dynreg.
//! - [`conformance`]: the rules as a test suite any [`Store`] must pass.

pub mod auth;
pub mod ban;
pub mod cache;
pub mod conformance;
pub mod events;
pub mod generate;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pace;
pub mod rate;
pub mod registrar;
pub mod sharing;
pub mod store;

pub use auth::{AuthError, AuthPolicy, Authenticated, Connect};
pub use ban::BanPolicy;
pub use model::{
    Admission, AuditEntry, ExpectedDevice, MacRange, NewTriplet, PreviousSecret, Product,
    Registration, ReregPolicy, Secret, SecretMatch, Signatures, SourceMode, Triplet, TripletId,
    TripletState,
};
pub use registrar::{Device, Handled, Registered, Registrar};
pub use sharing::{CredentialUse, SharedCredentials, Sharing};
pub use store::{Intent, ProductListener, Store, StoreError, StoreErrorKind, Tx};
