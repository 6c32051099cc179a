//! Generates the gRPC stubs of knit-testbin's test service without protoc:
//! `tonic_build::manual` describes the methods in Rust, and the messages are
//! raw bytes (`BytesCodec` in the testbin), so no protobuf is involved.
use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type("bytes::Bytes")
        .output_type("bytes::Bytes")
        .codec_path("crate::grpc::BytesCodec")
}

fn main() {
    let peer = Service::builder()
        .name("Peer")
        .package("knit.test")
        .method(method("echo", "Echo").build())
        .method(method("expand", "Expand").server_streaming().build())
        .method(method("concat", "Concat").client_streaming().build())
        .method(
            method("chat", "Chat")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    // The testbin builds its own channel (to dial a resolved address with the
    // alias as :authority), so the generated `connect` helper is not needed.
    Builder::new().build_transport(false).compile(&[peer]);
}
