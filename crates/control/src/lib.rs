//! wattmesh-control (skeleton).
