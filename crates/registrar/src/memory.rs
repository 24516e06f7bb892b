//! An in-memory [`Store`], for tests of the rules and for examples. Nothing is durable.
//! Its operator operations are those of the [`Fixture`] trait.
//!
//! Each transaction runs under one lock on a copy of the state that replaces the state
//! only when the closure succeeds, so a failed closure leaves no trace, as in a real
//! store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use crate::conformance::Fixture;
use crate::model::{
    AuditEntry, ExpectedDevice, MacRange, NewTriplet, Product, Registration, Triplet, TripletId,
    TripletState,
};
use crate::store::{Intent, ProductListener, Store, StoreError, Tx};

#[derive(Debug, Clone)]
struct Row {
    pid: String,
    triplet: TripletId,
    registered_at: u64,
    last_seen_at: u64,
    revoked_at: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct State {
    products: HashMap<String, Arc<Product>>,
    mac_next: HashMap<String, u64>,
    /// Triplet ids are indices + 1.
    triplets: Vec<Triplet>,
    registrations: HashMap<(String, String), Row>,
    /// Per product: (re-registrations served, re-registrations refused).
    reregistrations: HashMap<String, (u64, u64)>,
    /// The audit log, oldest first.
    audit: Vec<AuditEntry>,
}

/// An in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Expected devices by (pid, unique): outside `State`, which every transaction
    /// copies, since no transaction writes them.
    expected: Mutex<HashMap<(String, String), ExpectedDevice>>,
    listeners: Mutex<Vec<ProductListener>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn index(id: TripletId) -> usize {
    usize::try_from(id - 1).unwrap_or(usize::MAX)
}

struct MemTx<'a> {
    s: &'a mut State,
}

impl Tx for MemTx<'_> {
    fn registration(
        &mut self,
        key_pid: &str,
        unique: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let key = (key_pid.to_owned(), unique.to_owned());
        Ok(self.s.registrations.get(&key).map(|row| Registration {
            key_pid: key_pid.to_owned(),
            unique: unique.to_owned(),
            pid: row.pid.clone(),
            triplet: self.s.triplets[index(row.triplet)].clone(),
            registered_at: row.registered_at,
            last_seen_at: row.last_seen_at,
            revoked_at: row.revoked_at,
        }))
    }

    fn free_triplet(&mut self, pid: &str) -> Result<Option<Triplet>, StoreError> {
        Ok(self
            .s
            .triplets
            .iter()
            .find(|t| t.pid == pid && t.state == TripletState::Free)
            .cloned())
    }

    fn next_mac(&mut self, pid: &str) -> Result<Option<String>, StoreError> {
        let range: MacRange = self
            .s
            .products
            .get(pid)
            .and_then(|p| p.mac_range)
            .ok_or_else(|| StoreError::invalid(format!("product {pid} has no MAC range")))?;
        let next = self.s.mac_next.entry(pid.to_owned()).or_insert(range.start);
        if *next > range.end {
            return Ok(None);
        }
        let mac = MacRange::format(*next);
        *next += 1;
        Ok(Some(mac))
    }

    fn insert_triplet(
        &mut self,
        pid: &str,
        t: &NewTriplet,
        state: TripletState,
    ) -> Result<Triplet, StoreError> {
        if self.s.triplets.iter().any(|x| x.uuid == t.uuid) {
            return Err(StoreError::conflict(format!("uuid {} exists", t.uuid)));
        }
        if !t.barcode.is_empty()
            && self
                .s
                .triplets
                .iter()
                .any(|x| x.pid == pid && x.barcode == t.barcode)
        {
            return Err(StoreError::conflict(format!(
                "barcode {} exists",
                t.barcode
            )));
        }
        let id = TripletId::try_from(self.s.triplets.len() + 1).unwrap_or(TripletId::MAX);
        let triplet = t.stored(id, pid, state);
        self.s.triplets.push(triplet.clone());
        Ok(triplet)
    }

    fn barcode_holder(
        &mut self,
        pid: &str,
        barcode: &str,
    ) -> Result<Option<(TripletId, TripletState)>, StoreError> {
        Ok(self
            .s
            .triplets
            .iter()
            .find(|t| t.pid == pid && t.barcode == barcode)
            .map(|t| (t.id, t.state)))
    }

    fn set_mac(&mut self, triplet: TripletId, mac: &str) -> Result<(), StoreError> {
        mac.clone_into(&mut self.s.triplets[index(triplet)].mac);
        Ok(())
    }

    fn set_barcode(&mut self, triplet: TripletId, barcode: &str) -> Result<(), StoreError> {
        let pid = self.s.triplets[index(triplet)].pid.clone();
        if !barcode.is_empty()
            && self
                .s
                .triplets
                .iter()
                .any(|t| t.id != triplet && t.pid == pid && t.barcode == barcode)
        {
            return Err(StoreError::conflict(format!("barcode {barcode} exists")));
        }
        barcode.clone_into(&mut self.s.triplets[index(triplet)].barcode);
        Ok(())
    }

    fn insert_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        pid: &str,
        triplet: &Triplet,
        now: u64,
    ) -> Result<(), StoreError> {
        let triplet = triplet.id;
        let key = (key_pid.to_owned(), unique.to_owned());
        if self.s.registrations.contains_key(&key) {
            return Err(StoreError::conflict(format!(
                "device {key_pid}/{unique} exists"
            )));
        }
        let t = &mut self.s.triplets[index(triplet)];
        if t.state != TripletState::Free && t.state != TripletState::Bound {
            return Err(StoreError::conflict(format!(
                "triplet {} is {}",
                t.uuid, t.state
            )));
        }
        if self.s.registrations.values().any(|r| r.triplet == triplet) {
            return Err(StoreError::conflict("triplet already bound"));
        }
        self.s.triplets[index(triplet)].state = TripletState::Bound;
        self.s.registrations.insert(
            key,
            Row {
                pid: pid.to_owned(),
                triplet,
                registered_at: now,
                last_seen_at: now,
                revoked_at: None,
            },
        );
        Ok(())
    }

    fn touch_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        if let Some(r) = self
            .s
            .registrations
            .get_mut(&(key_pid.to_owned(), unique.to_owned()))
        {
            r.last_seen_at = now;
        }
        self.s
            .reregistrations
            .entry(key_pid.to_owned())
            .or_default()
            .0 += 1;
        Ok(())
    }

    fn count_refused_reregistration(&mut self, key_pid: &str) -> Result<(), StoreError> {
        self.s
            .reregistrations
            .entry(key_pid.to_owned())
            .or_default()
            .1 += 1;
        Ok(())
    }

    fn record(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.s.audit.push(entry.clone());
        Ok(())
    }

    fn count_bound_device(&mut self, _pid: &str) -> Result<(), StoreError> {
        // `bound_devices` counts the registrations themselves.
        Ok(())
    }

    fn bound_devices(&mut self, pid: &str) -> Result<u64, StoreError> {
        let n = self
            .s
            .registrations
            .values()
            .filter(|r| r.pid == pid)
            .count();
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

impl Store for MemoryStore {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        std::future::ready(Ok(self.lock().products.get(pid).cloned()))
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send {
        let found = self
            .expected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(pid.to_owned(), unique.to_owned()))
            .cloned();
        std::future::ready(Ok(found))
    }

    fn on_product_change(&self, listener: ProductListener) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    fn transact<T, F>(
        &self,
        _: Option<Intent>,
        mut work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let result = {
            let mut s = self.lock();
            let mut copy = s.clone();
            let r = work(&mut MemTx { s: &mut copy });
            if r.is_ok() {
                *s = copy;
            }
            r
        };
        std::future::ready(result)
    }
}

