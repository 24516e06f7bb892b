//! The operator subcommands, one module per noun.

pub(crate) mod access;
pub(crate) mod bench;
pub(crate) mod device;
pub(crate) mod expected;
pub(crate) mod pool;
pub(crate) mod product;
pub(crate) mod register;
pub(crate) mod serve;
pub(crate) mod store;
