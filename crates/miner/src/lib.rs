//! wattmesh-miner (skeleton).