impl Fixture for MemoryStore {
    fn expect(&self, pid: &str, devices: Vec<ExpectedDevice>) {
        let mut e = self.expected.lock().unwrap_or_else(PoisonError::into_inner);
        for d in devices {
            e.insert((pid.to_owned(), d.unique.clone()), d);
        }
        drop(e);
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            l(pid);
        }
    }

    fn put_product(&self, product: Product) {
        let mut s = self.lock();
        if let Some(r) = product.mac_range {
            s.mac_next.entry(product.pid.clone()).or_insert(r.start);
        }
        let pid = product.pid.clone();
        s.products.insert(pid.clone(), Arc::new(product));
        drop(s);
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            l(&pid);
        }
    }

    fn add_pool(&self, pid: &str, triplets: Vec<NewTriplet>) {
        let mut s = self.lock();
        let mut tx = MemTx { s: &mut s };
        for t in triplets {
            tx.insert_triplet(pid, &t, TripletState::Free)
                .expect("pool triplets are unique");
        }
    }

    fn revoke(&self, key_pid: &str, unique: &str, now: u64) {
        let mut s = self.lock();
        let key = (key_pid.to_owned(), unique.to_owned());
        let row = s.registrations.get_mut(&key).expect("device is registered");
        row.revoked_at = Some(now);
        let id = row.triplet;
        s.triplets[index(id)].state = TripletState::Revoked;
    }

    fn reset(&self, key_pid: &str, unique: &str) {
        let mut s = self.lock();
        let key = (key_pid.to_owned(), unique.to_owned());
        let row = s.registrations.remove(&key).expect("device is registered");
        assert!(row.revoked_at.is_some(), "only a revoked device is reset");
    }

    fn pool_counts(&self, pid: &str) -> (u64, u64, u64) {
        let s = self.lock();
        let mut c = (0, 0, 0);
        for t in s.triplets.iter().filter(|t| t.pid == pid) {
            match t.state {
                TripletState::Free => c.0 += 1,
                TripletState::Bound => c.1 += 1,
                TripletState::Revoked => c.2 += 1,
            }
        }
        c
    }

    fn audit(&self) -> Vec<AuditEntry> {
        self.lock().audit.clone()
    }

    fn reregistrations(&self, pid: &str) -> (u64, u64) {
        self.lock()
            .reregistrations
            .get(pid)
            .copied()
            .unwrap_or_default()
    }
}
