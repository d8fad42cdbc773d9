//! wattmesh-agent (skeleton).
