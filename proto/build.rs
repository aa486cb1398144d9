// Generates the gRPC code from the .proto files with protox, so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/fulcrum/v1/control.proto",
        "proto/fulcrum/raft/v1/raft.proto",
        "proto/fulcrum/sync/v1/sync.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The CLI prints API messages as JSON (`--json`).
        .type_attribute(".fulcrum.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
