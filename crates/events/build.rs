//! Compiles `proto/handoff/v1/*.proto` with `protox` (pure Rust), so building
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "handoff/v1/envelope.proto",
        "handoff/v1/events.proto",
        "handoff/v1/records.proto",
        "handoff/v1/dead_letter.proto",
        "handoff/v1/synced.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let descriptors = protox::compile(files, [&proto_root])?;
    // The descriptors themselves, for rendering messages as JSON (`json.rs`).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("handoff_v1_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Type names (`prost::Name`) let code render or route a message by its proto name.
    prost_build::Config::new()
        .enable_type_names()
        .compile_fds(descriptors)?;
    Ok(())
}
