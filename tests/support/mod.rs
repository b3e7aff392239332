//! What the end-to-end tests share: the real binary, run as a user runs it.

#![allow(dead_code)] // each test file uses its own part

use std::process::{Command, Output};

/// Runs `paliforge ARGS` and asserts it succeeded (printing its stderr if not).
pub fn paliforge(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paliforge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last line of a command's stdout, as JSON (the commands end with one).
pub fn last_json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}
