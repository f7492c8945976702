//! Shared between the eBPF programs and userspace: constants, the wire types of every BPF map
//! and ring-buffer record, and the pure order-selection engine.
//!
//! `no_std` and allocation-free so the same definitions compile for `bpfel-unknown-none`.
//! The `user` feature adds `aya::Pod` impls and host-only helpers.
#![no_std]

#[cfg(any(feature = "user", test))]
extern crate std;

pub mod bitmap;
pub mod consts;
pub mod event;
pub mod maps;
pub mod policy;

pub use bitmap::OccupancyBitmap;
