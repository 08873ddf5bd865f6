//! Platform connectors and the transports that carry disk bytes from a hypervisor to the
//! pipeline. Today: the NBD transport (our own client) and an NBD-backed disk source with
//! allocation and dirty-bitmap queries. The `Connector` trait and the KVM, VMware and Hyper-V
//! connectors come next (issue 3); nothing outside this crate may name a platform.

pub mod nbd;
pub mod nbd_source;

pub use nbd::{BlockExtent, NbdAddress, NbdClient, NbdError};
pub use nbd_source::{dirty_ranges, NbdSource};
