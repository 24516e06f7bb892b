//! The registration rules over the in-memory store (no IO).

dynreg_registrar::conformance_tests!(dynreg_registrar::memory::MemoryStore::new());
