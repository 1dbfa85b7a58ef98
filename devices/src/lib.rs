//! Device models for gureum. Devices sit behind a [`Bus`]; they never depend on the VMM crate,
//! and every eventfd they signal is handed to them by whoever builds them.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
