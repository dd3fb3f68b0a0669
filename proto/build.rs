//! Compiles `verbund/v1/*.proto` with protox (pure Rust, no `protoc`) and writes the
//! generated tonic/prost code to OUT_DIR only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["verbund/v1/query.proto", "verbund/v1/link.proto", "verbund/v1/researcher.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
