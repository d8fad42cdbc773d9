//! A miner's reply, read the way `MinerClient` reads it — as the answer to one command and to
//! two `+`-joined ones — down to the typed values (LuxOS's power profiles included). Any bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattmesh_miner::api::{self, Request, Summary};
use wattmesh_miner::luxos;

fuzz_target!(|bytes: &[u8]| {
    for commands in [&["summary"][..], &["power", "summary"][..]] {
        let Ok(request) = Request::new(commands, None) else {
            return;
        };
        let Ok(replies) = api::decode_replies(&request, bytes) else {
            continue;
        };
        for reply in &replies {
            let _ = Summary::from_reply(reply);
            let _ = api::watts(reply);
            let _ = api::session_id(reply);
            let _ = luxos::parse_profiles(reply);
            let _ = reply.clone().into_ok("summary");
        }
        let _ = api::by_command(&request, replies);
    }
});
