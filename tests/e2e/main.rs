//! End-to-end tests: the real `portcullis` binary confines the real probe on
//! the real kernel. Every refusal is checked by its errno (or an untouched
//! file, or a listener that got nothing) and paired with a twin showing the
//! allowed case still works.

mod support;

mod broker;
mod cli;
mod enforcement;
mod evidence;
mod gate;
mod lifecycle;
mod limits;
mod mcp;
mod redteam;
