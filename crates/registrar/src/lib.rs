//! # dynreg-registrar: the registration decision
//!
//! Given an authenticated device (pid, unique) and its register request, decide the
//! reply: idempotency per device, triplet pools, on-the-spot generation, barcode
//! overwrite, `replacePid`, revocation. Time is passed in; storage is reached only
//! through the [`Store`] trait, so every rule is tested without IO (see
//! [`memory::MemoryStore`]).
//!
//! ## Layout
//! - [`model`]: products, triplets, registrations and their values.
//! - [`store`]: the [`Store`] and [`Tx`] traits a storage backend implements.
//! - [`registrar`]: [`Registrar`], the rules.
//! - [`generate`]: random secrets, uuids and pids from the OS CSPRNG.
//! - [`memory`]: an in-memory store for tests and examples.
//! - [`conformance`]: the rules as a test suite any [`Store`] must pass.

pub mod conformance;
pub mod generate;
pub mod memory;
pub mod model;
pub mod registrar;
pub mod store;

pub use model::{
    MacRange, NewTriplet, Product, Registration, Secret, SourceMode, Triplet, TripletId,
    TripletState,
};
pub use registrar::{Device, Registered, Registrar};
pub use store::{Store, StoreError, Tx};
