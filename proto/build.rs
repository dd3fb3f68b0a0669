//! Compiles `verbund/v1/*.proto` with protox (pure Rust, no `protoc`) and writes the
//! generated tonic/prost code and its serde (pbjson) to OUT_DIR only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["verbund/v1/query.proto", "verbund/v1/audit.proto", "verbund/v1/link.proto", "verbund/v1/researcher.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // Serde for every message in protobuf's canonical JSON mapping (enum names, camelCase
    // fields): how audit records keep the typed request readable and readable back.
    let mut json = pbjson_build::Builder::new();
    for file in &descriptors.file {
        json.register_file_descriptor(file.clone());
    }
    json.build(&[".verbund.v1"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
