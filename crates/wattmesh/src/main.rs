//! The wattmesh CLI.
fn main() {}
