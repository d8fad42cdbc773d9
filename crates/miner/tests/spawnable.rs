//! The fleet operations run on spawned tasks (the agent's DR executor runs them on one), so
//! their futures must be `Send` for any lifetime of their arguments. A closure returning a
//! borrowing future inside them breaks that silently — only a caller that spawns finds out.

use std::net::SocketAddr;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wattmesh_miner::fleet::{self, FleetOptions};

#[tokio::test]
async fn fleet_operations_run_on_spawned_tasks() {
    let task = tokio::spawn(async move {
        let miners: Vec<SocketAddr> = Vec::new();
        let opts = FleetOptions::default();
        let stop = CancellationToken::new();
        let slept = fleet::sleep(&miners, &opts).await.map(|r| r.miners.len());
        let woken = fleet::wake(&miners, &opts).await.map(|r| r.miners.len());
        let held = fleet::hold_asleep(&miners, &opts, Instant::now(), &stop)
            .await
            .map(|r| r.miners.len());
        (slept.ok(), woken.ok(), held.ok())
    });
    assert_eq!(task.await.ok(), Some((Some(0), Some(0), Some(0))));
}
