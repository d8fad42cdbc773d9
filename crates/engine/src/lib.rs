//! wattmesh-engine (skeleton).
