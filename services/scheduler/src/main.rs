//! `scheduler`: the engine.
fn main() {}
