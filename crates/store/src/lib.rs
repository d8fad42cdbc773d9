//! wattmesh-store (skeleton).
