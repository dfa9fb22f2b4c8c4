//! Portcullis supervisor: applies a compiled plan to a command.
//!
//! `sys` holds every `unsafe` block; `sandbox` turns a plan into the exec
//! stage; `cli` is the command line.

pub mod broker;
pub mod cli;
pub mod evidence;
pub mod exit;
pub mod gate;
pub mod grants;
pub mod kaudit;
pub mod kernel;
pub mod mcp;
#[cfg(test)]
mod mutate;
pub mod profiles;
pub mod sandbox;
pub mod sys;
pub mod timing;
