//! Miner protocol clients (CGMiner API, LuxOS) and a miner simulator that speaks the same
//! protocol on TCP 4028. Empty until the energy issue: the walking skeleton runs inference only,
//! and the crate exists now so that the dependency direction (agent → miner) is fixed from day one.
