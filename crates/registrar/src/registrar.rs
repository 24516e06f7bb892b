//! The registration decision (PROTOCOL.md sections 4-6): given an authenticated device
//! and its request, produce the reply.
//!
//! Rules, in the order they are applied:
//! 1. The request must validate (`MalformedRequest`, `UnknownEventCode`).
//! 2. The device's product must exist (`ProductUnknown`) and be enabled
//!    (`RegistrationDisabled`).
//! 3. With `replacePid`: `data.secret` must be given (`ReplacePidSecretMissing`), the
//!    product must exist (`ReplacePidUnknown`), the secret must equal its secret,
//!    compared in constant time (`ReplacePidSecretWrong`), and it must be enabled
//!    (`ReplacePidDisabled`).
//! 4. In one transaction: a device already registered gets the same triplet again
//!    (`DeviceRevoked` if the operator revoked it), with the request's barcode applied;
//!    a new device gets a free pool triplet or a generated one, per the product's mode
//!    (`PoolExhausted` when neither is possible), and the request's barcode.
//! 5. A barcode held by another device's triplet refuses (`BarcodeTaken`); a barcode
//!    held by a free pool triplet moves to the device's triplet.
//!
//! The reply is produced only after the transaction is durably committed.

use std::sync::Arc;

use dynreg_proto::{RegisterReply, RegisterRequest, ReplyData, Status};

use crate::generate;
use crate::model::{NewTriplet, Product, SourceMode, Triplet, TripletId, TripletState};
use crate::store::{Store, StoreError, Tx};

/// An authenticated device identity: the pid and unique of its clientId.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device<'a> {
    /// The pid the device authenticated with.
    pub pid: &'a str,
    /// The device's unique.
    pub unique: &'a str,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The product the device is registered under.
    pub pid: String,
    /// The triplet it holds.
    pub triplet: Triplet,
    /// True when this call bound the triplet; false for a repeat registration.
    pub fresh: bool,
}

/// How many times a generated uuid is drawn again after a collision.
const UUID_ATTEMPTS: usize = 4;

/// The registration decision over a [`Store`].
#[derive(Debug, Clone)]
pub struct Registrar<S> {
    store: S,
}

impl<S: Store> Registrar<S> {
    /// A registrar over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store this registrar uses.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Handles a raw request payload: parses it, registers, and gives the reply to send,
    /// or `None` when the request asked for no reply (`ack` = 0). A payload that is not
    /// a valid request is answered with `MalformedRequest`, echoing what could be read.
    pub async fn register_payload(
        &self,
        now: u64,
        device: Device<'_>,
        payload: &[u8],
    ) -> Option<RegisterReply> {
        match RegisterRequest::from_json(payload) {
            Ok(request) => {
                let reply = self.register(now, device, &request).await;
                request.wants_reply().then_some(reply)
            }
            Err(e) => Some(RegisterReply::failure(
                e.id,
                e.code,
                now,
                Status::MalformedRequest,
            )),
        }
    }

    /// Registers the device and builds the reply (whatever `ack` says).
    pub async fn register(
        &self,
        now: u64,
        device: Device<'_>,
        request: &RegisterRequest,
    ) -> RegisterReply {
        match self.decide(now, device, request).await {
            Ok(r) => RegisterReply::success(
                request.id.as_str(),
                request.code.as_str(),
                now,
                ReplyData::triplet(
                    r.pid,
                    r.triplet.uuid,
                    r.triplet.secret.expose(),
                    r.triplet.mac,
                ),
            ),
            Err(status) => {
                RegisterReply::failure(request.id.as_str(), request.code.as_str(), now, status)
            }
        }
    }

    fn product(&self, pid: &str) -> Result<Option<Arc<Product>>, Status> {
        self.store.product(pid).map_err(|e| store_status(&e))
    }

    /// Applies the rules and, on success, returns the committed registration.
    pub async fn decide(
        &self,
        now: u64,
        device: Device<'_>,
        request: &RegisterRequest,
    ) -> Result<Registered, Status> {
        request.validate()?;
        let product = self.product(device.pid)?.ok_or(Status::ProductUnknown)?;
        if !product.enabled {
            return Err(Status::RegistrationDisabled);
        }
        let target = match request.replace_pid() {
            None => product,
            Some(replace_pid) => {
                let secret = request
                    .replace_secret()
                    .ok_or(Status::ReplacePidSecretMissing)?;
                let target = self
                    .product(replace_pid)?
                    .ok_or(Status::ReplacePidUnknown)?;
                if !target.secret.ct_eq(secret.as_bytes()) {
                    return Err(Status::ReplacePidSecretWrong);
                }
                if !target.enabled {
                    return Err(Status::ReplacePidDisabled);
                }
                target
            }
        };
        let plan = Plan {
            key_pid: device.pid.to_owned(),
            unique: device.unique.to_owned(),
            pid: target.pid.clone(),
            mode: target.mode,
            has_mac_range: target.mac_range.is_some(),
            barcode: request.barcode().map(str::to_owned),
            now,
            // Drawn outside the transaction so the store's writer does less; pool mode
            // never needs one, and pool-then-generate draws one only when the pool is dry.
            candidate: (target.mode == SourceMode::Generate)
                .then(|| generate::triplet(now, String::new(), String::new())),
        };
        match self.store.transact(move |tx| plan.run(tx)).await {
            Ok(outcome) => outcome,
            Err(e) => Err(store_status(&e)),
        }
    }
}

