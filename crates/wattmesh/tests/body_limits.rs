//! One body limit for the data plane: the gateway's. A replica must accept every body the
//! gateway admits, or a body between the two limits is refused mid-send by the replica and
//! reaches the client as a 503 instead of the gateway's 413. The engine and the gateway do not
//! depend on each other, so this crate, which depends on both, holds the check.

#[test]
fn replicas_accept_every_body_the_gateway_admits() {
    let gateway = wattmesh_gateway::DEFAULT_MAX_BODY_BYTES;
    let replica = wattmesh_engine::server::MAX_BODY_BYTES;
    // The gateway may add to a body it forwards (`stream_options`), so equal is not enough.
    assert!(
        replica >= 2 * gateway,
        "the engine's body limit ({replica} bytes) must stay well above the gateway's \
         ({gateway} bytes)"
    );
}
