//! Portcullis policy: profiles in, a plain-data enforcement [`Plan`] out.
//!
//! Nothing here touches the kernel. A profile is TOML ([`schema`]), loaded with
//! its `extends` chain from the built-in, system and user directories
//! ([`source`]), merged into one [`Profile`] whose every value remembers the
//! file and line it came from ([`profile`]), then compiled ([`compile`]) into a
//! [`Plan`] that the supervisor applies and `portcullis explain` prints.
#![forbid(unsafe_code)]

pub mod ask;
pub mod compile;
pub mod env;
pub mod error;
pub mod mcp;
pub mod plan;
pub mod profile;
pub mod schema;
pub mod seccomp;
pub mod size;
pub mod source;
pub mod syscalls;

pub use compile::{compile, Vars};
pub use error::{Error, Origin};
pub use plan::Plan;
pub use profile::{Overrides, Profile};
pub use source::{Loader, Place, ProfileSource};
