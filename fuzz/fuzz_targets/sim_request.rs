//! A request as the miner simulator reads it off its socket (CGMiner's JSON form). A decoded
//! request must encode and decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattmesh_miner::api::Request;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = Request::decode(bytes) {
        let again = Request::decode(&request.encode());
        assert_eq!(again.ok(), Some(request), "a decoded request re-encodes to itself");
    }
});