/// The status a device sees for a storage failure.
fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::Unavailable(_) => Status::TemporarilyUnavailable,
        _ => Status::InternalError,
    }
}

/// Everything the transaction needs, owned so it can run on the store's writer.
struct Plan {
    key_pid: String,
    unique: String,
    pid: String,
    mode: SourceMode,
    has_mac_range: bool,
    barcode: Option<String>,
    now: u64,
    candidate: Option<NewTriplet>,
}

impl Plan {
    /// The transaction body. Domain refusals come before any write, so that returning
    /// `Ok(Err(status))` commits nothing.
    fn run(&self, tx: &mut dyn Tx) -> Result<Result<Registered, Status>, StoreError> {
        if let Some(reg) = tx.registration(&self.key_pid, &self.unique)? {
            if reg.revoked_at.is_some() {
                return Ok(Err(Status::DeviceRevoked));
            }
            let mut triplet = reg.triplet;
            if let Some(barcode) = self.barcode.as_ref().filter(|b| **b != triplet.barcode) {
                if let Err(status) = claim_barcode(tx, &reg.pid, triplet.id, barcode)? {
                    return Ok(Err(status));
                }
                triplet.barcode.clone_from(barcode);
            }
            tx.touch_registration(&self.key_pid, &self.unique, self.now)?;
            return Ok(Ok(Registered {
                pid: reg.pid,
                triplet,
                fresh: false,
            }));
        }

        if let Some(barcode) = &self.barcode {
            if let Some((_, state)) = tx.barcode_holder(&self.pid, barcode)? {
                if state != TripletState::Free {
                    return Ok(Err(Status::BarcodeTaken));
                }
            }
        }
        let mut triplet = None;
        if self.mode.uses_pool() {
            triplet = tx.free_triplet(&self.pid)?;
        }
        if triplet.is_none() && self.mode.generates() {
            triplet = self.generate(tx)?;
        }
        let Some(mut triplet) = triplet else {
            return Ok(Err(Status::PoolExhausted));
        };
        if let Some(barcode) = &self.barcode {
            if *barcode != triplet.barcode {
                if let Err(status) = claim_barcode(tx, &self.pid, triplet.id, barcode)? {
                    return Ok(Err(status));
                }
                triplet.barcode.clone_from(barcode);
            }
        }
        tx.insert_registration(&self.key_pid, &self.unique, &self.pid, &triplet, self.now)?;
        triplet.state = TripletState::Bound;
        Ok(Ok(Registered {
            pid: self.pid.clone(),
            triplet,
            fresh: true,
        }))
    }

    /// Generates and stores a bound triplet, or `None` when the MAC range is used up.
    fn generate(&self, tx: &mut dyn Tx) -> Result<Option<Triplet>, StoreError> {
        let mac = if self.has_mac_range {
            match tx.next_mac(&self.pid)? {
                Some(mac) => mac,
                None => return Ok(None),
            }
        } else {
            String::new()
        };
        let mut candidate = self.candidate.clone();
        let mut last = None;
        for _ in 0..UUID_ATTEMPTS {
            let mut t = candidate
                .take()
                .unwrap_or_else(|| generate::triplet(self.now, String::new(), String::new()));
            t.mac.clone_from(&mac);
            match tx.insert_triplet(&self.pid, &t, TripletState::Bound) {
                Ok(stored) => return Ok(Some(stored)),
                Err(StoreError::Conflict(e)) => last = Some(StoreError::Conflict(e)),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Backend("uuid generation failed".into())))
    }
}

/// Puts `barcode` on `triplet` (of product `pid`): refused when another device's triplet
/// holds it; taken from a free pool triplet that holds it.
fn claim_barcode(
    tx: &mut dyn Tx,
    pid: &str,
    triplet: TripletId,
    barcode: &str,
) -> Result<Result<(), Status>, StoreError> {
    match tx.barcode_holder(pid, barcode)? {
        Some((holder, _)) if holder == triplet => return Ok(Ok(())),
        Some((holder, TripletState::Free)) => tx.set_barcode(holder, "")?,
        Some(_) => return Ok(Err(Status::BarcodeTaken)),
        None => {}
    }
    tx.set_barcode(triplet, barcode)?;
    Ok(Ok(()))
}
