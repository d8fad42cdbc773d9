//! wattmesh-gateway (skeleton).
