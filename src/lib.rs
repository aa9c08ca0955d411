//! placeholder
pub use lockkit_core::*;
