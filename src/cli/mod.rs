//! The command line: options ([`args`]), progress on stderr ([`progress`]) and one function per
//! command ([`commands`]) that resolves its options into the library's settings, calls
//! [`dfdet::commands`] and prints the result.

pub mod args;
pub mod commands;
pub mod progress;
